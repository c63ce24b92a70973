"""The test guests the factory can build: Debian guests shaped like XenServer/XCP-ng VMs.

Each entry is data only; ``guest_factory`` turns it into raw disk images, an ``xva_writer.VM``
and an XVA. Addresses are from TEST-NET-1 (192.0.2.0/24, RFC 5737): documentation only, never
contacted. MACs are locally administered (``aa:`` prefix, like the examples XenServer docs use).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Packages every guest gets on top of debootstrap's minbase. Kept in the tree cache key, so
# changing this list rebuilds the trees (and the images built from them).
BASE_PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "udev",
    "kmod",
    "ifupdown",
    "iproute2",
    "netbase",
    "procps",
)
INIT_PACKAGES = {
    "systemd": ("systemd-sysv",),
    "sysvinit": ("sysvinit-core",),
}

SUITE_VERSION = {"bullseye": "11", "bookworm": "12", "trixie": "13"}

ROOT_PASSWORD = "xen2kvm"


@dataclass(frozen=True)
class VariantSpec:
    """What one test guest looks like. ``layout``:

    * ``mbr``      - one disk, MBR table, p1 ext4 ``/`` (xvda1), p2 swap (xvda2)
    * ``bootpart`` - one disk, MBR table, p1 ext2 ``/boot`` (xvda1), p2 ext4 ``/`` (xvda2),
                     p3 swap (xvda3)
    * ``bare``     - disk 0 *is* the ext4 root filesystem (no partition table), given to Xen as
                     ``xvda1``; disk 1 is a bare swap area given as ``xvda2``

    Layouts built inside the libguestfs appliance (``guestfs_build``: LVM, btrfs and vfat need
    its kernel), each with the boot loader installed the way the distribution's installer does:

    * ``lvm``      - Debian installer's guided LVM: MBR, p1 ext2 ``/boot``, extended p2,
                     logical p5 LVM PV; VG ``<hostname>-vg`` with LVs ``root`` and ``swap_1``
    * ``ubuntu``   - Ubuntu server installer's guided LVM: GPT, p1 1 MiB bios_grub, p2 ext4
                     ``/boot``, p3 LVM PV; VG ``ubuntu-vg``, LV ``ubuntu-lv`` (``/``), swap
                     file ``/swap.img``
    * ``btrfs``    - Debian installer, btrfs root: MBR, p1 btrfs with subvolume ``@rootfs`` as
                     ``/``, extended p2, logical p5 swap
    * ``uefi``     - Debian installer on UEFI: GPT, p1 ESP (vfat, ``/boot/efi``), p2 ext4 ``/``,
                     p3 swap; grub-efi in ``\\EFI\\debian`` only (no removable-media path)

    Fields after ``extra_packages`` are new since CACHE_VERSION 3: ``guest_factory.image_key``
    leaves them out of the key while they have their default value, so adding them did not
    rebuild the variants that don't use them.
    """

    name: str
    suite: str
    hostname: str
    mac: str
    static_ip: str                  # address in 192.0.2.0/24
    init: str = "systemd"           # systemd | sysvinit
    domain_type: str = "pv"         # pv | hvm
    layout: str = "mbr"             # mbr | bootpart | bare
    vcpus: int = 2
    memory_mib: int = 1024
    disk_mib: int = 2048            # whole disk 0 (partitioned layouts) / root fs (bare)
    swap_mib: int = 128
    boot_mib: int = 256             # bootpart only
    extra_packages: tuple = field(default_factory=tuple)
    omit_packages: tuple = field(default_factory=tuple)   # BASE_PACKAGES this guest doesn't have
    firmware: str = "bios"          # bios | uefi (HVM_boot_params firmware in the VM description)
    network: str = "ifupdown"       # ifupdown (static eth0) | netplan (static enX0, cloud-init)
    boot_code: str = "loop"         # loop (grub-install over loop devices) | guestfs (appliance)
    vg_name: str = ""               # LVM layouts: the volume group

    @property
    def packages(self) -> tuple:
        wanted = set(BASE_PACKAGES + INIT_PACKAGES[self.init] + self.extra_packages)
        return tuple(sorted(wanted - set(self.omit_packages)))

    @property
    def version_id(self) -> str:
        return SUITE_VERSION[self.suite]

    @property
    def pv(self) -> bool:
        return self.domain_type == "pv"


_SPECS = [
    VariantSpec(name="deb12-pv", suite="bookworm", hostname="deb12-pv",
                mac="aa:00:00:12:00:01", static_ip="192.0.2.11"),
    VariantSpec(name="deb12-pv-sysvinit", suite="bookworm", init="sysvinit",
                hostname="deb12-pv-sysvinit", mac="aa:00:00:12:00:02", static_ip="192.0.2.12",
                vcpus=1, memory_mib=512),
    VariantSpec(name="deb12-pv-bare", suite="bookworm", layout="bare", hostname="deb12-pv-bare",
                mac="aa:00:00:12:00:03", static_ip="192.0.2.13", disk_mib=1792, vcpus=1,
                memory_mib=768),
    VariantSpec(name="deb12-hvm", suite="bookworm", domain_type="hvm", hostname="deb12-hvm",
                mac="aa:00:00:12:00:04", static_ip="192.0.2.14", extra_packages=("grub-pc",),
                boot_code="guestfs"),
    VariantSpec(name="deb12-pv-bootpart", suite="bookworm", layout="bootpart",
                hostname="deb12-pv-bootpart", mac="aa:00:00:12:00:05", static_ip="192.0.2.15"),
    VariantSpec(name="deb11-pv", suite="bullseye", hostname="deb11-pv",
                mac="aa:00:00:11:00:01", static_ip="192.0.2.21", vcpus=1, memory_mib=512),
    VariantSpec(name="deb13-pv", suite="trixie", hostname="deb13-pv",
                mac="aa:00:00:13:00:01", static_ip="192.0.2.31"),
    VariantSpec(name="deb12-lvm", suite="bookworm", domain_type="hvm", layout="lvm",
                hostname="deb12-lvm", mac="aa:00:00:12:00:06", static_ip="192.0.2.16",
                extra_packages=("grub-pc", "lvm2"), vg_name="deb12-lvm-vg",
                boot_mib=256, boot_code="guestfs"),
    # Built from Debian (no Ubuntu mirror is reachable here), laid out and configured like an
    # Ubuntu server install: cloud kernel (Ubuntu's linux-image-virtual), netplan, cloud-init.
    VariantSpec(name="ubuntu-like", suite="bookworm", domain_type="hvm", layout="ubuntu",
                hostname="ubuntu-like", mac="aa:00:00:22:00:01", static_ip="192.0.2.41",
                # python3-cffi-backend: python3-cryptography depends on a virtual package it
                # provides, which debootstrap does not resolve
                # openssh-server: its host keys are what a cloud-init that took the VM for a new
                # instance would regenerate
                extra_packages=("grub-pc", "lvm2", "linux-image-cloud-amd64", "netplan.io",
                                "cloud-init", "python3-cffi-backend", "openssh-server"),
                omit_packages=("linux-image-amd64", "ifupdown"), network="netplan",
                vg_name="ubuntu-vg", boot_mib=512, boot_code="guestfs"),
    VariantSpec(name="deb12-btrfs", suite="bookworm", domain_type="hvm", layout="btrfs",
                hostname="deb12-btrfs", mac="aa:00:00:12:00:07", static_ip="192.0.2.17",
                extra_packages=("grub-pc", "btrfs-progs"), boot_code="guestfs"),
    VariantSpec(name="deb12-uefi", suite="bookworm", domain_type="hvm", layout="uefi",
                hostname="deb12-uefi", mac="aa:00:00:12:00:08", static_ip="192.0.2.18",
                extra_packages=("grub-efi-amd64", "dosfstools"), firmware="uefi",
                boot_mib=100, boot_code="guestfs"),
]

SPECS = {s.name: s for s in _SPECS}
VARIANTS = [s.name for s in _SPECS]
