"""kvm_domain with a Xen VM that booted with UEFI Secure Boot and had a vTPM (issue 7), against
the real libvirtd: libvirt's firmware autoselection must pick OVMF's Secure Boot build with the
Microsoft keys enrolled, and the vTPM that is not carried over is named in a warning."""
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]


def secure_boot_spec(name):
    return {
        "uuid": str(uuid.uuid4()), "name": name, "description": "", "vcpus": 1, "vcpus_max": 1,
        "cores_per_socket": 1, "memory_mib": 256, "xen_domain_type": "hvm", "firmware": "uefi",
        "secure_boot": True, "vtpm": True, "pv_bootloader": "", "pv_args": "", "is_template": False,
        "tags": [], "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "actions_after_shutdown": "destroy", "has_nvram": True,
        "source": {"hostname": "xenserver8", "product_brand": "XenServer", "product_version": "8.4.0"},
        "disks": [{"ref": "Ref:12", "userdevice": 0, "device": "xvda", "virtual_size": 16 << 20,
                   "bootable": True, "name": name + " 0", "vdi_uuid": str(uuid.uuid4()), "mode": "RW"}],
        "nics": [],
    }


def test_secure_boot_guest_gets_secure_ovmf_and_the_vtpm_a_warning(conn, domain_name, qemu_tmp, run_module):
    image = qemu_tmp / ("%s-disk0.qcow2" % domain_name)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    args = {"spec": secure_boot_spec("Win11 VM"), "disks": [{"path": str(image), "userdevice": 0, "ref": "Ref:12"}],
            "domain_type": "qemu", "name": domain_name}
    result = run_module("kvm_domain", args)
    assert not result.get("failed"), result
    assert any("vTPM" in w and "not carried over" in w and "BitLocker" in w for w in result.get("warnings", [])), result
    root = ET.fromstring(conn.lookupByName(domain_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert root.find("os/type").get("machine").startswith("pc-q35-")
    assert root.find("features/smm").get("state") == "on"
    assert root.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "yes"
    assert not run_module("kvm_domain", args)["changed"]

    dom = conn.lookupByName(domain_name)
    dom.create()  # libvirt 9.0 selects the firmware at start
    try:
        live = ET.fromstring(dom.XMLDesc(0))
        loader = live.find("os/loader")
        assert loader.get("secure") == "yes", ET.tostring(live.find("os")).decode()
        assert loader.text.endswith(".ms.fd"), loader.text  # OVMF_CODE_4M.ms.fd: Microsoft keys enrolled
    finally:
        dom.destroy()
