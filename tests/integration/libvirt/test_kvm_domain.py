"""kvm_domain and kvm_boot_check against the real libvirtd, run through ansible-playbook.

Domains are of type ``qemu`` (TCG) with ``<interface type='user'>`` NICs only; every domain is
removed by the ``domain_name`` fixture, whatever the test did.
"""
import os
import pwd
import shutil
import stat
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]

X2K = "{urn:xen2kvm:migration:1}"


def make_spec(name, nics=2, firmware="bios"):
    return {
        "uuid": str(uuid.uuid4()),
        "name": name,
        "description": "integration test VM",
        "vcpus": 2,
        "vcpus_max": 2,
        "cores_per_socket": 2,
        "memory_mib": 256,
        "xen_domain_type": "hvm",
        "firmware": firmware,
        "pv_bootloader": "",
        "pv_args": "",
        "is_template": False,
        "tags": [],
        "actions_after_reboot": "restart",
        "actions_after_crash": "destroy",
        "actions_after_shutdown": "destroy",
        "has_nvram": False,
        "source": {"hostname": "xenserver1", "date": "2024-01-01", "product_brand": "XCP-ng",
                   "product_version": "8.2.1", "build_number": "", "xapi_version": "1.20",
                   "export_vsn": 2},
        "disks": [
            {"ref": "Ref:12", "userdevice": 0, "device": "xvda", "virtual_size": 16 << 20,
             "bootable": True, "name": name + " 0", "vdi_uuid": str(uuid.uuid4()), "mode": "RW"},
            {"ref": "Ref:13", "userdevice": 1, "device": "xvdb", "virtual_size": 8 << 20,
             "bootable": False, "name": name + " 1", "vdi_uuid": str(uuid.uuid4()), "mode": "RW"},
        ],
        "nics": [{"device": i, "mac": "AA:00:5E:00:53:%02X" % (i + 1), "mtu": 1500,
                  "network": "Pool-wide network associated with eth%d" % i, "bridge": "xenbr%d" % i}
                 for i in range(nics)],
    }


def make_images(directory, name):
    """Two small images: a qcow2 (when qemu-img exists) and a sparse raw file."""
    first = directory / ("%s-disk0.raw" % name)
    if shutil.which("qemu-img"):
        first = directory / ("%s-disk0.qcow2" % name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(first), "16M"], check=True)
    else:
        with open(str(first), "wb") as f:
            f.truncate(16 << 20)
    second = directory / ("%s-disk1.img" % name)  # no telling extension: format from header
    with open(str(second), "wb") as f:
        f.truncate(8 << 20)
    return [{"path": str(first), "userdevice": 0, "ref": "Ref:12"},
            {"path": str(second), "userdevice": 1, "ref": "Ref:13"}]


USER_MAP = {"Pool-wide network associated with eth0": "user", "xenbr1": "user"}


def base_args(name, spec, disks, **extra):
    args = {"spec": spec, "disks": disks, "network_map": USER_MAP, "domain_type": "qemu",
            "name": name}
    args.update(extra)
    return args


def stored(conn, name):
    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


# ------------------------------------------------------------------------------ kvm_domain


def test_define_rerun_change_and_check_mode(conn, domain_name, qemu_tmp, run_module):
    spec = make_spec("Integration VM")
    disks = make_images(qemu_tmp, domain_name)
    args = base_args(domain_name, spec, disks)

    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["changed"] and r["xml_changed"]
    assert r["domain"]["name"] == domain_name
    assert r["domain"]["state"] == "shutoff"
    assert r["domain"]["uuid"] == spec["uuid"]  # the Xen uuid was free
    xml1 = stored(conn, domain_name)
    assert r["xml"] == xml1
    root = ET.fromstring(xml1)
    assert root.get("type") == "qemu"
    assert root.findtext("metadata/%smigration/%ssource-uuid" % (X2K, X2K)) == spec["uuid"]
    migrated_at = root.findtext("metadata/%smigration/%smigrated-at" % (X2K, X2K))
    assert migrated_at.endswith("Z")
    assert [d.find("target").get("dev") for d in root.findall("devices/disk")] == ["vda", "vdb"]
    assert [d.find("driver").get("type") for d in root.findall("devices/disk")] == \
        [disks[0]["path"].rsplit(".", 1)[1], "raw"]
    assert [i.find("mac").get("address") for i in root.findall("devices/interface")] == \
        ["aa:00:5e:00:53:01", "aa:00:5e:00:53:02"]
    assert {i.get("type") for i in root.findall("devices/interface")} == {"user"}

    # rerun: same input, nothing changes (UUID, migrated-at and machine version are kept)
    r = run_module("kvm_domain", args, diff=True)
    assert not r.get("failed"), r
    assert not r["changed"]
    assert stored(conn, domain_name) == xml1

    # check mode, same input: predicted unchanged
    r = run_module("kvm_domain", args, check=True, diff=True)
    assert not r.get("failed"), r
    assert not r["changed"], r["diff"]

    # check mode with more memory: predicted change, stored XML untouched
    bigger = dict(args, memory_mib=512)
    r = run_module("kvm_domain", bigger, check=True, diff=True)
    assert not r.get("failed"), r
    assert r["changed"]
    assert "262144" in r["diff"]["before"] and "524288" in r["diff"]["after"]
    assert stored(conn, domain_name) == xml1

    # real run with more memory: changed, diff shows the memory change
    r = run_module("kvm_domain", bigger, diff=True)
    assert not r.get("failed"), r
    assert r["changed"]
    assert "<memory unit='KiB'>262144</memory>" in r["diff"]["before"]
    assert "<memory unit='KiB'>524288</memory>" in r["diff"]["after"]
    xml2 = stored(conn, domain_name)
    root2 = ET.fromstring(xml2)
    assert root2.findtext("memory") == "524288"
    assert root2.findtext("uuid") == root.findtext("uuid")
    assert root2.findtext("metadata/%smigration/%smigrated-at" % (X2K, X2K)) == migrated_at
    assert root2.find("os/type").get("machine") == root.find("os/type").get("machine")

    # and it settles again
    r = run_module("kvm_domain", bigger)
    assert not r["changed"]
    r = run_module("kvm_domain", bigger, check=True)
    assert not r["changed"]


def test_unmapped_network_fails(conn, domain_name, qemu_tmp, run_module):
    spec = make_spec("Unmapped", nics=3)
    r = run_module("kvm_domain", base_args(domain_name, spec, make_images(qemu_tmp, domain_name)))
    assert r.get("failed")
    assert "Pool-wide network associated with eth2" in r["msg"]
    assert "eth0" not in r["msg"] and "eth1" not in r["msg"]
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(domain_name)


def test_foreign_domain_refused_without_force(conn, domain_name, qemu_tmp, run_module):
    foreign = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>"
               "<os><type arch='x86_64'>hvm</type></os></domain>" % domain_name)
    conn.defineXML(foreign)
    before = stored(conn, domain_name)
    args = base_args(domain_name, make_spec("Foreign"), make_images(qemu_tmp, domain_name))

    r = run_module("kvm_domain", args)
    assert r.get("failed")
    assert "force" in r["msg"] and "no xen2kvm metadata" in r["msg"]
    assert stored(conn, domain_name) == before

    r = run_module("kvm_domain", dict(args, state="absent"))
    assert r.get("failed") and "force" in r["msg"]
    assert stored(conn, domain_name) == before

    r = run_module("kvm_domain", dict(args, force=True))
    assert not r.get("failed"), r
    assert r["changed"]
    after = ET.fromstring(stored(conn, domain_name))
    assert after.findtext("uuid") == ET.fromstring(before).findtext("uuid")
    assert after.find("metadata/%smigration" % X2K) is not None

    # a domain migrated from another Xen VM is foreign too
    other = dict(args, spec=make_spec("Other VM"))
    r = run_module("kvm_domain", other)
    assert r.get("failed") and "another VM" in r["msg"]


def test_running_then_absent(conn, domain_name, qemu_tmp, run_module):
    disks = make_images(qemu_tmp, domain_name)
    args = base_args(domain_name, make_spec("Runner", nics=1), disks, memory_mib=64,
                     state="running", autostart=False)
    r = run_module("kvm_domain", args, check=True)
    assert r["changed"] and r["domain"]["state"] == "running"
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(domain_name)

    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["changed"] and r["started"]
    assert conn.lookupByName(domain_name).isActive()

    r = run_module("kvm_domain", args)
    assert not r["changed"] and not r["started"]

    absent = {"name": domain_name, "state": "absent"}
    r = run_module("kvm_domain", absent, check=True, diff=True)
    assert r["changed"] and domain_name in r["diff"]["before"]
    assert conn.lookupByName(domain_name).isActive()

    r = run_module("kvm_domain", absent)
    assert not r.get("failed"), r
    assert r["changed"] and r["domain"]["state"] == "absent"
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(domain_name)
    assert all(os.path.exists(d["path"]) for d in disks)  # images kept

    r = run_module("kvm_domain", absent)
    assert not r.get("failed") and not r["changed"]


def test_absent_remove_disks(conn, domain_name, qemu_tmp, run_module):
    disks = make_images(qemu_tmp, domain_name)
    spec = make_spec("Remover", nics=0)
    r = run_module("kvm_domain", base_args(domain_name, spec, disks))
    assert r["changed"]
    r = run_module("kvm_domain", {"spec": spec, "name": domain_name, "state": "absent",
                                  "remove_disks": True})
    assert not r.get("failed"), r
    assert sorted(r["removed_disks"]) == sorted(d["path"] for d in disks)
    assert not any(os.path.exists(d["path"]) for d in disks)


def test_uefi_nvram_removed_with_domain(conn, domain_name, qemu_tmp, run_module):
    spec = make_spec("UEFI VM", nics=1, firmware="uefi")
    args = base_args(domain_name, spec, make_images(qemu_tmp, domain_name)[:1], memory_mib=128)
    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    root = ET.fromstring(stored(conn, domain_name))
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/type").get("machine").startswith("pc-q35-")
    assert root.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "no"
    assert not run_module("kvm_domain", args)["changed"]

    dom = conn.lookupByName(domain_name)
    dom.create()  # firmware selection and the NVRAM file happen at start
    nvram = ET.fromstring(dom.XMLDesc(0)).findtext("os/nvram")
    assert nvram and os.path.exists(nvram)
    r = run_module("kvm_domain", {"name": domain_name, "state": "absent"})
    assert not r.get("failed"), r
    assert not os.path.exists(nvram)


def test_pool_moves_images(conn, domain_name, qemu_tmp, run_module):
    pool_dir = qemu_tmp / "pool"
    pool_dir.mkdir()
    src_dir = qemu_tmp / "src"
    src_dir.mkdir()
    pool_name = domain_name + "-pool"
    pool = conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>"
        % (pool_name, pool_dir))
    try:
        pool.create()
        disks = make_images(src_dir, domain_name)
        args = base_args(domain_name, make_spec("Pooled", nics=0), disks, pool=pool_name)
        r = run_module("kvm_domain", args, check=True)
        assert r["changed"] and len(r["placed"]) == 2
        assert all(os.path.exists(d["path"]) for d in disks)

        r = run_module("kvm_domain", args)
        assert not r.get("failed"), r
        assert r["changed"]
        moved = [str(pool_dir / os.path.basename(d["path"])) for d in disks]
        assert [d["path"] for d in r["disks"]] == moved
        assert not any(os.path.exists(d["path"]) for d in disks)
        qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
        for path in moved:
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == qemu_uid
        assert sorted(pool.listVolumes()) == sorted(os.path.basename(p) for p in moved)
        sources = [d.find("source").get("file")
                   for d in ET.fromstring(stored(conn, domain_name)).findall("devices/disk")]
        assert sources == moved

        r = run_module("kvm_domain", args)  # sources gone, images in the pool: nothing to do
        assert not r.get("failed"), r
        assert not r["changed"]
    finally:
        try:
            pool.destroy()
        except libvirt.libvirtError:
            pass
        pool.undefine()


# ------------------------------------------------------------------------------ kvm_boot_check

LOGIN_INIT = """#!/bin/sh
/bin/busybox mount -t devtmpfs dev /dev
echo "xen2kvm test banner: Debian GNU/Linux 12 x2k ttyS0"
echo
printf "xen2kvm-test login: "
exec /bin/busybox sleep 100000
"""

SILENT_INIT = """#!/bin/sh
/bin/busybox mount -t devtmpfs dev /dev
echo "xen2kvm-marker: this guest never shows a prompt"
exec /bin/busybox sleep 100000
"""


@pytest.mark.slow
def test_boot_check_login(conn, kernel_domain, run_module):
    name = kernel_domain(LOGIN_INIT)
    args = {"name": name, "timeout": 180, "wait_for": "login", "poll_interval": 0.5}

    r = run_module("kvm_boot_check", args, check=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["started"]
    assert not conn.lookupByName(name).isActive()

    r = run_module("kvm_boot_check", args)
    assert not r.get("failed"), r
    assert r["changed"] and r["started"]
    assert r["method"] == "login"
    assert r["seconds"] > 0
    assert r["console_log"] == "/var/log/libvirt/qemu/%s-serial.log" % name
    lines = r["banner"].splitlines()
    assert lines[-1].startswith("xen2kvm-test login:")
    assert any("xen2kvm test banner" in ln for ln in lines)
    assert len(lines) <= 20
    assert r["state"] == "running"

    r = run_module("kvm_boot_check", dict(args, wait_for="any"))  # already running
    assert not r.get("failed"), r
    assert not r["changed"] and r["method"] == "login"


@pytest.mark.slow
def test_boot_check_timeout(conn, kernel_domain, run_module):
    name = kernel_domain(SILENT_INIT)
    r = run_module("kvm_boot_check", {"name": name, "timeout": 45, "wait_for": "login"})
    assert r.get("failed")
    assert "no login prompt after" in r["msg"]
    assert "xen2kvm-marker: this guest never shows a prompt" in r["msg"]
    assert "xen2kvm-marker" in r["tail"]
    assert len(r["tail"].splitlines()) <= 40
    assert r["started"]


# The guest loads these and what they need (kernel_with_modules orders them by modules.dep).
VIRTIO_BLK_MODULES = ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko")

DISK_FILLING_INIT = """#!/bin/sh
/bin/busybox mount -t devtmpfs dev /dev
for m in {modules}; do /bin/busybox insmod /$m || echo "xen2kvm-marker: insmod $m failed"; done
echo "xen2kvm-marker: writing 64 MiB to vda"
/bin/busybox dd if=/dev/zero of=/dev/vda bs=1M count=64 conv=fsync
echo "xen2kvm-marker: the write came back"
printf "xen2kvm-test login: "
exec /bin/busybox sleep 100000
"""


@pytest.fixture
def full_filesystem(qemu_tmp):
    """A 16 MiB tmpfs the guest's disk image lives on: the image is sparse and larger."""
    mountpoint = qemu_tmp / "small-fs"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "x2k-it-full", str(mountpoint)],
                   check=True)
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.slow
def test_boot_check_fails_at_once_on_a_guest_paused_on_a_full_disk(full_filesystem, conn, kernel_domain,
                                                                   kernel_with_modules, run_module):
    """qemu pauses a guest whose image write fails with ENOSPC; the boot check must say so at
    once instead of waiting out its timeout beside a paused guest."""
    kernel, modules = kernel_with_modules(VIRTIO_BLK_MODULES, full_filesystem.parent)
    image = full_filesystem / "disk.raw"
    with open(str(image), "wb") as f:
        f.truncate(256 << 20)
    disk = """
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='%s'/><target dev='vda' bus='virtio'/></disk>""" % image
    init = DISK_FILLING_INIT.replace("{modules}", " ".join(modules))
    domain_name = kernel_domain(init, kernel=kernel, files=modules, devices=disk)

    r = run_module("kvm_boot_check", {"name": domain_name, "timeout": 600, "wait_for": "login",
                                      "poll_interval": 0.5})

    assert r.get("failed"), r
    assert "paused after" in r["msg"], r["msg"]
    assert "vda: no space left on the KVM host's filesystem holding it" in r["msg"]
    assert "xen2kvm-marker: writing 64 MiB to vda" in r["tail"]
    assert "the write came back" not in r["tail"]
    assert r["seconds"] < 300, "waited %s s beside a paused guest" % r["seconds"]
    assert r["state"] == "paused"
    state, reason = conn.lookupByName(domain_name).state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)


def test_boot_check_missing_and_stopped(conn, kernel_domain, run_module):
    r = run_module("kvm_boot_check", {"name": "x2k-it-does-not-exist"})
    assert r.get("failed") and "does not exist" in r["msg"]
    name = kernel_domain(SILENT_INIT)
    r = run_module("kvm_boot_check", {"name": name, "start": False})
    assert r.get("failed") and "not running" in r["msg"]
    assert not conn.lookupByName(name).isActive()
