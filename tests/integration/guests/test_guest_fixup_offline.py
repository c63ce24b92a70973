"""Issue 7 items 11 and 13 on a real Xen-shaped guest (root, loop devices, chroot; slow).

* The guest's sources are unreachable (a closed port on 127.0.0.1) and nothing else is given:
  the run fails before the first change, the pygrub menu included.
* ``package_dir`` without a dependency: the same, naming the package.
* ``package_dir`` complete: the guest is fixed without any network, boots, has no failed unit.
* A run killed with SIGKILL while dpkg works in the chroot: the next run releases the mounts,
  loop devices and processes left on the host, puts resolv.conf back, removes policy-rc.d and
  finishes dpkg's work.

package_dir is filled once (cached beside the test guests) with what a bookworm guest lacks for
grub-pc and qemu-guest-agent, downloaded through the guest's own sources like the guest builds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import ansible_run
import guest_factory
from qemu_boot import QemuGuest
from host_leftovers import held_on_host
from test_guest_fixup_boot import run_logged_in

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups.bare_fs import bare_root_filesystem
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import fix_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.leftovers import processes_in_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import loops_for_file
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt

pytestmark = [pytest.mark.slow, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("needs root (loop devices, mounts, chroot)", allow_module_level=True)

DEAD_SOURCES = "deb http://127.0.0.1:9/debian bookworm main\n"
GUEST_RESOLV_CONF = "nameserver 192.0.2.1\n"  # what the guest factory writes
DEB_CACHE = str(guest_factory.CACHE_DIR / "debs-bookworm")
COLLECTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "build", "collections")
WATCHED = ("/boot/grub/grub.cfg", "/etc/fstab", "/etc/resolv.conf", "/etc/default/grub",
           "/etc/initramfs-tools/modules", "/etc/network/interfaces")


def build_or_skip(name, workdir):
    try:
        return guest_factory.build_variant(name, workdir)
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory):
    """The .debs a bookworm test guest lacks for grub-pc and qemu-guest-agent."""
    if os.path.isdir(DEB_CACHE) and os.path.exists(os.path.join(DEB_CACHE, ".complete")):
        return DEB_CACHE
    guest = build_or_skip("deb12-pv", tmp_path_factory.mktemp("debs"))
    with GuestMount(guest.disks) as mount:
        archives = mount.guest_path("/var/cache/apt/archives")
        before = set(os.listdir(archives)) if os.path.isdir(archives) else set()
        editor = GuestEditor(mount.root, run=mount.run_in_chroot)
        with GuestApt(editor, mount.run_in_chroot) as apt:
            if not apt.can_install(["grub-pc", "qemu-guest-agent"]):
                pytest.skip("the guest's Debian mirror is unreachable: cannot fill package_dir")
        new = [name for name in os.listdir(archives) if name.endswith(".deb") and name not in before]
        tmp = DEB_CACHE + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in new:
            shutil.copy2(os.path.join(archives, name), tmp)
    open(os.path.join(tmp, ".complete"), "w").close()
    shutil.rmtree(DEB_CACHE, ignore_errors=True)
    os.rename(tmp, DEB_CACHE)
    return DEB_CACHE


def offline_guest(tmp_path, variant="deb12-pv"):
    """A test guest whose own package sources are unreachable."""
    guest = build_or_skip(variant, tmp_path / "build")
    with GuestMount(guest.disks) as mount:
        with open(mount.guest_path("/etc/apt/sources.list"), "w") as handle:
            handle.write(DEAD_SOURCES)
        parts = mount.guest_path("/etc/apt/sources.list.d")
        for name in os.listdir(parts) if os.path.isdir(parts) else []:
            os.unlink(os.path.join(parts, name))
    return guest


def guest_state(image):
    """What must not change when a run cannot finish, and what must never stay behind."""
    with GuestMount([image], readonly=True) as mount:
        def read(path):
            host = mount.guest_path(path)
            return open(host).read() if os.path.isfile(host) else None
        lists = mount.guest_path("/var/lib/apt/lists")
        return {
            "files": {path: read(path) for path in WATCHED},
            "lists": sorted(os.listdir(lists)) if os.path.isdir(lists) else [],
            "left": [p for p in ("/usr/sbin/policy-rc.d", "/var/lib/xen2kvm/journal.json", "/var/lib/xen2kvm/apt",
                                 "/var/lib/xen2kvm/saved/etc/resolv.conf")
                     if os.path.lexists(mount.guest_path(p, follow_last=False))],
            "backups": os.path.isdir(mount.guest_path("/var/backups/xen2kvm")),
            "dpkg": read("/var/lib/dpkg/status"),
        }


def nothing_left_behind(image):
    assert held_on_host([image]) == [], "left on the host for %s" % image


def installed(dpkg_status, package):
    return ("Package: %s\nStatus: install ok installed\n" % package) in dpkg_status


def test_unreachable_sources_change_nothing(tmp_path):
    guest = offline_guest(tmp_path)
    image = str(guest.disks[0])
    before = guest_state(image)
    assert before["files"]["/boot/grub/grub.cfg"] and not before["backups"]
    failed = ansible_run.run_module("guest_fixup", {"disks": [image]}, expect_fail=True)
    assert "cannot download grub-pc from the guest's package sources" in failed["msg"]
    assert "127.0.0.1:9" in failed["msg"] and "nothing was changed" in failed["msg"]
    after = guest_state(image)
    assert after["files"] == before["files"]  # the pygrub menu is still there
    assert after["left"] == [] and not after["backups"]
    nothing_left_behind(image)


def test_unreachable_sources_leave_a_bare_filesystem_disk_unpartitioned(tmp_path):
    """Repartitioning a bare root filesystem is the first change, so the packages must be at
    hand before it: an offline host leaves the disk a bare filesystem, its files as they were."""
    guest = offline_guest(tmp_path, "deb12-pv-bare")
    images = [str(disk) for disk in guest.disks]
    before = guest_state(images[0])
    sizes = [os.path.getsize(image) for image in images]
    failed = ansible_run.run_module("guest_fixup", {"disks": images}, expect_fail=True)
    assert "cannot download grub-pc" in failed["msg"] and "nothing was changed" in failed["msg"]
    assert bare_root_filesystem(images[0]) is not None, "the disk was repartitioned"
    assert [os.path.getsize(image) for image in images] == sizes
    after = guest_state(images[0])
    assert after["files"] == before["files"] and after["left"] == [] and not after["backups"]
    for image in images:
        nothing_left_behind(image)


def test_package_dir_without_a_dependency_changes_nothing(tmp_path, package_dir):
    partial = tmp_path / "debs"
    partial.mkdir()
    for name in os.listdir(package_dir):
        if name.endswith(".deb") and not name.startswith("grub-pc-bin_"):
            shutil.copy2(os.path.join(package_dir, name), str(partial))
    guest = offline_guest(tmp_path)
    image = str(guest.disks[0])
    before = guest_state(image)
    failed = ansible_run.run_module("guest_fixup", {"disks": [image], "package_dir": str(partial)}, expect_fail=True)
    assert "package_dir %s does not hold grub-pc" % partial in failed["msg"] and "grub-pc-bin" in failed["msg"]
    after = guest_state(image)
    assert after["files"] == before["files"] and after["lists"] == before["lists"]
    assert after["left"] == [] and not after["backups"]
    nothing_left_behind(image)


def test_package_dir_fixes_an_offline_guest_that_then_boots(tmp_path, package_dir):
    guest = offline_guest(tmp_path)
    image = str(guest.disks[0])
    before = guest_state(image)
    args = {"disks": [image], "package_dir": package_dir}
    fixed = ansible_run.run_module("guest_fixup", args)
    assert fixed["changed"] and not [w for w in fixed.get("warnings", []) if "qemu-guest-agent" in w]
    after = guest_state(image)
    assert installed(after["dpkg"], "grub-pc") and installed(after["dpkg"], "qemu-guest-agent")
    assert after["lists"] == before["lists"]  # the guest's package lists were never used
    assert after["files"]["/etc/resolv.conf"] == GUEST_RESOLV_CONF and after["left"] == []
    nothing_left_behind(image)
    with QemuGuest([image], memory_mib=1024) as vm:
        vm.wait_for_login()
        vm.login_and_run("root", guest.root_password, "true")
        failed_units = run_logged_in(vm, "systemctl --failed --no-legend --plain")
        console = vm.transcript.decode("utf-8", "replace")
    assert "Gave up waiting" not in console and "[FAILED]" not in console, console[-3000:]
    assert failed_units == "", failed_units
    assert ansible_run.run_module("guest_fixup", args)["changed"] is False


KILLED_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import fix_guest
fix_guest([sys.argv[2]], package_dir=sys.argv[3])
"""


def dpkg_unpacking_in_a_guest_chroot(image):
    """The pid of a dpkg unpacking packages in the guest on ``image`` (not apt's short dpkg
    queries); its root is on one of the image's loop devices (it reads as "/" once pivoted)."""
    for pid in processes_in_guest(loop_devices=[status["device"] for status in loops_for_file(image)]):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"dpkg" and b"--unpack" in argv:
            return int(pid)
    return None


def test_a_run_killed_while_dpkg_works_is_undone_by_the_next(tmp_path, package_dir):
    guest = offline_guest(tmp_path)
    image = str(guest.disks[0])
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, COLLECTIONS, image, package_dir],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while dpkg_unpacking_in_a_guest_chroot(image) is None:
            assert child.poll() is None, "the run ended before dpkg unpacked anything"
            assert time.monotonic() < deadline, "dpkg never unpacked in the guest chroot"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert loops_for_file(image)  # SIGKILL left the guest mounted: the next run must release it

    fixed = fix_guest([image], package_dir=package_dir)
    restored = {c["path"] for c in fixed["changes"] if c["action"] == "restore"}
    assert {"/usr/sbin/policy-rc.d", "/etc/resolv.conf", "/var/lib/xen2kvm/apt"} <= restored, json.dumps(fixed["changes"], indent=1)
    assert any("killed earlier run (pid %d)" % child.pid in w for w in fixed["warnings"]), fixed["warnings"]
    nothing_left_behind(image)
    state = guest_state(image)
    assert state["files"]["/etc/resolv.conf"] == GUEST_RESOLV_CONF and state["left"] == []
    assert installed(state["dpkg"], "grub-pc") and installed(state["dpkg"], "qemu-guest-agent")
    assert "Status: install ok installed" in state["dpkg"] and " half-" not in state["dpkg"]
    assert " unpacked\n" not in state["dpkg"]
    assert fix_guest([image], package_dir=package_dir)["changed"] is False
