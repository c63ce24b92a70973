"""Build Debian test guests shaped like XenServer/XCP-ng VMs (raw disks + VM description + XVA).

    from guest_factory import VARIANTS, build_variant
    img = build_variant("deb12-pv", tmp_path)      # cached after the first build
    img.disks            # [Path(.../disk0.raw), ...] private copies, in userdevice order
    img.vm               # xva_writer.VM referencing those images
    img.xva(tmp_path / "deb12-pv.xva", checksum="xxhash", compression=None)

CLI:  python tests/lib/guest_factory.py build VARIANT|all --out DIR [--xva] [--checksum sha1]
      python tests/lib/guest_factory.py build VARIANT --out DIR --xva --name VM --data-disk-mib 64
      python tests/lib/guest_factory.py list

``add_data_disk`` (CLI ``--data-disk-mib``) gives one built guest a second disk (``xvdb``: MBR,
one ext4 partition mounted from fstab as ``/dev/xvdb1``); ``rename_vm`` (``--name``) gives its
VM description another name and uuid. Both change only the private copies and the VM
description, never the cache.

How it is built (root needed; no mounts for PV guests):
  1. debootstrap --variant=minbase --include=<packages> SUITE into a tree cached per
     suite/init/package list (``trees/`` in the cache).
  2. A copy of the tree is shaped like a Xen guest (fstab on /dev/xvdX, pygrub grub.cfg with
     console=hvc0, Xen-only MODULES=list initramfs, static eth0, persistent-net rule, hvc0
     getty, root password); the chroot steps run with /proc, /sys, /dev bind-mounted and always
     unmounted again.
  3. ``mkfs.ext4 -d`` builds the filesystems from the tree without mounting, ``sfdisk`` writes
     the MBR table on the image file, ``dd conv=sparse,notrunc`` puts the filesystems at their
     partition offsets. Only the HVM guest mounts (loop + offset) to run grub-install.
  4. The finished images go to ``images/`` in the cache; ``build_variant`` hands out sparse
     copies, so callers may modify them.

The layouts an installer makes with LVM, btrfs or an ESP (``lvm``, ``ubuntu``, ``btrfs``,
``uefi``: guest_variants.VariantSpec) need device-mapper and vfat, which this host's kernel
lacks: ``guestfs_build`` makes them inside the libguestfs appliance instead of step 3
(partitions, PV/VG/LVs, mkfs, btrfs subvolume; the tree is shaped on the host with fstab
written from the UUIDs mkfs gave, tarred with numeric owners, unpacked in the appliance) and
runs the guest's own ``grub-install`` + ``update-grub`` there, chrooted into the guest. HVM
guests with ``boot_code="guestfs"`` (deb12-hvm) get their grub-install there too, so the core
image reads its partition like an installer-made one. The factory then needs python3-guestfs
(``/usr/bin/python3`` or the project venv); about 25 s more per build for the appliance under TCG.

Cache: $XEN2KVM_GUEST_CACHE or /var/cache/xen2kvm-test-guests. Entries are keyed by a hash of
CACHE_VERSION + the spec, written under a temporary name and renamed when complete, and built
under an fcntl lock so concurrent pytest processes build each thing once.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guestfs_build  # noqa: E402
from guest_variants import ROOT_PASSWORD, SPECS, VARIANTS, VariantSpec  # noqa: E402
from xva_writer import FAULTS  # noqa: E402

# Bump to invalidate every cached tree and image (e.g. when the shaping logic changes).
CACHE_VERSION = 3
CACHE_DIR = Path(os.environ.get("XEN2KVM_GUEST_CACHE", "/var/cache/xen2kvm-test-guests"))
MIRROR = os.environ.get("XEN2KVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
MIB = 1024 * 1024
SECTOR = 512
XEN_INITRAMFS_MODULES = ("xen-blkfront", "xen-netfront", "ext4")
DATA_DISK_MARKER = "xen2kvm-data-disk"   # file at the top of add_data_disk's filesystem

__all__ = ["VARIANTS", "SPECS", "GuestImage", "Filesystem", "build_variant", "ensure_image",
           "list_initramfs", "CACHE_DIR", "GuestBuildError", "SuiteUnavailable", "add_data_disk",
           "rename_vm", "DATA_DISK_MARKER", "prune_cache"]


class GuestBuildError(RuntimeError):
    pass


class SuiteUnavailable(GuestBuildError):
    """debootstrap could not get the suite from the mirror (e.g. moved to archive.debian.org)."""


def log(msg: str) -> None:
    print(f"[guest_factory] {msg}", file=sys.stderr, flush=True)


def run(cmd, *, input=None, check=True, env=None, quiet=False) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    if not quiet:
        log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, check=False)
    if check and p.returncode != 0:
        tail = (p.stdout[-2000:] + "\n" + p.stderr[-3000:]).strip()
        raise GuestBuildError(f"command failed (rc={p.returncode}): {' '.join(cmd)}\n{tail}")
    return p


# --------------------------------------------------------------------------- facts / results
@dataclass
class Filesystem:
    """One filesystem (or swap area) on one of the images."""
    disk: int            # index into GuestImage.disks
    offset: int          # bytes from the start of that disk
    size: int            # bytes
    fstype: str          # ext4 | ext2 | swap
    mountpoint: str      # "/", "/boot", "none" for swap
    device: str          # the guest's name for it under Xen, e.g. /dev/xvda1
    uuid: str
    partition: int | None = None   # partition number, None for a bare disk, an LV, a swap file
    lv: str = ""                   # "vg/lv" when the filesystem is on an LVM logical volume
    subvolume: str = ""            # btrfs subvolume mounted as mountpoint
    swapfile: bool = False         # swap in a file (device is its path in the guest)


@dataclass
class GuestImage:
    name: str
    disks: list
    vm: object                   # xva_writer.VM
    suite: str
    version_id: str
    init: str
    domain_type: str
    root_device: str
    swap_device: str
    boot_device: str | None
    has_separate_boot: bool
    bare_fs: bool
    mac: str
    static_ip: str
    static_prefix: int
    gateway: str
    hostname: str
    root_password: str
    kernel_version: str
    kernel_cmdline: str          # the linux line's arguments in the guest's grub.cfg
    filesystems: list
    from_cache: bool             # True when the image came from the cache untouched
    build_seconds: float         # time of the original (cold) build
    cache_path: Path = field(repr=False, default=None)

    @property
    def root_fs(self) -> Filesystem:
        return next(f for f in self.filesystems if f.mountpoint == "/")

    @property
    def boot_fs(self) -> Filesystem:
        """The filesystem holding the kernels (``/boot`` when separate, else ``/``)."""
        return next((f for f in self.filesystems if f.mountpoint == "/boot"), self.root_fs)

    def boot_path(self, path: str) -> str:
        """``/boot/x`` as a path inside boot_fs."""
        if self.has_separate_boot:
            assert path.startswith("/boot/")
            return path[len("/boot"):]
        return path

    def xva(self, path, checksum: str = "xxhash", compression=None, fault=None) -> Path:
        """Pack the VM into an XVA; ``fault``: one of xva_writer's malformed variants."""
        from xva_writer import write_xva
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_xva(str(path), self.vm, checksum=checksum, compression=compression, fault=fault)
        return path


# --------------------------------------------------------------------------- cache + locking
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


_FIELDS_KEYED_WHEN_SET = ("omit_packages", "firmware", "network", "boot_code", "vg_name")


def _field_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def tree_key(spec: VariantSpec) -> str:
    pk = _digest({"v": CACHE_VERSION, "suite": spec.suite, "variant": "minbase",
                  "packages": list(spec.packages)})
    return f"{spec.suite}-{spec.init}-{pk}"


def image_key(spec: VariantSpec) -> str:
    d = dataclasses.asdict(spec)
    d["extra_packages"] = list(spec.extra_packages)
    # Fields added after CACHE_VERSION 3 count only when set: older variants keep their keys.
    for f in dataclasses.fields(VariantSpec):
        if f.name in _FIELDS_KEYED_WHEN_SET and d[f.name] == _field_default(f):
            del d[f.name]
    if "omit_packages" in d:
        d["omit_packages"] = list(spec.omit_packages)
    return f"{spec.name}-{_digest({'v': CACHE_VERSION, 'tree': tree_key(spec), 'spec': d})}"


def _try_locked(key: str):
    """The open, exclusively locked lock file of `key`, or None when another process holds it
    (it is building that key)."""
    lockdir = CACHE_DIR / "locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    fh = open(lockdir / f"{key}.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@contextlib.contextmanager
def _locked(key: str):
    fh = _try_locked(key)
    if fh is None:
        t0 = time.monotonic()
        log(f"waiting for another process building {key}")
        fh = open(CACHE_DIR / "locks" / f"{key}.lock", "w")
        fcntl.flock(fh, fcntl.LOCK_EX)
        log(f"lock {key} acquired after {time.monotonic() - t0:.0f}s")
    with fh:
        yield


def _mounts_under(path: Path) -> list:
    """Mount points at or below path (from /proc/self/mountinfo), deepest first."""
    path = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _umount(mp: str) -> None:
    if run(["umount", mp], check=False, quiet=True).returncode != 0:
        log(f"umount {mp} failed, detaching lazily")
        run(["umount", "-l", mp], check=False, quiet=True)


def _safe_rmtree(path: Path) -> None:
    """Remove a (chroot) tree, never crossing into anything still mounted below it."""
    if not os.path.lexists(path):
        return
    for mp in _mounts_under(path):
        _umount(mp)
    left = _mounts_under(path)
    if left:
        raise GuestBuildError(f"refusing to delete {path}: still mounted: {left}")
    run(["rm", "-rf", "--one-file-system", str(path)], quiet=True)


# --------------------------------------------------------------------------- chroot helpers
@contextlib.contextmanager
def chroot_mounts(root: Path):
    """/proc, /sys, /dev, /dev/pts for a chroot at root; always unmounted on exit."""
    root = Path(root)
    done = []
    try:
        for src, rel, args in (("proc", "proc", ["-t", "proc"]),
                               ("/sys", "sys", ["--bind"]),
                               ("/dev", "dev", ["--bind"]),
                               ("/dev/pts", "dev/pts", ["--bind"])):
            dst = root / rel
            dst.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, src, dst], quiet=True)
            done.append(str(dst))
        yield root
    finally:
        for mp in reversed(done):
            _umount(mp)


def chroot(root: Path, *cmd, input=None, check=True) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
    return run(["chroot", str(root), *cmd], input=input, check=check, env=env)


@contextlib.contextmanager
def _no_daemons(root: Path):
    """policy-rc.d so package scripts in the chroot start no services."""
    p = root / "usr/sbin/policy-rc.d"
    p.write_text("#!/bin/sh\nexit 101\n")
    p.chmod(0o755)
    try:
        yield
    finally:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def losetup(image: Path, offset: int = 0, sizelimit: int = 0, read_only: bool = False):
    """Attach a loop device (optionally a slice of image); always detached on exit."""
    cmd = ["losetup", "--find", "--show"]
    if offset:
        cmd += ["--offset", str(offset)]
    if sizelimit:
        cmd += ["--sizelimit", str(sizelimit)]
    if read_only:
        cmd.append("--read-only")
    dev = run([*cmd, str(image)]).stdout.strip()
    try:
        yield dev
    finally:
        for _attempt in range(5):
            if run(["losetup", "-d", dev], check=False, quiet=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            log(f"WARNING: could not detach {dev}")


@contextlib.contextmanager
def mounted(dev: str, where: Path, options: str | None = None):
    args = ["mount"] + (["-o", options] if options else []) + [dev, str(where)]
    run(args)
    try:
        yield where
    finally:
        _umount(str(where))


# --------------------------------------------------------------------------- trees
def ensure_tree(spec: VariantSpec) -> Path:
    """The debootstrap tree for spec's suite/init/packages, built once and cached."""
    key = tree_key(spec)
    final = CACHE_DIR / "trees" / key
    if final.is_dir():
        return final
    with _locked(f"tree-{key}"):
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}"
        _safe_rmtree(tmp)               # a crashed earlier build of the same key
        t0 = time.monotonic()
        log(f"debootstrap {spec.suite} ({spec.init}) -> {tmp}")
        try:
            try:
                run(["debootstrap", "--variant=minbase", "--components=main",
                     "--include=" + ",".join(spec.packages), spec.suite, tmp, MIRROR])
            except GuestBuildError as e:
                if re.search(r"Failed getting release file|Release signed by unknown key|"
                             r"Invalid Release (file|signature)|No such script", str(e)):
                    raise SuiteUnavailable(f"cannot debootstrap {spec.suite} from {MIRROR}: "
                                           f"{e}") from e
                raise
            with chroot_mounts(tmp), _no_daemons(tmp):
                chroot(tmp, "apt-get", "clean")
            for mp in _mounts_under(tmp):       # debootstrap's own mounts, should be none
                _umount(mp)
            (final.parent / f"{key}.json").write_text(json.dumps(
                {"suite": spec.suite, "init": spec.init, "packages": list(spec.packages),
                 "mirror": MIRROR, "seconds": round(time.monotonic() - t0, 1)}, indent=1))
            os.rename(tmp, final)
        except BaseException:
            _safe_rmtree(tmp)
            raise
        log(f"tree {key} built in {time.monotonic() - t0:.0f}s")
        return final


def _kernel_version(root: Path) -> str:
    kernels = sorted((p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*")),
                     key=lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", v)])
    if not kernels:
        raise GuestBuildError(f"no kernel in {root}/boot")
    return kernels[-1]


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink():
        p.unlink()
    p.write_text(text)
    p.chmod(mode)


# --------------------------------------------------------------------------- layout
def _layout(spec: VariantSpec, uuids: dict) -> list:
    """Filesystems of the variant (offsets in bytes), in disk/partition order."""
    fs = []
    if spec.layout == "bare":
        fs.append(Filesystem(0, 0, spec.disk_mib * MIB, "ext4", "/", "/dev/xvda1", uuids["root"]))
        fs.append(Filesystem(1, 0, spec.swap_mib * MIB, "swap", "none", "/dev/xvda2",
                             uuids["swap"]))
        return fs
    start = 1
    parts = []
    if spec.layout == "bootpart":
        parts.append(("ext2", "/boot", spec.boot_mib, "boot"))
        root_mib = spec.disk_mib - 1 - spec.boot_mib - spec.swap_mib
    else:
        root_mib = spec.disk_mib - 1 - spec.swap_mib
    parts += [("ext4", "/", root_mib, "root"), ("swap", "none", spec.swap_mib, "swap")]
    for n, (fstype, mp, size, role) in enumerate(parts, 1):
        fs.append(Filesystem(0, start * MIB, size * MIB, fstype, mp, f"/dev/xvda{n}",
                             uuids[role], partition=n))
        start += size
    return fs


def _uuids(spec: VariantSpec) -> dict:
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"xen2kvm-test-guest:{image_key(spec)}")
    return {r: str(uuid.uuid5(ns, r)) for r in ("root", "boot", "swap", "vdi0", "vdi1", "vm")}


def _cmdline(spec: VariantSpec, root_dev: str) -> str:
    if spec.pv:
        return f"root={root_dev} ro console=hvc0"
    return f"root={root_dev} ro quiet"


def _pv_args(spec: VariantSpec, root_dev: str) -> str:
    return _cmdline(spec, root_dev) if spec.pv else ""


# --------------------------------------------------------------------------- shaping
def _shape_tree(spec: VariantSpec, root: Path, fss: list, kver: str,
                layout_files: dict | None = None) -> str:
    """Make the copied tree look like a Xen guest. Returns the grub.cfg kernel arguments.

    layout_files ({path: (text, mode)}, mode None: a symlink to text) are written last, over
    the defaults: the appliance-built layouts bring their installer's fstab, resume file and
    (netplan guests) network and cloud-init state.
    """
    in_appliance = spec.layout in guestfs_build.LAYOUTS
    rootfs = next(f for f in fss if f.mountpoint == "/")
    swap = next(f for f in fss if f.fstype == "swap")
    boot = next((f for f in fss if f.mountpoint == "/boot"), None)
    cmdline = _cmdline(spec, rootfs.device)

    _write(root, "/etc/hostname", spec.hostname + "\n")
    _write(root, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.hostname}\n\n"
           "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
           "ff02::2\tip6-allrouters\n")
    # debootstrap copied the build host's resolv.conf: replace it by a documentation address.
    _write(root, "/etc/resolv.conf", "nameserver 192.0.2.1\n")

    fstab = ["# /etc/fstab: static file system information.", "#",
             "# <file system> <mount point>   <type>  <options>       <dump>  <pass>"]
    fstab.append(f"{rootfs.device}\t/\text4\terrors=remount-ro\t0\t1")
    if boot:
        fstab.append(f"{boot.device}\t/boot\t{boot.fstype}\tdefaults\t0\t2")
    fstab.append(f"{swap.device}\tnone\tswap\tsw\t0\t0")
    _write(root, "/etc/fstab", "\n".join(fstab) + "\n")

    if spec.network == "ifupdown":
        _shape_ifupdown(spec, root)

    # Initramfs built "under Xen": only the Xen front ends and the root fs driver.
    conf = root / "etc/initramfs-tools/initramfs.conf"
    text = conf.read_text()
    text, n = re.subn(r"(?m)^MODULES=\w+", "MODULES=list", text)
    if n != 1:
        raise GuestBuildError("MODULES= not found in initramfs.conf")
    conf.write_text(text)
    modules = XEN_INITRAMFS_MODULES + guestfs_build.INITRAMFS_MODULES.get(spec.layout, ())
    mods = root / "etc/initramfs-tools/modules"
    mods.write_text(mods.read_text().rstrip("\n") + "\n" + "\n".join(modules) + "\n")
    _write(root, "/etc/initramfs-tools/conf.d/resume", f"RESUME={swap.device}\n")

    # Consoles (the appliance-built HVM guests have console=hvc0 too: Xen's PV console).
    if spec.pv or in_appliance:
        _shape_hvc0_getty(spec, root)

    # Boot loader configuration.
    if spec.pv:
        _write_pygrub_cfg(root, kver, cmdline, boot is not None)
    elif in_appliance:
        # update-grub in the appliance writes grub.cfg from this, as on the Xen guest.
        _xen_grub_defaults(root)
    else:
        _write_hvm_grub_cfg(root, kver, cmdline, rootfs)

    for rel, (content, mode) in (layout_files or {}).items():
        if mode is None:
            link = root / rel.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(content)
        else:
            _write(root, rel, content, mode)

    with chroot_mounts(root), _no_daemons(root):
        chroot(root, "chpasswd", input=f"root:{ROOT_PASSWORD}\n")
        if not spec.pv and "grub-pc" in spec.packages:
            # what d-i records on a Xen HVM install: grub-pc upgrades reinstall to /dev/xvda
            chroot(root, "debconf-set-selections",
                   input="grub-pc grub-pc/install_devices multiselect /dev/xvda\n")
        chroot(root, "update-initramfs", "-u", "-k", kver)
        listing = chroot(root, "lsinitramfs", f"/boot/initrd.img-{kver}").stdout
    names = {Path(line).name for line in listing.splitlines()}
    if not any(n.startswith("xen-blkfront.ko") for n in names):
        raise GuestBuildError("initramfs lacks xen-blkfront")
    if any(n.startswith("virtio_blk.ko") for n in names):
        raise GuestBuildError("initramfs unexpectedly contains virtio_blk")
    return cmdline


def _shape_ifupdown(spec: VariantSpec, root: Path) -> None:
    """Static eth0 in /etc/network/interfaces, pinned to the Xen vif's MAC by a udev rule."""
    _write(root, "/etc/network/interfaces",
           "# This file describes the network interfaces available on your system\n"
           "# and how to activate them. For more information, see interfaces(5).\n\n"
           "source /etc/network/interfaces.d/*\n\n"
           "# The loopback network interface\nauto lo\niface lo inet loopback\n\n"
           "# The primary network interface\nallow-hotplug eth0\niface eth0 inet static\n"
           f"\taddress {spec.static_ip}/24\n\tgateway 192.0.2.1\n")
    _write(root, "/etc/udev/rules.d/70-persistent-net.rules",
           "# This file was automatically generated by the /lib/udev/write_net_rules\n"
           "# program, run by the persistent-net-generator.rules rules file.\n#\n"
           "# You can modify it, as long as you keep each rule on a single\n"
           "# line, and change only the value of the NAME= key.\n\n"
           "# Xen virtual network interface (vif)\n"
           f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{spec.mac}", '
           'ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n')


def _shape_hvc0_getty(spec: VariantSpec, root: Path) -> None:
    """A getty on Xen's console hvc0 (systemd unit link or inittab line)."""
    if spec.init == "systemd":
        unit = next(p for p in ("usr/lib/systemd/system/serial-getty@.service",
                                "lib/systemd/system/serial-getty@.service")
                    if (root / p).exists())
        link = root / "etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to("/" + unit)
    else:
        inittab = root / "etc/inittab"
        inittab.write_text(inittab.read_text().rstrip("\n")
                           + "\n\n# Xen console\nh0:12345:respawn:/sbin/getty 38400 hvc0\n")


def _write_pygrub_cfg(root: Path, kver: str, cmdline: str, separate_boot: bool) -> None:
    """What pygrub reads: a hand-written grub2 config, no grub packages, no MBR code."""
    kpath = "/" if separate_boot else "/boot/"
    _write(root, "/boot/grub/grub.cfg",
           "# pygrub configuration (no boot loader is installed in this PV guest)\n"
           "set default=0\nset timeout=5\n\n"
           f"menuentry 'Debian GNU/Linux, with Linux {kver}' {{\n"
           f"\tlinux\t{kpath}vmlinuz-{kver} {cmdline}\n"
           f"\tinitrd\t{kpath}initrd.img-{kver}\n}}\n")


def _write_hvm_grub_cfg(root: Path, kver: str, cmdline: str, rootfs: Filesystem) -> None:
    """What update-grub would have produced on Xen (10_linux style; device names kept as the
    installer wrote them). update-grub itself can't run here (grub-probe vs. loop)."""
    r = rootfs.uuid
    search = (f"\tinsmod part_msdos\n\tinsmod ext2\n"
              f"\tsearch --no-floppy --fs-uuid --set=root {r}\n")
    _write(root, "/boot/grub/grub.cfg",
           "#\n# DO NOT EDIT THIS FILE\n#\n# It is automatically generated by grub-mkconfig"
           " using templates\n# from /etc/grub.d and settings from /etc/default/grub\n#\n\n"
           "### BEGIN /etc/grub.d/00_header ###\n"
           "set default=\"0\"\nset timeout=5\nterminal_output console\n"
           "insmod part_msdos\ninsmod ext2\n"
           f"search --no-floppy --fs-uuid --set=root {r}\n"
           "### END /etc/grub.d/00_header ###\n\n"
           "### BEGIN /etc/grub.d/10_linux ###\n"
           f"menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu "
           f"--class os $menuentry_id_option 'gnulinux-simple-{r}' {{\n"
           f"\tinsmod gzio\n{search}"
           f"\techo\t'Loading Linux {kver} ...'\n"
           f"\tlinux\t/boot/vmlinuz-{kver} {cmdline}\n"
           "\techo\t'Loading initial ramdisk ...'\n"
           f"\tinitrd\t/boot/initrd.img-{kver}\n}}\n"
           "### END /etc/grub.d/10_linux ###\n")
    _write(root, "/boot/grub/device.map", "(hd0)\t/dev/xvda\n")


def _xen_grub_defaults(root: Path) -> None:
    """/etc/default/grub of a guest installed on Xen HVM: the kernel talks on the PV console."""
    path = root / "etc/default/grub"
    text, n = re.subn(r'(?m)^GRUB_CMDLINE_LINUX=".*"$', 'GRUB_CMDLINE_LINUX="console=hvc0"',
                      path.read_text())
    if n != 1:
        raise GuestBuildError(f"GRUB_CMDLINE_LINUX= not found in {path}")
    path.write_text(text)


# --------------------------------------------------------------------------- images
def _mke2fs_features() -> list:
    # orphan_file (default in e2fsprogs >= 1.47 on some distros) is unknown to bullseye's
    # e2fsck 1.46; keep filesystems readable by every guest suite.
    v = run(["mke2fs", "-V"], check=False, quiet=True).stderr
    m = re.search(r"mke2fs (\d+)\.(\d+)", v)
    if m and (int(m.group(1)), int(m.group(2))) >= (1, 47):
        return ["-O", "^orphan_file"]
    return []


def _mkfs(fstype: str, image: Path, size: int, fs_uuid: str, src: Path | None) -> None:
    with open(image, "wb") as fh:
        fh.truncate(size)
    if fstype == "swap":
        run(["mkswap", "-U", fs_uuid, image])
        return
    cmd = [f"mkfs.{fstype}", "-q", "-F", "-U", fs_uuid, "-E", "root_owner=0:0"]
    if fstype == "ext4":
        cmd += _mke2fs_features()
    if src is not None:
        cmd += ["-d", src]
    run([*cmd, image])


def _dd_into(src: Path, disk: Path, offset: int) -> None:
    assert offset % MIB == 0
    run(["dd", f"if={src}", f"of={disk}", "bs=1M", f"seek={offset // MIB}",
         "conv=sparse,notrunc", "status=none"])


def _sfdisk_script(spec: VariantSpec, fss: list) -> str:
    label_id = "0x" + hashlib.sha256(spec.name.encode()).hexdigest()[:8]
    lines = ["label: dos", f"label-id: {label_id}", "unit: sectors", ""]
    first = True
    for f in fss:
        typ = "82" if f.fstype == "swap" else "83"
        boot = ", bootable" if first else ""
        lines.append(f"start={f.offset // SECTOR}, size={f.size // SECTOR}, type={typ}{boot}")
        first = False
    return "\n".join(lines) + "\n"


def _install_grub_pc(disk: Path, rootfs: Filesystem, workdir: Path) -> None:
    """grub-install --target=i386-pc into the image's MBR, from a chroot of its own root."""
    mnt = workdir / "mnt"
    mnt.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        whole = stack.enter_context(losetup(disk))
        part = stack.enter_context(losetup(disk, offset=rootfs.offset, sizelimit=rootfs.size))
        stack.enter_context(mounted(part, mnt))
        stack.enter_context(chroot_mounts(mnt))
        chroot(mnt, "grub-install", "--target=i386-pc", "--no-floppy", whole)
        # grub-install may record the build loop device; keep the guest's own view.
        _write(mnt, "/boot/grub/device.map", "(hd0)\t/dev/xvda\n")
    if _mounts_under(mnt):
        raise GuestBuildError(f"{mnt} still mounted after grub-install")


_FILESYSTEM_FIELDS = {f.name for f in dataclasses.fields(Filesystem)}


def _filesystem(record: dict) -> Filesystem:
    """A Filesystem from a meta.json / guestfs_build record (extra keys, e.g. dm_uuid, dropped)."""
    return Filesystem(**{k: v for k, v in record.items() if k in _FILESYSTEM_FIELDS})


def _layout_files(spec: VariantSpec, layout) -> dict:
    fss = layout.filesystems
    files = {"/etc/fstab": (guestfs_build.fstab_text(spec, fss), 0o644),
             "/etc/initramfs-tools/conf.d/resume": (guestfs_build.resume_text(fss), 0o644)}
    if spec.network == "netplan":
        files.update(guestfs_build.netplan_files(spec, _uuids(spec)["vm"]))
    return files


def _build_in_appliance(spec: VariantSpec, tree: Path, out: Path, stage: Path) -> tuple:
    """Partition, LVM, mkfs, fill and grub-install inside the libguestfs appliance.
    Returns (kernel version, kernel args, filesystem records, disks, layout summary)."""
    disk = out / "disk0.raw"
    with open(disk, "wb") as fh:
        fh.truncate(spec.disk_mib * MIB)
    root = stage / "root"
    tarball = stage / "root.tar"
    with guestfs_build.appliance(disk) as g:
        layout = guestfs_build.make_layout(g, spec)
        log(f"{spec.name}: {layout.summary}")
        log(f"copying {tree} -> {root}")
        run(["cp", "-a", "--reflink=auto", tree, root], quiet=True)
        kver = _kernel_version(root)
        _shape_tree(spec, root, [_filesystem(f) for f in layout.filesystems], kver,
                    _layout_files(spec, layout))
        # numeric owners: the appliance's tar must not map names through its own passwd
        run(["tar", "--numeric-owner", "--exclude=./boot/efi", "-C", root, "-cf", tarball, "."],
            quiet=True)
        _safe_rmtree(root)
        log(f"{spec.name}: unpacking the tree and installing the boot loader in the appliance")
        guestfs_build.fill(g, spec, layout, tarball)
        tarball.unlink()
        cmdline = guestfs_build.install_boot_loader(g, spec)
        guestfs_build.finish(g)
    return kver, cmdline, layout.filesystems, [disk], layout.summary


def _build_image(spec: VariantSpec, out: Path) -> dict:
    """Build the variant's disks into directory out; returns the meta record."""
    t0 = time.monotonic()
    tree = ensure_tree(spec)
    if spec.layout in guestfs_build.LAYOUTS:
        stage = out / "stage"
        stage.mkdir(parents=True)
        try:
            kver, cmdline, fs_records, disks, summary = _build_in_appliance(spec, tree, out, stage)
        finally:
            _safe_rmtree(stage)
        return _write_meta(spec, out, t0, kver, cmdline, fs_records, disks, summary)
    uuids = _uuids(spec)
    fss = _layout(spec, uuids)
    stage = out / "stage"
    root = stage / "root"
    stage.mkdir(parents=True)
    try:
        log(f"copying {tree} -> {root}")
        run(["cp", "-a", "--reflink=auto", tree, root], quiet=True)
        kver = _kernel_version(root)
        cmdline = _shape_tree(spec, root, fss, kver)
        boot = next((f for f in fss if f.mountpoint == "/boot"), None)
        srcs = {"/": root}
        if boot:
            bootdir = stage / "boot"
            bootdir.mkdir()
            for p in (root / "boot").iterdir():
                p.rename(bootdir / p.name)
            srcs["/boot"] = bootdir

        ndisks = max(f.disk for f in fss) + 1
        disks = [out / f"disk{i}.raw" for i in range(ndisks)]
        if spec.layout == "bare":
            for f in fss:
                _mkfs(f.fstype, disks[f.disk], f.size, f.uuid, srcs.get(f.mountpoint))
        else:
            with open(disks[0], "wb") as fh:
                fh.truncate(spec.disk_mib * MIB)
            run(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", disks[0]],
                input=_sfdisk_script(spec, fss))
            for f in fss:
                img = stage / f"part{f.partition}.img"
                _mkfs(f.fstype, img, f.size, f.uuid, srcs.get(f.mountpoint))
                _dd_into(img, disks[0], f.offset)
                img.unlink()
            rootfs = next(f for f in fss if f.mountpoint == "/")
            if not spec.pv and spec.boot_code == "guestfs":
                guestfs_build.install_grub_pc(disks[0], rootfs.partition,
                                              boot.partition if boot else None)
            elif not spec.pv:
                _install_grub_pc(disks[0], rootfs, stage)
    finally:
        _safe_rmtree(stage)
    return _write_meta(spec, out, t0, kver, cmdline, [dataclasses.asdict(f) for f in fss], disks)


def _write_meta(spec: VariantSpec, out: Path, t0: float, kver: str, cmdline: str,
                fs_records: list, disks: list, layout: dict | None = None) -> dict:
    meta = {
        "name": spec.name, "key": image_key(spec), "tree": tree_key(spec),
        "kernel_version": kver, "kernel_cmdline": cmdline,
        "filesystems": fs_records,
        "disks": [d.name for d in disks],
        "build_seconds": round(time.monotonic() - t0, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if layout:
        meta["layout"] = layout
    if _in_appliance(spec):
        meta["built_in_appliance"] = True
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _in_appliance(spec: VariantSpec) -> bool:
    return spec.layout in guestfs_build.LAYOUTS or (not spec.pv and spec.boot_code == "guestfs")


def _cached_meta(spec: VariantSpec, final: Path) -> dict | None:
    """meta.json of a finished cache entry; None when absent or when the entry was made by a
    factory that had the spec but not its appliance build (a stale copy of the checkout)."""
    path = final / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if _in_appliance(spec) and not meta.get("built_in_appliance"):
        log(f"{final.name}: cached image was not built in the appliance; rebuilding it")
        return None
    return meta


def ensure_image(name: str) -> tuple:
    """(cache dir of the finished variant, meta, built_now)."""
    spec = SPECS[name]
    key = image_key(spec)
    final = CACHE_DIR / "images" / key
    meta = _cached_meta(spec, final)
    if meta:
        return final, meta, False
    with _locked(f"image-{key}"):
        meta = _cached_meta(spec, final)
        if meta:
            return final, meta, False
        _safe_rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}"
        _safe_rmtree(tmp)
        tmp.mkdir()
        try:
            log(f"building {name} ({key})")
            meta = _build_image(spec, tmp)
            os.rename(tmp, final)
        except BaseException:
            _safe_rmtree(tmp)
            raise
        log(f"{name} built in {meta['build_seconds']}s")
        return final, meta, True


def prune_cache() -> list:
    """Remove the cached images and trees no variant of this checkout uses any more (older specs,
    older CACHE_VERSIONs): each changed spec leaves a multi-GiB entry behind, and the disk is
    shared with the tests.  Entries whose lock another process holds are left alone.  Returns
    [(path, bytes)] of what was removed."""
    wanted = {"images": {image_key(SPECS[n]) for n in VARIANTS},
              "trees": {tree_key(SPECS[n]) for n in VARIANTS}}
    removed = []
    for kind, keep in wanted.items():
        folder = CACHE_DIR / kind
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            key = entry.name[:-len(".json")] if entry.name.endswith(".json") else entry.name
            if key.startswith(".tmp-"):          # a build in progress, or one its next run sweeps
                continue
            if key in keep:
                continue
            lock = _try_locked(f"{kind[:-1]}-{key}")
            if lock is None:
                continue
            try:
                size = _disk_usage(entry)
                if entry.is_dir() and not entry.is_symlink():
                    _safe_rmtree(entry)
                else:
                    entry.unlink()
                removed.append((entry, size))
            finally:
                lock.close()
    return removed


def _disk_usage(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_blocks * 512
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*")) + path.lstat().st_blocks * 512


def _sparse_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    run(["cp", "--sparse=always", "--reflink=auto", src, tmp], quiet=True)
    os.replace(tmp, dst)


def build_variant(name: str, workdir, copy: bool = True) -> GuestImage:
    """Build (or take from the cache) variant `name`; private copies of its disks go to workdir.

    copy=False hands out the cached images themselves: for read-only inspection only.
    """
    if name not in SPECS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    spec = SPECS[name]
    cached, meta, built = ensure_image(name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    disks = []
    for i, fname in enumerate(meta["disks"]):
        if not copy:
            disks.append(cached / fname)
            continue
        dst = workdir / f"{name}-disk{i}.raw"
        _sparse_copy(cached / fname, dst)
        disks.append(dst)
    fss = [_filesystem(f) for f in meta["filesystems"]]
    rootfs = next(f for f in fss if f.mountpoint == "/")
    swap = next(f for f in fss if f.fstype == "swap")
    boot = next((f for f in fss if f.mountpoint == "/boot"), None)
    return GuestImage(
        name=name, disks=disks, vm=_make_vm(spec, disks, rootfs.device, _uuids(spec)),
        suite=spec.suite, version_id=spec.version_id, init=spec.init,
        domain_type=spec.domain_type, root_device=rootfs.device, swap_device=swap.device,
        boot_device=boot.device if boot else None, has_separate_boot=boot is not None,
        bare_fs=spec.layout == "bare", mac=spec.mac, static_ip=spec.static_ip,
        static_prefix=24, gateway="192.0.2.1", hostname=spec.hostname,
        root_password=ROOT_PASSWORD, kernel_version=meta["kernel_version"],
        kernel_cmdline=meta["kernel_cmdline"], filesystems=fss, from_cache=not built,
        build_seconds=meta["build_seconds"], cache_path=cached)


def _make_vm(spec: VariantSpec, disks: list, root_dev: str, uuids: dict):
    from xva_writer import VM, Disk, Nic
    if spec.layout == "bare":
        devices = ["xvda1", "xvda2"]     # PV partition-style devices given as whole disks
        names = ["root", "swap"]
    else:
        devices = ["xvda"]
        names = ["root"]
    vdisks = [Disk(image=str(d), userdevice=i, device=devices[i], bootable=(i == 0),
                   name=f"{spec.name} {names[i]}", vdi_uuid=uuids[f"vdi{i}"])
              for i, d in enumerate(disks)]
    return VM(name=spec.name, uuid=uuids["vm"], vcpus=spec.vcpus, memory_bytes=spec.memory_mib * MIB,
              domain_type=spec.domain_type, firmware=spec.firmware,
              pv_bootloader="pygrub" if spec.pv else "",
              pv_args=_pv_args(spec, root_dev),
              disks=vdisks, nics=[Nic(device=0, mac=spec.mac)])


# --------------------------------------------------------------------------- variations of a built guest
def rename_vm(img: GuestImage, name: str) -> GuestImage:
    """The VM description under another name, with a uuid derived from that name: two builds of
    one variant can then live in one libvirt (domain names and uuids must both differ)."""
    img.vm.name = name
    img.vm.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xen2kvm-test-guest-vm:{name}"))
    return img


def _debugfs(fs_image: str, commands: list) -> None:
    """Run debugfs -w commands on a filesystem (``image?offset=N``); no mount, no loop device.
    debugfs exits 0 even when a command fails, so anything it prints on stderr beyond its banner
    is an error."""
    p = run(["debugfs", "-w", "-f", "-", fs_image], input="\n".join(commands) + "\n")
    errors = [line for line in p.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise GuestBuildError(f"debugfs on {fs_image}: " + "; ".join(errors))


def add_data_disk(img: GuestImage, mib: int, mountpoint: str = "/srv/data") -> GuestImage:
    """Give a built guest a second disk, as a Xen VM with a data disk has: ``xvdb`` with an MBR
    and one ext4 partition (``/dev/xvdb1``) holding DATA_DISK_MARKER, mounted from the guest's
    fstab on ``mountpoint``. The image goes beside the root disk's private copy; that copy's
    /etc/fstab gains the line and the mount point is made with debugfs (the cache is untouched).
    """
    if img.bare_fs or len(img.disks) != 1:
        raise GuestBuildError(f"{img.name}: a data disk needs a guest with one partitioned disk")
    if img.root_fs.partition is None or img.root_fs.fstype != "ext4":
        raise GuestBuildError(f"{img.name}: a data disk needs a root filesystem that is a plain "
                              f"ext4 partition (debugfs edits its fstab), not {img.root_fs.device}")
    root_disk = Path(img.disks[0])
    if img.cache_path is not None and root_disk.parent == img.cache_path:
        raise GuestBuildError("add_data_disk changes the root disk: build the guest with copy=True")
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xen2kvm-test-guest-data:{img.vm.name}"))
    disk = root_disk.with_name(f"{root_disk.name.rsplit('-disk', 1)[0]}-disk1.raw")
    data = Filesystem(disk=1, offset=MIB, size=(mib - 1) * MIB, fstype="ext4", mountpoint=mountpoint,
                      device="/dev/xvdb1", uuid=fs_uuid, partition=1)
    stage = disk.with_name(disk.name + ".stage")
    _safe_rmtree(stage)
    (stage / "top").mkdir(parents=True)
    try:
        (stage / "top" / DATA_DISK_MARKER).write_text(f"{img.vm.name}\n")
        with open(disk, "wb") as fh:
            fh.truncate(mib * MIB)
        label_id = "0x" + hashlib.sha256(f"{img.vm.name}-data".encode()).hexdigest()[:8]
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", disk],
            input=f"label: dos\nlabel-id: {label_id}\nunit: sectors\n\n"
                  f"start={data.offset // SECTOR}, size={data.size // SECTOR}, type=83\n")
        _mkfs("ext4", stage / "part1.img", data.size, fs_uuid, stage / "top")
        _dd_into(stage / "part1.img", disk, data.offset)

        root_fs = f"{root_disk}?offset={img.root_fs.offset}"
        fstab = run(["debugfs", "-R", "cat /etc/fstab", root_fs], quiet=True).stdout
        fstab = fstab.rstrip("\n") + f"\n{data.device}\t{mountpoint}\text4\tdefaults\t0\t2\n"
        (stage / "fstab").write_text(fstab)
        # mountpoint's parent must exist in the guest (/srv does in every Debian)
        _debugfs(root_fs, [f"mkdir {mountpoint}", "rm /etc/fstab", f"write {stage / 'fstab'} /etc/fstab",
                           "sif /etc/fstab mode 0100644", "sif /etc/fstab uid 0", "sif /etc/fstab gid 0"])
    except BaseException:
        disk.unlink(missing_ok=True)
        raise
    finally:
        _safe_rmtree(stage)
    from xva_writer import Disk
    img.disks.append(disk)
    img.filesystems.append(data)
    img.vm.disks.append(Disk(image=str(disk), userdevice=1, device="xvdb", bootable=False,
                             name=f"{img.vm.name} data",
                             vdi_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"xen2kvm-test-guest-vdi1:{img.vm.name}"))))
    return img


# --------------------------------------------------------------------------- inspection helpers
def list_initramfs(initrd: Path, tree_hint: VariantSpec | None = None) -> list:
    """File list of an initramfs: host lsinitramfs, else the cached guest tree's (chroot)."""
    if shutil.which("lsinitramfs"):
        return run(["lsinitramfs", initrd], quiet=True).stdout.splitlines()
    if tree_hint is None:
        raise GuestBuildError("lsinitramfs not installed (apt-get install initramfs-tools-core)")
    tree = ensure_tree(tree_hint)
    inside = tree / "tmp" / f"initrd-{os.getpid()}"
    shutil.copyfile(initrd, inside)
    try:
        return chroot(tree, "lsinitramfs", f"/tmp/{inside.name}").stdout.splitlines()
    finally:
        inside.unlink(missing_ok=True)


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the variants")
    sub.add_parser("prune", help="remove cached images and trees no variant uses any more")
    b = sub.add_parser("build", help="build a variant (or 'all') and copy its disks to --out")
    b.add_argument("variant", choices=VARIANTS + ["all"])
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--xva", action="store_true", help="also write OUT/VARIANT.xva")
    b.add_argument("--checksum", default="xxhash", choices=["xxhash", "sha1"])
    b.add_argument("--compression", default=None, choices=["gzip", "zstd"])
    b.add_argument("--name", help="the VM's name in the XVA (and its file name), with a uuid "
                   "derived from it; default: the variant's name")
    b.add_argument("--data-disk-mib", type=int, default=0, metavar="MIB",
                   help="add a data disk of MIB MiB: xvdb, one ext4 partition mounted from fstab "
                        "as /dev/xvdb1 on /srv/data")
    b.add_argument("--fault", choices=sorted(FAULTS),
                   help="write a malformed XVA (xva_writer's faults; needs --xva)")
    b.add_argument("--xva-only", action="store_true",
                   help="with --xva: keep only the XVA in OUT (the disk copies go once packed)")
    a = ap.parse_args(argv)
    if a.cmd == "build" and (a.fault or a.xva_only) and not a.xva:
        ap.error("--fault and --xva-only need --xva")
    if a.cmd == "build" and (a.name or a.data_disk_mib) and a.variant == "all":
        ap.error("--name and --data-disk-mib need one variant, not 'all'")
    if a.cmd == "list":
        for n in VARIANTS:
            s = SPECS[n]
            print(f"{n:20} {s.suite:9} {s.init:9} {s.domain_type:4} {s.layout}")
        return 0
    if a.cmd == "prune":
        removed = prune_cache()
        for path, size in removed:
            log(f"pruned {path} ({size / 2**30:.1f} GiB)")
        log(f"pruned {len(removed)} stale cache entries, {sum(size for _path, size in removed) / 2**30:.1f} GiB")
        return 0
    names = VARIANTS if a.variant == "all" else [a.variant]
    for n in names:
        t0 = time.monotonic()
        img = build_variant(n, a.out)
        if a.name:
            rename_vm(img, a.name)
        if a.data_disk_mib:
            add_data_disk(img, a.data_disk_mib)
        line = {"name": n, "disks": [str(d) for d in img.disks], "from_cache": img.from_cache,
                "seconds": round(time.monotonic() - t0, 1), "root_device": img.root_device,
                "kernel": img.kernel_version}
        if a.xva:
            line["xva"] = str(img.xva(a.out / f"{img.vm.name}.xva", checksum=a.checksum,
                                      compression=a.compression, fault=a.fault))
        if a.xva_only:
            for disk in img.disks:
                os.unlink(disk)
            line["disks"] = []
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
