"""Guest inspection over small fake root trees."""

import os

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import (
    detect_bootloader,
    detect_init,
    detect_network,
    detect_os,
    inspect_guest,
    kernel_driver_states,
    list_kernels,
    looks_like_root,
    os_family,
    parse_dpkg_status,
    parse_fstab,
    parse_os_release,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import resolve_guest_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError

DPKG_STATUS = """\
Package: grub-pc
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.06-13+deb12u1
Description: GRand Unified Bootloader, version 2 (PC/BIOS version)
 This is a dummy transitional package.
 .
 Continued.

Package: xe-guest-utilities
Status: install ok installed
Architecture: amd64
Version: 7.20.2-0ubuntu1

Package: qemu-guest-agent
Status: deinstall ok config-files
Architecture: amd64
Version: 1:7.2+dfsg-7

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9

Package: libc6
Status: deinstall ok config-files
Architecture: amd64
Version: 2.36-8

Package: systemd-sysv
Status: install ok installed
Architecture: amd64
Version: 252.22-1~deb12u1

Package: linux-image-6.1.0-18-amd64
Status: install ok installed
Architecture: amd64
Version: 6.1.76-1

Package: grub-common
Status: install ok half-configured
Architecture: amd64
Version: 2.06-13+deb12u1
"""

OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""


def write(root, path, text="", mode=None):
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fobj:
        fobj.write(text)
    if mode:
        os.chmod(full, mode)
    return full


def link(root, path, target):
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    os.symlink(target, full)


def usrmerged_debian(root):
    """A bookworm-like tree: usrmerge links, os-release link, systemd init, two kernels."""
    for name in ("bin", "sbin", "lib", "lib64"):
        link(root, "/" + name, "usr/" + name)
        os.makedirs(os.path.join(str(root), "usr", name), exist_ok=True)
    write(root, "/usr/lib/os-release", OS_RELEASE)
    link(root, "/etc/os-release", "../usr/lib/os-release")
    write(root, "/etc/debian_version", "12.5\n")
    write(root, "/usr/lib/systemd/systemd", "ELF", 0o755)
    link(root, "/usr/sbin/init", "../lib/systemd/systemd")
    write(root, "/var/lib/dpkg/status", DPKG_STATUS)
    write(root, "/etc/fstab", "# <file system> <mount point> <type> <options> <dump> <pass>\n"
                              "UUID=1234 / ext4 errors=remount-ro 0 1\n"
                              "/dev/xvda1 /boot ext2 defaults 0 2\n"
                              "/dev/xvda5 none swap sw 0 0\n"
                              "/dev/sr0 /media/my\\040cdrom udf,iso9660 user,noauto\n")
    # 6.1 stock kernel with virtio as modules, 5.10 with it built in.
    for version, builtin in (("6.1.0-18-amd64", False), ("5.10.0-28-amd64", True)):
        write(root, "/boot/vmlinuz-%s" % version, "kernel")
        write(root, "/boot/config-%s" % version, "CONFIG_VIRTIO_BLK=%s\n# CONFIG_X86_XEN is not set\n"
              % ("y" if builtin else "m"))
        write(root, "/boot/initrd.img-%s" % version, "cpio")
        mods = "/lib/modules/%s" % version
        if builtin:
            write(root, mods + "/modules.builtin", "kernel/drivers/block/virtio_blk.ko\n"
                                                   "kernel/drivers/virtio/virtio_pci.ko\n")
            write(root, mods + "/modules.dep", "kernel/drivers/net/virtio_net.ko:\n")
        else:
            write(root, mods + "/modules.builtin", "kernel/drivers/virtio/virtio.ko\n")
            write(root, mods + "/modules.dep",
                  "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n")
            write(root, mods + "/kernel/drivers/virtio/virtio_pci.ko.xz", "")
            write(root, mods + "/kernel/drivers/net/virtio_net.ko", "")
    return root


# --------------------------------------------------------------------------- guest paths


def test_resolve_guest_path_keeps_absolute_links_inside(tmp_path):
    root = tmp_path / "guest"
    root.mkdir()
    link(root, "/etc", "/")  # hostile: /etc -> /
    link(root, "/escape", "../../../../../../etc/passwd")
    link(root, "/abs", "/etc/shadow")
    real_root = os.path.realpath(str(root))
    assert resolve_guest_path(str(root), "/etc/fstab") == os.path.join(real_root, "fstab")
    # ".." stops at the guest root and the guest's /etc -> / link restarts there.
    assert resolve_guest_path(str(root), "/escape") == os.path.join(real_root, "passwd")
    assert resolve_guest_path(str(root), "/abs") == os.path.join(real_root, "shadow")
    assert resolve_guest_path(str(root), "/../../..") == real_root
    assert resolve_guest_path(str(root), "/abs", follow_last=False) == os.path.join(real_root,
                                                                                    "abs")


def test_resolve_guest_path_symlink_loop(tmp_path):
    link(tmp_path, "/a", "/b")
    link(tmp_path, "/b", "a")
    with pytest.raises(GuestError, match="too many levels"):
        resolve_guest_path(str(tmp_path), "/a/x")


def test_resolve_guest_path_usrmerge(tmp_path):
    usrmerged_debian(tmp_path)
    real = os.path.realpath(str(tmp_path))
    assert resolve_guest_path(str(tmp_path), "/sbin/init") == os.path.join(
        real, "usr/lib/systemd/systemd")


# --------------------------------------------------------------------------- OS


def test_parse_os_release_quoting():
    fields = parse_os_release('A="x \\"y\\" z"\nB=\'single\'\n# c=1\nC=plain\n\nbroken\n')
    assert fields == {"A": 'x "y" z', "B": "single", "C": "plain"}


@pytest.mark.parametrize("os_id,like,family", [
    ("debian", "", "debian"), ("ubuntu", "debian", "debian"), ("centos", "rhel fedora", "rhel"),
    ("rocky", "", "rhel"), ("opensuse-leap", "suse opensuse", "suse"), ("sles", "", "suse"),
    ("arch", "", "other"), ("mint-like", "ubuntu debian", "debian"),
])
def test_os_family(os_id, like, family):
    assert os_family(os_id, like) == family


def test_detect_os_from_os_release_symlink(tmp_path):
    usrmerged_debian(tmp_path)
    facts = detect_os(str(tmp_path))
    assert facts["id"] == "debian" and facts["version_id"] == "12"
    assert facts["codename"] == "bookworm" and facts["family"] == "debian"


def test_detect_os_debian_version_fallback(tmp_path):
    write(tmp_path, "/etc/debian_version", "7.11\n")
    facts = detect_os(str(tmp_path))
    assert (facts["id"], facts["version_id"], facts["codename"], facts["source"]) == (
        "debian", "7.11", "wheezy", "/etc/debian_version")


def test_detect_os_redhat_release(tmp_path):
    write(tmp_path, "/etc/redhat-release", "CentOS release 6.10 (Final)\n")
    facts = detect_os(str(tmp_path))
    assert (facts["id"], facts["version_id"], facts["family"]) == ("centos", "6.10", "rhel")


def test_detect_os_unknown(tmp_path):
    assert detect_os(str(tmp_path))["id"] == "unknown"


# --------------------------------------------------------------------------- packages, init


def test_parse_dpkg_status():
    pkgs = parse_dpkg_status(DPKG_STATUS)
    assert pkgs["grub-pc"] == {"version": "2.06-13+deb12u1", "status": "install ok installed",
                               "arch": "amd64", "installed": True}
    assert pkgs["qemu-guest-agent"]["installed"] is False
    assert pkgs["libc6"]["installed"] and pkgs["libc6"]["arch"] == "i386"
    assert pkgs["grub-common"]["installed"] is False  # half-configured


def test_detect_init_systemd_usrmerge(tmp_path):
    usrmerged_debian(tmp_path)
    assert detect_init(str(tmp_path)) == {"init": "systemd", "path": "/usr/lib/systemd/systemd"}


def test_detect_init_sysvinit(tmp_path):
    write(tmp_path, "/sbin/init", "ELF", 0o755)
    write(tmp_path, "/etc/inittab", "id:2:initdefault:\nhvc0:2345:respawn:/sbin/getty hvc0\n")
    write(tmp_path, "/var/lib/dpkg/status",
          "Package: sysvinit-core\nStatus: install ok installed\nVersion: 3.06-4\n")
    assert detect_init(str(tmp_path))["init"] == "sysvinit"


def test_detect_init_systemd_without_sbin_init(tmp_path):
    write(tmp_path, "/lib/systemd/systemd", "ELF", 0o755)
    assert detect_init(str(tmp_path)) == {"init": "systemd", "path": "/lib/systemd/systemd"}


def test_detect_init_unknown(tmp_path):
    assert detect_init(str(tmp_path), packages={})["init"] == "unknown"


# --------------------------------------------------------------------------- kernels


def test_list_kernels(tmp_path):
    usrmerged_debian(tmp_path)
    write(tmp_path, "/boot/vmlinuz-2.6.18-xen", "kernel")
    write(tmp_path, "/boot/config-2.6.18-xen", "CONFIG_X86_64_XEN=y\nCONFIG_XEN_BLKDEV_FRONTEND=y\n")
    write(tmp_path, "/boot/vmlinuz-6.1.0-18-amd64.bak", "old")
    kernels = list_kernels(str(tmp_path))
    assert [k["version"] for k in kernels] == ["2.6.18-xen", "5.10.0-28-amd64", "6.1.0-18-amd64"]
    xen, old, new = kernels
    assert xen["xen_only"] is True and not xen["usable_on_kvm"]
    assert xen["virtio_blk"] == "missing" and xen["modules_dir"] is None
    assert xen["initramfs"] is None
    assert old["xen_only"] is False and old["virtio_blk"] == "builtin"
    assert old["drivers"]["virtio_pci"] == "builtin"
    assert old["drivers"]["virtio_net"] == "module"
    assert old["drivers"]["virtio_scsi"] == "missing"
    assert new["virtio_blk"] == "module" and new["usable_on_kvm"]
    assert new["drivers"]["virtio_pci"] == "module"  # found as .ko.xz, not in modules.dep
    assert new["initramfs"] == {"path": "/boot/initrd.img-6.1.0-18-amd64", "size": 4}
    assert new["modules_dir"] == "/lib/modules/6.1.0-18-amd64"


def test_kernel_without_config_or_modules_is_unknown(tmp_path):
    write(tmp_path, "/boot/vmlinuz-4.9.0-custom", "kernel")
    (kernel,) = list_kernels(str(tmp_path))
    assert kernel["xen_only"] is None and kernel["virtio_blk"] == "unknown"
    assert not kernel["usable_on_kvm"]
    assert kernel_driver_states(str(tmp_path), "4.9.0-custom")["virtio_net"] == "unknown"


def test_rhel_initramfs_name(tmp_path):
    write(tmp_path, "/boot/vmlinuz-3.10.0-1160.el7.x86_64", "k")
    write(tmp_path, "/boot/initramfs-3.10.0-1160.el7.x86_64.img", "cpio")
    (kernel,) = list_kernels(str(tmp_path))
    assert kernel["initramfs"]["path"] == "/boot/initramfs-3.10.0-1160.el7.x86_64.img"


# --------------------------------------------------------------------------- boot loader


def test_bootloader_pv_guest(tmp_path):
    usrmerged_debian(tmp_path)
    write(tmp_path, "/boot/grub/grub.cfg", "menuentry 'Debian' { linux /vmlinuz root=/dev/xvda2 console=hvc0 }\n")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fobj:
        fobj.truncate(1024 * 1024)
    facts = detect_bootloader(str(tmp_path), disk=str(disk))
    assert facts["config_kind"] == "grub2"
    assert facts["grub2_cfg"] == "/boot/grub/grub.cfg"
    assert facts["grub_pc_installed"] and facts["grub2_installed"]
    assert not facts["grub_legacy_installed"]
    assert facts["grub_packages"] == ["grub-pc"]  # grub-common is half-configured
    assert facts["mbr_boot_code"] is False and facts["boot_style"] == "pv-no-mbr-code"


def test_bootloader_grub_legacy(tmp_path):
    write(tmp_path, "/boot/grub/menu.lst", "# kopt=root=/dev/xvda1 console=hvc0\n")
    write(tmp_path, "/var/lib/dpkg/status",
          "Package: grub\nStatus: install ok installed\nVersion: 0.97-47\n")
    facts = detect_bootloader(str(tmp_path))
    assert facts["config_kind"] == "grub-legacy"
    assert facts["grub_legacy_installed"] and not facts["grub2_installed"]
    assert facts["mbr_boot_code"] is None


def test_bootloader_none(tmp_path):
    facts = detect_bootloader(str(tmp_path), packages={})
    assert facts["config_kind"] == "none" and facts["grub_packages"] == []


# --------------------------------------------------------------------------- network


def test_network_ifupdown_with_sources(tmp_path):
    write(tmp_path, "/etc/network/interfaces",
          "source /etc/network/interfaces.d/*\n"
          "auto lo\niface lo inet loopback\n"
          "allow-hotplug eth0\niface eth0 inet static  # the uplink\n  address 10.0.0.5/24\n")
    write(tmp_path, "/etc/network/interfaces.d/eth1", "auto eth1\niface eth1 inet6 dhcp\n")
    write(tmp_path, "/etc/udev/rules.d/70-persistent-net.rules", "SUBSYSTEM==\"net\"\n")
    facts = detect_network(str(tmp_path))
    assert facts["styles"] == ["ifupdown"]
    names = [(i["name"], i["family"], i["method"]) for i in facts["ifupdown"]["interfaces"]]
    assert names == [("eth1", "inet6", "dhcp"), ("lo", "inet", "loopback"),
                     ("eth0", "inet", "static")]
    assert set(facts["ifupdown"]["auto"]) == {"lo", "eth0", "eth1"}
    assert facts["persistent_net_rules"] == "/etc/udev/rules.d/70-persistent-net.rules"


def test_network_loopback_only_is_not_ifupdown(tmp_path):
    write(tmp_path, "/etc/network/interfaces", "auto lo\niface lo inet loopback\n")
    write(tmp_path, "/etc/netplan/50-cloud-init.yaml", "network: {}\n")
    write(tmp_path, "/etc/systemd/network/10-eth0.network", "[Match]\nName=eth0\n")
    write(tmp_path, "/etc/NetworkManager/system-connections/Wired.nmconnection", "[connection]\n")
    write(tmp_path, "/etc/sysconfig/network-scripts/ifcfg-lo", "")
    write(tmp_path, "/etc/sysconfig/network-scripts/ifcfg-eth0", "BOOTPROTO=dhcp\n")
    facts = detect_network(str(tmp_path))
    assert facts["styles"] == ["netplan", "systemd-networkd", "networkmanager", "ifcfg"]
    assert facts["netplan"] == ["/etc/netplan/50-cloud-init.yaml"]
    assert facts["ifcfg"] == ["/etc/sysconfig/network-scripts/ifcfg-eth0"]
    assert facts["persistent_net_rules"] is None


# --------------------------------------------------------------------------- fstab, all


def test_parse_fstab():
    entries = parse_fstab("# c\n\nUUID=ab / ext4 errors=remount-ro 0 1\n"
                          "/dev/xvda1\t/boot ext2 defaults 0 2\n"
                          "LABEL=x /media/a\\040b vfat\nbroken\n")
    assert entries[0] == {"source": "UUID=ab", "mountpoint": "/", "fstype": "ext4",
                          "options": "errors=remount-ro", "dump": 0, "passno": 1, "line": 3}
    assert entries[1]["source"] == "/dev/xvda1" and entries[1]["passno"] == 2
    assert entries[2]["mountpoint"] == "/media/a b" and entries[2]["options"] == "defaults"
    assert len(entries) == 3


def test_looks_like_root(tmp_path):
    assert not looks_like_root(str(tmp_path))
    usrmerged_debian(tmp_path)
    assert looks_like_root(str(tmp_path))


def test_inspect_guest_everything(tmp_path):
    usrmerged_debian(tmp_path)
    write(tmp_path, "/etc/network/interfaces", "auto eth0\niface eth0 inet dhcp\n")
    facts = inspect_guest(str(tmp_path))
    assert facts["os"]["codename"] == "bookworm"
    assert facts["init"]["init"] == "systemd"
    assert facts["usable_kernels"] == ["5.10.0-28-amd64", "6.1.0-18-amd64"]
    assert facts["xe_guest_utilities"] is True
    assert facts["qemu_guest_agent"] is False  # only config files left
    assert facts["package_manager"] == "dpkg"
    assert facts["kernel_packages"] == ["linux-image-6.1.0-18-amd64"]
    assert [e["mountpoint"] for e in facts["fstab"]] == ["/", "/boot", "none", "/media/my cdrom"]
    assert facts["network"]["styles"] == ["ifupdown"]
    assert facts["bootloader"]["mbr_boot_code"] is None


def test_inspect_guest_file_markers_without_dpkg(tmp_path):
    write(tmp_path, "/usr/sbin/xe-daemon", "#!/bin/sh\n")
    write(tmp_path, "/usr/bin/qemu-ga", "ELF")
    facts = inspect_guest(str(tmp_path))
    assert facts["xe_guest_utilities"] and facts["qemu_guest_agent"]
    assert facts["package_manager"] == "unknown"


def test_inspect_guest_requires_directory(tmp_path):
    with pytest.raises(GuestError):
        inspect_guest(str(tmp_path / "missing"))


def test_xen_tool_packages_every_flavour(tmp_path):
    write(tmp_path, "/var/lib/dpkg/status",
          "Package: xe-guest-utilities-xenstore\nStatus: install ok installed\n\n"
          "Package: xen-guest-agent\nStatus: install ok installed\n\n"
          "Package: xe-guest-utilities\nStatus: deinstall ok config-files\n\n"
          "Package: xe-guest-utilities-old\nStatus: purge ok not-installed\n\n"
          "Package: xenstore-utils\nStatus: install ok installed\n")
    write(tmp_path, "/usr/sbin/xen-guest-agent", "ELF")
    facts = inspect_guest(str(tmp_path))
    assert facts["xen_tools_packages"] == ["xe-guest-utilities", "xe-guest-utilities-xenstore", "xen-guest-agent"]
    assert facts["xen_tools_files"] == ["/usr/sbin/xen-guest-agent"]
