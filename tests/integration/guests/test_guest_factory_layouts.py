"""The test guests built in the libguestfs appliance (tests/lib/guestfs_build.py) are what a Xen
guest of their kind is: the installer's partitioning, LVM names, btrfs subvolume, ESP, fstab,
the boot loader where the installer puts it, and the Xen shaping every test guest has (console
hvc0, Xen-only initramfs, static network on the Xen NIC name).

Everything is read through libguestfs, read-only (this host's kernel has no device-mapper and no
vfat): one appliance per variant (about 25 s under TCG) reads what the tests look at.
The variant itself is built on first use (a few minutes: debootstrap, then the appliance).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

import guest_factory as gf
import guestfs_build as gb
from guest_variants import SPECS, VARIANTS

guestfs = pytest.importorskip("guestfs", reason="needs python3-guestfs")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot)"),
    pytest.mark.skipif(not shutil.which("debootstrap"), reason="needs debootstrap"),
]

LAYOUT_VARIANTS = [v for v in VARIANTS if SPECS[v].layout in gb.LAYOUTS]
FACTORY = Path(gf.__file__)

# The appliance's name for each variant's root, as inspect_os reports it, and the mount points
# inspection derives from the guest's fstab.
EXPECTED_ROOT = {
    "deb12-lvm": "/dev/deb12-lvm-vg/root",
    "ubuntu-like": "/dev/ubuntu-vg/ubuntu-lv",
    "deb12-btrfs": "btrfsvol:/dev/sda1/@rootfs",
    "deb12-uefi": "/dev/sda2",
}
EXPECTED_MOUNTS = {
    "deb12-lvm": {"/": "/dev/deb12-lvm-vg/root", "/boot": "/dev/sda1"},
    "ubuntu-like": None,     # fstab's curtin names, see the test
    "deb12-btrfs": {"/": "btrfsvol:/dev/sda1/@rootfs"},
    "deb12-uefi": {"/": "/dev/sda2", "/boot/efi": "/dev/sda1"},
}


def _read(g, path):
    return g.cat(path) if g.is_file(path, followsymlinks=True) else None


def _partition_types(g, table):
    types = {}
    for part in g.part_list(gb.DISK):
        n = part["part_num"]
        if table == "gpt":
            types[n] = g.part_get_gpt_type(gb.DISK, n)
        else:
            types[n] = (g.part_get_mbr_id(gb.DISK, n), g.part_get_bootable(gb.DISK, n)
                        if n <= 4 else False)
    return types


def _read_guest(g, img, workdir: Path) -> dict:
    """Inspect, mount read-only as the guest's fstab says, and read the files the tests use."""
    seen = {"roots": g.inspect_os()}
    root = seen["roots"][0]
    seen.update(distro=g.inspect_get_distro(root), major=g.inspect_get_major_version(root),
                mountpoints=g.inspect_get_mountpoints(root), table=g.part_get_parttype(gb.DISK),
                vgs=g.vgs(), lvs=g.lvs(), filesystems=g.list_filesystems(),
                mbr=g.pread_device(gb.DISK, 512, 0),
                gap=g.pread_device(gb.DISK, 1024 * 1024 - 512, 512))
    seen["partitions"] = _partition_types(g, seen["table"])
    seen["uuids"] = {dev: g.vfs_uuid(dev) for dev, fstype in seen["filesystems"].items()
                     if fstype not in ("unknown", "")}
    seen["mounted_uuids"] = {}
    for mp, dev in sorted(seen["mountpoints"].items(), key=lambda item: len(item[0])):
        g.mount_ro(dev, mp)
        seen["mounted_uuids"][mp] = g.vfs_uuid(dev)
    if img.root_fs.fstype == "btrfs":
        seen["subvolumes"] = sorted(s["btrfssubvolume_path"] for s in g.btrfs_subvolume_list("/"))
    files = ("/etc/fstab", "/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub/device.map",
             "/boot/grub/i386-pc/load.cfg", "/etc/initramfs-tools/initramfs.conf",
             "/etc/initramfs-tools/modules", "/etc/initramfs-tools/conf.d/resume",
             "/etc/network/interfaces", "/etc/udev/rules.d/70-persistent-net.rules",
             "/etc/netplan/50-cloud-init.yaml", "/etc/cloud/cloud.cfg.d/90_dpkg.cfg",
             "/var/lib/cloud/data/instance-id", "/var/lib/dpkg/status", "/etc/hostname",
             "/etc/shadow", "/etc/os-release", "/var/cache/debconf/config.dat")
    seen["files"] = {path: _read(g, path) for path in files}
    getty = "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"
    seen["hvc0_getty"] = g.readlink(getty) if g.is_symlink(getty) else None
    seen["cloud_instance"] = (g.readlink("/var/lib/cloud/instance")
                              if g.is_symlink("/var/lib/cloud/instance") else None)
    seen["netplan_mode"] = (g.statns("/etc/netplan/50-cloud-init.yaml")["st_mode"] & 0o777
                            if g.is_file("/etc/netplan/50-cloud-init.yaml") else None)
    if g.is_file("/swap.img"):
        seen["swap_img"] = {"file": g.file("/swap.img"), "mode": g.statns("/swap.img")["st_mode"] & 0o777,
                            "size": g.filesize("/swap.img")}
    if g.is_file("/usr/lib/grub/i386-pc/lzma_decompress.img"):
        embedded = (g.pread_device("/dev/sda1", 1024 * 1024, 0) if seen["table"] == "gpt"
                    else seen["gap"])
        diskboot = g.filesize("/usr/lib/grub/i386-pc/diskboot.img")
        seen["core"] = gb.grub_core(embedded, diskboot,
                                    g.read_file("/usr/lib/grub/i386-pc/lzma_decompress.img"))
    seen["esp"] = sorted(g.find("/boot/efi")) if g.is_dir("/boot/efi") else None
    seen["boot_grub"] = sorted(g.ls("/boot/grub"))
    initrd = workdir / f"initrd-{img.name}"
    g.download(f"/boot/initrd.img-{img.kernel_version}", str(initrd))
    seen["initrd"] = {Path(p).name for p in gf.list_initramfs(initrd, SPECS[img.name])}
    seen["kernel_config"] = g.cat(f"/boot/config-{img.kernel_version}")
    return seen


# make test builds the layouts its boot test uses; make test-all all of them
IN_MAKE_TEST = ("deb12-lvm", "deb12-uefi")


@pytest.fixture(scope="module", params=[v if v in IN_MAKE_TEST else pytest.param(v, marks=pytest.mark.all_variants)
                                        for v in LAYOUT_VARIANTS])
def guest(request, tmp_path_factory):
    """The variant (built or from the cache; its disks are the cached images, read-only) and
    what one read-only appliance saw in it."""
    try:
        img = gf.build_variant(request.param, tmp_path_factory.mktemp(request.param), copy=False)
    except gf.SuiteUnavailable as exc:
        pytest.skip(f"{request.param}: suite not available from the mirror: {exc}")
    with gb.appliance(img.disks[0], readonly=True) as g:
        seen = _read_guest(g, img, tmp_path_factory.mktemp("initrd"))
    return img, seen


def _fstab_entries(seen):
    return [ln.split("\t") for ln in seen["files"]["/etc/fstab"].splitlines()
            if ln.strip() and not ln.startswith("#")]


def _installed(seen):
    out = set()
    for para in seen["files"]["/var/lib/dpkg/status"].split("\n\n"):
        m = re.search(r"(?m)^Package: (\S+)", para)
        if m and re.search(r"(?m)^Status: install ok installed$", para):
            out.add(m.group(1))
    return out


def img_layout(img):
    """The partition/LVM summary the factory recorded in the cached image's meta.json."""
    return json.loads((img.cache_path / "meta.json").read_text())["layout"]


# ----------------------------------------------------------------------------- inspection + disk
def test_inspection_finds_the_root_and_the_fstab_mounts(guest):
    img, seen = guest
    assert seen["roots"] == [EXPECTED_ROOT[img.name]]
    assert (seen["distro"], seen["major"]) == ("debian", 12)
    expected = EXPECTED_MOUNTS[img.name]
    if expected is None:
        # libguestfs 1.48 inspection keeps curtin's /dev/disk/by-id/dm-uuid-LVM-* and
        # /dev/disk/by-uuid/* names as written (udev links, present in its appliance too)
        layout = img_layout(img)
        expected = {"/": f"/dev/disk/by-id/dm-uuid-LVM-{layout['vg_uuid']}{layout['lvs']['ubuntu-lv']}",
                    "/boot": f"/dev/disk/by-uuid/{img.boot_fs.uuid}"}
    assert seen["mountpoints"] == expected
    assert {mp: seen["mounted_uuids"][mp] for mp in expected} == \
        {mp: next(f.uuid for f in img.filesystems if f.mountpoint == mp) for mp in expected}
    assert 'VERSION_ID="12"' in seen["files"]["/etc/os-release"]


def test_partition_table_is_the_installers(guest):
    img, seen = guest
    parts, layout = seen["partitions"], img.name
    if layout == "deb12-lvm":
        assert seen["table"] == "msdos"
        assert parts == {1: (0x83, True), 2: (0x05, False), 5: (0x8E, False)}
    elif layout == "ubuntu-like":
        assert seen["table"] == "gpt"
        assert parts == {1: gb.GPT_BIOS_BOOT, 2: gb.GPT_LINUX_FS, 3: gb.GPT_LINUX_LVM}
    elif layout == "deb12-btrfs":
        assert seen["table"] == "msdos"
        assert parts == {1: (0x83, True), 2: (0x05, False), 5: (0x82, False)}
    else:
        assert seen["table"] == "gpt"
        assert parts == {1: gb.GPT_ESP, 2: gb.GPT_LINUX_FS, 3: gb.GPT_LINUX_SWAP}
    fstypes = seen["filesystems"]
    for fs in img.filesystems:
        if fs.swapfile:
            continue
        dev = "/dev/" + fs.lv if fs.lv else f"/dev/sda{fs.partition}"
        assert fstypes[dev] == fs.fstype, (dev, fstypes)
        assert seen["uuids"][dev] == fs.uuid, dev


def test_lvm_volume_group_and_volumes(guest):
    img, seen = guest
    if img.name == "deb12-lvm":
        assert seen["vgs"] == ["deb12-lvm-vg"]
        assert sorted(seen["lvs"]) == ["/dev/deb12-lvm-vg/root", "/dev/deb12-lvm-vg/swap_1"]
        assert seen["filesystems"]["/dev/deb12-lvm-vg/swap_1"] == "swap"
        assert img.root_device == "/dev/mapper/deb12--lvm--vg-root"
    elif img.name == "ubuntu-like":
        assert seen["vgs"] == ["ubuntu-vg"] and seen["lvs"] == ["/dev/ubuntu-vg/ubuntu-lv"]
        assert img.root_device == "/dev/mapper/ubuntu--vg-ubuntu--lv"
    else:
        assert seen["vgs"] == [] and seen["lvs"] == []


def test_btrfs_root_is_a_subvolume(guest):
    img, seen = guest
    if img.name != "deb12-btrfs":
        pytest.skip("btrfs layout only")
    assert seen["subvolumes"] == ["@rootfs"]
    assert seen["filesystems"]["/dev/sda1"] == "btrfs"
    assert img.root_fs.subvolume == "@rootfs"


# ----------------------------------------------------------------------------- fstab
def test_fstab_names_filesystems_as_the_installer_does(guest):
    img, seen = guest
    by_uuid = {fs.mountpoint: fs.uuid for fs in img.filesystems}
    swap = next(fs for fs in img.filesystems if fs.fstype == "swap")
    entries = _fstab_entries(seen)
    if img.name == "deb12-lvm":
        assert entries == [
            ["/dev/mapper/deb12--lvm--vg-root", "/", "ext4", "errors=remount-ro", "0", "1"],
            [f"UUID={by_uuid['/boot']}", "/boot", "ext2", "defaults", "0", "2"],
            ["/dev/mapper/deb12--lvm--vg-swap_1", "none", "swap", "sw", "0", "0"]]
        assert "# /boot was on /dev/xvda1 during installation" in seen["files"]["/etc/fstab"]
    elif img.name == "ubuntu-like":
        vg_uuid = img_layout(img)["vg_uuid"]
        lv_uuid = img_layout(img)["lvs"]["ubuntu-lv"]
        assert entries == [
            [f"/dev/disk/by-id/dm-uuid-LVM-{vg_uuid}{lv_uuid}", "/", "ext4", "defaults", "0", "1"],
            [f"/dev/disk/by-uuid/{by_uuid['/boot']}", "/boot", "ext4", "defaults", "0", "1"],
            ["/swap.img", "none", "swap", "sw", "0", "0"]]
        assert len(vg_uuid) == len(lv_uuid) == 32
    elif img.name == "deb12-btrfs":
        assert entries == [
            [f"UUID={by_uuid['/']}", "/", "btrfs", "defaults,subvol=@rootfs", "0", "0"],
            [f"UUID={swap.uuid}", "none", "swap", "sw", "0", "0"]]
        assert "# swap was on /dev/xvda5 during installation" in seen["files"]["/etc/fstab"]
    else:
        assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", by_uuid["/boot/efi"])
        assert entries == [
            [f"UUID={by_uuid['/']}", "/", "ext4", "errors=remount-ro", "0", "1"],
            [f"UUID={by_uuid['/boot/efi']}", "/boot/efi", "vfat", "umask=0077", "0", "1"],
            [f"UUID={swap.uuid}", "none", "swap", "sw", "0", "0"]]


def test_resume_device(guest):
    img, seen = guest
    resume = seen["files"]["/etc/initramfs-tools/conf.d/resume"].strip()
    swap = next(fs for fs in img.filesystems if fs.fstype == "swap")
    want = {"deb12-lvm": "RESUME=/dev/mapper/deb12--lvm--vg-swap_1", "ubuntu-like": "RESUME=none"}
    assert resume == want.get(img.name, f"RESUME=UUID={swap.uuid}")


def test_swap_file(guest):
    img, seen = guest
    if img.name != "ubuntu-like":
        assert "swap_img" not in seen
        return
    assert "swap file" in seen["swap_img"]["file"]
    assert seen["swap_img"]["mode"] == 0o600
    assert seen["swap_img"]["size"] == SPECS[img.name].swap_mib * gf.MIB
    assert img.swap_device == "/swap.img"


# ----------------------------------------------------------------------------- boot loader
def test_boot_loader_is_where_the_installer_puts_it(guest):
    img, seen = guest
    installed = _installed(seen)
    default_grub = seen["files"]["/etc/default/grub"]
    assert re.search(r'(?m)^GRUB_CMDLINE_LINUX="console=hvc0"$', default_grub)
    cfg = seen["files"]["/boot/grub/grub.cfg"]
    assert "grub-mkconfig" in cfg                                # update-grub wrote it
    linux = re.findall(r"(?m)^\s*linux\s+(\S+)\s+(.*)$", cfg)
    assert linux and linux[0][1] == img.kernel_cmdline
    assert "console=hvc0" in img.kernel_cmdline and "loop" not in cfg and "/dev/sda" not in cfg
    kpath = "/" if img.has_separate_boot else "/boot/" if img.name != "deb12-btrfs" else "/@rootfs/boot/"
    assert linux[0][0] == f"{kpath}vmlinuz-{img.kernel_version}"
    if img.name in ("deb12-lvm", "ubuntu-like"):
        assert f"root={img.root_device} " in img.kernel_cmdline + " "
    elif img.name == "deb12-btrfs":
        assert f"root=UUID={img.root_fs.uuid} " in img.kernel_cmdline
        assert "rootflags=subvol=@rootfs" in img.kernel_cmdline
    else:
        assert f"root=UUID={img.root_fs.uuid} " in img.kernel_cmdline
    if SPECS[img.name].firmware == "uefi":
        assert {"grub-efi-amd64", "grub-efi-amd64-bin"} <= installed and "grub-pc" not in installed
        esp = [p.lower().lstrip("/") for p in seen["esp"]]
        assert "efi/debian/grubx64.efi" in esp
        assert not [p for p in esp if p.startswith("efi/boot")], "no removable-media path"
        assert "x86_64-efi" in seen["boot_grub"] and "i386-pc" not in seen["boot_grub"]
        assert not any(seen["mbr"][:440]), "protective MBR only, no BIOS boot code"
    else:
        assert {"grub-pc", "grub-pc-bin"} <= installed
        assert b"GRUB" in seen["mbr"][:440]
        assert "i386-pc" in seen["boot_grub"]
        # The core image finds /boot/grub on its own disk by partition, with the partition
        # table and filesystem modules built in (what grub-install on a real disk embeds).
        core, table = seen["core"], seen["table"]
        grub_dir = {"deb12-lvm": "(,msdos1)/grub", "ubuntu-like": "(,gpt2)/grub",
                    "deb12-btrfs": "(,msdos1)/@rootfs/boot/grub"}[img.name]
        assert gb.grub_core_prefix(core) == grub_dir
        fs_module = {"ext2": "ext2", "ext4": "ext2", "btrfs": "btrfs"}[img.boot_fs.fstype]
        for module in ("biosdisk", f"part_{table}", fs_module):
            assert b"\0" + module.encode() + b"\0" in core, module
        assert seen["files"]["/boot/grub/i386-pc/load.cfg"] is None
        debconf = seen["files"]["/var/cache/debconf/config.dat"]
        assert re.search(r"Name: grub-pc/install_devices\n(?:\S.*\n)*?Value: /dev/xvda\n", debconf)
    assert seen["files"]["/boot/grub/device.map"] is None       # d-i leaves none


# ----------------------------------------------------------------------------- Xen shaping
def test_initramfs_is_xen_only_with_the_root_stack(guest):
    img, seen = guest
    assert re.search(r"(?m)^MODULES=list$", seen["files"]["/etc/initramfs-tools/initramfs.conf"])
    names = seen["initrd"]

    def has(mod):
        return any(re.fullmatch(re.escape(mod) + r"\.ko(\.(xz|zst|gz))?", n) for n in names)

    assert has("xen-blkfront") and has("xen-netfront")
    for mod in ("virtio_blk", "virtio_net", "virtio_scsi"):
        assert not has(mod), mod
    if img.name in ("deb12-lvm", "ubuntu-like"):
        assert has("dm-mod") and "lvm" in names
    if img.name == "deb12-btrfs":
        assert has("btrfs")


def test_kernel_drives_both_xen_and_virtio(guest):
    """The kernel must have virtio drivers for the fixups to add (the cloud kernel too)."""
    img, seen = guest
    config = seen["kernel_config"]
    for option in ("CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_XEN_BLKDEV_FRONTEND"):
        assert re.search(rf"(?m)^{option}=[my]$", config), option
    if img.name == "ubuntu-like":
        assert img.kernel_version.endswith("-cloud-amd64")
        assert "linux-image-amd64" not in _installed(seen)


def test_console_getty_and_login(guest):
    img, seen = guest
    assert seen["hvc0_getty"] and seen["hvc0_getty"].endswith("serial-getty@.service")
    root = next(ln for ln in seen["files"]["/etc/shadow"].splitlines() if ln.startswith("root:"))
    assert root.split(":")[1].startswith("$")
    assert seen["files"]["/etc/hostname"].strip() == img.hostname


def test_network_is_static_on_the_xen_nic(guest):
    img, seen = guest
    files = seen["files"]
    if SPECS[img.name].network == "netplan":
        assert files["/etc/network/interfaces"] is None and "ifupdown" not in _installed(seen)
        assert {"netplan.io", "cloud-init"} <= _installed(seen)
        assert seen["netplan_mode"] == 0o600
        assert "generated from information provided by the datasource" in files["/etc/netplan/50-cloud-init.yaml"]
        net = yaml.safe_load(files["/etc/netplan/50-cloud-init.yaml"])["network"]
        assert net["renderer"] == "networkd" and list(net["ethernets"]) == ["enX0"]
        nic = net["ethernets"]["enX0"]
        assert nic["addresses"] == [f"{img.static_ip}/24"]
        assert nic["match"] == {"macaddress": img.mac} and nic["set-name"] == "enX0"
        assert nic["routes"] == [{"to": "default", "via": "192.0.2.1"}]
        assert yaml.safe_load(files["/etc/cloud/cloud.cfg.d/90_dpkg.cfg"]) == {
            "datasource_list": ["ConfigDrive", "NoCloud", "None"]}
        iid = img.vm.uuid
        assert files["/var/lib/cloud/data/instance-id"].strip() == iid
        assert seen["cloud_instance"] == f"/var/lib/cloud/instances/{iid}"
    else:
        assert re.search(r"(?m)^iface eth0 inet static$", files["/etc/network/interfaces"])
        assert f"address {img.static_ip}/24" in files["/etc/network/interfaces"]
        assert f'ATTR{{address}}=="{img.mac}"' in files["/etc/udev/rules.d/70-persistent-net.rules"]
    assert img.static_ip.startswith("192.0.2.")


# ----------------------------------------------------------------------------- VM description
def test_vm_description(guest):
    img, _seen = guest
    vm, spec, hvm = img.vm, SPECS[img.name], SPECS["deb12-hvm"]
    assert (vm.domain_type, vm.pv_bootloader, vm.pv_args) == ("hvm", "", "")
    assert vm.firmware == spec.firmware == ("uefi" if img.name == "deb12-uefi" else "bios")
    assert (vm.vcpus, vm.memory_bytes) == (hvm.vcpus, hvm.memory_mib * gf.MIB)
    assert [d.device for d in vm.disks] == ["xvda"]
    assert [(n.device, n.mac) for n in vm.nics] == [(0, img.mac)]


def test_macs_and_addresses_are_distinct():
    specs = list(SPECS.values())
    assert len({s.mac for s in specs}) == len({s.static_ip for s in specs}) == len(specs)


def test_cli_lists_and_packs_the_uefi_guest(tmp_path):
    listed = subprocess.run([sys.executable, FACTORY, "list"], capture_output=True, text=True,
                            check=True).stdout
    for name in LAYOUT_VARIANTS:
        assert re.search(rf"(?m)^{name}\s+bookworm\s+systemd\s+hvm\s+{SPECS[name].layout}$", listed)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, FACTORY, "build", "deb12-uefi", "--out", out, "--xva"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.splitlines()[-1])
    assert line["root_device"] == "/dev/xvda2"
    with tarfile.open(line["xva"]) as tar:
        ova = ElementTree.fromstring(tar.extractfile("ova.xml").read())
    vm_records = [s for s in ova.iter("struct") if _member(s, "HVM_boot_params") is not None]
    assert len(vm_records) == 1
    boot_params = _member(vm_records[0], "HVM_boot_params").find("struct")
    assert _member(boot_params, "firmware").findtext(".").strip() == "uefi"
    assert _member(vm_records[0], "domain_type").findtext(".").strip() == "hvm"


def _member(struct, name):
    """The <value> of an XML-RPC struct member (ova.xml is XML-RPC encoded), None if absent."""
    for member in struct.findall("member"):
        if member.findtext("name") == name:
            return member.find("value")
    return None
