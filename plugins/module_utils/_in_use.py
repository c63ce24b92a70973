# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is using a disk image: a process holding it open, or a qemu naming it.

Converting onto, or mounting, the disk of a running VM corrupts it, so both xva_convert and
guest_fixup ask this first.  qemu started by libvirt names its disks inside option strings
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
