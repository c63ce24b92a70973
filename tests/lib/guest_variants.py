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

    @property
    def packages(self) -> tuple:
        return tuple(sorted(set(BASE_PACKAGES + INIT_PACKAGES[self.init] + self.extra_packages)))

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
                mac="aa:00:00:12:00:04", static_ip="192.0.2.14", extra_packages=("grub-pc",)),
    VariantSpec(name="deb12-pv-bootpart", suite="bookworm", layout="bootpart",
                hostname="deb12-pv-bootpart", mac="aa:00:00:12:00:05", static_ip="192.0.2.15"),
    VariantSpec(name="deb11-pv", suite="bullseye", hostname="deb11-pv",
                mac="aa:00:00:11:00:01", static_ip="192.0.2.21", vcpus=1, memory_mib=512),
    VariantSpec(name="deb13-pv", suite="trixie", hostname="deb13-pv",
                mac="aa:00:00:13:00:01", static_ip="192.0.2.31"),
]

SPECS = {s.name: s for s in _SPECS}
VARIANTS = [s.name for s in _SPECS]
