"""Each role works on its own (issue 7, item 16): run through ansible-playbook with only its
required inputs, it reaches its module; without one of them it stops at argument validation with
a message naming the missing variable, before any module runs. Nothing is read from another
role's results: the variables given here are all the role gets."""

import hashlib
import os
from pathlib import Path

import pytest

from role_run import run_role
from xapi_double import XapiDouble, XapiVM
from xva_writer import VM, Disk, Nic, write_xva

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
REQUIRED = {
    "convert": ["convert_src"],
    "fixup": ["fixup_disks"],
    "kvm_import": ["kvm_import_spec", "kvm_import_disks"],
    "transfer": ["transfer_source"],
    "xen_source": ["xen_source_vm"],
}


def disk_image(size, seed):
    data = bytearray(size)
    data[:MiB] = hashlib.shake_256(b"role-%d" % seed).digest(MiB)
    return bytes(data)


@pytest.fixture(scope="module", name="tiny_xva")
def tiny_xva_fixture(tmp_path_factory):
    vm = VM(name="Role VM", vcpus=1, memory_bytes=256 * MiB,
            disks=[Disk(image=disk_image(4 * MiB, 1), userdevice=0, bootable=True),
                   Disk(image=disk_image(2 * MiB, 2), userdevice=1, device="xvdb")],
            nics=[Nic(device=0, mac="de:ad:be:ef:00:16", network="Pool-wide network associated with eth0")])
    xva = tmp_path_factory.mktemp("rolexva") / "RoleVM.xva"
    write_xva(str(xva), vm, checksum="sha1", compression="gzip")
    return vm, xva


@pytest.mark.parametrize("role", sorted(REQUIRED))
def test_role_without_required_inputs_fails_validation_naming_them(role):
    _saved, output = run_role(role, {}, expect_fail=True)
    assert "missing required arguments: %s\n" % ", ".join(sorted(REQUIRED[role])) in output, output
    module_tasks = [line for line in output.splitlines() if line.startswith("TASK [")]
    assert len(module_tasks) == 1 and "Validating arguments" in module_tasks[0], "a module ran: %s" % module_tasks


def test_required_inputs_have_no_default_in_the_role():
    for role, names in REQUIRED.items():
        defaults = (REPO / "roles" / role / "defaults" / "main.yml").read_text()
        for name in names:
            assert name + ":" not in defaults, "%s has a default in roles/%s/defaults/main.yml" % (name, role)


def test_convert_role_alone_in_check_mode_plans_images(tiny_xva):
    vm, xva = tiny_xva
    saved, _output = run_role("convert", {"convert_src": str(xva)}, save=["convert_result"], check=True)
    result = saved["convert_result"]
    assert result["changed"] is True and result["spec"]["name"] == vm.name
    paths = [disk["path"] for disk in result["disks"]]
    assert paths == ["/var/lib/libvirt/images/Role_VM-disk0.raw", "/var/lib/libvirt/images/Role_VM-disk1.raw"]
    assert not any(os.path.exists(path) for path in paths)


def test_convert_role_passes_name_template_format_and_timeout(tiny_xva, tmp_path):
    vm, xva = tiny_xva
    role_vars = {"convert_src": str(xva), "convert_dest": str(tmp_path / "images"), "convert_format": "raw",
                 "convert_name_template": "{vm}-{userdevice}.img", "convert_verify_checksums": True,
                 "convert_timeout": 5, "convert_status_file": str(tmp_path / "status.json")}
    saved, _output = run_role("convert", role_vars, save=["convert_result"])
    disks = saved["convert_result"]["disks"]
    assert [os.path.basename(d["path"]) for d in disks] == ["Role_VM-0.img", "Role_VM-1.img"]
    assert [Path(d["path"]).read_bytes() for d in disks] == [d.image for d in vm.disks]
    assert all(d["checksums_verified"] for d in disks)
    assert (tmp_path / "status.json").is_file()


def test_convert_role_sends_url_credentials_trusts_its_ca_and_hides_the_password(tiny_xva, tmp_path):
    vm, xva = tiny_xva
    with XapiDouble([XapiVM(vm.name, xva)], username="migrator", password="s3cr3t-pw", tls=True) as xapi:
        url = "%s/export?uuid=%s" % (xapi.url, xapi.vms[0].uuid)
        role_vars = {"convert_src": url, "convert_dest": str(tmp_path / "images"),
                     "convert_url_username": "migrator", "convert_url_password": "s3cr3t-pw",
                     "convert_ca_path": xapi.ca_file, "convert_validate_certs": True, "convert_timeout": 10}
        saved, output = run_role("convert", role_vars, save=["convert_result"])
        assert Path(saved["convert_result"]["disks"][0]["path"]).read_bytes() == vm.disks[0].image
        assert "s3cr3t-pw" not in output
        role_vars.update(convert_url_password="wrong", convert_dest=str(tmp_path / "denied"))
        _saved, output = run_role("convert", role_vars, expect_fail=True)
        assert "401" in output


@pytest.mark.root
def test_fixup_role_alone_in_check_mode_inspects_a_xen_guest(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, read-only mounts)")
    guest_factory = pytest.importorskip("guest_factory")
    try:
        guest = guest_factory.build_variant("deb12-pv", tmp_path / "build")
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    saved, _output = run_role("fixup", {"fixup_disks": [str(d) for d in guest.disks]},
                              save=["fixup_result"], check=True)
    result = saved["fixup_result"]
    assert result["changed"] is True and result["facts"]["os"]["family"] == "debian"
