# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a GuestMount killed with SIGKILL leaves on the host, and releasing it on the next run.

``finally`` and signal handlers cover everything but SIGKILL (an OOM kill, a lost Ansible
connection's ``kill -9``).  Then loop devices stay attached to the images, the guest's
filesystems stay mounted under /run/xen2kvm/guest-*, and programs started in the chroot
(dpkg, apt) keep running there.  So each GuestMount keeps a small record beside its temporary
directory (``guest-XXXX.json``): its pid and start time, the disks, and every (image, offset)
*before* it is attached to a loop device.  A later GuestMount of any of those disks whose
owner is gone releases all of it first, or fails naming the exact commands.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os
import shlex
import signal
import subprocess
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import (
    attached_loops, detach, io_counters, loop_status)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import mount_table


def _start_time(pid):
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _write(path, record):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


class RunRecord:
    """The record one GuestMount keeps while it holds mounts and loop devices."""

    def __init__(self, tmpdir, disks):
        self.path = tmpdir + ".json"
        self.record = {"pid": os.getpid(), "start": _start_time(os.getpid()), "tmpdir": tmpdir,
                       "disks": list(disks), "loops": []}
        _write(self.path, self.record)

    def attaching(self, backing_file, offset):
        """Called *before* the loop device is attached: a kill right after still finds it."""
        self.record["loops"].append({"backing_file": backing_file, "offset": offset})
        _write(self.path, self.record)

    def remove(self):
        if os.path.lexists(self.path):
            os.unlink(self.path)


def _mount_points_under(tmpdir):
    return [point for _major, _minor, point in mount_table()
            if point == tmpdir or point.startswith(tmpdir + "/")]


def processes_in_guest(tmpdir=None, loop_devices=()):
    """Pids whose root directory is ``tmpdir`` or on a filesystem of the guest mounted there.

    A command confined by sandbox.py has pivoted into the guest, so its root reads as "/"
    through /proc; it is recognised by the filesystem its root is on: the one mounted on
    ``tmpdir``, or one on the guest's ``loop_devices`` (also once nothing is mounted there).
    """
    devices = set()
    for device in loop_devices:
        try:
            devices.add(os.stat(device).st_rdev)
        except OSError:
            continue
    if tmpdir and os.path.ismount(tmpdir):
        devices.add(os.stat(tmpdir).st_dev)
    devices.discard(os.stat("/").st_dev)
    pids, pid_namespaces = [], {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            root = "/proc/%s/root" % entry
            try:
                pid_namespaces[int(entry)] = os.stat("/proc/%s/ns/pid" % entry).st_ino
                if (tmpdir and os.readlink(root) == tmpdir) or os.stat(root).st_dev in devices:
                    pids.append(int(entry))
            except OSError:
                continue
    # The rest of a sandboxed command's PID namespace is the guest's too, wherever its root is.
    theirs = set(pid_namespaces.get(pid) for pid in pids) - {os.stat("/proc/self/ns/pid").st_ino, None}
    return sorted(set(pids) | set(pid for pid, ns in pid_namespaces.items() if ns in theirs))


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if os.path.exists("/proc/%d" % pid)]
        time.sleep(0.05)
    return pids


def _umount(point):
    for argv in (["umount", point], ["umount", "--lazy", point]):
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              check=False)
        if proc.returncode == 0:
            return None
    return proc.stderr.strip()


KILLED_RUN_DETACH_WAIT = 120.0


def wait_until_detached(device, wait=10.0, busy_wait=None):
    """Whether a loop device whose detach the kernel deferred is free within ``wait`` s.

    The mount namespace of a killed sandboxed command (sandbox.py) is torn down after its
    processes are gone, and only then lets go of the guest's filesystems; first it writes back
    what they left dirty. With ``busy_wait``, each ``wait`` s starts again while the device
    still does I/O, up to ``busy_wait`` s in all: a device that writes back is waited for, a
    stuck one is not.
    """
    start = time.monotonic()
    deadline = start + wait
    counters = io_counters(device)
    while loop_status(device) is not None:
        now = time.monotonic()
        latest = io_counters(device) if busy_wait else counters
        if latest != counters:
            counters = latest
            deadline = min(now + wait, start + busy_wait)
        if now > deadline:
            return False
        time.sleep(0.1)
    return True


def _ours(status, loops):
    return any(status["offset"] == loop["offset"] and os.path.realpath(status["backing_file"])
               == os.path.realpath(loop["backing_file"]) for loop in loops)


def release(record):
    """Release what a dead run's ``record`` left: (what was released, what could not be, advice)."""
    tmpdir = record["tmpdir"]
    released, failed, advice = [], [], []
    ours = [status["device"] for status in attached_loops() if _ours(status, record.get("loops", []))]
    survivors = _kill(processes_in_guest(tmpdir, ours))
    if survivors:
        failed.append("processes %s still run in its chroot" % ", ".join(map(str, survivors)))
        advice.append("kill -9 %s" % " ".join(map(str, survivors)))
    for point in reversed(_mount_points_under(tmpdir)):
        error = _umount(point)
        if error:
            failed.append("%s stays mounted (%s)" % (point, error))
            advice.append("umount --lazy %s" % shlex.quote(point))
        else:
            released.append("unmounted " + point)
    for status in attached_loops():
        if not _ours(status, record.get("loops", [])):
            continue
        try:
            done = detach(status["device"], expect_backing=status["backing_file"], expect_offset=status["offset"])
        except GuestError as exc:
            done = False
            failed.append(str(exc))
        # A killed run's dying mount namespace first writes back what the guest's commands
        # left dirty (a dpkg unpack: hundreds of MiB through the loop device); on a busy host
        # that takes longer than a normal detach, so it is waited for while it writes.
        if not done and wait_until_detached(status["device"], busy_wait=KILLED_RUN_DETACH_WAIT):
            done = True
        if done:
            released.append("detached %s" % status["device"])
        else:
            failed.append("%s stays attached" % status["device"])
            advice.append("losetup -d %s" % status["device"])
    if not failed and os.path.isdir(tmpdir) and not _mount_points_under(tmpdir):
        try:
            os.rmdir(tmpdir)  # never rmtree: it may hold a still mounted guest
        except OSError as exc:
            failed.append("cannot remove %s: %s" % (tmpdir, exc.strerror))
    if not failed:
        os.unlink(record["path"])
    else:
        advice += ["rmdir %s" % shlex.quote(tmpdir), "rm %s" % shlex.quote(record["path"])]
    return released, failed, advice


def _dead_records(bases, disks):
    wanted = set(os.path.realpath(d) for d in disks)
    for base in bases:
        for path in sorted(glob.glob(os.path.join(base, "guest-*.json"))):
            try:
                with open(path) as handle:
                    record = json.load(handle)
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _start_time(pid) is not None and _start_time(pid) == record.get("start"):
                continue  # its owner still runs: GuestMount's in-use checks speak for it
            if wanted & set(os.path.realpath(d) for d in record.get("disks", [])):
                record["path"] = path
                yield record


def release_killed_runs(bases, disks):
    """Release what killed runs left on ``disks``; returns notes for the result.  GuestError
    naming the commands to run when something cannot be released."""
    notes = []
    for record in _dead_records(bases, disks):
        released, failed, advice = release(record)
        if failed:
            raise GuestError("an earlier run on %s (pid %s) was killed and left behind what cannot be released "
                             "now: %s. Release it by hand: %s"
                             % (", ".join(record["disks"]), record["pid"], "; ".join(failed), "; ".join(advice)))
        if released:
            notes.append("released what a killed earlier run (pid %s) left: %s" % (record["pid"], ", ".join(released)))
    return notes
