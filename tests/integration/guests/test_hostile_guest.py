"""A compromised guest must not own the host that fixes it (root, loop devices; slow).

The deb12-pv test guest gets probes (tests/lib/hostile_guest.py) where guest_fixup runs the
guest's own code: an initramfs hook, an apt DPkg::Pre-Invoke hook, a dpkg file trigger whose
maintainer script (initramfs-tools' postinst) starts with the probe, and an /etc/grub.d script.
Each probe tries to write a marker into the root of every process it can see, to make and open
device nodes of the host's disks, and to write the host's sysfs, and logs what it managed in the
guest.

* guest_fixup through ansible-playbook, per engine (``guestfs``: the guest's code runs in the
  libguestfs appliance; ``chroot``: on the host, confined by sandbox.py): every probe ran (the
  guest's log says so) and nothing on the host changed.
* The control: the same probes in a plain chroot with the host's /proc and /sys bound in (what
  the chroot engine did before) do reach the host -- otherwise the test above proves nothing.
  Everything they did on the host is undone.
"""

import os
import subprocess
import uuid

import pytest
import yaml

import ansible_run
import guest_factory
from hostile_guest import (
    PROBE_PROGRAM,
    PROBES,
    READ_AHEAD_STEP,
    HostTargets,
    host_markers,
    plant_probes,
    read_probe_log,
    remove_host_markers,
)
from test_guest_fixup_offline import nothing_left_behind, package_dir  # noqa: F401 pylint: disable=unused-import

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import CHROOT_ENV, GuestMount
from ansible_collections.xen2kvm.migration.plugins.modules import guest_fixup as guest_fixup_module

pytestmark = [pytest.mark.slow, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("needs root (loop devices, mounts, chroot)", allow_module_level=True)

ENGINES = ("guestfs", "chroot")
# What a probe logs when it got hold of a device or of sysfs (in the chroot engine's guest /dev).
HOST_ACCESS = ("mknod", "opened-rw", "sys-written")


def engine_option_exists():
    return "engine" in yaml.safe_load(guest_fixup_module.DOCUMENTATION).get("options", {})


def hostile_guest(tmp_path):
    try:
        guest = guest_factory.build_variant("deb12-pv", tmp_path / "build")
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    targets = HostTargets.of_this_host(uuid.uuid4().hex[:12])
    plant_probes(guest, targets)
    return guest, targets


def undo_on_host(targets, read_ahead):
    """Remove every marker and put read_ahead_kb back; what was found, for the assertions."""
    found = {"markers": host_markers(targets), "read_ahead": targets.read_ahead_kb()}
    remove_host_markers(targets)
    if found["read_ahead"] != read_ahead:
        with open(targets.read_ahead, "w") as handle:
            handle.write("%d\n" % read_ahead)
    return found


def probe_log(guest, targets):
    """This run's lines of the guest's probe log; a per-probe summary goes to the test's output."""
    log = [entry for entry in read_probe_log(guest) if entry[0] == targets.token]
    for probe in PROBES:
        did = [what for _token, name, what, _rest in log if name == probe]
        print("%s: %s" % (probe, ", ".join("%s x%d" % (what, did.count(what)) for what in sorted(set(did)))))
    return log


# The appliance's run uses no host mount, so make test runs it in its second lane, beside the rest.
@pytest.mark.parametrize("engine", [pytest.param(e, marks=pytest.mark.second_lane) if e == "guestfs" else e
                                    for e in ENGINES])
def test_hostile_guest_cannot_reach_the_host(tmp_path, package_dir, engine):  # noqa: F811
    args = {"package_dir": package_dir}
    if engine_option_exists():
        args["engine"] = engine
    elif engine != "chroot":
        pytest.skip("guest_fixup has no engine option yet (only the chroot path exists)")
    guest, targets = hostile_guest(tmp_path)
    image = str(guest.disks[0])
    read_ahead = targets.read_ahead_kb()
    try:
        fixed = ansible_run.run_module("guest_fixup", dict(args, disks=[image]))
    finally:
        found = undo_on_host(targets, read_ahead)
    assert fixed["changed"]
    log = probe_log(guest, targets)
    assert {probe for _token, probe, what, _rest in log if what == "ran"} == set(PROBES), log
    assert found["markers"] == [], found["markers"]
    assert found["read_ahead"] == read_ahead
    if engine == "chroot":
        # The confined probes could not even make a device node or write sysfs (the guestfs
        # appliance is a VM of its own: there they may, on the appliance's devices).
        assert [entry for entry in log if entry[2] in HOST_ACCESS] == [], log
        wrote = [entry[3] for entry in log if entry[2] == "wrote"]
        assert wrote and all(path.startswith("/proc/") for path in wrote), log
    nothing_left_behind(image)


def run_probes_in_a_plain_chroot(guest):
    """What guest_fixup did before the sandbox: chroot with the host's /proc and /sys bound in."""
    with GuestMount(guest.disks) as mount:
        bound = []
        try:
            for host_dir in ("/proc", "/sys"):
                target = mount.guest_path(host_dir)
                subprocess.run(["mount", "--bind", host_dir, target], check=True)
                bound.append(target)
                subprocess.run(["mount", "--make-rslave", target], check=True)
            for probe in PROBES:
                subprocess.run(["chroot", mount.root, PROBE_PROGRAM, probe], env=CHROOT_ENV, check=True,
                               timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            for target in reversed(bound):
                subprocess.run(["umount", "--recursive", target], check=False)


def test_control_plain_chroot_with_the_host_proc_reaches_the_host(tmp_path):
    guest, targets = hostile_guest(tmp_path)
    read_ahead = targets.read_ahead_kb()
    try:
        run_probes_in_a_plain_chroot(guest)
    finally:
        found = undo_on_host(targets, read_ahead)
    log = probe_log(guest, targets)
    assert {probe for _token, probe, what, _rest in log if what == "ran"} == set(PROBES), log
    for probe in PROBES:
        # Written through /proc/<host pid>/root: the host's own /tmp.
        assert os.path.join("/tmp", targets.marker_name(probe)) in found["markers"], found["markers"]
        did = {what for _token, name, what, _rest in log if name == probe}
        assert {"mknod", "opened-rw", "sys-written"} <= did, log
    assert found["read_ahead"] == read_ahead + READ_AHEAD_STEP * len(PROBES)
    # ...and all of it is undone.
    assert host_markers(targets) == [] and targets.read_ahead_kb() == read_ahead
