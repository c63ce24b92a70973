# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach disk images (or byte ranges of them) to loop devices, find and detach them.

Why ioctls instead of losetup: the kernel interface is tiny and stable, needs no output
parsing, and lets us retry the race between "find a free device" and "configure it" the way
losetup does. What is attached is read back from /sys/block/loopN/loop/*, which the kernel
keeps for exactly this purpose.

Why byte ranges: the hosts we run on do not create /dev/loopNpM partition nodes (no partition
scanning, no device-mapper), so each partition gets its own loop device with offset+sizelimit.
"""

import contextlib
import errno
import fcntl
import glob
import os
import stat
import struct
import time
from dataclasses import asdict, dataclass
from typing import List

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import (
    GuestError,
)

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_NAME_SIZE = 64

# struct loop_info64: 5 x u64, 4 x u32, file name, crypt name, key, 2 x u64 init.
_LOOP_INFO64 = struct.Struct("<QQQQQIIII64s64s32sQQ")
# struct loop_config: fd, block_size, loop_info64, 8 reserved u64.
_LOOP_CONFIG = struct.Struct("<II%ds64x" % _LOOP_INFO64.size)

SYS_BLOCK = "/sys/block"
LOOP_CONTROL = "/dev/loop-control"

# Another process may grab the device LOOP_CTL_GET_FREE just gave us; losetup retries too.
ATTACH_ATTEMPTS = 16
# devtmpfs creates /dev/loopN for a new device asynchronously.
DEVICE_NODE_WAIT = 2.0


class LoopError(GuestError):
    """Attaching or detaching a loop device failed."""


@dataclass
class LoopDevice:
    """One attached loop device and what it maps.

    Used as a context manager it detaches itself on exit, whatever happened inside.
    """

    device: str
    backing_file: str
    offset: int = 0
    sizelimit: int = 0  # 0: up to the end of the backing file
    read_only: bool = False

    def detach(self):
        """Detach if the device still maps our file. Returns False when the kernel deferred it."""
        return detach(self.device, expect_backing=self.backing_file, expect_offset=self.offset)

    def as_dict(self):
        return asdict(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.detach()
        return False


# --------------------------------------------------------------------------- sysfs


def _read_sys(path, default=""):
    try:
        with open(path) as fobj:
            return fobj.read().strip()
    except OSError:
        return default


def _loop_sysfs_dirs():
    return sorted(glob.glob(os.path.join(SYS_BLOCK, "loop[0-9]*")),
                  key=lambda p: int(os.path.basename(p)[4:]))


def io_counters(device):
    """The device's I/O counters (/sys/block/<dev>/stat); None when the device is gone."""
    text = _read_sys(os.path.join(SYS_BLOCK, os.path.basename(device), "stat"), None)
    return None if text is None else text.split()


def loop_status(device):
    """What ``device`` (/dev/loopN or loopN) maps now, from sysfs; None when unattached."""
    name = os.path.basename(device)
    base = os.path.join(SYS_BLOCK, name, "loop")
    backing = _read_sys(os.path.join(base, "backing_file"), None)
    if backing is None:
        return None
    deleted = backing.endswith(" (deleted)")
    if deleted:
        backing = backing[: -len(" (deleted)")]
    return {
        "device": "/dev/" + name,
        "backing_file": backing,
        "backing_deleted": deleted,
        "offset": int(_read_sys(os.path.join(base, "offset"), "0") or 0),
        "sizelimit": int(_read_sys(os.path.join(base, "sizelimit"), "0") or 0),
        "read_only": _read_sys(os.path.join(SYS_BLOCK, name, "ro"), "0") == "1",
        "autoclear": _read_sys(os.path.join(base, "autoclear"), "0") == "1",
    }


def attached_loops():
    """Every attached loop device on the host, as loop_status() dicts."""
    result = []
    for sysdir in _loop_sysfs_dirs():
        status = loop_status(os.path.basename(sysdir))
        if status is not None:
            result.append(status)
    return result


def _same_file(path_a, path_b):
    if os.path.realpath(path_a) == os.path.realpath(path_b):
        return True
    # Different spellings (bind mounts, symlinked directories) of the same inode.
    try:
        return os.path.samefile(path_a, path_b)
    except OSError:
        return False


def loops_for_file(path):
    """Loop devices currently backed by ``path`` (any offset), as loop_status() dicts."""
    return [status for status in attached_loops()
            if not status["backing_deleted"] and _same_file(status["backing_file"], path)]


# --------------------------------------------------------------------------- attach/detach


def _loop_device_node(number):
    """Path of /dev/loopN, creating the node if devtmpfs has not (containers, static /dev)."""
    node = "/dev/loop%d" % number
    deadline = time.monotonic() + DEVICE_NODE_WAIT
    while not os.path.exists(node):
        if time.monotonic() > deadline:
            dev = _read_sys(os.path.join(SYS_BLOCK, "loop%d" % number, "dev"))
            if ":" not in dev:
                raise LoopError("loop device %s exists in the kernel but not in sysfs" % node)
            major, minor = (int(x) for x in dev.split(":"))
            os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
            break
        time.sleep(0.05)
    return node


def _get_free_loop_number():
    try:
        ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise LoopError("cannot open %s (is the loop module loaded, are we root?): %s"
                        % (LOOP_CONTROL, exc.strerror))
    try:
        # Creates a new device when all are busy (if max_loop allows).
        return fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    except OSError as exc:
        raise LoopError("no free loop device: %s" % exc.strerror)
    finally:
        os.close(ctl)


def _loop_info64(backing_path, offset, sizelimit, flags):
    name = os.fsencode(backing_path)[: LO_NAME_SIZE - 1]
    return _LOOP_INFO64.pack(0, 0, 0, offset, sizelimit, 0, 0, 0, flags, name, b"", b"", 0, 0)


def _configure(loop_fd, backing_fd, backing_path, offset, sizelimit, read_only):
    flags = LO_FLAGS_READ_ONLY if read_only else 0
    info = _loop_info64(backing_path, offset, sizelimit, flags)
    try:
        # LOOP_CONFIGURE (Linux 5.8+) sets file, offset and size atomically: no window in
        # which the device maps the whole file.
        fcntl.ioctl(loop_fd, LOOP_CONFIGURE, _LOOP_CONFIG.pack(backing_fd, 0, info))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(loop_fd, LOOP_SET_FD, backing_fd)
    try:
        fcntl.ioctl(loop_fd, LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(loop_fd, LOOP_CLR_FD, 0)
        raise


def attach(path, offset=0, sizelimit=0, read_only=False):
    """Attach ``path`` (bytes ``offset`` .. ``offset+sizelimit``) to a free loop device.

    Returns a LoopDevice. ``sizelimit`` 0 means up to the end of the file.
    """
    if offset < 0 or sizelimit < 0 or offset % 512 or sizelimit % 512:
        raise LoopError("%s: offset %d / size %d must be non-negative multiples of 512"
                        % (path, offset, sizelimit))
    try:
        backing_fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        raise LoopError("cannot open %s %s: %s"
                        % (path, "read-only" if read_only else "read-write", exc.strerror))
    try:
        last_error = None
        for _attempt in range(ATTACH_ATTEMPTS):
            number = _get_free_loop_number()
            node = _loop_device_node(number)
            try:
                loop_fd = os.open(node, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            except OSError as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            try:
                _configure(loop_fd, backing_fd, os.path.abspath(path), offset, sizelimit,
                           read_only)
            except OSError as exc:
                last_error = exc
                if exc.errno == errno.EBUSY:
                    continue  # lost the race for this device; ask for another one
                raise LoopError("cannot attach %s to %s: %s" % (path, node, exc.strerror))
            finally:
                os.close(loop_fd)
            return LoopDevice(device=node, backing_file=os.path.abspath(path), offset=offset,
                              sizelimit=sizelimit, read_only=read_only)
        raise LoopError("cannot attach %s to a loop device after %d attempts: %s"
                        % (path, ATTACH_ATTEMPTS, last_error))
    finally:
        os.close(backing_fd)


def detach(device, expect_backing=None, expect_offset=None):
    """Detach ``device``. Returns True when it is free now, False when the kernel deferred it.

    With ``expect_backing``/``expect_offset`` it first checks the device still maps that
    file, so we never detach a device someone else attached after ours went away.
    A busy device (still mounted, e.g. after a lazy umount) is switched to autoclear by the
    kernel and frees itself when its last user closes it: that is the deferred case.
    """
    status = loop_status(device)
    if status is None:
        return True
    if expect_backing is not None and not _same_file(status["backing_file"], expect_backing):
        return True  # ours is gone already; this is someone else's now
    if expect_offset is not None and status["offset"] != expect_offset:
        return True
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LoopError("cannot open %s to detach it: %s" % (device, exc.strerror))
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return True  # detached by someone else in the meantime
        raise LoopError("cannot detach %s: %s" % (device, exc.strerror))
    finally:
        os.close(fd)
    # Teardown completes when our fd above is closed; give the kernel a moment.
    deadline = time.monotonic() + 1.0
    while loop_status(device) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def attached(path, offset=0, sizelimit=0, read_only=False):
    """``with attached(img) as loop:`` -- the loop device is detached on any exit."""
    loop = attach(path, offset=offset, sizelimit=sizelimit, read_only=read_only)
    try:
        yield loop
    finally:
        loop.detach()


def detach_all_for_file(path):
    """Detach every loop device backed by ``path``; returns the devices that were deferred."""
    deferred: List[str] = []
    for status in loops_for_file(path):
        if not detach(status["device"], expect_backing=path, expect_offset=status["offset"]):
            deferred.append(status["device"])
    return deferred
