"""The kvm_import role on its own (issue 7, item 16): given only a spec and images, as a user
passes them (no convert role before it), it plans the domain in check mode; with the exposed
module options it defines the domain with the requested vCPUs, memory, firmware, machine and
name."""
import hashlib
import xml.etree.ElementTree as ET

import pytest

from role_run import run_role
from xva_writer import VM, Disk, Nic, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]
MiB = 1 << 20


def convert_vm(workdir, name, nics):
    image = bytearray(4 * MiB)
    image[:MiB] = hashlib.shake_256(b"kvm_import role").digest(MiB)
    vm = VM(name=name, vcpus=1, memory_bytes=256 * MiB, disks=[Disk(image=bytes(image), userdevice=0)], nics=nics)
    xva = workdir / "vm.xva"
    write_xva(str(xva), vm, checksum="sha1")
    result = convert_xva(str(xva), str(workdir / "images"))
    xva.unlink()
    return result


@pytest.fixture(name="converted")
def converted_fixture(qemu_tmp, domain_name):
    return convert_vm(qemu_tmp, domain_name, nics=[])


@pytest.fixture(name="converted_with_nic")
def converted_with_nic_fixture(qemu_tmp, domain_name):
    return convert_vm(qemu_tmp, domain_name, nics=[
        Nic(device=0, mac="de:ad:be:ef:00:17", network="Pool-wide network associated with eth0")])


def test_kvm_import_role_alone_in_check_mode(libvirt_uri, conn, converted, domain_name):
    saved, _output = run_role(
        "kvm_import", {"kvm_import_spec": converted["spec"], "kvm_import_disks": converted["disks"]},
        save=["kvm_import_domain", "kvm_import_boot"], check=True)
    planned = saved["kvm_import_domain"]
    assert planned["changed"] is True and planned["domain"]["name"] == domain_name
    assert ET.fromstring(planned["xml"]).get("type") == "kvm"
    assert saved["kvm_import_boot"].get("skipped") is True
    assert domain_name not in conn.listDefinedDomains()


def test_kvm_import_role_passes_vcpus_memory_firmware_machine_and_name(libvirt_uri, conn, converted_with_nic, domain_name):
    converted = converted_with_nic
    role_vars = {"kvm_import_spec": converted["spec"], "kvm_import_disks": converted["disks"],
                 "kvm_import_uri": libvirt_uri, "kvm_import_name": domain_name + "-kvm",
                 "kvm_import_domain_type": "qemu", "kvm_import_default_network": "user",
                 "kvm_import_vcpus": 3, "kvm_import_memory_mib": 320, "kvm_import_firmware": "bios",
                 "kvm_import_machine": "pc", "kvm_import_boot_check": False}
    try:
        saved, _output = run_role("kvm_import", role_vars, save=["kvm_import_domain"])
        assert saved["kvm_import_domain"]["domain"]["name"] == domain_name + "-kvm"
        root = ET.fromstring(conn.lookupByName(domain_name + "-kvm").XMLDesc(0))
        assert root.findtext("vcpu") == "3"
        assert int(root.findtext("memory")) == 320 * 1024
        assert root.find("os/type").get("machine").startswith("pc")
        assert root.find("os/loader") is None
        assert root.find("devices/interface").get("type") == "user"
    finally:
        try:
            conn.lookupByName(domain_name + "-kvm").undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass
