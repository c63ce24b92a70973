"""GuestMount against real loop devices and mounts (needs root).

Images are built in tmp with sfdisk + mkfs -d from tiny trees; a static busybox gives the
guest a shell so run_in_chroot can be exercised. Every test checks that nothing is left
behind: no mount under the temp dir, no loop device backed by the image, no temp dir.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import (
    inspect_guest,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import (
    GuestCommandError,
    GuestError,
    GuestMount,
    host_mount_points,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import (
    attach,
    loop_status,
    loops_for_file,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import (
    read_partition_table,
)

MiB = 1024 * 1024
BUSYBOX = shutil.which("busybox")
COLLECTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                           "build", "collections")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
    pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="no loop devices"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("sfdisk") is None,
                       reason="needs e2fsprogs and sfdisk"),
]

ROOT_UUID = "c0ffee00-1111-4222-8333-444444444444"
BOOT_UUID = "b0070000-1111-4222-8333-444444444444"

OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n' \
             "VERSION_CODENAME=bookworm\n"


# --------------------------------------------------------------------------- image builders


def _write(root, path, text):
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fobj:
        fobj.write(text)


def root_tree(tmp_path, fstab, name="rootfs", extra_dirs=()):
    """A minimal Debian-looking root: fstab, os-release, mount points, busybox shell."""
    tree = tmp_path / name
    for directory in ("etc", "boot", "dev", "proc", "sys", "run", "tmp", "bin", "var") + tuple(
            extra_dirs):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    _write(tree, "/etc/fstab", fstab)
    _write(tree, "/etc/os-release", OS_RELEASE)
    _write(tree, "/etc/debian_version", "12.5\n")
    if BUSYBOX:
        shutil.copy2(BUSYBOX, str(tree / "bin" / "busybox"))
        for applet in ("sh", "true", "false", "cat", "ls", "mount", "sleep"):
            os.symlink("busybox", str(tree / "bin" / applet))
    return tree


def make_fs(tmp_path, kind, size, tree=None, fs_uuid=None, label=None):
    """A filesystem image file built without mounting (mkfs -d)."""
    path = tmp_path / ("fs-%s.img" % uuid.uuid4().hex[:8])
    with open(path, "wb") as fobj:
        fobj.truncate(size)
    if kind == "swap":
        argv = ["mkswap"] + (["-U", fs_uuid] if fs_uuid else []) + [str(path)]
    elif kind == "vfat":
        argv = ["mkfs.vfat", "-i", fs_uuid.replace("-", "")] if fs_uuid else ["mkfs.vfat"]
        argv.append(str(path))
    else:
        argv = ["mkfs." + kind, "-q", "-F"]
        if fs_uuid:
            argv += ["-U", fs_uuid]
        if label:
            argv += ["-L", label]
        if tree is not None:
            argv += ["-d", str(tree)]
        argv.append(str(path))
    subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return path


def sfdisk_image(tmp_path, script, size, name="disk.img"):
    """A sparse image of ``size`` bytes partitioned by the sfdisk ``script``; (path, layout)."""
    image = tmp_path / name
    with open(image, "wb") as fobj:
        fobj.truncate(size)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
                   input=script, universal_newlines=True, check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return str(image), read_partition_table(str(image))


def copy_filesystems(image, layout, filesystems):
    """Copy {partition number: filesystem image} into the partitions of ``image``."""
    with open(image, "r+b") as dst:
        for number, fs_image in filesystems.items():
            part = layout.partition(number)
            assert os.path.getsize(fs_image) <= part.size
            dst.seek(part.start)
            with open(fs_image, "rb") as src:
                shutil.copyfileobj(src, dst)
    return image


@pytest.fixture
def mbr_image(tmp_path):
    """MBR: 1 = /boot ext2, 2 = / ext4, 3 = swap; fstab by xvd name, UUID and xvd name."""
    fstab = ("/dev/xvda1 /boot ext2 defaults 0 2\n"
             "UUID=%s / ext4 errors=remount-ro 0 1\n"
             "/dev/xvda3 none swap sw 0 0\n"
             "proc /proc proc defaults 0 0\n" % ROOT_UUID)
    tree = root_tree(tmp_path, fstab)
    boot = tmp_path / "bootfs"
    _write(boot, "/grub/grub.cfg", "linux /vmlinuz-6.1.0-18-amd64 root=/dev/xvda2 console=hvc0\n")
    _write(boot, "/vmlinuz-6.1.0-18-amd64", "kernel")
    image, layout = sfdisk_image(
        tmp_path, "label: dos\nstart=2048, size=8MiB, type=83\nsize=24MiB, type=83\ntype=82\n",
        40 * MiB)
    return copy_filesystems(image, layout, {
        1: make_fs(tmp_path, "ext2", 8 * MiB, boot, BOOT_UUID),
        2: make_fs(tmp_path, "ext4", 24 * MiB, tree, ROOT_UUID),
        3: make_fs(tmp_path, "swap", 4 * MiB)})


def assert_clean(image, root):
    """No loop device backs ``image``, nothing is mounted at/below ``root``, root is gone."""
    assert loops_for_file(image) == []
    leftovers = [p for p in host_mount_points() if p == root or p.startswith(root + "/")]
    assert leftovers == []
    assert not os.path.exists(root)


# --------------------------------------------------------------------------- tests


def test_mbr_guest_mount_and_chroot(mbr_image):
    with GuestMount([mbr_image]) as guest:
        root = guest.root
        assert guest.root_partition == "xvda2"
        assert os.path.ismount(root)
        boot = guest.guest_path("/boot")
        assert os.path.ismount(boot)
        assert os.path.isfile(guest.guest_path("/boot/grub/grub.cfg"))
        kinds = [(m["kind"], m["guest_path"]) for m in guest.mounts]
        assert kinds[:2] == [("root", "/"), ("fstab", "/boot")]
        # A private /dev (with its devpts and shm) and /run; nothing is bound from the host.
        assert sorted(k for k, _path in kinds[2:]) == ["private"] * 4
        for private in ("/dev", "/run", "/dev/pts"):
            assert os.path.ismount(guest.guest_path(private))
        # /proc and /sys are mounted per command, in that command's namespaces only.
        for fresh in ("/proc", "/sys"):
            assert not os.path.ismount(guest.guest_path(fresh))
        assert all("nodev" in m["options"] and "nosuid" in m["options"]
                   for m in guest.mounts if m["kind"] in ("root", "fstab"))
        # Whole disk at offset 0 for grub-install; partitions at their own offsets.
        (whole,) = guest.whole_disk_loops
        assert loop_status(whole)["offset"] == 0 and loop_status(whole)["sizelimit"] == 0
        assert set(guest.device_map) == {"xvda", "xvda1", "xvda2"}  # swap gets no loop
        assert guest.device_map["xvda"] == whole
        assert loop_status(guest.device_map["xvda2"])["offset"] == 9 * MiB  # 1 MiB + the 8 MiB /boot
        assert len(loops_for_file(mbr_image)) == 3
        assert guest.loop_for("/dev/sda2") == guest.device_map["xvda2"]
        assert guest.loop_for("UUID=%s" % BOOT_UUID.upper()) == guest.device_map["xvda1"]
        assert guest.loop_for("xvda") == whole
        # Writable: a fixup can change files and they land on the image.
        with open(guest.guest_path("/etc/xen2kvm-test"), "w") as fobj:
            fobj.write("written\n")
        facts = inspect_guest(root, disk=mbr_image)
        assert facts["os"]["codename"] == "bookworm"
        assert facts["bootloader"]["boot_style"] == "pv-no-mbr-code"
        assert [e["mountpoint"] for e in facts["fstab"]][:2] == ["/boot", "/"]
        if BUSYBOX:
            assert guest.run_in_chroot(["/bin/true"]).returncode == 0
            out = guest.run_in_chroot(["/bin/sh", "-c", "cat /etc/xen2kvm-test; echo $FOO"],
                                      env={"FOO": "bar"}).stdout
            assert out == "written\nbar\n"
            # /proc inside is the command's own: the kernel's files, but only its own processes.
            assert "cpu" in guest.run_in_chroot(["/bin/cat", "/proc/cpuinfo"]).stdout
            assert guest.run_in_chroot(["/bin/sh", "-c", "cd /proc && echo [0-9]*"]).stdout == "1\n"
            assert guest.run_in_chroot(["/bin/false"], check=False).returncode == 1
            with pytest.raises(GuestCommandError, match="exit code 1"):
                guest.run_in_chroot(["/bin/false"])
    assert_clean(mbr_image, root)
    # The write survived the unmount.
    with GuestMount([mbr_image], readonly=True) as guest:
        with open(guest.guest_path("/etc/xen2kvm-test")) as fobj:
            assert fobj.read() == "written\n"
        root = guest.root
    assert_clean(mbr_image, root)


def test_readonly_mount(mbr_image):
    before = os.stat(mbr_image).st_mtime
    with GuestMount([mbr_image], readonly=True) as guest:
        assert all(loop_status(dev)["read_only"] for dev in guest.device_map.values())
        with pytest.raises(OSError):
            open(guest.guest_path("/etc/nope"), "w")
        assert os.path.ismount(guest.guest_path("/boot"))
        root = guest.root
    assert_clean(mbr_image, root)
    assert os.stat(mbr_image).st_mtime == before


def test_exception_inside_with_cleans_up(mbr_image):
    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with GuestMount([mbr_image]) as guest:
            seen["root"] = guest.root
            assert os.path.ismount(guest.guest_path("/boot"))
            raise RuntimeError("boom")
    assert_clean(mbr_image, seen["root"])


def test_busy_mount_is_lazily_unmounted_and_reported(mbr_image):
    with GuestMount([mbr_image], bind_host=False) as guest:
        root = guest.root
        # A host process (not in the chroot, so not killed) keeps /boot busy.
        holder = subprocess.Popen(["sleep", "30"], cwd=guest.guest_path("/boot"))
    try:
        assert any("lazily" in w for w in guest.cleanup_warnings)
        assert not [p for p in host_mount_points() if p.startswith(root)]
    finally:
        holder.kill()
        holder.wait()
    # Once the last user is gone the kernel frees the deferred loop device.
    deadline = time.monotonic() + 5
    while loops_for_file(mbr_image) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loops_for_file(mbr_image) == []


SIGTERM_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
with GuestMount([sys.argv[2]]) as guest:
    print(json.dumps({"root": guest.root, "loops": guest.whole_disk_loops}), flush=True)
    time.sleep(60)
print("not reached", flush=True)
"""


def test_sigterm_while_mounted_cleans_up(mbr_image):
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, COLLECTIONS, mbr_image],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
    try:
        info = json.loads(child.stdout.readline())
        assert os.path.ismount(info["root"])
        assert loops_for_file(mbr_image)
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0
    assert "GuestInterrupted" in err and "SIGTERM" in err
    assert "not reached" not in _out
    assert_clean(mbr_image, info["root"])


def test_refuses_image_already_on_a_loop_device(mbr_image):
    loop = attach(mbr_image, read_only=True)
    try:
        with pytest.raises(GuestError, match="already attached to loop device.*%s" % loop.device):
            with GuestMount([mbr_image]):
                pass
        assert [s["device"] for s in loops_for_file(mbr_image)] == [loop.device]
    finally:
        loop.detach()
    assert loops_for_file(mbr_image) == []


def test_refuses_image_held_open_by_a_process(mbr_image):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; f = open(sys.argv[1], 'rb'); "
                               "print('ok', flush=True); time.sleep(30)", mbr_image],
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(GuestError, match="in use .*pid %d" % holder.pid):
            with GuestMount([mbr_image]):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert loops_for_file(mbr_image) == []


def test_bare_filesystem_disk(tmp_path):
    tree = root_tree(tmp_path, "/dev/xvda / ext4 errors=remount-ro 0 1\n")
    image = make_fs(tmp_path, "ext4", 32 * MiB, tree, label="pvroot")
    with GuestMount([str(image)]) as guest:
        root = guest.root
        assert guest.root_partition == "xvda"
        assert guest.device_map == {"xvda": guest.whole_disk_loops[0]}
        assert len(loops_for_file(str(image))) == 1  # the whole disk is the filesystem
        assert guest.facts()["partition_tables"][0]["scheme"] == "none"
        assert os.path.isfile(guest.guest_path("/etc/os-release"))
    assert_clean(str(image), root)


def _host_can_mount(fstype):
    with open("/proc/filesystems") as fobj:
        return any(line.split()[-1] == fstype for line in fobj if line.strip())


def test_gpt_disk(tmp_path):
    """GPT: BIOS boot, ESP (vfat), /boot (xfs when mkfs.xfs exists), / (ext4 by PARTUUID)."""
    esp_id = "ABCD-1234"
    boot_uuid = "b007b007-1111-4222-8333-444444444444"
    boot_kind = "xfs" if shutil.which("mkfs.xfs") and _host_can_mount("xfs") else "ext2"
    tree = root_tree(tmp_path, "", extra_dirs=("boot/efi",))
    script = ("label: gpt\n"
              "size=1MiB, type=21686148-6449-6E6F-744E-656564454649\n"
              "size=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
              "size=300MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot\n"
              "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
    image, layout = sfdisk_image(tmp_path, script, 360 * MiB, name="gpt.img")
    # PARTUUIDs are sfdisk's random ones: the root fs is built after the table to name them.
    _write(tree, "/etc/fstab", "PARTUUID=%s / ext4 defaults 0 1\n"
                               "UUID=%s /boot %s defaults 0 2\n"
                               "UUID=%s /boot/efi vfat umask=0077 0 1\n"
                               % (layout.partition(4).partuuid.upper(), boot_uuid, boot_kind,
                                  esp_id))
    if boot_kind == "xfs":
        bootfs = tmp_path / "boot-xfs.img"
        with open(bootfs, "wb") as fobj:
            fobj.truncate(300 * MiB)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "uuid=" + boot_uuid, "-L", "boot",
                        str(bootfs)], check=True)
    else:
        bootfs = make_fs(tmp_path, "ext2", 300 * MiB, fs_uuid=boot_uuid)
    copy_filesystems(image, layout, {
        2: make_fs(tmp_path, "vfat", 16 * MiB, fs_uuid=esp_id),
        3: bootfs,
        4: make_fs(tmp_path, "ext4", layout.partition(4).size, tree)})
    with GuestMount([image]) as guest:
        root = guest.root
        assert guest.root_partition == "xvda4"
        assert guest.resolve_source("PARTUUID=" + layout.partition(4).partuuid).name == "xvda4"
        assert guest.resolve_source("PARTLABEL=boot").name == "xvda3"
        boot_mount = [m for m in guest.mounts if m["guest_path"] == "/boot"]
        assert boot_mount and boot_mount[0]["fstype"] == boot_kind
        assert os.path.ismount(guest.guest_path("/boot"))
        if _host_can_mount("vfat"):
            assert os.path.ismount(guest.guest_path("/boot/efi"))
        else:
            # This host's kernel has no vfat: the ESP is reported, not fatal.
            (skipped,) = guest.skipped_fstab
            assert skipped["mountpoint"] == "/boot/efi" and "vfat" in skipped["reason"]
        assert set(guest.device_map) == {"xvda", "xvda2", "xvda3", "xvda4"}
        assert not guest.cleanup_warnings
    assert_clean(image, root)


@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None or not _host_can_mount("btrfs"),
                    reason="needs mkfs.btrfs and btrfs in the kernel")
def test_bare_btrfs_root_by_label(tmp_path):
    tree = root_tree(tmp_path, "LABEL=pvroot / btrfs defaults 0 0\n")
    image = tmp_path / "btrfs.img"
    with open(image, "wb") as fobj:
        fobj.truncate(128 * MiB)
    subprocess.run(["mkfs.btrfs", "-q", "-L", "pvroot", "--rootdir", str(tree), str(image)],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with GuestMount([str(image)], readonly=True) as guest:
        root = guest.root
        assert guest.root_partition == "xvda"
        assert guest.mounts[0]["fstype"] == "btrfs"
        assert guest.resolve_source("LABEL=pvroot").name == "xvda"
    assert_clean(str(image), root)


def test_second_disk_mounted_by_label(mbr_image, tmp_path):
    var_tree = tmp_path / "vartree"
    _write(var_tree, "/lib/dpkg/status", "")
    var_disk = make_fs(tmp_path, "ext4", 16 * MiB, var_tree, label="guestvar")
    with GuestMount([mbr_image, str(var_disk)]) as guest:
        # Mount /var from the guest's fstab of the first disk: edit it via a rw mount first.
        root = guest.root
        with open(guest.guest_path("/etc/fstab"), "a") as fobj:
            fobj.write("LABEL=guestvar /var ext4 defaults 0 2\n")
    assert_clean(mbr_image, root)
    with GuestMount([mbr_image, str(var_disk)], devices=["xvda", "xvdb"]) as guest:
        root = guest.root
        assert os.path.isfile(guest.guest_path("/var/lib/dpkg/status"))
        assert os.path.ismount(guest.guest_path("/var"))
        assert guest.whole_disk_loops == [guest.device_map["xvda"], guest.device_map["xvdb"]]
    assert_clean(mbr_image, root)
    assert_clean(str(var_disk), root)


def test_no_root_filesystem_is_refused_cleanly(tmp_path):
    tree = tmp_path / "notroot"
    _write(tree, "/data/file", "x")
    image = make_fs(tmp_path, "ext4", 16 * MiB, tree)
    before = set(os.listdir("/run/xen2kvm")) if os.path.isdir("/run/xen2kvm") else set()
    with pytest.raises(GuestError, match="no root filesystem"):
        with GuestMount([str(image)]):
            pass
    assert loops_for_file(str(image)) == []
    after = set(os.listdir("/run/xen2kvm")) if os.path.isdir("/run/xen2kvm") else set()
    assert after == before


def test_boot_on_a_missing_disk_is_refused_cleanly(tmp_path):
    tree = root_tree(tmp_path, "/dev/xvda / ext4 defaults 0 1\n/dev/xvdb1 /boot ext2 defaults 0 2\n")
    image = make_fs(tmp_path, "ext4", 32 * MiB, tree)
    with pytest.raises(GuestError, match="/boot .*not on the given disks"):
        with GuestMount([str(image)]):
            pass
    assert loops_for_file(str(image)) == []
    assert not [p for p in host_mount_points() if "/xen2kvm/guest-" in p]


# --------------------------------------------------------------------------- loop


def test_loop_attach_range_and_detach(tmp_path):
    image = tmp_path / "range.img"
    with open(image, "wb") as fobj:
        fobj.truncate(8 * MiB)
        fobj.seek(3 * MiB)
        fobj.write(b"MARK")
    loop = attach(str(image), offset=3 * MiB, sizelimit=2 * MiB, read_only=True)
    try:
        status = loop_status(loop.device)
        assert (status["offset"], status["sizelimit"], status["read_only"]) == (
            3 * MiB, 2 * MiB, True)
        assert [s["device"] for s in loops_for_file(str(image))] == [loop.device]
        with open(loop.device, "rb") as dev:
            assert dev.read(4) == b"MARK"
            assert dev.seek(0, os.SEEK_END) == 2 * MiB
    finally:
        assert loop.detach() is True
    assert loops_for_file(str(image)) == []
    assert loop.detach() is True  # idempotent


def test_loop_context_manager_detaches_on_error(tmp_path):
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import attached

    image = tmp_path / "cm.img"
    with open(image, "wb") as fobj:
        fobj.truncate(1 * MiB)
    with pytest.raises(ValueError):
        with attached(str(image)) as loop:
            assert loop_status(loop.device)["backing_file"] == str(image)
            raise ValueError("x")
    assert loops_for_file(str(image)) == []


def test_loop_detach_leaves_a_reused_device_alone(tmp_path):
    first = tmp_path / "a.img"
    second = tmp_path / "b.img"
    for path in (first, second):
        with open(path, "wb") as fobj:
            fobj.truncate(1 * MiB)
    mine = attach(str(first))
    mine.detach()
    theirs = attach(str(second))
    try:
        stale = type(mine)(device=theirs.device, backing_file=str(first))
        assert stale.detach() is True
        assert loop_status(theirs.device)["backing_file"] == str(second)
    finally:
        theirs.detach()
    assert loops_for_file(str(second)) == []


# --------------------------------------------------------------------------- robustness


def test_unrecorded_mounts_and_loops_are_swept(mbr_image):
    """What a signal between mount(8)/ioctl and our bookkeeping would leave is still found."""
    with GuestMount([mbr_image], bind_host=False) as guest:
        root = guest.root
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", guest.guest_path("/tmp")], check=True)
        attach(mbr_image, read_only=True)
        assert len(loops_for_file(mbr_image)) == 4
    assert_clean(mbr_image, root)


def _host_processes_with_argv(argv):
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fobj:
                if entry.isdigit() and fobj.read() == wanted:
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.skipif(BUSYBOX is None, reason="needs a static busybox for the guest shell")
def test_processes_left_in_the_chroot_die_with_the_command(mbr_image):
    """A daemon a maintainer script starts is killed with it (its PID namespace ends)."""
    with GuestMount([mbr_image]) as guest:
        root = guest.root
        guest.run_in_chroot(["/bin/sh", "-c", "sleep 3001 </dev/null >/dev/null 2>&1 &"])
        assert _host_processes_with_argv(["sleep", "3001"]) == []
    assert_clean(mbr_image, root)


CAP_BITS = {"CAP_NET_ADMIN": 12, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PTRACE": 19,
            "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_MKNOD": 27}

CONFINEMENT_PROBE = r"""
grep -E '^Cap(Bnd|Eff|Prm|Inh)' /proc/self/status
busybox mknod /dev/xen2kvm-disk b 7 0 2>/dev/null && echo MKNOD-OK
busybox mount -t tmpfs none /tmp 2>/dev/null && echo MOUNT-OK
pattern=$(cat /proc/sys/kernel/core_pattern)
echo "$pattern" 2>/dev/null > /proc/sys/kernel/core_pattern && echo PROCSYS-WRITABLE
true 2>/dev/null > /sys/kernel/uevent_helper && echo SYS-WRITABLE
busybox hostname xen2kvm-guest 2>/dev/null && echo HOSTNAME-OK
cat /proc/self/mountinfo
"""


@pytest.mark.skipif(BUSYBOX is None, reason="needs a static busybox for the guest shell")
def test_chroot_commands_are_confined(mbr_image):
    """The guest's code can neither mount, mknod, write kernel knobs nor see the host's tree."""
    with GuestMount([mbr_image]) as guest:
        root = guest.root
        out = guest.run_in_chroot(["/bin/sh", "-c", CONFINEMENT_PROBE], check=False).stdout
        with open(guest.guest_path("/dev/null")):
            pass
        assert not os.path.exists(guest.guest_path("/dev/xen2kvm-disk"))
    for word in ("MKNOD-OK", "MOUNT-OK", "PROCSYS-WRITABLE", "SYS-WRITABLE", "HOSTNAME-OK"):
        assert word not in out, out
    caps = dict(line.split(":\t") for line in out.splitlines() if line.startswith("Cap"))
    for name, bit in CAP_BITS.items():
        for kind in ("CapBnd", "CapEff", "CapPrm", "CapInh"):
            assert not int(caps[kind], 16) & (1 << bit), "%s in %s: %s" % (name, kind, out)
    mounts = [line.split()[4] for line in out.splitlines() if line[:1].isdigit()]
    # pivot_root into the guest with the host's root detached: only the guest's tree is left.
    assert mounts[0] == "/" and root not in out, out
    assert set(mounts) <= {"/", "/boot", "/dev", "/dev/pts", "/dev/shm", "/run", "/proc", "/sys"} | {
        "/proc/" + name for name in ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "scsi", "driver",
                                     "asound", "kcore", "keys", "timer_list", "sched_debug", "latency_stats",
                                     "kallsyms")}, mounts
    assert os.uname().nodename != "xen2kvm-guest"
    assert_clean(mbr_image, root)


def test_several_roots_need_a_choice(tmp_path):
    images = []
    for name in ("a", "b"):
        tree = root_tree(tmp_path, "LABEL=root-%s / ext4 defaults 0 1\n" % name,
                         name="tree-" + name)
        images.append(str(make_fs(tmp_path, "ext4", 16 * MiB, tree, label="root-" + name)))
    with pytest.raises(GuestError, match="several root filesystems found \\(xvda, xvdb\\)"):
        with GuestMount(images):
            pass
    with GuestMount(images, root="xvdb") as guest:
        root = guest.root
        assert guest.root_partition == "xvdb"
        assert guest.mounts[0]["source"] == guest.device_map["xvdb"]
    for image in images:
        assert_clean(image, root)


def test_block_device_disk_and_refusal_when_mounted(tmp_path):
    """A disk given as a block device works; refused while that device is mounted."""
    tree = root_tree(tmp_path, "/dev/xvda / ext4 defaults 0 1\n")
    image = str(make_fs(tmp_path, "ext4", 32 * MiB, tree))
    device = attach(image)
    try:
        with GuestMount([device.device]) as guest:
            root = guest.root
            assert guest.root_partition == "xvda"
            assert os.path.isfile(guest.guest_path("/etc/os-release"))
        assert_clean(device.device, root)
        elsewhere = tmp_path / "mnt"
        elsewhere.mkdir()
        subprocess.run(["mount", "-o", "ro", device.device, str(elsewhere)], check=True)
        try:
            with pytest.raises(GuestError, match="mounted on the host"):
                with GuestMount([device.device]):
                    pass
        finally:
            subprocess.run(["umount", str(elsewhere)], check=True)
    finally:
        device.detach()
    assert loops_for_file(image) == []


# --------------------------------------------------------------------------- issue 7, item 14

DATA_UUID = "da7a0000-1111-4222-8333-444444444444"
SWAP_UUID = "5a5a0000-1111-4222-8333-444444444444"
KVER = "6.1.0-18-amd64"


def debian_tree(tmp_path, fstab, name="rootfs"):
    """root_tree plus what guest_fixup's inspection needs: a kernel that can boot on KVM."""
    tree = root_tree(tmp_path, fstab, name=name, extra_dirs=("srv", "var/log", "var/lib/dpkg"))
    _write(tree, "/var/lib/dpkg/status", "")
    _write(tree, "/boot/vmlinuz-" + KVER, "kernel")
    _write(tree, "/lib/modules/%s/kernel/drivers/block/virtio_blk.ko" % KVER, "module")
    return tree


def one_partition(tmp_path, fs_image, name):
    image, layout = sfdisk_image(tmp_path, "label: dos\nstart=2048, type=83\n", 40 * MiB, name=name)
    return copy_filesystems(image, layout, {1: fs_image})


def fstab_of(image):
    with GuestMount([image], readonly=True) as guest:
        with open(guest.guest_path("/etc/fstab")) as fobj:
            return fobj.read()


def test_spec_userdevice_names_the_second_disk(tmp_path):
    """The spec's second disk is userdevice 2 (no device name): the guest calls it xvdc, and
    fstab's /dev/xvdc1 is that disk, whatever its list position."""
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import fix_guest
    tree = debian_tree(tmp_path, "/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdc1 /srv ext4 defaults 0 2\n")
    system = one_partition(tmp_path, make_fs(tmp_path, "ext4", 32 * MiB, tree, ROOT_UUID), "system.img")
    data_tree = tmp_path / "datatree"
    _write(data_tree, "/marker", "second disk\n")
    data = one_partition(tmp_path, make_fs(tmp_path, "ext4", 32 * MiB, data_tree, DATA_UUID), "data.img")
    spec = {"disks": [{"userdevice": 0, "device": ""}, {"userdevice": 2, "device": ""}]}

    result = fix_guest([system, data], spec=spec, enabled=["devices"])
    assert result["changed"]
    fstab = fstab_of(system)
    assert "UUID=%s /srv ext4" % DATA_UUID in fstab and "UUID=%s / ext4" % ROOT_UUID in fstab, fstab
    with GuestMount([system, data], devices=["xvda", "xvdc"]) as guest:
        root = guest.root
        assert open(guest.guest_path("/srv/marker")).read() == "second disk\n"
    assert_clean(system, root)
    assert not fix_guest([system, data], spec=spec, enabled=["devices"])["changed"]


def test_kvm_names_read_in_kvm_order(tmp_path):
    """After the move, /dev/vdb1 in fstab is the second disk, whatever the Xen names were."""
    tree = debian_tree(tmp_path, "/dev/vda1 / ext4 defaults 0 1\n/dev/vdb1 /srv ext4 defaults 0 2\n")
    system = one_partition(tmp_path, make_fs(tmp_path, "ext4", 32 * MiB, tree, ROOT_UUID), "system.img")
    data_tree = tmp_path / "datatree"
    _write(data_tree, "/marker", "second disk\n")
    data = one_partition(tmp_path, make_fs(tmp_path, "ext4", 32 * MiB, data_tree, DATA_UUID), "data.img")
    with GuestMount([system, data], devices=["xvda", "xvdc"]) as guest:
        root = guest.root
        assert open(guest.guest_path("/srv/marker")).read() == "second disk\n"
    assert_clean(system, root)


def bare_guest(tmp_path, name):
    """A PV guest shaped like deb12-pv-bare: disk 0 is the bare ext4 root (xvda1 to the guest),
    disk 1 a bare swap area (xvda2)."""
    work = tmp_path / name
    work.mkdir()
    tree = debian_tree(work, "/dev/xvda1 / ext4 errors=remount-ro 0 1\n/dev/xvda2 none swap sw 0 0\n")
    root = make_fs(work, "ext4", 32 * MiB, tree, ROOT_UUID)
    swap = make_fs(work, "swap", 8 * MiB, fs_uuid=SWAP_UUID)
    return [str(root), str(swap)]


@pytest.mark.parametrize("first_spec", [True, False], ids=["first-with-spec", "first-without-spec"])
def test_bare_filesystem_rerun_without_spec_changes_nothing(tmp_path, first_spec):
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import fix_guest
    disks = bare_guest(tmp_path, "guest")
    spec = {"disks": [{"userdevice": 0, "device": "xvda1"}, {"userdevice": 1, "device": "xvda2"}]}
    first = fix_guest(disks, spec=spec if first_spec else None, enabled=["bare_fs", "devices"])
    assert ("bare_fs", "repartition") in {(c["fixup"], c["action"]) for c in first["changes"]}
    assert read_partition_table(disks[0]).scheme == "mbr"
    fstab = fstab_of(disks[0])
    assert "UUID=%s / ext4" % ROOT_UUID in fstab and "UUID=%s none swap" % SWAP_UUID in fstab, fstab
    for again_spec in (None, spec):
        again = fix_guest(disks, spec=again_spec, enabled=["bare_fs", "devices"])
        assert not again["changed"], again["changes"]
        assert fstab_of(disks[0]) == fstab
