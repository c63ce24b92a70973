"""A UEFI domain's NVRAM against the real libvirtd (domain type qemu, OVMF from Debian's ovmf).

The NVRAM a migrated guest gets is OVMF's template, copied by libvirt at the first start; it
must never outlive the images it was made for: a new conversion (new image files, as a rerun
with force writes them) deletes it, so no boot entry of an earlier attempt survives, while a
plain rerun keeps the very same file.  A running domain's NVRAM is left alone until it stops."""
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]

OVMF_VARS_TEMPLATE = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def uefi_spec(name):
    return {
        "uuid": str(uuid.uuid4()), "name": name, "description": "", "vcpus": 1, "vcpus_max": 1,
        "cores_per_socket": 1, "memory_mib": 128, "xen_domain_type": "hvm", "firmware": "uefi",
        "secure_boot": False, "pv_bootloader": "", "pv_args": "", "is_template": False, "tags": [],
        "actions_after_reboot": "restart", "actions_after_crash": "destroy", "actions_after_shutdown": "destroy",
        "has_nvram": True, "source": {"hostname": "xenserver8", "product_brand": "XenServer", "product_version": "8.4.0"},
        "disks": [{"ref": "Ref:12", "userdevice": 0, "device": "xvda", "virtual_size": 16 << 20, "bootable": True,
                   "name": name + " 0", "vdi_uuid": str(uuid.uuid4()), "mode": "RW"}],
        "nics": [],
    }


def convert(image):
    """What a (re)conversion does to an image: a new file renamed over the old name."""
    temp = str(image) + ".part"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", temp, "16M"], check=True)
    os.rename(temp, str(image))


def start_and_find_nvram(dom):
    """Start (libvirt 9.0 picks the firmware and copies the NVRAM template now), stop, and
    return the NVRAM file's path."""
    dom.create()
    try:
        nvram = ET.fromstring(dom.XMLDesc(0)).findtext("os/nvram")
    finally:
        dom.destroy()
    assert nvram and os.path.isfile(nvram), nvram
    return nvram


def identity(path):
    st = os.stat(path)
    with open(path, "rb") as handle:
        return st.st_ino, st.st_mtime_ns, handle.read()


def test_nvram_is_fresh_for_new_images_and_kept_by_a_plain_rerun(conn, domain_name, qemu_tmp, run_module):
    if not os.path.exists(OVMF_VARS_TEMPLATE):
        pytest.skip("OVMF is not installed (Debian package ovmf)")
    image = qemu_tmp / ("%s-disk0.qcow2" % domain_name)
    convert(image)
    args = {"spec": uefi_spec("UEFI web"), "disks": [{"path": str(image), "userdevice": 0, "ref": "Ref:12"}],
            "domain_type": "qemu", "name": domain_name, "autostart": True}

    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["nvram_reset"] and "new domain" in r["nvram_reset_reason"]
    dom = conn.lookupByName(domain_name)
    nvram = start_and_find_nvram(dom)
    with open(OVMF_VARS_TEMPLATE, "rb") as handle:
        assert len(handle.read()) == os.path.getsize(nvram)  # a copy of the 4M template
    first = identity(nvram)

    # A plain rerun: the same image files, so the NVRAM file is not touched.
    r = run_module("kvm_domain", args, diff=True)
    assert not r.get("failed"), r
    assert not r["changed"] and not r["nvram_reset"] and r["nvram_reset_reason"] == "", r
    assert identity(nvram) == first

    # The disks are converted again: check mode predicts the reset, a real run does it.
    convert(image)
    r = run_module("kvm_domain", args, check=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["nvram_reset"] and "replaced" in r["nvram_reset_reason"]
    assert identity(nvram) == first
    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["changed"] and r["nvram_reset"] and "replaced" in r["nvram_reset_reason"]
    assert not os.path.exists(nvram)
    dom = conn.lookupByName(domain_name)
    assert dom.UUIDString() == args["spec"]["uuid"] and dom.autostart()  # the same domain, autostart kept
    assert not run_module("kvm_domain", args)["changed"]
    assert start_and_find_nvram(dom) == nvram  # a new copy of the template at the next start
    assert identity(nvram)[0:2] != first[0:2]


def test_a_running_domain_keeps_its_nvram_until_it_stops(conn, domain_name, qemu_tmp, run_module):
    if not os.path.exists(OVMF_VARS_TEMPLATE):
        pytest.skip("OVMF is not installed (Debian package ovmf)")
    image = qemu_tmp / ("%s-disk0.qcow2" % domain_name)
    convert(image)
    args = {"spec": uefi_spec("UEFI db"), "disks": [{"path": str(image), "userdevice": 0, "ref": "Ref:12"}],
            "domain_type": "qemu", "name": domain_name}
    assert not run_module("kvm_domain", args).get("failed")
    dom = conn.lookupByName(domain_name)
    nvram = start_and_find_nvram(dom)

    dom.create()
    try:
        convert(image)
        r = run_module("kvm_domain", args)
        assert not r.get("failed"), r
        assert not r["nvram_reset"] and os.path.exists(nvram)
        assert any("is running, so its NVRAM was not reset" in w for w in r.get("warnings", [])), r
    finally:
        dom.destroy()
    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["nvram_reset"] and "replaced" in r["nvram_reset_reason"]
    assert not os.path.exists(nvram)
