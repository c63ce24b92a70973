"""The default scenario: one PV guest (deb12-pv) from a NAUBackup folder, migrated by
playbooks/migrate.yml and booted on this machine's libvirt (domain type qemu).

Checked against what xva_info read from the export, not against constants: the domain has the
VM's vCPUs, memory and MAC, virtio disks, runs and reached ``login:`` on its serial console; the
converted image's fstab and console are fixed (read with debugfs, read-only); the report of the
first converge says migrated, from the newest finished backup, and the rerun's says unchanged.
"""
import pytest

from conftest import disk_targets, domain_xml, fstab_entries, guest_file, serial_log, virsh

VM = "x2k-mol-deb12"


@pytest.fixture(name="source", scope="module")
def source_fixture(sources):
    assert list(sources) == [VM]
    return sources[VM]


@pytest.fixture(name="domain", scope="module")
def domain_fixture(host):
    return domain_xml(host, VM)


@pytest.fixture(name="root_image", scope="module")
def root_image_fixture(domain):
    return disk_targets(domain)[0][2]


def test_domain_has_the_vcpus_memory_and_mac_of_the_source(domain, source):
    assert int(domain.findtext("vcpu")) == source["vcpus"]
    memory = domain.find("memory")
    assert memory.get("unit") == "KiB" and int(memory.text) == source["memory_mib"] * 1024
    macs = [mac.get("address") for mac in domain.findall("devices/interface/mac")]
    assert macs == [nic["mac"] for nic in source["nics"]]


def test_disks_are_virtio(domain, source):
    disks = disk_targets(domain)
    assert len(disks) == len(source["disks"])
    assert [(dev, bus) for dev, bus, _path in disks] == [("vd" + "abcdefgh"[i], "virtio") for i in range(len(disks))]


def test_domain_runs_and_reached_login_on_its_console(host, first_report):
    assert virsh(host, "domstate", VM).strip() == "running"
    assert first_report[VM]["login_seconds"] > 0
    assert "login:" in serial_log(host, VM)


def test_fstab_names_no_xen_disk(host, root_image):
    fstab = guest_file(host, root_image, "/etc/fstab", domain=VM)
    assert fstab is not None
    entries = {entry[1]: entry[0] for entry in fstab_entries(fstab)}
    assert not [dev for dev in entries.values() if "xvd" in dev], fstab
    assert entries["/"].startswith("UUID=") or entries["/"] == "/dev/vda1", fstab


def test_console_is_the_serial_port(host, root_image):
    grub_cfg = guest_file(host, root_image, "/boot/grub/grub.cfg", domain=VM)
    assert grub_cfg is not None
    kernel_lines = [line for line in grub_cfg.splitlines() if line.strip().startswith("linux")]
    assert kernel_lines and all("console=ttyS0" in line and "hvc0" not in line for line in kernel_lines), kernel_lines
    assert guest_file(host, root_image, "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service",
                      domain=VM) is None


def test_report_says_migrated_then_unchanged(first_report, report, source):
    first = first_report[VM]
    assert first["status"] == "migrated" and first["error"] is None, first
    # the newest *finished* backup: the newer folder has no success marker
    assert first["source"] == source["xva"] and "backup-2026-12-01-" in first["source"]
    assert first["domain_type"] == "qemu"
    assert {"devices", "console"} <= set(first["fixups"]), first["fixups"]
    assert report[VM]["status"] == "unchanged", report[VM]
