# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XVA → disk images: the steps of ``xva_info`` and ``xva_convert`` without the Ansible parts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import images, profile
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import describe_users, processes_using
from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import SignalGuard, sweep_dead_temps
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import ProgressReporter
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.tar import TarStream
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import (
    DiskTarget, XvaError, XvaReader, read_ova_xml, translate_stream_errors)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import (
    describe_source, open_xva_stream)


class _OpenXva:
    """An XVA opened up to (and including) its ova.xml; always closed by ``with``."""

    def __init__(self, src, open_url_func=None, url_options=None):
        src = os.fspath(src)
        self.src = src
        self.raw, self.stream, self.compression = translate_stream_errors(
            open_xva_stream, src, open_url_func, **(url_options or {}))
        try:
            self.tar = TarStream(self.stream)
            self.spec, self.vdi_ids, self.ova_xml = translate_stream_errors(read_ova_xml, self.tar)
        except BaseException:
            self.raw.close()
            raise

    @property
    def ova_sha256(self):
        return hashlib.sha256(self.ova_xml).hexdigest()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        try:
            self.stream.close()
        finally:
            self.raw.close()
        return False


def xva_info(src, open_url_func=None, url_options=None):
    """The spec of the VM in ``src``; reads only up to ova.xml, so a 500 GB XVA answers at once."""
    with _OpenXva(src, open_url_func, url_options) as xva:
        return {"spec": xva.spec, "compression": xva.compression or "none"}


def _disk_result(disk, target, path, fmt, verify, extra_seconds=0.0):
    seconds = max((target.finished or time.time()) - (target.started or time.time()), 0.0) + extra_seconds
    return {
        "ref": disk["ref"],
        "userdevice": disk["userdevice"],
        "path": path,
        "format": fmt,
        "virtual_size": disk["virtual_size"],
        "allocated_bytes": images.allocated_bytes(path),
        "chunks": target.chunks,
        # Present checksums prove nothing unless they were compared.
        "checksums_verified": bool(verify) and target.verified > 0 and target.unverified == 0,
        "modified_since_conversion": False,
        "seconds": round(seconds, 3),
        "mb_per_s": round(disk["virtual_size"] / (1 << 20) / seconds, 1) if seconds > 0 else None,
    }


def _planned(spec, paths, fmt):
    return [{"ref": disk["ref"], "userdevice": disk["userdevice"], "path": path, "format": fmt,
             "virtual_size": disk["virtual_size"]} for disk, path in zip(spec["disks"], paths)]


def _describe_export(name, uuid, date, ova_sha256, src):
    details = ["uuid %s" % (uuid or "unknown")]
    if date:
        details.append("dated %s" % date)
    details.append("ova.xml sha256 %s" % ova_sha256[:12])
    return "VM %r (%s) from %s" % (name, ", ".join(details), src or "an unknown source")


def _describe_manifest(manifest):
    vm = manifest.get("vm", {})
    return "%s, converted %s (manifest %s)" % (
        _describe_export(vm.get("name"), vm.get("uuid"), vm.get("date"), manifest.get("ova_sha256") or "?",
                         (manifest.get("source") or {}).get("src")),
        manifest.get("converted", "at an unknown time"), manifest.get("file"))


def _recorded_entry(manifest, path):
    for item in manifest.get("images", []):
        if item.get("path") == path:
            return item
    return None


class ConversionInterrupted(XvaError):
    """SIGTERM, SIGINT or SIGHUP stopped the conversion."""


class Conversion:
    """One conversion of an XVA into ``dest``; ``run()`` returns the module result.

    What may be replaced (docs/xva_convert.md): the images of the same export again (same
    ova.xml) are left alone (``changed=false``) even once fixed up or booted; anything else at
    the image names (another export of this VM, another VM's images, unknown files, or images
    changed since their conversion) only with ``force``; a disk in use never.
    """

    def __init__(self, src, dest, fmt="raw", name_template=None, verify_checksums=True, force=False,
                 status_file=None, check_mode=False, open_url_func=None, url_options=None):
        if fmt not in images.FORMATS:
            raise XvaError("format must be one of %s, not %r" % (", ".join(images.FORMATS), fmt))
        self.src = os.fspath(src)
        self.dest = os.path.abspath(dest)  # also what a running qemu's command line will name
        self.fmt = fmt
        self.name_template = name_template
        self.verify = verify_checksums
        self.force = force
        self.status_file = status_file
        self.check_mode = check_mode
        self.open_url_func = open_url_func
        self.url_options = url_options
        self._temps = []
        self._fds = []
        self._committed = False
        self._others = None

    def run(self):
        try:
            # From the start: opening the source already starts processes (ssh, a decoder) and
            # threads that a signal must end through the ``with`` blocks, not by killing us.
            with SignalGuard(self._interruption), profile.timed("conversion"):
                return self._run()
        finally:
            profile.save()  # make bench PROFILE=1: where the time went (nothing when profiling is off)

    def _run(self):
        with _OpenXva(self.src, self.open_url_func, self.url_options) as xva:
            spec = xva.spec
            if not spec["disks"]:
                raise XvaError("the VM %r in this XVA has no disks to convert" % spec["name"])
            paths = images.image_paths(spec, self.dest, self.fmt, self.name_template)
            manifest = images.read_manifest(images.manifest_path(paths))
            result = {"spec": spec, "compression": xva.compression or "none", "changed": False}
            if not self.check_mode:
                self._sweep_leftovers()
            done = self._already_done(xva, paths, manifest)
            if done is not None:
                result["disks"] = done
                return result
            self._refuse_disks_in_use(paths)
            self._refuse_replacing(xva, paths, manifest)
            result["changed"] = True
            if self.check_mode:
                result["disks"] = _planned(spec, paths, self.fmt)
                return result
            images.make_directory_durably(self.dest)
            result["disks"] = self._convert_guarded(xva, paths)
            return result

    def _sweep_leftovers(self):
        """Temporary files of killed runs: images beside the images, JSON beside the status file."""
        sweep_dead_temps(self.dest)
        if self.status_file:
            sweep_dead_temps(os.path.dirname(os.path.abspath(self.status_file)))

    def _same_export(self, manifest, xva):
        return manifest is not None and manifest.get("ova_sha256") == xva.ova_sha256

    def _already_done(self, xva, paths, manifest):
        """The recorded disks when this export was converted to these images before and
        nothing asks for it again; None when a conversion is due (which may still be refused)."""
        if not self._same_export(manifest, xva) or manifest.get("format") != self.fmt:
            return None
        states = images.recorded_states(manifest, paths)
        if states is None:
            return None
        if any(state == "modified" and self._owner(item["path"], manifest) is not manifest
               for item, state in zip(manifest["images"], states)):
            return None  # another conversion (forced) took that name over since
        if self._verification_pending(manifest):
            self._refuse_verifying_modified(manifest, states)
            return None
        if self.force:
            return None
        return [dict(disk, modified_since_conversion=state == "modified")
                for disk, state in zip(manifest["disks"], states)]

    def _verification_pending(self, manifest):
        """Asked to verify, and the earlier conversion skipped checksums the XVA has."""
        checksums = manifest.get("checksums") or {}
        return bool(self.verify) and not checksums.get("requested") and bool(checksums.get("present"))

    def _refuse_verifying_modified(self, manifest, states):
        """Verifying means converting again; that must not undo fixups without ``force``."""
        modified = [item["path"] for item, state in zip(manifest["images"], states) if state == "modified"]
        if modified and not self.force:
            raise XvaError("%s were converted without checksum verification and have been changed since "
                           "(fixed up or booted?); verifying means converting again, which would replace them: "
                           "set force: true to do so, or verify_checksums: false to keep them unverified"
                           % ", ".join(modified))

    def _refuse_disks_in_use(self, paths):
        """Even ``force`` never converts over the disk of a running VM."""
        for path in paths:
            users = processes_using(path) if os.path.lexists(path) else []
            if users:
                raise XvaError("%s is in use by %s; shut that VM down before converting over its disk"
                               % (path, describe_users(users)))

    def _refuse_replacing(self, xva, paths, manifest):
        """Never replace what is not a still-untouched image of this very export, unless forced."""
        if self.force:
            return
        problems = []
        owned = {}  # manifest file -> (why, owner, [paths]): one description per owner
        for path in paths:
            if not os.path.lexists(path):
                continue
            owner = self._owner(path, manifest)
            if owner is None:
                problems.append("%s already exists and was not made from this XVA (no manifest beside it "
                                "records it)" % path)
                continue
            changed = images.image_state(_recorded_entry(owner, path)) == "modified"
            if self._same_export(owner, xva):
                if changed:
                    problems.append("%s was converted from this export and was changed since (fixed up or "
                                    "booted?)" % path)
                continue
            why = "a different export of the same VM" if owner["vm"].get("uuid") == xva.spec.get("uuid") \
                else "another VM"
            owned.setdefault(owner["file"], (why, owner, []))[2].append(
                path + (" (changed since its conversion)" if changed else ""))
        for why, owner, held in owned.values():
            single = len(held) == 1
            problems.append("%s %s the image%s of %s: %s" % (
                ", ".join(held), "holds" if single else "hold", "" if single else "s", why,
                _describe_manifest(owner)))
        if problems:
            raise XvaError("refusing to replace existing files, set force: true to replace them: %s; "
                           "this XVA is %s" % ("; ".join(problems), self._describe_this(xva)))

    def _owner(self, path, manifest):
        """The manifest ``path`` belongs to: among those recording it (this set's first, then the
        others in ``dest``), the one it is still unchanged for, else the first."""
        if self._others is None:
            self._others = [m for m in images.manifests_beside(self.dest)
                            if m["file"] != (manifest or {}).get("file")]
        candidates = [m for m in [manifest] + self._others if m and path in images.recorded_paths(m)]
        for candidate in candidates:
            if images.image_state(_recorded_entry(candidate, path)) == "unchanged":
                return candidate
        return candidates[0] if candidates else None

    def _describe_this(self, xva):
        spec = xva.spec
        return _describe_export(spec["name"], spec.get("uuid"), spec.get("source", {}).get("date"),
                                xva.ova_sha256, describe_source(self.src)["src"])

    def _interruption(self, signal_name):
        if self._committed:
            return ConversionInterrupted("interrupted by %s after the images were complete; they are in place"
                                         % signal_name)
        return ConversionInterrupted("interrupted by %s; the temporary files were removed and no image was "
                                     "replaced" % signal_name)

    def _convert_guarded(self, xva, paths):
        with SignalGuard(self._interruption) as guard:
            try:
                return self._convert(xva, paths, guard)
            except BaseException:
                with guard.deferred(raise_after=False):
                    self._discard_temps()
                raise

    def _create_targets(self, spec, paths, guard):
        order = []
        for disk, path in zip(spec["disks"], paths):
            temp = images.temp_path_for(path, ".raw")
            with guard.deferred():  # a temp file is created and listed for cleanup, or neither
                fd = images.create_sparse(temp, disk["virtual_size"])
                self._temps.append(temp)
                self._fds.append(fd)
            order.append((disk, DiskTarget(disk, fd, path), temp, path))
        return order

    def _convert(self, xva, paths, guard):
        order = self._create_targets(xva.spec, paths, guard)
        targets = {target.ref: target for _disk, target, _temp, _path in order}
        total = sum(disk["virtual_size"] for disk in xva.spec["disks"])

        def snapshot():
            written = sum(t.written for t in targets.values())
            extra = {"stream_bytes_read": xva.raw.bytes_read, "stream_bytes_total": xva.raw.total,
                     "disk_bytes_done": written, "disk_bytes_total": total, "vm": xva.spec["name"]}
            # The export leaves out the zero chunks, so where it is in the disks says little about
            # how much is left; its own size, when known (a file), does. XAPI's HTTP export has none.
            if xva.raw.total:
                return min(xva.raw.bytes_read, xva.raw.total), xva.raw.total, extra
            return written, total, extra

        with ProgressReporter(self.status_file, snapshot):
            # A raw file that becomes qcow2 is read back at once and deleted: only the qcow2 image
            # is synced (images.convert_raw_to_qcow2), so the raw one need not reach the disk.
            durable = self.fmt == "raw"
            reader = XvaReader(xva.tar, targets, xva.vdi_ids, self.verify, hash_in_reader=xva.compression is None,
                               durable=durable)
            translate_stream_errors(reader.run)
            with profile.timed("syncing"), profile.timed("final fsync"):  # the part nothing overlaps
                for fd in self._fds if durable else ():
                    os.fsync(fd)
            self._close_fds()
            finals = [self._finish_image(disk, target, temp, path, guard) for disk, target, temp, path in order]
            with guard.deferred():  # renaming half of the images into place is worse than finishing
                self._commit(xva, paths, finals, targets)
        return [result for _temp, result in finals]

    def _commit(self, xva, paths, finals, targets):
        """Images into place, then the manifest: a crash between leaves images no manifest
        vouches for, which a rerun refuses to replace rather than trusting them."""
        for final_temp, result in finals:
            os.rename(final_temp, result["path"])
            self._temps.remove(final_temp)
        fsync_path(self.dest)
        disks = [result for _temp, result in finals]
        checksums = {"requested": bool(self.verify),
                     "present": any(target.verified for target in targets.values()),
                     "verified": all(disk["checksums_verified"] for disk in disks)}
        images.write_manifest(images.manifest_path(paths), xva.ova_sha256, self.fmt, describe_source(self.src),
                              xva.spec, disks, checksums)
        self._committed = True

    def _finish_image(self, disk, target, raw_temp, path, guard):
        """Turn the raw temp file into the final format (still under a temp name)."""
        if self.fmt == "raw":
            result = _disk_result(disk, target, raw_temp, "raw", self.verify)
            result["path"] = path
            return raw_temp, result
        started = time.time()
        qcow2_temp = images.temp_path_for(path, ".qcow2")
        with guard.deferred():
            self._temps.append(qcow2_temp)
        images.convert_raw_to_qcow2(raw_temp, qcow2_temp)
        images.check_qcow2(qcow2_temp)
        images.remove_quietly(raw_temp)
        self._temps.remove(raw_temp)
        result = _disk_result(disk, target, qcow2_temp, "qcow2", self.verify, time.time() - started)
        result["path"] = path
        return qcow2_temp, result

    def _close_fds(self):
        while self._fds:
            os.close(self._fds.pop())

    def _discard_temps(self):
        self._close_fds()
        for temp in self._temps:
            images.remove_quietly(temp)
        self._temps = []


def convert_xva(src, dest, **options):
    return Conversion(src, dest, **options).run()
