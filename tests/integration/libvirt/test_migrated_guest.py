"""The whole chain into a real libvirtd: a Xen-shaped guest's XVA → xva_convert → guest_fixup →
kvm_domain (domain type qemu, user-mode NIC) → kvm_boot_check sees its login prompt; the
domain keeps the Xen VM's MAC, vCPUs and memory; a rerun changes nothing; then it is removed."""

import os
import xml.etree.ElementTree as ET

import pytest

import guest_factory

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import fix_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_migrated_guest_boots_under_libvirt(conn, domain_name, qemu_tmp, run_module):
    try:
        guest = guest_factory.build_variant("deb12-pv", qemu_tmp / "build")
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    xva = guest.xva(str(qemu_tmp / "vm.xva"), checksum="sha1", compression="gzip")
    converted = convert_xva(xva, str(qemu_tmp / "images"))
    os.unlink(xva)
    fixed = fix_guest([d["path"] for d in converted["disks"]], spec=converted["spec"])
    assert fixed["changed"] is True

    args = {"spec": converted["spec"], "disks": converted["disks"], "name": domain_name,
            "domain_type": "qemu", "default_network": "user", "state": "defined"}
    defined = run_module("kvm_domain", args)
    assert defined.get("failed") is not True, defined
    assert defined["changed"] is True
    root = ET.fromstring(conn.lookupByName(domain_name).XMLDesc(0))
    assert [m.get("address") for m in root.iter("mac")] == [n["mac"] for n in converted["spec"]["nics"]]
    assert root.findtext("vcpu") == str(converted["spec"]["vcpus"])
    assert int(root.findtext("memory")) == converted["spec"]["memory_mib"] * 1024
    assert root.find("devices/disk/target").get("dev") == "vda"

    booted = run_module("kvm_boot_check", {"name": domain_name, "timeout": 420, "wait_for": "login"})
    assert booted.get("failed") is not True, booted.get("msg")
    assert booted["method"] == "login" and booted["seconds"] > 0
    assert "%s login:" % guest.hostname in booted["banner"]
    print("\nmigrated %s: login: via libvirt after %.1f s" % (guest.name, booted["seconds"]))

    again = run_module("kvm_domain", args)
    assert again["changed"] is False
    gone = run_module("kvm_domain", {"name": domain_name, "state": "absent"})
    assert gone["changed"] is True
    assert domain_name not in [d.name() for d in conn.listAllDomains()]
