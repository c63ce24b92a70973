# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image files a conversion produces: names, temporary files, qcow2, and the manifest.

Nothing half-written ever carries a final name: every image is written under a hidden
temporary name, synced, and renamed only after the whole XVA was read and verified.  The
manifest beside the images records what they were made from, so a rerun can tell "done".
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import shutil
import subprocess
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import temp_mark
from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import write_json_atomically

FORMATS = ("raw", "qcow2")
DEFAULT_NAME = "{vm}-disk{index}.{format}"
MANIFEST_VERSION = 2
MANIFEST_SUFFIX = ".xen2kvm.json"


class ImageError(ValueError):
    """An image cannot be named, created, converted or checked."""


def safe_vm_name(name):
    """The VM name as a file-name component: anything outside [A-Za-z0-9._-] becomes '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "vm"
    return cleaned[:100]


def image_paths(spec, dest, fmt, template=None):
    """Final paths of the images, one per disk of ``spec`` (same order)."""
    template = template or DEFAULT_NAME
    paths = []
    for index, disk in enumerate(spec["disks"]):
        try:
            name = template.format(vm=safe_vm_name(spec["name"]), index=index, userdevice=disk["userdevice"],
                                   format=fmt, uuid=spec.get("uuid", ""), vdi_uuid=disk.get("vdi_uuid", ""))
        except (KeyError, IndexError, ValueError) as exc:
            raise ImageError("invalid name template %r: %s (fields: vm, index, userdevice, format, uuid, vdi_uuid)"
                             % (template, exc))
        if not name or "/" in name or name in (".", ".."):
            raise ImageError("name template %r gives %r, which is not a plain file name" % (template, name))
        paths.append(os.path.join(dest, name))
    if len(set(paths)) != len(paths):
        raise ImageError("name template %r gives the same file name to several disks; use {index}" % template)
    return paths


def manifest_path(paths):
    """The manifest belongs to the set of images, so the same VM converted to raw and to qcow2
    (or under two name templates) keeps two independent manifests."""
    directory, first = os.path.split(paths[0])
    return os.path.join(directory, ".%s%s" % (first, MANIFEST_SUFFIX))


def temp_path_for(final_path, suffix=""):
    """A hidden name beside ``final_path`` that says which process owns it (see _interrupt)."""
    directory, name = os.path.split(final_path)
    return os.path.join(directory, ".%s%s%s" % (name, temp_mark(), suffix))


def create_sparse(path, size):
    """A new file of ``size`` bytes with no data blocks; refuses to reuse an existing name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def make_directory_durably(directory):
    """``mkdir -p`` whose new entries survive a crash: each new directory's parent is synced."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o755)
        except FileExistsError:
            continue
        fsync_path(os.path.dirname(new))


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def qemu_img():
    path = shutil.which("qemu-img")
    if not path:
        raise ImageError("qemu-img is required for qcow2 output (Debian: qemu-utils)")
    return path


def convert_raw_to_qcow2(raw_path, qcow2_path):
    """qemu-img skips the raw file's holes (SEEK_DATA), so this costs the data, not the size."""
    result = subprocess.run([qemu_img(), "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "preallocation=off",
                             raw_path, qcow2_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        remove_quietly(qcow2_path)
        raise ImageError("qemu-img convert to qcow2 failed for %s: %s"
                         % (qcow2_path, result.stderr.decode("utf-8", "replace").strip()))
    os.chmod(qcow2_path, 0o600)
    fsync_path(qcow2_path)


def check_qcow2(path):
    """Run ``qemu-img check`` (JSON output) and fail on any corruption or leak."""
    result = subprocess.run([qemu_img(), "check", "-f", "qcow2", "--output=json", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    try:
        report = json.loads(result.stdout.decode("utf-8") or "{}")
    except ValueError:
        report = {}
    problems = {key: report.get(key, 0) for key in ("corruptions", "leaks", "check-errors")}
    if result.returncode != 0 or any(problems.values()):
        raise ImageError("qemu-img check found problems in %s: %s %s"
                         % (path, problems, result.stderr.decode("utf-8", "replace").strip()))
    return report


def image_fingerprint(path):
    """What tells "the image as we left it" from one changed since: the data (mtime, size) and
    the file (inode: a repartition or a copy replaces it).  Not the ctime: the rename into
    place and libvirt's chown when the VM starts change it without touching the data."""
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


def image_state(recorded):
    """``missing``, ``unchanged`` or ``modified`` (fixed up, booted, truncated, replaced) since
    the conversion that recorded ``recorded`` (an entry of the manifest's ``images``)."""
    try:
        now = image_fingerprint(recorded["path"])
    except OSError:
        return "missing"
    same = all(now[key] == recorded.get(key) for key in ("size", "inode", "mtime_ns"))
    return "unchanged" if same else "modified"


def read_manifest(path):
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return None
    if not isinstance(manifest.get("images"), list) or not isinstance(manifest.get("vm"), dict):
        return None
    manifest["file"] = path
    return manifest


def manifests_beside(directory):
    """Every manifest in ``directory``: who made which image files there."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith(".") and name.endswith(MANIFEST_SUFFIX):
            manifest = read_manifest(os.path.join(directory, name))
            if manifest is not None:
                found.append(manifest)
    return found


def recorded_paths(manifest):
    return [item.get("path") for item in (manifest or {}).get("images", [])]


def recorded_states(manifest, paths):
    """``image_state`` of each image ``manifest`` records, when it records exactly ``paths`` and
    none of them is missing; else None (the images are not, or no longer, that conversion's)."""
    if recorded_paths(manifest) != list(paths):
        return None
    states = [image_state(item) for item in manifest["images"]]
    return None if "missing" in states else states


def write_manifest(path, ova_sha256, fmt, source, spec, disks, checksums):
    """Record what the images at the paths of ``disks`` were made from.  ``checksums``:
    ``{"requested": verify_checksums, "present": the XVA had checksum members,
    "verified": every chunk's checksum was checked}``."""
    payload = {
        "version": MANIFEST_VERSION,
        "ova_sha256": ova_sha256,
        "format": fmt,
        "source": source,
        "vm": {"name": spec["name"], "uuid": spec.get("uuid", ""),
               "date": spec.get("source", {}).get("date", "")},
        "checksums": checksums,
        "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": spec,
        "disks": disks,
        "images": [image_fingerprint(disk["path"]) for disk in disks],
    }
    write_json_atomically(path, payload)
