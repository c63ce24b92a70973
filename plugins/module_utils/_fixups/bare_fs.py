# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "bare_fs": a disk that is one bare filesystem becomes a partitioned disk.

PV guests are often given their root filesystem as a whole disk (``xvda1`` with no partition
table); pygrub reads it, but a BIOS boot loader needs an MBR and room for its core image.
The image is rebuilt as: MBR with one bootable Linux partition starting at 1 MiB, the
filesystem copied there (holes stay holes), written to a temporary file and renamed over the
original only when complete.  The filesystem, its UUID and its size do not change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import struct

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import read_partition_table
from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import SignalGuard, temp_mark
from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path

ALIGN = 1 << 20
SECTOR = 512
MBR_LIMIT = (1 << 32) * SECTOR
COPY_STEP = 8 << 20


class BareFsError(RuntimeError):
    pass


def bare_root_filesystem(path):
    """The filesystem of a disk without a partition table, or None (partitioned, swap)."""
    layout = read_partition_table(path)
    if layout.scheme != "none" or layout.bare_filesystem is None:
        return None
    if layout.bare_filesystem.type in ("swap", None, ""):
        return None
    return layout.bare_filesystem


def mbr_for(fs_bytes, disk_signature):
    """A classic MBR: no boot code (grub-install writes it), one bootable type-83 partition."""
    sectors = -(-fs_bytes // SECTOR)
    start = ALIGN // SECTOR
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, sectors)
    return bytes(440) + disk_signature + b"\0\0" + entry + bytes(48) + b"\x55\xaa"


def _copy_sparse(src_fd, dst_fd, length, dst_offset):
    """Copy the data extents of src into dst at dst_offset; holes are not written."""
    position = 0
    while position < length:
        try:
            data_at = os.lseek(src_fd, position, os.SEEK_DATA)
        except OSError:
            return  # ENXIO: only a hole is left
        if data_at >= length:
            return
        hole_at = min(os.lseek(src_fd, data_at, os.SEEK_HOLE), length)
        offset = data_at
        while offset < hole_at:
            chunk = os.pread(src_fd, min(COPY_STEP, hole_at - offset), offset)
            if not chunk:
                raise BareFsError("short read at %d" % offset)
            if chunk.strip(b"\0"):
                os.pwrite(dst_fd, chunk, dst_offset + offset)
            offset += len(chunk)
        position = hole_at


def repartition(path, check_mode=False):
    """Rebuild ``path`` with a partition table; returns what was done, or None when the disk
    needs nothing."""
    fs = bare_root_filesystem(path)
    if fs is None:
        return None
    size = os.path.getsize(path)
    plan = {"path": path, "filesystem": fs.type, "uuid": fs.uuid, "partition_start": ALIGN,
            "new_size": ALIGN + -(-size // ALIGN) * ALIGN}
    if check_mode:
        return plan
    if plan["new_size"] > MBR_LIMIT:
        raise BareFsError("%s is larger than an MBR partition table can address (2 TiB)" % path)
    done = []
    with SignalGuard(_interrupted(path, done)) as guard:
        _rebuild(path, size, plan, guard)
        done.append(True)
    return plan


def _interrupted(path, done):
    def error(signal_name):
        if done:
            return BareFsError("interrupted by %s after %s was repartitioned" % (signal_name, path))
        return BareFsError("interrupted by %s; %s was left as it was" % (signal_name, path))
    return error


def _rebuild(path, size, plan, guard):
    """Copy into a temporary file beside ``path`` (its name says whose it is, so a killed run's
    leftover is swept by the next conversion) and rename it over ``path`` when complete."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, "%s%s" % (name, temp_mark()))
    src = os.open(path, os.O_RDONLY)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(dst, plan["new_size"])
            os.pwrite(dst, mbr_for(size, os.urandom(4)), 0)
            _copy_sparse(src, dst, size, ALIGN)
            os.fsync(dst)
        finally:
            os.close(dst)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        with guard.deferred(raise_after=False):  # acted upon when the guard ends
            os.rename(tmp, path)
            fsync_path(directory or ".")
    except BaseException:
        with guard.deferred(raise_after=False):
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    finally:
        os.close(src)
