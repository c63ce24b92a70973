"""The fleet scenario: three VMs of one NAUBackup folder migrated at once (forks=3) by
playbooks/migrate.yml: a two-disk guest, a sysvinit guest and a corrupt export.

The corrupt export fails in convert with the checksum error in the report, and leaves no image;
the two others boot (``login:`` on the console: the two-disk guest would stop in emergency mode
if its data disk did not mount) with the source's vCPUs, memory and MAC and one virtio disk per
Xen disk. The rerun (idempotence step) leaves the good VMs unchanged and fails the corrupt one
again in the same way.
"""
import re
import time

import pytest

from conftest import disk_targets, domain_xml, fstab_entries, guest_file, serial_log, virsh

GOOD = ("x2k-mol-data", "x2k-mol-sysv")
BROKEN = "x2k-mol-broken"


def test_the_corrupt_export_failed_in_convert_with_its_reason(first_report, report):
    for entries in (first_report, report):
        entry = entries[BROKEN]
        assert entry["status"] == "failed" and entry["failed_stage"] == "convert", entry
        assert "checksum" in entry["error"], entry
        assert entry["login_seconds"] is None and entry["disks"] == []


def test_the_corrupt_export_left_no_image_and_no_domain(host, work_dir):
    assert not list((work_dir / "images").glob("*%s*" % BROKEN))
    assert host.run("virsh --connect qemu:///system domstate %s", BROKEN).rc != 0


@pytest.mark.parametrize("vm", GOOD)
def test_the_good_vms_migrated_and_their_rerun_changed_nothing(first_report, report, vm):
    assert first_report[vm]["status"] == "migrated" and first_report[vm]["error"] is None, first_report[vm]
    assert first_report[vm]["login_seconds"] > 0
    assert report[vm]["status"] == "unchanged", report[vm]


@pytest.mark.parametrize("vm", GOOD)
def test_the_good_vms_run_as_the_source_describes_them(host, sources, vm):
    source = sources[vm]
    domain = domain_xml(host, vm)
    assert virsh(host, "domstate", vm).strip() == "running"
    assert "login:" in serial_log(host, vm)
    assert int(domain.findtext("vcpu")) == source["vcpus"]
    assert int(domain.find("memory").text) == source["memory_mib"] * 1024
    assert [mac.get("address") for mac in domain.findall("devices/interface/mac")] == [nic["mac"] for nic in source["nics"]]
    disks = disk_targets(domain)
    assert len(disks) == len(source["disks"])
    assert [(dev, bus) for dev, bus, _path in disks] == [("vd" + "abcdefgh"[i], "virtio") for i in range(len(disks))]


def test_the_two_disk_vm_has_two_virtio_disks_and_its_data_disk_in_fstab(host, sources):
    assert len(sources["x2k-mol-data"]["disks"]) == 2
    disks = disk_targets(domain_xml(host, "x2k-mol-data"))
    assert [(dev, bus) for dev, bus, _path in disks] == [("vda", "virtio"), ("vdb", "virtio")]
    fstab = guest_file(host, disks[0][2], "/etc/fstab", domain="x2k-mol-data")
    entries = {entry[1]: entry[0] for entry in fstab_entries(fstab)}
    assert not [dev for dev in entries.values() if "xvd" in dev], fstab
    data_uuid = host.check_output("blkid -p -O 1048576 -s UUID -o value %s", disks[1][2])
    assert entries["/srv/data"] == "UUID=" + data_uuid, fstab


def test_the_guest_mounted_its_data_disk(host):
    """ext4 records when it was last mounted: after the domain's qemu started, so by the guest
    (the fixup's own mounts of the disk come before)."""
    pid = host.check_output("pgrep --full --oldest %s", "guest=x2k-mol-data,")
    started = time.time() - int(host.check_output("ps -o etimes= -p %s", pid))
    data = disk_targets(domain_xml(host, "x2k-mol-data"))[1][2]
    header = host.check_output("dumpe2fs -h %s 2>/dev/null", data + "?offset=1048576")
    mounted = re.search(r"^Last mount time:\s+(.+)$", header, re.M).group(1).strip()
    assert time.mktime(time.strptime(mounted, "%a %b %d %H:%M:%S %Y")) >= started - 1, (mounted, started)


def test_the_sysvinit_vm_has_its_getty_on_the_serial_port(host):
    root = disk_targets(domain_xml(host, "x2k-mol-sysv"))[0][2]
    inittab = guest_file(host, root, "/etc/inittab", domain="x2k-mol-sysv")
    active = [line for line in inittab.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert [line for line in active if "getty" in line and "ttyS0" in line], inittab
    assert not [line for line in active if "hvc0" in line], inittab
