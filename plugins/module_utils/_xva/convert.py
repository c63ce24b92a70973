# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XVA → disk images: the steps of ``xva_info`` and ``xva_convert`` without the Ansible parts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import images
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import describe_users, processes_using
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


def _disk_result(disk, target, path, fmt, extra_seconds=0.0):
    seconds = max((target.finished or time.time()) - (target.started or time.time()), 0.0) + extra_seconds
    return {
        "ref": disk["ref"],
        "userdevice": disk["userdevice"],
        "path": path,
        "format": fmt,
        "virtual_size": disk["virtual_size"],
        "allocated_bytes": images.allocated_bytes(path),
        "chunks": target.chunks,
        "checksums_verified": target.verified > 0 and target.unverified == 0,
        "seconds": round(seconds, 3),
        "mb_per_s": round(disk["virtual_size"] / (1 << 20) / seconds, 1) if seconds > 0 else None,
    }


def _planned(spec, paths, fmt):
    return [{"ref": disk["ref"], "userdevice": disk["userdevice"], "path": path, "format": fmt,
             "virtual_size": disk["virtual_size"]} for disk, path in zip(spec["disks"], paths)]


class Conversion:
    """One conversion of an XVA into ``dest``; ``run()`` returns the module result."""

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

    def run(self):
        with _OpenXva(self.src, self.open_url_func, self.url_options) as xva:
            spec = xva.spec
            if not spec["disks"]:
                raise XvaError("the VM %r in this XVA has no disks to convert" % spec["name"])
            paths = images.image_paths(spec, self.dest, self.fmt, self.name_template)
            manifest_file = images.manifest_path(paths)
            manifest = images.read_manifest(manifest_file)
            result = {"spec": spec, "compression": xva.compression or "none", "changed": False}
            if not self.force and images.manifest_matches(manifest, xva.ova_sha256, self.fmt, paths):
                result["disks"] = manifest["disks"]
                return result
            self._refuse_foreign_files(paths, manifest)
            result["changed"] = True
            if self.check_mode:
                result["disks"] = _planned(spec, paths, self.fmt)
                return result
            if not os.path.isdir(self.dest):
                os.makedirs(self.dest, 0o755)
            try:
                result["disks"] = self._convert(xva, paths)
                images.write_manifest(manifest_file, xva.ova_sha256, self.fmt, describe_source(self.src),
                                      spec, result["disks"])
            finally:
                self._discard_temps()
            return result

    def _refuse_foreign_files(self, paths, manifest):
        """Never overwrite a file we did not make for this VM unless told to, nor, even then,
        the disk of a VM that is running."""
        ours = {item.get("path") for item in (manifest or {}).get("images", [])}
        for path in paths:
            users = processes_using(path) if os.path.lexists(path) else []
            if users:
                raise XvaError("%s is in use by %s; shut that VM down before converting over its disk"
                               % (path, describe_users(users)))
            if os.path.lexists(path) and not self.force and path not in ours:
                raise XvaError("%s already exists and was not made from this XVA; set force=true to replace it"
                               % path)

    def _convert(self, xva, paths):
        targets = {}
        order = []
        for disk, path in zip(xva.spec["disks"], paths):
            temp = images.temp_path_for(path, ".raw")
            fd = images.create_sparse(temp, disk["virtual_size"])
            self._temps.append(temp)
            self._fds.append(fd)
            targets[disk["ref"]] = DiskTarget(disk, fd, path)
            order.append((disk, targets[disk["ref"]], temp, path))
        total = sum(disk["virtual_size"] for disk in xva.spec["disks"])

        def snapshot():
            done = sum(t.written for t in targets.values())
            return done, total, {"stream_bytes_read": xva.raw.bytes_read, "stream_bytes_total": xva.raw.total,
                                 "vm": xva.spec["name"]}

        with ProgressReporter(self.status_file, snapshot):
            reader = XvaReader(xva.tar, targets, xva.vdi_ids, self.verify, hash_in_reader=xva.compression is None)
            translate_stream_errors(reader.run)
            for fd in self._fds:
                os.fsync(fd)
            self._close_fds()
            finals = [self._finish_image(disk, target, temp, path) for disk, target, temp, path in order]
        for (_disk, _target, temp, path), (final_temp, _result) in zip(order, finals):
            os.rename(final_temp, path)
            self._temps.remove(final_temp)
        images.fsync_directory(self.dest)
        return [result for _temp, result in finals]

    def _finish_image(self, disk, target, raw_temp, path):
        """Turn the raw temp file into the final format (still under a temp name)."""
        if self.fmt == "raw":
            result = _disk_result(disk, target, raw_temp, "raw")
            result["path"] = path
            return raw_temp, result
        started = time.time()
        qcow2_temp = images.temp_path_for(path, ".qcow2")
        self._temps.append(qcow2_temp)
        images.convert_raw_to_qcow2(raw_temp, qcow2_temp)
        images.check_qcow2(qcow2_temp)
        images.remove_quietly(raw_temp)
        self._temps.remove(raw_temp)
        result = _disk_result(disk, target, qcow2_temp, "qcow2", time.time() - started)
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
