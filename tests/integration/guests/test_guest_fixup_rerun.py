"""Issue 7, item 14 on a real guest: deb12-pv-bare (the root filesystem is disk 0 with no
partition table, given to Xen as xvda1; a bare swap disk as xvda2).  The first guest_fixup
gives disk 0 a partition table; a second one without the spec (nothing tells it the disk was
repartitioned, nor what the disks were called) must recognise its own result and change
nothing, also in check mode."""

import json
import os

import pytest

import ansible_run
import guest_factory

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import read_partition_table

pytestmark = [pytest.mark.slow, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("needs root (loop devices, mounts, chroot)", allow_module_level=True)


def test_bare_guest_second_fixup_without_spec_changes_nothing(tmp_path):
    try:
        guest = guest_factory.build_variant("deb12-pv-bare", tmp_path / "build")
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    images = [str(disk) for disk in guest.disks]
    # What xva_info reports for this VM: the VBD devices and userdevices of its two disks.
    spec = {"firmware": "bios", "disks": [{"userdevice": 0, "device": "xvda1"}, {"userdevice": 1, "device": "xvda2"}]}

    first = ansible_run.run_module("guest_fixup", {"disks": images, "spec": spec})
    assert ("bare_fs", "repartition") in {(c["fixup"], c["action"]) for c in first["changes"]}
    assert read_partition_table(images[0]).scheme == "mbr"
    with GuestMount(images, readonly=True, devices=["xvda1", "xvda2"]) as mount:
        with open(mount.guest_path("/etc/fstab")) as handle:
            fstab = handle.read()
    assert "/dev/xvd" not in fstab and fstab.count("UUID=") == 2, fstab

    for check in (True, False):
        again = ansible_run.run_module("guest_fixup", {"disks": images}, check=check)
        assert again["changed"] is False, json.dumps(again["changes"], indent=1)
    again = ansible_run.run_module("guest_fixup", {"disks": images, "spec": spec})
    assert again["changed"] is False, json.dumps(again["changes"], indent=1)
