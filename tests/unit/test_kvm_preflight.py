"""kvm_preflight's checks that need no libvirtd: space (real statvfs) and tools (real PATH)."""

import os
import shutil
import sys

import pytest

from ansible_run import run_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.preflight import (
    GiB, REQUIRED_COMMANDS, check_space, check_tools, existing_ancestor, total_bytes, uefi_firmware_problems)


def free_of(path):
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_space_fits(tmp_path):
    problems, warnings, facts = check_space(str(tmp_path), [1 << 20, 2 << 20], margin_bytes=1 << 20)
    assert problems == [] and warnings == []
    assert facts["needed_bytes"] == 4 << 20 and facts["free_bytes"] > 0


def test_space_short_counts_full_size_and_margin(tmp_path):
    too_much = free_of(str(tmp_path))
    problems, warnings, facts = check_space(str(tmp_path), [too_much // 2, too_much // 2], margin_bytes=GiB)
    assert warnings == [] and len(problems) == 1
    assert "not enough free space for the disk images in %s" % tmp_path in problems[0]
    assert "+ 1.0 GiB margin" in problems[0]
    assert facts["needed_bytes"] == (too_much // 2) * 2 + GiB


def test_space_short_with_sparse_allowed_only_warns(tmp_path):
    problems, warnings, _facts = check_space(str(tmp_path), 1 << 60, allow_sparse=True)
    assert problems == [] and "sparse images are allowed" in warnings[0]


def test_missing_images_dir_is_measured_on_its_parent(tmp_path):
    missing = tmp_path / "a" / "b"
    assert existing_ancestor(str(missing)) == str(tmp_path)
    _problems, _warnings, facts = check_space(str(missing), [1])
    assert facts["filesystem_path"] == str(tmp_path)


def test_total_bytes_takes_a_list_or_a_total():
    assert total_bytes([1, "2", 3]) == 6 and total_bytes(7) == 7


def test_missing_command_and_python_module_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    problems = check_tools(commands=(("qemu-img", "qemu-utils"),),
                           python_modules=(("json", "python3"), ("x2k_no_such_module", "python3-nothing")))
    assert problems == ["command qemu-img not found on PATH %s (Debian package qemu-utils)" % tmp_path,
                        "Python module x2k_no_such_module not importable by %s (Debian package python3-nothing)"
                        % sys.executable,
                        "KVM host packages missing: python3-nothing, qemu-utils; run the role "
                        "xen2kvm.migration.kvm_host on this host (or apt-get install python3-nothing qemu-utils)"]


@pytest.mark.skipif(not all(shutil.which(c) for c, _p in REQUIRED_COMMANDS), reason="the KVM host tools are not installed")
def test_a_path_without_qemu_img_names_it_its_package_and_the_kvm_host_role(monkeypatch, tmp_path):
    """The default lists, looked up on a real PATH holding every required command but qemu-img."""
    found = {command: shutil.which(command) for command, _package in REQUIRED_COMMANDS}
    for command, path in found.items():
        if command != "qemu-img":
            (tmp_path / command).symlink_to(path)
    monkeypatch.setenv("PATH", str(tmp_path))
    problems = check_tools(python_modules=())
    assert problems == ["command qemu-img not found on PATH %s (Debian package qemu-utils)" % tmp_path,
                        "KVM host packages missing: qemu-utils; run the role xen2kvm.migration.kvm_host on this "
                        "host (or apt-get install qemu-utils)"]
    (tmp_path / "qemu-img").symlink_to(found["qemu-img"])
    assert check_tools(python_modules=()) == []


@pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-img"), reason="qemu-utils not installed")
def test_module_lists_every_problem_at_once(tmp_path):
    """Through ansible-playbook: too little space and a libvirt URI that cannot connect, both in
    one failure message (the test URI points at a socket that does not exist)."""
    failed = run_module("kvm_preflight", {
        "images_dir": str(tmp_path / "images"), "disk_bytes": [1 << 60, 1 << 20], "domain_name": "web01",
        "uri": "qemu+unix:///system?socket=%s" % (tmp_path / "no.sock")}, expect_fail=True)
    assert failed["msg"].startswith("preflight for web01 failed: (1) not enough free space")
    assert "(2) cannot connect to libvirt at qemu+unix:///system" in failed["msg"]
    assert len(failed["problems"]) == 2 and failed["needed_bytes"] == (1 << 60) + (1 << 20) + GiB


# What libvirt 9.0 answers (virsh domcapabilities --machine q35) with Debian's ovmf installed, and
# without it (no firmware descriptor in /usr/share/qemu/firmware: nothing to autoselect).
DOMCAPS_Q35_OVMF = """<domainCapabilities><machine>pc-q35-7.2</machine><arch>x86_64</arch>
  <os supported='yes'>
    <enum name='firmware'><value>efi</value></enum>
    <loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</value>
      <value>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</value>
      <value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>
      <enum name='type'><value>rom</value><value>pflash</value></enum>
      <enum name='readonly'><value>yes</value><value>no</value></enum>
      <enum name='secure'><value>yes</value><value>no</value></enum>
    </loader>
  </os></domainCapabilities>"""
DOMCAPS_Q35_NO_OVMF = """<domainCapabilities><machine>pc-q35-7.2</machine><arch>x86_64</arch>
  <os supported='yes'>
    <enum name='firmware'/>
    <loader supported='yes'>
      <enum name='type'><value>rom</value><value>pflash</value></enum>
      <enum name='readonly'><value>yes</value><value>no</value></enum>
      <enum name='secure'><value>no</value></enum>
    </loader>
  </os></domainCapabilities>"""
DOMCAPS_Q35_PLAIN_OVMF_ONLY = DOMCAPS_Q35_OVMF.replace("<value>yes</value><value>no</value></enum>\n    </loader>",
                                                       "<value>no</value></enum>\n    </loader>")


def test_uefi_firmware_found():
    assert uefi_firmware_problems(DOMCAPS_Q35_OVMF, "q35") == []
    assert uefi_firmware_problems(DOMCAPS_Q35_OVMF, "q35", secure_boot=True) == []


def test_missing_ovmf_is_named_with_its_package_and_the_role():
    (problem,) = uefi_firmware_problems(DOMCAPS_Q35_NO_OVMF, "q35")
    assert problem == ("the VM boots with UEFI, but libvirt offers no UEFI firmware (OVMF) for machine q35: Debian "
                       "package ovmf is missing; run the role xen2kvm.migration.kvm_host on this host (or apt-get "
                       "install ovmf)")


def test_secure_boot_needs_a_secure_build():
    assert "secure" in DOMCAPS_Q35_PLAIN_OVMF_ONLY and DOMCAPS_Q35_PLAIN_OVMF_ONLY != DOMCAPS_Q35_OVMF
    assert uefi_firmware_problems(DOMCAPS_Q35_PLAIN_OVMF_ONLY, "q35") == []
    (problem,) = uefi_firmware_problems(DOMCAPS_Q35_PLAIN_OVMF_ONLY, "q35", secure_boot=True)
    assert "no Secure Boot build of OVMF for machine q35" in problem and "apt-get install ovmf" in problem
