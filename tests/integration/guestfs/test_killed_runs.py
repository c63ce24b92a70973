"""Issue 7 item 13 (host side): a GuestMount killed with SIGKILL leaves its mounts, loop devices
and chroot processes behind; the next GuestMount of the same disk releases them all (needs root)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import test_guest_mount
from test_guest_mount import BUSYBOX, COLLECTIONS, assert_clean

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.leftovers import RunRecord, release_killed_runs
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import attach, loops_for_file
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestError, GuestMount, host_mount_points
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import read_partition_table

mbr_image = test_guest_mount.mbr_image  # the fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
]

KILLED_CHILD = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
with GuestMount([sys.argv[2]]) as guest:
    sleeper = None
    if sys.argv[3]:
        sleeper = subprocess.Popen(["chroot", guest.root, "/bin/sleep", "300"]).pid
        # Popen returns once chroot(8) is exec'd, maybe before its chroot(2): report it once inside.
        deadline = time.time() + 30
        while os.readlink("/proc/%d/root" % sleeper) != guest.root and time.time() < deadline:
            time.sleep(0.05)
    print(json.dumps({"root": guest.root, "sleeper": sleeper}), flush=True)
    time.sleep(300)
"""


def rooted_in(root):
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink("/proc/%s/root" % entry) == root:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def killed_after_report(script, *args):
    """Run ``script`` in a child python, read the JSON line it reports, then SIGKILL it: what a
    killed run leaves behind is then there to be found.  Returns the report and the child's pid."""
    child = subprocess.Popen([sys.executable, "-c", script] + list(args), stdout=subprocess.PIPE,
                             universal_newlines=True)
    try:
        info = json.loads(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return info, child.pid


def test_next_mount_releases_what_a_killed_run_left(mbr_image):
    info, child_pid = killed_after_report(KILLED_CHILD, COLLECTIONS, mbr_image, BUSYBOX or "")
    # What SIGKILL leaves: the guest mounted, its loop devices, a process in the chroot.  Looked at
    # first and asserted after the next mount, which releases them even when an assert fails.
    left = {"mounted": os.path.ismount(info["root"]), "loops": bool(loops_for_file(mbr_image)),
            "in the chroot": rooted_in(info["root"]) if info["sleeper"] else None}

    with GuestMount([mbr_image]) as guest:
        released, remounted, new_root = guest.released, bool(guest.mounts), guest.root
    assert left == {"mounted": True, "loops": True, "in the chroot": [info["sleeper"]] if info["sleeper"] else None}
    assert released and "pid %d" % child_pid in released[0]
    assert remounted  # the image could be mounted again
    assert_clean(mbr_image, info["root"])
    assert_clean(mbr_image, new_root)
    assert rooted_in(info["root"]) == []
    assert not os.path.exists(info["root"] + ".json") and not os.path.exists(new_root + ".json")


KILLED_WHILE_CONFINED = r"""
import json, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
with GuestMount([sys.argv[2]]) as guest:
    # What apt-get in run_in_chroot is when the module gets SIGKILL: a confined command.
    threading.Thread(target=guest.run_in_chroot, args=(["/bin/sh", "-c", "sleep 3002 & sleep 3003"],),
                     daemon=True).start()
    time.sleep(1.5)
    print(json.dumps({"root": guest.root}), flush=True)
    time.sleep(300)
"""


def guest_sleepers():
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _cmdline(pid) in (b"sleep\x003002\x00", b"sleep\x003003\x00")]


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


@pytest.mark.skipif(BUSYBOX is None, reason="needs a static busybox for the guest shell")
def test_next_mount_releases_confined_processes_a_killed_run_left(mbr_image):
    """Pivoted into the guest, their root reads as "/": they are found by the guest's
    filesystem under their root and by their PID namespace."""
    info, child_pid = killed_after_report(KILLED_WHILE_CONFINED, COLLECTIONS, mbr_image)
    assert len(guest_sleepers()) == 2 and rooted_in(info["root"]) == []
    with GuestMount([mbr_image]) as guest:
        assert guest.released and "pid %d" % child_pid in guest.released[0]
        new_root = guest.root
    assert guest_sleepers() == []
    assert_clean(mbr_image, info["root"])
    assert_clean(mbr_image, new_root)


def test_a_live_run_is_left_alone_and_a_busy_leftover_goes_lazily(tmp_path, mbr_image):
    base = str(tmp_path / "run")
    os.makedirs(base)
    # A record of this (live) process: not released.
    live = RunRecord(os.path.join(base, "guest-live"), [mbr_image])
    assert release_killed_runs([base], [mbr_image]) == []
    live.remove()
    # A dead run whose mount cannot go away (a file system under it that is not ours to unmount
    # would be the real case; here a bind mount kept busy by our own cwd below it).
    dead = os.path.join(base, "guest-dead")
    os.makedirs(dead)
    record = RunRecord(dead, [mbr_image])
    record.record.update(pid=2 ** 22 + 1, start=1)  # no such process
    with open(record.path, "w") as handle:
        json.dump(record.record, handle)
    subprocess.run(["mount", "-t", "tmpfs", "x2k-test", dead], check=True)
    try:
        subprocess.run(["mount", "--make-private", dead], check=True)
        os.makedirs(os.path.join(dead, "busy"))
        holder = subprocess.Popen(["sleep", "300"], cwd=os.path.join(dead, "busy"))
        time.sleep(0.2)
        try:
            notes = release_killed_runs([base], [mbr_image])
        finally:
            holder.kill()
            holder.wait()
        # a busy tmpfs is unmounted lazily: released, nothing left mounted
        assert notes and "unmounted %s" % dead in notes[0]
        assert dead not in host_mount_points() and not os.path.exists(record.path)
    finally:
        if dead in host_mount_points():
            subprocess.run(["umount", "--lazy", dead], check=False)


def test_what_cannot_be_released_is_named_with_the_commands(tmp_path, mbr_image):
    """A loop device of the killed run that something outside its directory still holds."""
    base = str(tmp_path / "run")
    dead = os.path.join(base, "guest-dead")
    os.makedirs(dead)
    root_start = read_partition_table(mbr_image).partitions[1].start
    record = RunRecord(dead, [mbr_image])
    record.attaching(mbr_image, root_start)
    record.record.update(pid=2 ** 22 + 1, start=1)  # no such process
    with open(record.path, "w") as handle:
        json.dump(record.record, handle)
    loop = attach(mbr_image, offset=root_start, read_only=True)
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    subprocess.run(["mount", "-o", "ro,noload", loop.device, elsewhere], check=True)
    try:
        with pytest.raises(GuestError) as failed:
            release_killed_runs([base], [mbr_image])
        message = str(failed.value)
        assert "was killed" in message and "%s stays attached" % loop.device in message
        assert "losetup -d %s" % loop.device in message and "rm %s" % record.path in message
        assert os.path.exists(record.path)  # still known to the next run
    finally:
        subprocess.run(["umount", elsewhere], check=False)
        loop.detach()
    assert loops_for_file(mbr_image) == []
    assert release_killed_runs([base], [mbr_image]) == [] and not os.path.exists(record.path)
