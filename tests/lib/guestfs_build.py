"""Test guest disks built inside the libguestfs appliance (python3-guestfs).

LVM, btrfs and vfat need a kernel that has device-mapper, btrfs and vfat; this host's kernel has
no device-mapper and no vfat, the appliance's kernel has all three. ``guest_factory`` still
debootstraps and shapes the tree on the host (chroot), then for the layouts in ``LAYOUTS``:

  1. ``make_layout``: partitions the raw image the way the distribution's installer does, makes
     the LVM PV/VG/LVs, the filesystems and the btrfs subvolume; returns what it made, with the
     UUIDs mkfs gave the filesystems (the tree's fstab is written from those afterwards);
  2. ``fill``: mounts everything as the guest will and unpacks the shaped tree into it from a
     tar made on the host with numeric owners; makes the swap file where the layout has one;
  3. ``install_boot_loader``: runs the guest's own ``grub-install`` and ``update-grub`` with
     ``g.command``, which runs chrooted into the mounted guest inside the appliance (libguestfs
     bind-mounts the appliance's /dev, /proc and /sys): the guest's code never runs on the host.

``install_grub_pc`` gives an already built MBR disk (deb12-hvm) the boot code the Debian
installer leaves: grub-install run against a disk whose partitions are real block devices, so
the core image carries the partition table and filesystem modules and the prefix it needs.

The appliance runs under TCG (``force_tcg``: nested KVM is broken on the project's machines);
its launch takes about 25 s.
"""
from __future__ import annotations

import contextlib
import lzma
import re
from dataclasses import dataclass

MIB = 1024 * 1024
SECTOR = 512
ALIGN = MIB // SECTOR                # partitions start on MiB boundaries, like every installer
DISK = "/dev/sda"                    # the appliance's name for the image (virtio-scsi)
# ...and the name a command in the guest must use: libguestfs translates the API's names, not a
# command's arguments, and the appliance's kernel may have named its own disk /dev/sda.  The
# module's ApplianceSession does the same (drive_label); the factory keeps its own two lines
# because demo.yml and Molecule run it as a script, without the collection on sys.path.
LABELLED_DISK = "/dev/disk/guestfs/image"
XEN_DISK = "/dev/xvda"               # the guest's name for it under Xen

LAYOUTS = ("lvm", "ubuntu", "btrfs", "uefi")

GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
GPT_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
MBR_LINUX, MBR_SWAP, MBR_LVM, MBR_EXTENDED = 0x83, 0x82, 0x8E, 0x05

# Modules a MODULES=dep initramfs built under Xen would have had for these roots (the Xen
# shaping uses MODULES=list, which adds nothing on its own).
INITRAMFS_MODULES = {"lvm": ("dm-mod",), "ubuntu": ("dm-mod",), "btrfs": ("btrfs",)}


class ApplianceError(RuntimeError):
    pass


@dataclass
class Part:
    number: int
    kind: str            # p (primary / GPT) | e (extended) | l (logical)
    mib: int | None      # None: up to the end of the disk
    ptype: object        # GPT type GUID (str) or MBR id (int)
    role: str            # boot | root | swap | pv | esp | bios_grub | extended
    bootable: bool = False


@dataclass
class Layout:
    """What make_layout made: filesystems as guest_factory.Filesystem keyword dicts, the
    appliance devices to mount them from (in mount order) and a summary for meta.json."""
    filesystems: list
    mounts: list           # (appliance device, mountpoint, mount options)
    summary: dict


def lv_mapper_name(vg: str, lv: str) -> str:
    """/dev/mapper name of an LV: device-mapper doubles the dashes inside each name."""
    return f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"


# --------------------------------------------------------------------------- appliance
@contextlib.contextmanager
def appliance(*disks, readonly: bool = False):
    """A launched appliance with disks attached (raw); always shut down and closed."""
    try:
        import guestfs  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise ApplianceError("python3-guestfs is not importable: run the factory with "
                             "/usr/bin/python3 or the project venv (system site packages)") from exc
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])   # nested KVM aborts the appliance's qemu here
        for index, disk in enumerate(disks):
            # labels are letters only: the first disk is "image", the others "imageb", "imagec"...
            label = "image" + ("" if index == 0 else chr(ord("a") + index))
            g.add_drive_opts(str(disk), format="raw", readonly=readonly, label=label)
        g.launch()
        yield g
    finally:
        with contextlib.suppress(Exception):
            g.shutdown()
        g.close()


# --------------------------------------------------------------------------- partitions
def partition_plan(spec) -> tuple:
    """(table type, [Part]) of the installer whose layout spec.layout copies."""
    if spec.layout == "lvm":        # Debian installer, guided - use entire disk and set up LVM
        return "msdos", [Part(1, "p", spec.boot_mib, MBR_LINUX, "boot", bootable=True),
                         Part(2, "e", None, MBR_EXTENDED, "extended"),
                         Part(5, "l", None, MBR_LVM, "pv")]
    if spec.layout == "ubuntu":     # Ubuntu server (subiquity/curtin), guided LVM on BIOS
        return "gpt", [Part(1, "p", 1, GPT_BIOS_BOOT, "bios_grub"),
                       Part(2, "p", spec.boot_mib, GPT_LINUX_FS, "boot"),
                       Part(3, "p", None, GPT_LINUX_LVM, "pv")]
    if spec.layout == "btrfs":      # Debian installer, guided - entire disk, root on btrfs
        root_mib = spec.disk_mib - 1 - 1 - spec.swap_mib - 1
        return "msdos", [Part(1, "p", root_mib, MBR_LINUX, "root", bootable=True),
                         Part(2, "e", None, MBR_EXTENDED, "extended"),
                         Part(5, "l", None, MBR_SWAP, "swap")]
    if spec.layout == "uefi":       # Debian installer on UEFI firmware, guided - entire disk
        root_mib = spec.disk_mib - 1 - spec.boot_mib - spec.swap_mib - 1
        return "gpt", [Part(1, "p", spec.boot_mib, GPT_ESP, "esp"),
                       Part(2, "p", root_mib, GPT_LINUX_FS, "root"),
                       Part(3, "p", None, GPT_LINUX_SWAP, "swap")]
    raise ApplianceError(f"{spec.name}: layout {spec.layout!r} is not built in the appliance")


def _partition(g, table: str, parts: list) -> None:
    total = g.blockdev_getsize64(DISK) // SECTOR
    # the last usable sector, leaving room for a GPT backup table, rounded down to a MiB
    last = (total - 34) // ALIGN * ALIGN - 1
    g.part_init(DISK, table)
    start = ALIGN
    for p in parts:
        if p.kind == "l":
            start = extended_start + ALIGN     # room for the EBR, as fdisk/parted leave it
        end = start + p.mib * ALIGN - 1 if p.mib else last
        g.part_add(DISK, p.kind, start, end)
        if p.kind == "e":
            extended_start = start
        if table == "gpt":
            g.part_set_gpt_type(DISK, p.number, p.ptype)
        else:
            g.part_set_mbr_id(DISK, p.number, p.ptype)
            if p.bootable:
                g.part_set_bootable(DISK, p.number, True)
        if p.kind != "e":
            start = end + 1


def _fs(g, appliance_dev: str, fstype: str, mountpoint: str, device: str, **extra) -> dict:
    """Make the filesystem (or swap area) and describe it as guest_factory.Filesystem kwargs."""
    if fstype == "swap":
        g.mkswap(appliance_dev)
    else:
        g.mkfs(fstype, appliance_dev)
    fs = {"disk": 0, "offset": 0, "size": g.blockdev_getsize64(appliance_dev), "fstype": fstype,
          "mountpoint": mountpoint, "device": device, "uuid": g.vfs_uuid(appliance_dev),
          "partition": None}
    fs.update(extra)
    return fs


def make_layout(g, spec) -> Layout:
    """Partition table, LVM, filesystems and subvolume of spec's layout on the appliance's disk."""
    table, parts = partition_plan(spec)
    _partition(g, table, parts)
    starts = {p["part_num"]: (p["part_start"], p["part_size"]) for p in g.part_list(DISK)}
    by_role = {p.role: p for p in parts}
    fss, mounts = [], []
    summary = {"table": table, "partitions": [
        {"number": p.number, "role": p.role, "type": p.ptype if table == "gpt" else f"{p.ptype:#04x}",
         "start": starts[p.number][0], "size": starts[p.number][1]} for p in parts]}

    def part_fs(role, fstype, mountpoint, **extra):
        p = by_role[role]
        offset, size = starts[p.number]
        fs = _fs(g, f"{DISK}{p.number}", fstype, mountpoint, f"{XEN_DISK}{p.number}",
                 partition=p.number, **extra)
        fs.update(offset=offset, size=size)
        return fs

    if spec.layout in ("lvm", "ubuntu"):
        vg = spec.vg_name
        pv = f"{DISK}{by_role['pv'].number}"
        g.pvcreate(pv)
        g.vgcreate(vg, [pv])
        if spec.layout == "lvm":
            names = {"/": "root", "none": "swap_1"}
            free = next(v for v in g.vgs_full() if v["vg_name"] == vg)["vg_free"]
            g.lvcreate("root", vg, free // MIB - spec.swap_mib)
            g.lvcreate_free("swap_1", vg, 100)
        else:
            names = {"/": "ubuntu-lv"}
            g.lvcreate_free("ubuntu-lv", vg, 100)
        vg_uuid = g.vguuid(vg).replace("-", "")
        summary.update(vg=vg, vg_uuid=vg_uuid, lvs={})
        for mountpoint, lv in names.items():
            dev = f"/dev/{vg}/{lv}"
            lv_uuid = g.lvuuid(dev).replace("-", "")
            fstype = "swap" if mountpoint == "none" else "ext4"
            # dm_uuid: the device-mapper UUID udev links as /dev/disk/by-id/dm-uuid-LVM-...
            fss.append(_fs(g, dev, fstype, mountpoint, lv_mapper_name(vg, lv), lv=f"{vg}/{lv}",
                           dm_uuid=vg_uuid + lv_uuid))
            summary["lvs"][lv] = lv_uuid
        boot = part_fs("boot", "ext2" if spec.layout == "lvm" else "ext4", "/boot")
        fss.insert(1, boot)
        mounts = [(f"/dev/{vg}/{names['/']}", "/", ""), (f"{DISK}{boot['partition']}", "/boot", "")]
        if spec.layout == "ubuntu":
            fss.append({"disk": 0, "offset": 0, "size": spec.swap_mib * MIB, "fstype": "swap",
                        "mountpoint": "none", "device": "/swap.img", "uuid": "",
                        "partition": None, "swapfile": True})
    elif spec.layout == "btrfs":
        root = part_fs("root", "btrfs", "/", subvolume="@rootfs")
        dev = f"{DISK}{root['partition']}"
        g.mount(dev, "/")
        g.btrfs_subvolume_create("/@rootfs")
        g.umount_all()
        fss = [root, part_fs("swap", "swap", "none")]
        mounts = [(dev, "/", "subvol=@rootfs")]
        summary["subvolumes"] = ["@rootfs"]
    elif spec.layout == "uefi":
        esp = part_fs("esp", "vfat", "/boot/efi")
        root = part_fs("root", "ext4", "/")
        fss = [root, esp, part_fs("swap", "swap", "none")]
        mounts = [(f"{DISK}{root['partition']}", "/", ""), (f"{DISK}{esp['partition']}", "/boot/efi", "")]
    return Layout(filesystems=fss, mounts=mounts, summary=summary)


# --------------------------------------------------------------------------- guest files
def _fstab_spec(fs: dict, style: str) -> str:
    """How the installer names a filesystem in fstab: d-i uses /dev/mapper names for LVs and
    UUID= for partitions; curtin uses /dev/disk/by-id/dm-uuid-LVM-* and /dev/disk/by-uuid."""
    if fs.get("swapfile"):
        return fs["device"]
    if fs.get("lv"):
        if style == "curtin":
            return f"/dev/disk/by-id/dm-uuid-LVM-{fs['dm_uuid']}"
        return fs["device"]
    return f"/dev/disk/by-uuid/{fs['uuid']}" if style == "curtin" else f"UUID={fs['uuid']}"


def fstab_text(spec, filesystems: list) -> str:
    """/etc/fstab as the layout's installer writes it."""
    curtin = spec.layout == "ubuntu"
    style = "curtin" if curtin else "d-i"
    lines = ["# /etc/fstab: static file system information.", "#",
             "# Use 'blkid' to print the universally unique identifier for a",
             "# device; this may be used with UUID= as a more robust way to name devices",
             "# that works even if disks are added and removed. See fstab(5).", "#",
             "# <file system> <mount point>   <type>  <options>       <dump>  <pass>"]
    for fs in filesystems:
        mp, fstype = fs["mountpoint"], fs["fstype"]
        if fstype == "swap":
            options, dump_pass = "sw", "0\t0"
        elif curtin:
            options, dump_pass = "defaults", "0\t1"
        elif mp == "/":
            options = "defaults,subvol=@rootfs" if fstype == "btrfs" else "errors=remount-ro"
            dump_pass = "0\t0" if fstype == "btrfs" else "0\t1"
        elif fstype == "vfat":
            options, dump_pass = "umask=0077", "0\t1"
        else:
            options, dump_pass = "defaults", "0\t2"
        spec_text = _fstab_spec(fs, style)
        if curtin and not fs.get("swapfile"):
            where = fs["device"] if not fs.get("lv") else "/dev/" + fs["lv"]
            lines.append(f"# {mp} was on {where} during curtin installation")
        elif not curtin and spec_text.startswith("UUID="):
            label = "swap" if fstype == "swap" else mp
            lines.append(f"# {label} was on {fs['device']} during installation")
        lines.append(f"{spec_text}\t{'none' if fstype == 'swap' else mp}\t{fstype}\t{options}\t{dump_pass}")
    return "\n".join(lines) + "\n"


def resume_text(filesystems: list) -> str:
    """initramfs-tools' conf.d/resume as the installer leaves it (no resume from a swap file)."""
    swap = next(f for f in filesystems if f["fstype"] == "swap")
    if swap.get("swapfile"):
        return "RESUME=none\n"
    return f"RESUME={swap['device'] if swap.get('lv') else 'UUID=' + swap['uuid']}\n"


def netplan_files(spec, instance_id: str) -> dict:
    """Network and cloud-init state of an Ubuntu guest deployed on XenServer from a cloud image
    with a config drive: cloud-init wrote the static netplan file for the Xen NIC (enX0) from
    the datasource's network data and recorded the instance as initialised.
    {path: (text, mode)}; a value of (target, None) is a symlink."""
    inst = f"/var/lib/cloud/instances/{instance_id}"
    ds = "DataSourceConfigDrive: DataSourceConfigDrive [net,ver=2][source=/dev/xvdd]"
    return {
        "/etc/netplan/50-cloud-init.yaml": (
            "# This file is generated from information provided by the datasource.  Changes\n"
            "# to it will not persist across an instance reboot.  To disable cloud-init's\n"
            "# network configuration capabilities, write a file\n"
            "# /etc/cloud/cloud.cfg.d/99-disable-network-config.cfg with the following:\n"
            "# network: {config: disabled}\n"
            "network:\n"
            "    ethernets:\n"
            "        enX0:\n"
            "            addresses:\n"
            f"            - {spec.static_ip}/24\n"
            "            match:\n"
            f"                macaddress: {spec.mac}\n"
            "            nameservers:\n"
            "                addresses:\n"
            "                - 192.0.2.1\n"
            "            routes:\n"
            "            -   to: default\n"
            "                via: 192.0.2.1\n"
            "            set-name: enX0\n"
            "    renderer: networkd\n"
            "    version: 2\n", 0o600),
        "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": (
            "# to update this file, run dpkg-reconfigure cloud-init\n"
            "datasource_list: [ ConfigDrive, NoCloud, None ]\n", 0o644),
        f"{inst}/datasource": (ds + "\n", 0o644),
        f"{inst}/user-data.txt": (f"#cloud-config\nhostname: {spec.hostname}\n", 0o600),
        f"{inst}/boot-finished": ("1.4 up 11.52 seconds\n", 0o644),
        "/var/lib/cloud/instance": (inst, None),
        "/var/lib/cloud/data/instance-id": (instance_id + "\n", 0o644),
        "/var/lib/cloud/data/previous-instance-id": (instance_id + "\n", 0o644),
        "/var/lib/cloud/data/previous-datasource": (ds + "\n", 0o644),
    }


# --------------------------------------------------------------------------- fill + boot
def mount_layout(g, layout: Layout) -> None:
    for dev, mountpoint, options in layout.mounts:
        if mountpoint != "/":
            g.mkdir_p(mountpoint)
        g.mount_options(options, dev, mountpoint)


def fill(g, spec, layout: Layout, tarball) -> None:
    """Mount the layout and unpack the shaped tree (numeric owners in the tar) into it."""
    mount_layout(g, layout)
    g.tar_in(str(tarball), "/")
    swapfile = next((f for f in layout.filesystems if f.get("swapfile")), None)
    if swapfile:
        path = swapfile["device"]
        g.fallocate64(path, swapfile["size"])
        g.chmod(0o600, path)
        g.mkswap_file(path)


def _guest_command(g, *args) -> str:
    """Run a command chrooted into the mounted guest; failures name the command."""
    try:
        return g.command(list(args))
    except RuntimeError as exc:
        raise ApplianceError(f"in the guest: {' '.join(args)}: {exc}") from exc


def install_boot_loader(g, spec) -> str:
    """grub-install + update-grub as the installer runs them; returns grub.cfg's kernel args."""
    if spec.firmware == "uefi":
        # --no-nvram: the appliance boots by BIOS and has no EFI variables; the installer on
        # the Xen guest wrote its Boot#### entry into the VM's NVRAM, which a move loses.
        _guest_command(g, "grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi",
                       "--bootloader-id=debian", "--no-nvram")
    else:
        _grub_install_pc(g)
    _guest_command(g, "update-grub")
    return kernel_args(g.cat("/boot/grub/grub.cfg"))


def _grub_install_pc(g) -> None:
    """grub-install --target=i386-pc on the image's disk, named by its label (LABELLED_DISK).
    The filesystems and LVM were written through the partition devices:
    the block devices' caches are flushed first so grub-setup, reading the whole disk, sees the
    partition table and embedding area as written."""
    for dev in [DISK] + g.list_partitions():
        g.blockdev_flushbufs(dev)
    _guest_command(g, "grub-install", "--target=i386-pc", LABELLED_DISK)


def kernel_args(grub_cfg: str) -> str:
    m = re.search(r"(?m)^\s*linux\s+\S+\s+(.*)$", grub_cfg)
    if not m:
        raise ApplianceError("update-grub wrote no linux line into grub.cfg")
    return m.group(1).strip()


def finish(g) -> None:
    """Unmount, deactivate LVM and flush, so the image is consistent when the appliance stops."""
    g.umount_all()
    with contextlib.suppress(RuntimeError):
        g.vg_activate_all(False)
    g.sync()


def install_grub_pc(disk, root_partition: int, boot_partition: int | None = None) -> None:
    """grub-install --target=i386-pc /dev/sda from the guest's own root, in the appliance, and
    the device.map the installer leaves (the guest's disk is xvda under Xen)."""
    with appliance(disk) as g:
        g.mount(f"{DISK}{root_partition}", "/")
        if boot_partition:
            g.mount(f"{DISK}{boot_partition}", "/boot")
        _grub_install_pc(g)
        g.write("/boot/grub/device.map", f"(hd0)\t{XEN_DISK}\n")
        finish(g)


# --------------------------------------------------------------------------- inspection
def grub_core(embedded: bytes, diskboot_size: int, decompressor: bytes) -> bytes:
    """The decompressed kernel + modules of an i386-pc core.img (as embedded after the MBR or
    in a bios_grub partition): diskboot.img, then lzma_decompress.img (the guest's own, from
    /usr/lib/grub/i386-pc/) whose header holds the sizes, then a raw LZMA stream with the
    parameters grub-mkimage uses. Lets tests see which modules and prefix the core carries."""
    header = embedded[diskboot_size:diskboot_size + 16]
    compressed = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    start = diskboot_size + len(decompressor)
    lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}
    dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
    return dec.decompress(embedded[start:start + compressed], max_length=size)


def grub_core_prefix(core: bytes) -> str | None:
    """The prefix a core image looks for its modules and grub.cfg in, e.g. ``(,msdos1)/grub``."""
    m = re.search(rb"\([a-z0-9,/_-]*\)/[\x21-\x7e]*", core)
    return m.group().decode() if m else None
