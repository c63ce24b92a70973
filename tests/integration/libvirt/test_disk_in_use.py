"""kvm_domain and kvm_boot_check refuse to start a domain whose disk image the host still holds:
a process with the image open, a loop device backed by it, a filesystem mounted from that loop
device.  Real libvirtd, real loop devices and mounts; the domain's own qemu holding the image
once it runs is of course no reason to refuse (issue 7, item 13)."""
import shutil
import subprocess
import time
import uuid

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import loops_for_file

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


def wait_until_no_loop_backs(path, timeout=60):
    """``losetup -d`` only asks: the kernel tears the device down once its last opener (udev's
    probe after the umount, say) closes it, so the device may still map ``path`` for a moment."""
    deadline = time.monotonic() + timeout
    while loops_for_file(path):
        assert time.monotonic() < deadline, "still backed by a loop device after %d s: %s" % (timeout, path)
        time.sleep(0.1)


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

    # attached to a loop device, and that loop device mounted.  The mount lives in a mount
    # namespace of the test's own: one on the host would be copied into every namespace the other
    # lane creates meanwhile (libvirt's qemus, sandboxes), and would keep the loop device busy
    # after our umount.  That case is exactly why holders in other namespaces must be named.
    device = loop_of(image)
    mountpoint = qemu_tmp / "mnt"
    mountpoint.mkdir()
    mounter = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                'mount -o ro "$1" "$2" && echo mounted && exec sleep 600', "sh", device,
                                str(mountpoint)], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert mounter.stdout.readline().strip() == "mounted"
        mounted = "%s mounted on %s in the mount namespace of sleep (pid %d)" % (device, mountpoint, mounter.pid)
        r = run_module("kvm_boot_check", {"name": domain_name, "timeout": 5})
        assert r.get("failed"), r
        assert "loop device %s" % device in r["msg"] and mounted in r["msg"], r["msg"]
        r = run_module("kvm_domain", running)
        assert r.get("failed") and "loop device %s" % device in r["msg"] and mounted in r["msg"], r
        assert not conn.lookupByName(domain_name).isActive()
    finally:
        mounter.kill()
        mounter.wait()
    r = run_module("kvm_domain", running)  # the loop device alone is enough to refuse
    assert r.get("failed") and "loop device %s" % device in r["msg"] and "mounted" not in r["msg"], r
    subprocess.run(["losetup", "-d", device], check=True)
    wait_until_no_loop_backs(image)

    # free: it starts, and a rerun while its own qemu holds the disk is fine
    r = run_module("kvm_domain", running)
    assert not r.get("failed"), r
    assert r["started"] and conn.lookupByName(domain_name).isActive()
    r = run_module("kvm_domain", running)
    assert not r.get("failed") and not r["changed"], r
