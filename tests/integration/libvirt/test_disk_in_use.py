"""kvm_domain and kvm_boot_check refuse to start a domain whose disk image the host still holds:
a process with the image open, a loop device backed by it, a filesystem mounted from that loop
device.  Real libvirtd, real loop devices and mounts; the domain's own qemu holding the image
once it runs is of course no reason to refuse (issue 7, item 13)."""
import shutil
import subprocess
import uuid

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None,
                                 reason="needs losetup and mkfs.ext4")]


def one_disk_spec(name):
    return {"uuid": str(uuid.uuid4()), "name": name, "vcpus": 1, "vcpus_max": 1, "cores_per_socket": 1,
            "memory_mib": 64, "xen_domain_type": "hvm", "firmware": "bios", "nics": [],
            "disks": [{"ref": "Ref:1", "userdevice": 0, "device": "xvda", "virtual_size": 16 << 20,
                       "bootable": True, "name": name + " 0", "vdi_uuid": str(uuid.uuid4()), "mode": "RW"}]}


@pytest.fixture
def image(qemu_tmp):
    path = str(qemu_tmp / "disk0.raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", path, "16M"], check=True)
    return path


@pytest.fixture
def loop_of(image):
    """loop_of(path) attaches ``path`` to a loop device; every one is detached afterwards."""
    attached = []

    def attach(path):
        device = subprocess.run(["losetup", "--find", "--show", path], check=True, stdout=subprocess.PIPE,
                                universal_newlines=True).stdout.strip()
        attached.append(device)
        return device

    yield attach
    for device in attached:
        subprocess.run(["losetup", "-d", device], check=False)


def test_start_refused_while_the_host_holds_the_disk(conn, domain_name, qemu_tmp, image, loop_of, run_module):
    args = {"spec": one_disk_spec(domain_name), "name": domain_name, "disks": [image], "domain_type": "qemu",
            "state": "defined"}
    assert not run_module("kvm_domain", args).get("failed")
    running = dict(args, state="running")

    # a process has the image open
    with open(image, "rb") as handle:
        holder = subprocess.Popen(["sleep", "600"], stdin=handle)
    try:
        for check in (True, False):
            r = run_module("kvm_domain", running, check=check)
            assert r.get("failed"), r
            assert "not starting domain %s" % domain_name in r["msg"]
            assert "%s is in use: sleep (pid %d) has it open" % (image, holder.pid) in r["msg"], r["msg"]
        r = run_module("kvm_boot_check", {"name": domain_name, "timeout": 5})
        assert r.get("failed") and "sleep (pid %d)" % holder.pid in r["msg"], r
        assert not conn.lookupByName(domain_name).isActive()
    finally:
        holder.kill()
        holder.wait()

    # attached to a loop device, and that loop device mounted
    device = loop_of(image)
    mountpoint = qemu_tmp / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "ro", device, str(mountpoint)], check=True)
    try:
        r = run_module("kvm_boot_check", {"name": domain_name, "timeout": 5})
        assert r.get("failed"), r
        assert "loop device %s" % device in r["msg"] and "%s mounted on %s" % (device, mountpoint) in r["msg"], r["msg"]
        r = run_module("kvm_domain", running)
        assert r.get("failed") and "loop device %s" % device in r["msg"], r
        assert not conn.lookupByName(domain_name).isActive()
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    r = run_module("kvm_domain", running)  # the loop device alone is enough to refuse
    assert r.get("failed") and "loop device %s" % device in r["msg"] and "mounted" not in r["msg"], r
    subprocess.run(["losetup", "-d", device], check=True)

    # free: it starts, and a rerun while its own qemu holds the disk is fine
    r = run_module("kvm_domain", running)
    assert not r.get("failed"), r
    assert r["started"] and conn.lookupByName(domain_name).isActive()
    r = run_module("kvm_domain", running)
    assert not r.get("failed") and not r["changed"], r
