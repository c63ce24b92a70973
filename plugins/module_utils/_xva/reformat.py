# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw images of a conversion → qcow2 images, recorded as if xva_convert had made them.

guest_fixup works on raw images only, so a VM wanted in qcow2 is converted to raw, fixed up and
then turned into qcow2 here. The qcow2 set gets the manifest xva_convert would have written for
``format: qcow2`` (same export, source, spec and checksum record; the fingerprints of the qcow2
files), so a later ``xva_convert`` with ``format: qcow2`` from the same export answers "done"
(``changed=false``) and never replaces them without ``force``.

The raw images are removed only after their qcow2 copies are complete: each copy passed
``qemu-img check``, holds the same data (``qemu-img compare``), was renamed into place, and the
manifest recording it is written. Until then nothing is removed, and a failure leaves the raw
images as they were and no qcow2 temporary file behind.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import image_holders
from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import sweep_dead_temps
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import images


class ReformatError(ValueError):
    """The images cannot be turned into the other format (a clear reason for fail_json)."""


def source_manifest(paths):
    """xva_convert's manifest of the raw images ``paths`` (all of them, in this order)."""
    manifest = images.read_manifest(images.manifest_path(paths))
    if manifest is None or images.recorded_paths(manifest) != list(paths):
        raise ReformatError("no xva_convert manifest (%s) records the images %s; only images made by "
                            "xva_convert are turned into qcow2" % (images.manifest_path(paths), ", ".join(paths)))
    if manifest.get("format") != "raw":
        raise ReformatError("%s are %s images, not raw" % (", ".join(paths), manifest.get("format")))
    return manifest


def target_paths(manifest, paths, name_template):
    """Where xva_convert would put this export's qcow2 images (same directory and template)."""
    directory = os.path.dirname(paths[0])
    if images.image_paths(manifest["spec"], directory, "raw", name_template) != list(paths):
        raise ReformatError("the name template %r does not give the images' names (%s); give the template "
                            "the conversion used" % (name_template or images.DEFAULT_NAME, ", ".join(paths)))
    targets = images.image_paths(manifest["spec"], directory, "qcow2", name_template)
    clashes = [target for target in targets if target in paths]
    if clashes:
        raise ReformatError("the name template %r gives the qcow2 images the raw images' names (%s); it needs "
                            "the {format} field" % (name_template or images.DEFAULT_NAME, ", ".join(clashes)))
    return targets


def already_done(manifest, targets):
    """The recorded qcow2 disks when this export's qcow2 images are in place, else None."""
    done = images.read_manifest(images.manifest_path(targets))
    if done is None or done.get("ova_sha256") != manifest.get("ova_sha256") or done.get("format") != "qcow2":
        return None
    states = images.recorded_states(done, targets)
    if states is None:
        return None
    return [dict(disk, modified_since_conversion=state == "modified") for disk, state in zip(done["disks"], states)]


def refuse_unsafe(paths, targets, force):
    """Never read a disk something else is writing; never replace an unknown file without force."""
    for path in paths:
        if not os.path.isfile(path):
            raise ReformatError("%s does not exist (or is not a file)" % path)
        holders = image_holders(path)
        if holders:
            raise ReformatError("%s is in use by %s; shut that VM down (or detach it) first" % (path, "; ".join(holders)))
    existing = [target for target in targets if os.path.lexists(target)]
    if existing and not force:
        raise ReformatError("refusing to replace existing files, set force: true to replace them: %s (no manifest "
                            "makes them a complete set of this export's qcow2 images)" % ", ".join(existing))
    for target in existing:
        holders = image_holders(target)
        if holders:
            raise ReformatError("%s is in use by %s; even force never replaces a disk in use" % (target, "; ".join(holders)))


def _qemu_img(argv, what):
    result = subprocess.run([images.qemu_img()] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise ReformatError("%s failed: %s" % (what, (result.stderr or result.stdout).decode("utf-8", "replace").strip()))


def _make_qcow2(raw, temp):
    try:
        images.convert_raw_to_qcow2(raw, temp)
        images.check_qcow2(temp)
    except images.ImageError as exc:
        raise ReformatError(str(exc))
    _qemu_img(["compare", "-q", "-f", "raw", "-F", "qcow2", raw, temp],
              "qemu-img compare of %s with its qcow2 copy" % raw)


def done_earlier(paths, name_template):
    """The qcow2 disks when an earlier run already turned exactly these raw images into qcow2
    (their manifest is gone then; the qcow2 set's names them through its spec), else None."""
    directory = os.path.dirname(paths[0])
    for manifest in images.manifests_beside(directory):
        if manifest.get("format") != "qcow2" or not isinstance(manifest.get("spec"), dict):
            continue
        try:
            raw = images.image_paths(manifest["spec"], directory, "raw", name_template)
        except (images.ImageError, KeyError, TypeError):
            continue
        if raw == list(paths) and not any(os.path.lexists(path) for path in paths):
            return already_done(manifest, images.recorded_paths(manifest))
    return None


def fixup_marker(boot_disk):
    """guest_fixup's "fixed earlier" marker beside the raw boot disk (_guest/fixup.py); it names
    the raw images by inode, so it means nothing once they are gone."""
    directory, name = os.path.split(boot_disk)
    return os.path.join(directory, ".%s.xen2kvm-fixup.json" % name)


def reformat(paths, name_template=None, force=False, check_mode=False):
    """Turn the raw images ``paths`` (one conversion's, in disk order) into qcow2. Returns the
    module result: ``changed``, ``disks`` (as xva_convert returns them) and ``removed``."""
    paths = [os.path.abspath(path) for path in paths]
    if not paths:
        raise ReformatError("no images given")
    if images.read_manifest(images.manifest_path(paths)) is None:
        done = done_earlier(paths, name_template)
        if done is not None:
            return {"changed": False, "disks": done, "removed": []}
    manifest = source_manifest(paths)
    targets = target_paths(manifest, paths, name_template)
    done = already_done(manifest, targets)
    if done is not None:
        return {"changed": False, "disks": done, "removed": []}
    refuse_unsafe(paths, targets, force)
    planned = [dict(disk, path=target, format="qcow2") for disk, target in zip(manifest["disks"], targets)]
    if check_mode:
        return {"changed": True, "disks": planned, "removed": paths}
    directory = os.path.dirname(targets[0])
    sweep_dead_temps(directory)
    temps = []
    try:
        for raw, target in zip(paths, targets):
            temps.append(images.temp_path_for(target, ".qcow2"))
            _make_qcow2(raw, temps[-1])
        for temp, target in zip(temps, targets):
            os.rename(temp, target)
        temps = []
    finally:
        for temp in temps:
            images.remove_quietly(temp)
    fsync_path(directory)
    disks = [dict(disk, allocated_bytes=images.allocated_bytes(disk["path"]), modified_since_conversion=False)
             for disk in planned]
    images.write_manifest(images.manifest_path(targets), manifest["ova_sha256"], "qcow2", manifest.get("source"),
                          manifest["spec"], disks, manifest.get("checksums") or {})
    # The qcow2 copies are complete and recorded: the raw images are no longer the only copy.
    for raw in paths:
        images.remove_quietly(raw)
    images.remove_quietly(manifest["file"])
    images.remove_quietly(fixup_marker(paths[0]))
    fsync_path(directory)
    return {"changed": True, "disks": disks, "removed": paths}
