"""The test guests look like XenServer guests: checked on the images with real tools, no mounts.

Builds every variant of tests/lib/guest_factory.py (from its cache when present: cold ~1-7 min
per suite for debootstrap, then ~30-70 s per variant; cached: seconds) and inspects the raw
images with sfdisk, the MBR bytes, blkid, debugfs ("image?offset=N", read-only, no loop device),
lsinitramfs and e2fsck (read-only loop device with --offset/--sizelimit, always detached).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import guest_factory as gf
from guest_variants import SPECS, VARIANTS
from guestfs_build import LAYOUTS, grub_core, grub_core_prefix

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot, losetup)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("debootstrap", "sfdisk", "debugfs",
                                                         "mkfs.ext4", "blkid", "losetup")),
                       reason="needs debootstrap, fdisk, e2fsprogs, util-linux"),
]

VIRTIO_MODULES = ("virtio_blk", "virtio_net", "virtio_scsi")


# ----------------------------------------------------------------------------- helpers
def _sh(*cmd, check=True, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check,
                          **kw)


def _spec_arg(disk: Path, offset: int) -> str:
    return f"{disk}?offset={offset}" if offset else str(disk)


def debugfs(disk: Path, offset: int, request: str) -> str:
    """Run one read-only debugfs request on the filesystem at offset; raise on its errors."""
    p = _sh("debugfs", "-R", request, _spec_arg(disk, offset))
    errs = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if errs:
        raise FileNotFoundError(f"debugfs {request!r} on {disk}@{offset}: {errs}")
    return p.stdout


def read_file(img, path: str, fs=None) -> str:
    fs = fs or img.root_fs
    return debugfs(img.disks[fs.disk], fs.offset, f"cat {path}")


def exists(img, path: str, fs=None) -> bool:
    fs = fs or img.root_fs
    try:
        debugfs(img.disks[fs.disk], fs.offset, f"stat {path}")
        return True
    except FileNotFoundError:
        return False


def dpkg_installed(img) -> set:
    status = read_file(img, "/var/lib/dpkg/status")
    out = set()
    for para in status.split("\n\n"):
        m = re.search(r"(?m)^Package: (\S+)", para)
        if m and re.search(r"(?m)^Status: install ok installed$", para):
            out.add(m.group(1))
    return out


def blkid(disk: Path, offset: int) -> dict:
    p = _sh("blkid", "-p", "-O", str(offset), "-o", "export", disk)
    return dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)


def _loops_on(path: Path) -> list:
    return _sh("losetup", "-j", path, check=False).stdout.splitlines()


# ----------------------------------------------------------------------------- fixtures
# The appliance-built layouts (LVM, btrfs, ESP) can't be read with debugfs at an offset:
# test_guest_factory_layouts.py reads them through libguestfs.
@pytest.fixture(scope="module", params=[v for v in VARIANTS if SPECS[v].layout not in LAYOUTS])
def guest(request, tmp_path_factory):
    """The variant, built or taken from the cache; its disks are the cached images (read-only)."""
    try:
        return gf.build_variant(request.param, tmp_path_factory.mktemp(request.param),
                                copy=False)
    except gf.SuiteUnavailable as e:
        pytest.skip(f"{request.param}: suite not available from the mirror: {e}")


@pytest.fixture(scope="module")
def initrd_listing(guest, tmp_path_factory):
    fs = guest.boot_fs
    dst = tmp_path_factory.mktemp("initrd") / f"initrd-{guest.name}"
    path = guest.boot_path(f"/boot/initrd.img-{guest.kernel_version}")
    debugfs(guest.disks[fs.disk], fs.offset, f"dump {path} {dst}")
    assert dst.stat().st_size > 1_000_000
    return gf.list_initramfs(dst, SPECS[guest.name])


# ----------------------------------------------------------------------------- disk layout
def test_partition_table_matches_layout(guest):
    disk0 = guest.disks[0]
    p = _sh("sfdisk", "--json", disk0, check=False)
    if guest.bare_fs:
        # no partition table at all: the disk starts with the ext4 filesystem itself
        assert "partitiontable" not in p.stdout
        with open(disk0, "rb") as fh:
            head = fh.read(2048)
        assert head[1080:1082] == b"\x53\xef", "ext4 superblock magic at offset 1080"
        assert len(guest.disks) == 2
        assert [f.device for f in guest.filesystems] == ["/dev/xvda1", "/dev/xvda2"]
        return
    table = json.loads(p.stdout)["partitiontable"]
    assert table["label"] == "dos"
    parts = table["partitions"]
    want = [f for f in guest.filesystems if f.disk == 0]
    assert len(parts) == len(want) == (3 if guest.has_separate_boot else 2)
    for part, fs in zip(parts, want):
        assert part["start"] * 512 == fs.offset
        assert part["size"] * 512 == fs.size
        assert part["type"] == ("82" if fs.fstype == "swap" else "83")
    assert parts[0]["start"] == 2048                       # 1 MiB aligned like d-i does
    assert parts[-1]["type"] == "82"
    size = disk0.stat().st_size
    assert 1536 * gf.MIB <= size <= 2048 * gf.MIB
    assert disk0.stat().st_blocks * 512 < size, "image should be sparse"


def test_mbr_boot_code(guest):
    with open(guest.disks[0], "rb") as fh:
        mbr = fh.read(512)
        gap = fh.read(1 * gf.MIB - 512)
    if guest.bare_fs:
        # an ext4 filesystem's first 1 KiB is its (empty) boot block: no MBR, no boot code
        assert not any(mbr) and mbr[510:512] != b"\x55\xaa"
        return
    assert mbr[510:512] == b"\x55\xaa"
    if guest.domain_type == "pv":
        assert not any(mbr[:440]), "PV guests (pygrub) have no boot code in the MBR"
        assert not any(gap), "nothing embedded between MBR and first partition"
    else:
        assert any(mbr[:440]), "HVM guest must have boot code in the MBR"
        assert b"GRUB" in mbr[:440]
        assert any(gap), "grub core.img embedded after the MBR"


def test_filesystems_are_where_the_facts_say(guest):
    for fs in guest.filesystems:
        info = blkid(guest.disks[fs.disk], fs.offset)
        assert info.get("TYPE") == fs.fstype, (fs, info)
        assert info.get("UUID") == fs.uuid, (fs, info)


def test_root_fs_is_clean(guest):
    """e2fsck -fn on the root filesystem through a read-only loop device with an offset."""
    fs = guest.root_fs
    disk = guest.disks[fs.disk]
    with gf.losetup(disk, offset=fs.offset, sizelimit=fs.size, read_only=True) as dev:
        assert os.path.exists(dev)
        p = _sh("e2fsck", "-fn", dev, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not any(str(disk) in ln for ln in _loops_on(disk)), "loop device left attached"


# ----------------------------------------------------------------------------- guest files
def test_os_release(guest):
    text = read_file(guest, "/usr/lib/os-release")
    assert f'VERSION_ID="{guest.version_id}"' in text
    assert guest.suite in text


def test_fstab_uses_xen_device_names(guest):
    fstab = read_file(guest, "/etc/fstab")
    entries = [ln.split() for ln in fstab.splitlines() if ln.strip() and not ln.startswith("#")]
    by_mp = {e[1]: e for e in entries}
    assert by_mp["/"][0] == guest.root_device
    assert by_mp["/"][2] == "ext4"
    swaps = [e for e in entries if e[2] == "swap"]
    assert [e[0] for e in swaps] == [guest.swap_device]
    if guest.has_separate_boot:
        assert by_mp["/boot"][0] == guest.boot_device == "/dev/xvda1"
        assert guest.root_device == "/dev/xvda2" and guest.swap_device == "/dev/xvda3"
    else:
        assert "/boot" not in by_mp
        assert guest.root_device == "/dev/xvda1" and guest.swap_device == "/dev/xvda2"
    assert all(e[0].startswith("/dev/xvd") for e in entries)
    assert "/dev/vd" not in fstab


def test_resume_points_at_xen_swap(guest):
    assert read_file(guest, "/etc/initramfs-tools/conf.d/resume").strip() == \
        f"RESUME={guest.swap_device}"


def test_boot_loader_config(guest, tmp_path):
    fs = guest.boot_fs
    cfg = read_file(guest, guest.boot_path("/boot/grub/grub.cfg"), fs)
    kver = guest.kernel_version
    kpath = "/" if guest.has_separate_boot else "/boot/"
    linux = re.findall(r"(?m)^\s*linux\s+(\S+)\s+(.*)$", cfg)
    initrd = re.findall(r"(?m)^\s*initrd\s+(\S+)", cfg)
    assert linux == [(f"{kpath}vmlinuz-{kver}", guest.kernel_cmdline)]
    assert initrd == [f"{kpath}initrd.img-{kver}"]
    assert f"root={guest.root_device}" in guest.kernel_cmdline
    for f in (f"/boot/vmlinuz-{kver}", f"/boot/initrd.img-{kver}"):
        assert exists(guest, guest.boot_path(f), fs), f
    installed = dpkg_installed(guest)
    if guest.domain_type == "pv":
        assert "console=hvc0" in guest.kernel_cmdline
        assert "menuentry" in cfg
        assert not {p for p in installed if p.startswith("grub")}, "PV guests have no grub"
        assert not exists(guest, "/etc/default/grub")
    else:
        assert "hvc0" not in cfg
        assert "console=" not in guest.kernel_cmdline      # tty0, like a default HVM install
        assert {"grub-pc", "grub-pc-bin", "grub-common"} <= installed
        assert exists(guest, "/boot/grub/i386-pc/core.img")
        assert exists(guest, "/boot/grub/i386-pc/normal.mod")
        assert exists(guest, "/etc/default/grub")
        assert "loop" not in cfg and "loop" not in read_file(guest, "/boot/grub/device.map")
        # core.img (grub-install in the libguestfs appliance, as the installer runs it on a
        # real disk) finds /boot/grub by partition on its own disk and can read it
        with open(guest.disks[0], "rb") as fh:
            embedded = fh.read(gf.MIB)[512:]
        tools = {}
        for name in ("diskboot.img", "lzma_decompress.img"):
            dst = tmp_path / name
            debugfs(guest.disks[0], guest.root_fs.offset, f"dump /usr/lib/grub/i386-pc/{name} {dst}")
            tools[name] = dst.read_bytes()
        core = grub_core(embedded, len(tools["diskboot.img"]), tools["lzma_decompress.img"])
        assert grub_core_prefix(core) == "(,msdos1)/boot/grub"
        for module in (b"biosdisk", b"part_msdos", b"ext2"):
            assert b"\0" + module + b"\0" in core, module
        # debconf remembers the Xen disk as grub's install device (fixups must change it)
        debconf = read_file(guest, "/var/cache/debconf/config.dat")
        assert re.search(r"Name: grub-pc/install_devices\n(?:\S.*\n)*?Value: /dev/xvda\n",
                         debconf)


def test_init_and_consoles(guest):
    installed = dpkg_installed(guest)
    wants = "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"
    if guest.init == "systemd":
        assert "systemd-sysv" in installed and "sysvinit-core" not in installed
        if guest.domain_type == "pv":
            stat = debugfs(guest.disks[0], guest.root_fs.offset, f"stat {wants}")
            assert "Type: symlink" in stat
            assert "serial-getty@.service" in stat
        else:
            assert not exists(guest, wants)
    else:
        assert "sysvinit-core" in installed and "systemd-sysv" not in installed
        inittab = read_file(guest, "/etc/inittab")
        assert re.search(r"(?m)^h0:12345:respawn:/sbin/getty 38400 hvc0$", inittab)
        assert re.search(r"(?m)^1:2345:respawn:/sbin/getty", inittab)


def test_network_config(guest):
    ifaces = read_file(guest, "/etc/network/interfaces")
    assert re.search(r"(?m)^iface eth0 inet static$", ifaces)
    assert f"address {guest.static_ip}/{guest.static_prefix}" in ifaces
    assert guest.static_ip.startswith("192.0.2.")              # TEST-NET-1, never contacted
    rules = read_file(guest, "/etc/udev/rules.d/70-persistent-net.rules")
    rule = [ln for ln in rules.splitlines() if ln.startswith("SUBSYSTEM")]
    assert len(rule) == 1
    assert f'ATTR{{address}}=="{guest.mac}"' in rule[0] and 'NAME="eth0"' in rule[0]
    assert "ifupdown" in dpkg_installed(guest)
    assert "192.0.2." in read_file(guest, "/etc/resolv.conf")


def test_identity_and_login(guest):
    assert read_file(guest, "/etc/hostname").strip() == guest.hostname
    shadow = read_file(guest, "/etc/shadow")
    root = next(ln for ln in shadow.splitlines() if ln.startswith("root:"))
    assert root.split(":")[1].startswith("$"), "root has a password hash"


# ----------------------------------------------------------------------------- initramfs
def test_initramfs_config_is_xen_only(guest):
    conf = read_file(guest, "/etc/initramfs-tools/initramfs.conf")
    assert re.search(r"(?m)^MODULES=list$", conf)
    mods = [ln.strip() for ln in read_file(guest, "/etc/initramfs-tools/modules").splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert "xen-blkfront" in mods and "xen-netfront" in mods
    assert not [m for m in mods if m.startswith("virtio")]


def test_initramfs_has_xen_drivers_only(guest, initrd_listing):
    names = {Path(p).name for p in initrd_listing}

    def has(mod):
        return any(re.fullmatch(re.escape(mod) + r"\.ko(\.(xz|zst|gz))?", n) for n in names)

    assert has("xen-blkfront") and has("xen-netfront")
    assert has("ext4")
    for mod in VIRTIO_MODULES:
        assert not has(mod), f"{mod} must not be in the Xen-built initramfs"
    # sanity: the listing really is this kernel's initramfs
    assert any(f"/modules/{guest.kernel_version}/" in p for p in initrd_listing)


# ----------------------------------------------------------------------------- VM description
def test_vm_description(guest):
    vm = guest.vm
    spec = SPECS[guest.name]
    assert vm.name == guest.name
    assert 1 <= vm.vcpus <= 2
    assert 512 * gf.MIB <= vm.memory_bytes <= 1024 * gf.MIB
    assert [Path(d.image) for d in vm.disks] == guest.disks
    assert [d.userdevice for d in vm.disks] == list(range(len(guest.disks)))
    assert vm.disks[0].bootable
    assert [(n.device, n.mac) for n in vm.nics] == [(0, guest.mac)]
    if guest.domain_type == "pv":
        assert vm.domain_type == "pv" and vm.pv_bootloader == "pygrub"
        assert vm.pv_args == guest.kernel_cmdline
        assert "console=hvc0" in vm.pv_args
    else:
        assert vm.domain_type == "hvm" and vm.pv_bootloader == "" and vm.pv_args == ""
    if guest.bare_fs:
        assert [d.device for d in vm.disks] == ["xvda1", "xvda2"]
    else:
        assert [d.device for d in vm.disks] == ["xvda"]
    assert spec.suite == guest.suite


# ----------------------------------------------------------------------------- cache, copies, xva
def test_cached_build_is_fast_and_copies_are_private(tmp_path):
    gf.ensure_image("deb12-pv")                 # built here if no earlier test did
    t0 = time.monotonic()
    img = gf.build_variant("deb12-pv", tmp_path)
    took = time.monotonic() - t0
    assert img.from_cache
    assert took < 60, f"cached build took {took:.0f}s"
    cached = img.cache_path / "disk0.raw"
    assert img.disks == [tmp_path / "deb12-pv-disk0.raw"]
    assert img.disks[0].stat().st_size == cached.stat().st_size
    assert img.disks[0].stat().st_ino != cached.stat().st_ino
    assert img.disks[0].stat().st_blocks < cached.stat().st_size // 512, "copy stays sparse"
    assert Path(img.vm.disks[0].image) == img.disks[0]


def test_xva_packs(tmp_path):
    img = gf.build_variant("deb12-pv-bare", tmp_path, copy=False)
    xva = img.xva(tmp_path / "deb12-pv-bare.xva", checksum="xxhash")
    with tarfile.open(xva) as tar:
        first = tar.next()
        assert first.name == "ova.xml"
        ova = tar.extractfile(first).read().decode()
        names = tar.getnames()
    assert "pygrub" in ova and img.mac in ova and "xvda1" in ova and "xvda2" in ova
    assert any(n.endswith(".xxhash") for n in names)


def test_no_loop_devices_or_mounts_left():
    cache = str(gf.CACHE_DIR)
    loops = _sh("losetup", "-a", "-O", "NAME,BACK-FILE", "-n", "-l", check=False).stdout
    assert cache not in loops
    with open("/proc/self/mountinfo") as fh:
        assert cache not in fh.read()
