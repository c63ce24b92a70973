"""kvm_pool and kvm_preflight against the real libvirtd."""

import pathlib
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain_xml import X2K_NS

libvirt = pytest.importorskip("libvirt")

XEN_UUID = "3f8e0b5a-8d0c-4c57-9e57-0d5e2a5f0a11"


def test_pool_define_build_start_is_idempotent(conn, pool_name, qemu_tmp, run_module):
    path = qemu_tmp / "images"
    args = {"name": pool_name, "path": str(path)}

    r = run_module("kvm_pool", args, check=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["actions"] == ["define", "build", "start", "autostart"]
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName(pool_name)
    assert not path.exists()

    r = run_module("kvm_pool", args)
    assert not r.get("failed"), r
    assert r["changed"] and r["actions"] == ["define", "build", "start", "autostart"]
    pool = conn.storagePoolLookupByName(pool_name)
    assert pool.isActive() and pool.autostart() and path.is_dir()
    assert ET.fromstring(pool.XMLDesc(0)).findtext("target/path") == str(path)

    r = run_module("kvm_pool", args)
    assert not r.get("failed") and r["changed"] is False and r["actions"] == [], r

    pool.destroy()
    r = run_module("kvm_pool", dict(args, autostart=False))
    assert r["changed"] and r["actions"] == ["start", "no autostart"], r
    assert pool.isActive() and not pool.autostart()

    r = run_module("kvm_pool", dict(args, path=str(qemu_tmp / "elsewhere")))
    assert r.get("failed") and "exists as a dir pool at %s, not a dir pool at %s" % (path, qemu_tmp / "elsewhere") in r["msg"]


def domain_xml(name, source_uuid=None):
    metadata = ""
    if source_uuid is not None:
        metadata = ("<metadata><x2k:migration xmlns:x2k='%s'><x2k:source-uuid>%s</x2k:source-uuid>"
                    "<x2k:source-name>Web 01</x2k:source-name></x2k:migration></metadata>" % (X2K_NS, source_uuid))
    return ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>%s"
            "<os><type arch='x86_64'>hvm</type></os></domain>" % (name, metadata))


def preflight_args(qemu_tmp, name, **extra):
    return dict({"images_dir": str(qemu_tmp), "disk_bytes": [1 << 20], "domain_name": name,
                 "source_uuid": XEN_UUID, "margin_bytes": 0}, **extra)


def test_preflight_domain_name_free_or_this_sources(conn, domain_name, qemu_tmp, run_module):
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name), check=True)
    assert not r.get("failed") and r["problems"] == [], r
    assert r["domain_state"] is None and r["images_dir"] == str(qemu_tmp)

    conn.defineXML(domain_xml(domain_name, XEN_UUID))
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name))
    assert not r.get("failed") and r["problems"] == [], r
    assert r["domain_state"] == "shut off"  # read through libvirt, for migrate.yml's rerun rule
    assert r["kvm_usable"] is (pathlib.Path("/dev/kvm").exists() and not pathlib.Path("/sys/module/kvm_pvm").exists())


def test_preflight_checks_space_in_the_pools_directory(conn, pool_name, domain_name, qemu_tmp, run_module):
    args = preflight_args(qemu_tmp, domain_name, pool=pool_name)
    del args["images_dir"]
    r = run_module("kvm_preflight", args)
    assert r.get("failed") and "storage pool %s" % pool_name in r["msg"] and "not found" in r["msg"], r

    path = qemu_tmp / "pooldir"
    r = run_module("kvm_pool", {"name": pool_name, "path": str(path)})
    assert not r.get("failed"), r
    r = run_module("kvm_preflight", args)
    assert not r.get("failed") and r["images_dir"] == str(path), r

    r = run_module("kvm_preflight", dict(args, disk_bytes=[1 << 60]))
    assert r.get("failed") and str(path) in r["msg"], r  # the space shortfall names the pool's directory


def test_preflight_domain_name_taken(conn, domain_name, qemu_tmp, run_module):
    conn.defineXML(domain_xml(domain_name))
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name))
    assert r.get("failed")
    assert "domain name %s is taken by a libvirt domain" % domain_name in r["msg"]
    assert "not migrated by xen2kvm" in r["msg"]

    conn.lookupByName(domain_name).undefine()
    other = "0b7a1d52-1c1e-4b5e-8a55-6e1e8f0c2b22"
    conn.defineXML(domain_xml(domain_name, other))
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name))
    assert r.get("failed") and "migrated from another Xen VM (Web 01, uuid %s), not from %s" % (other, XEN_UUID) in r["msg"]
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name, source_uuid=other))
    assert not r.get("failed"), r


def test_preflight_uefi_firmware_from_libvirts_domain_capabilities(conn, domain_name, qemu_tmp, run_module):
    """This host has Debian's ovmf: UEFI on q35 passes, with or without Secure Boot. The i440fx
    machine has no Secure Boot build (it needs SMM), which libvirt reports and preflight names."""
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name, firmware="uefi"))
    assert not r.get("failed") and r["problems"] == [], r
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name, firmware="uefi", secure_boot=True))
    assert not r.get("failed") and r["problems"] == [], r
    r = run_module("kvm_preflight", preflight_args(qemu_tmp, domain_name, firmware="uefi", secure_boot=True,
                                                   machine="pc"))
    assert r.get("failed") and len(r["problems"]) == 1, r
    assert "no Secure Boot build of OVMF for machine pc" in r["problems"][0] and "ovmf" in r["problems"][0]
