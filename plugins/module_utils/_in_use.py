# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is using a disk image: a process holding it open, a qemu naming it, a loop device backed
by it and whatever is mounted from that loop device.

Converting onto, or mounting, the disk of a running VM corrupts it, so xva_convert and
guest_fixup ask this first; kvm_domain and kvm_boot_check ask it before they start a domain.  qemu started by libvirt names its disks inside option strings
(``-blockdev {"filename": "/x/../y.raw"}``), not always in canonical form, so each path-like
piece of its command line is compared by inode, not by spelling.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

_PATHISH = re.compile(r"/[^,\"'\s=]+")


def _same_file(candidate, target_stat):
    try:
        st = os.stat(candidate)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (target_stat.st_dev, target_stat.st_ino)


def _holds_open(proc, real):
    try:
        for fd in os.listdir(os.path.join(proc, "fd")):
            try:
                if os.readlink(os.path.join(proc, "fd", fd)) == real:
                    return True
            except OSError:
                continue
    except OSError:
        pass  # not ours to look at, or gone
    return False


def _names_it(proc, target_stat):
    try:
        with open(os.path.join(proc, "cmdline"), "rb") as handle:
            args = handle.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False
    return any(_same_file(piece, target_stat) for arg in args for piece in _PATHISH.findall(arg))


def processes_using(path):
    """(pid, command name, how) of the processes holding ``path`` open or naming it as qemu."""
    real = os.path.realpath(path)
    try:
        target_stat = os.stat(real)
    except OSError:
        return []
    me = os.getpid()
    users = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        proc = os.path.join("/proc", entry)
        try:
            with open(os.path.join(proc, "comm")) as handle:
                comm = handle.read().strip()
        except OSError:
            continue  # exited meanwhile
        if _holds_open(proc, real):
            users.append((int(entry), comm, "has it open"))
        elif "qemu" in comm and _names_it(proc, target_stat):
            users.append((int(entry), comm, "names it on its command line"))
    return users


def describe_users(users):
    return ", ".join("%s (pid %d) %s" % (comm, pid, how) for pid, comm, how in users)


# --------------------------------------------------------------------------- loop devices, mounts

SYS_BLOCK = "/sys/block"


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _device_numbers(sys_dir):
    """major:minor of a block device and of its partitions (loop0, loop0p1, ...)."""
    numbers = []
    for dev_file in [os.path.join(sys_dir, "dev")] + sorted(
            os.path.join(sys_dir, entry, "dev") for entry in os.listdir(sys_dir)
            if os.path.isfile(os.path.join(sys_dir, entry, "partition"))):
        value = _read(dev_file)
        if value and ":" in value:
            major, minor = value.split(":")
            numbers.append(("/dev/" + os.path.basename(os.path.dirname(dev_file)), int(major), int(minor)))
    return numbers


def loops_backed_by(path):
    """[(loop device, offset)] of the loop devices whose backing file is ``path``, compared by
    inode (a file renamed over the old path is another file)."""
    try:
        target_stat = os.stat(path)
    except OSError:
        return []
    found = []
    try:
        names = sorted(os.listdir(SYS_BLOCK))
    except OSError:
        return []
    for name in names:
        if not name.startswith("loop"):
            continue
        backing = _read(os.path.join(SYS_BLOCK, name, "loop", "backing_file"))
        if not backing or backing.endswith(" (deleted)"):
            continue
        if _same_file(backing, target_stat):
            offset = _read(os.path.join(SYS_BLOCK, name, "loop", "offset")) or "0"
            found.append(("/dev/" + name, int(offset) if offset.isdigit() else 0))
    return found


def mount_table(path="/proc/self/mountinfo"):
    """(major, minor, mount point) of every mount in the mountinfo file ``path`` (this mount
    namespace's by default); empty when it cannot be read (a process that is gone)."""
    mounts = []
    try:
        with open(path) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 4 and ":" in fields[2]:
                    major, minor = fields[2].split(":")
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                    mounts.append((int(major), int(minor), point))
    except OSError:
        pass
    return mounts


def _namespace_of(proc):
    try:
        return os.readlink(os.path.join(proc, "ns", "mnt"))
    except OSError:
        return None


def mounts_in_every_namespace():
    """(major, minor, mount point, owner) of the mounts of every mount namespace on the host.

    ``owner`` is None for our own namespace, else (pid, command name) of a process in that one.
    A filesystem mounted from a loop device stays mounted in each namespace cloned while it was
    mounted (a qemu started by libvirt, a container), and keeps the loop device busy after the
    umount here; such a holder has to be named, or the user is left with a bare "loop device"."""
    own = _namespace_of("/proc/self")
    result = [(major, minor, point, None) for major, minor, point in mount_table()]
    seen = {own}
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        proc = os.path.join("/proc", entry)
        namespace = _namespace_of(proc)
        if namespace is None or namespace in seen:
            continue
        seen.add(namespace)
        comm = _read(os.path.join(proc, "comm")) or "?"
        result.extend((major, minor, point, (int(entry), comm))
                      for major, minor, point in mount_table(os.path.join(proc, "mountinfo")))
    return result


def _mounted_phrase(device, point, owner):
    if owner is None:
        return "%s mounted on %s" % (device, point)
    return "%s mounted on %s in the mount namespace of %s (pid %d)" % (device, point, owner[1], owner[0])


def image_holders(path):
    """Everything on this host that holds the disk image ``path``, as readable phrases:
    processes that have it open (or qemus naming it), loop devices backed by it, and the mount
    points of those loop devices (and their partitions), in any mount namespace."""
    holders = ["%s (pid %d) %s" % (comm, pid, how) for pid, comm, how in processes_using(path)]
    loops = loops_backed_by(path)
    mounts = mounts_in_every_namespace() if loops else []
    for device, offset in loops:
        holders.append("loop device %s%s" % (device, " (offset %d)" % offset if offset else ""))
        for name, major, minor in _device_numbers(os.path.join(SYS_BLOCK, os.path.basename(device))):
            holders.extend(_mounted_phrase(name, point, owner)
                           for mj, mn, point, owner in mounts if (mj, mn) == (major, minor))
    return holders
