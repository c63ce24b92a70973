#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_fixup
short_description: Make a converted Xen guest bootable on KVM
version_added: "0.1.0"
description:
  - Opens the guest's raw disk images in the libguestfs appliance (a small VM with its own kernel that
    reads LVM, btrfs subvolumes, separate C(/boot), GPT and the EFI system partition), inspects the guest with
    its filesystems mounted read-only, refuses what it cannot convert (non-Debian families, a
    LUKS-encrypted root, no usable kernel) before changing anything, then applies the fixups a Xen
    guest needs on KVM, in this order. The guest's own code (maintainer scripts, initramfs hooks,
    C(/etc/grub.d)) only ever runs inside the appliance, never on this host.
  - C(bare_fs) a disk that is one bare filesystem (a PV guest's C(xvda1)) gets a partition table,
    the filesystem at 1 MiB.
  - C(devices) C(xvd*)/C(hd*)/C(sd*) become C(vd*) (or C(UUID=)) in fstab, crypttab and the resume setting.
  - C(console) C(console=hvc0) becomes C(console=tty0 console=ttyS0,115200) in both
    C(GRUB_CMDLINE_LINUX) variables and grub-legacy; inittab, securetty and systemd getty links follow.
  - C(initramfs) virtio drivers in the initramfs of every kernel, verified after the rebuild.
  - C(bootloader) BIOS guests (GPT with a C(bios_grub) partition too) grub-pc installed when missing,
    C(grub-install) into the MBR, grub.cfg made by the guest's grub-mkconfig with C(root=UUID=) (an LV's
    C(/dev/mapper) name for an LVM root). UEFI guests (O(spec) C(firmware=uefi)) C(grub-efi-amd64) installed
    when missing, C(grub-install --no-nvram) into C(EFI/debian) and the fallback C(\EFI\BOOT\BOOTX64.EFI)
    (a KVM domain starts with a fresh NVRAM), debconf C(grub2/force_efi_extra_removable) so upgrades keep
    it, then C(update-grub).
  - C(network) stale persistent-net rules removed, C(net.ifnames=0) so the NIC stays C(eth0),
    C(enX0) names renamed in ifupdown, systemd-networkd and netplan files (the C(renderer) kept); static
    addresses kept unless O(network=dhcp). C(cloud_init) cloud-init is switched off
    (C(/etc/cloud/cloud-init.disabled)) and told to keep the network and the SSH host keys, so it cannot
    reconfigure the VM as a new instance on its first boot on KVM.
  - C(remove_xen_tools) every C(xe-guest-utilities*) package and XCP-ng's C(xen-guest-agent) purged;
    C(guest_agent) qemu-guest-agent installed, or
    scheduled for the first boot when the guest's mirror is unreachable.
  - C(firstboot) a one-shot job for what only the running guest can do (C(grub-install /dev/vda),
    C(update-grub)); it removes itself. C(cleanup) stale blkid/LVM caches removed.
  - Every edited or removed file keeps a backup under C(/var/backups/xen2kvm/) in the guest (the guest
    path below it, for example C(/var/backups/xen2kvm/etc/fstab)), never beside the file, where
    directories read as a whole (C(conf.d), C(interfaces.d)) would still use it; backups that earlier
    versions left beside files (C(<file>.xen2kvm)) are moved there. Every change is logged in the
    guest's C(/var/log/xen2kvm-fixup.log). A second run reports no change.
  - Every package the run installs (C(grub-pc), C(qemu-guest-agent)) is downloaded before the first
    change, from the guest's sources, O(apt_mirror) or O(package_dir); when a required one cannot be
    had the run fails with the guest unchanged.
  - The appliance (or, with O(engine=chroot), the mounts and loop devices) is always released, on success,
    error and SIGTERM. Temporary changes in
    the guest (C(policy-rc.d), C(resolv.conf), apt's files) are kept in a journal
    (C(/var/lib/xen2kvm/journal.json)); after a run killed with SIGKILL the next run puts them back,
    releases the mounts and loop devices the killed run left on this host, finishes an interrupted
    dpkg, or fails naming the commands that release what it could not.
author:
  - xen2kvm developers (@xen2kvm)
options:
  disks:
    description:
      - Raw disk images (or block devices) in boot order; the first one is the boot disk.
      - An image that is mounted, attached to a loop device or used by a running VM is refused.
    type: list
    elements: path
    required: true
  spec:
    description:
      - The VM spec from M(xen2kvm.migration.xva_info) or M(xen2kvm.migration.xva_convert). Gives
        the Xen device name of each disk (for fstab and C(root=)) and the firmware; a disk without a
        C(device) is named by its C(userdevice) (C(0) is C(xvda), C(2) is C(xvdc)). Its C(disks) are in
        the order of O(disks).
      - Without it, the names an earlier run recorded in the guest (C(/var/lib/xen2kvm/disks.json)) are
        used, else C(xvda), C(xvdb), ... with a bare-filesystem disk named as the guest's fstab names it.
    type: dict
  root:
    description:
      - The guest's name for the device holding C(/) (for example C(xvdb) or C(xvda2)), for a guest
        with a root filesystem on more than one disk; without it the only one found is used.
    type: str
  fixups:
    description:
      - "Switch single fixups off, for example C({guest_agent: false}). All are on by default."
      - Keys are C(bare_fs), C(devices), C(console), C(initramfs), C(bootloader), C(network), C(cloud_init),
        C(remove_xen_tools), C(guest_agent), C(firstboot), C(cleanup).
    type: dict
    default: {}
  network:
    description: Keep the guest's addresses (C(keep)) or switch static IPv4 to DHCP (C(dhcp)).
    type: str
    choices: [keep, dhcp]
    default: keep
  apt_proxy:
    description: HTTP proxy for apt inside the guest (for example C(http://proxy:3128)).
    type: str
  apt_mirror:
    description:
      - A Debian mirror URL to use instead of the guest's sources while fixing it (C(deb URL CODENAME main)
        through a sources list of its own; the guest's sources.list is neither used nor changed).
      - The codename comes from C(VERSION_CODENAME), else from C(VERSION) or C(/etc/debian_version)
        (Debian 8). For an archive mirror (for example C(http://archive.debian.org/debian)) the expired
        Release files are accepted (C(Acquire::Check-Valid-Until=false)).
    type: str
  package_dir:
    description:
      - A directory on this host holding the C(.deb) files to install (C(grub-pc), C(qemu-guest-agent) and what
        they depend on that the guest lacks), for KVM hosts without network. They are copied into the guest as
        a local repository for the run and removed afterwards; apt does not use the network then.
      - When a required package or one of its dependencies is missing the run fails before any change,
        naming it. A missing C(qemu-guest-agent) is scheduled for the first boot instead.
    type: path
  resolv_conf:
    description:
      - Name resolution for apt inside the guest. C(host) uses this host's C(/etc/resolv.conf)
        while apt runs (the guest's file comes back afterwards), C(guest) keeps the guest's, or
        give the path of a file to use.
      - With O(engine=guestfs), C(host) means the appliance's resolver (libguestfs forwards it to this
        host's); a file given here is still used.
    type: str
    default: host
  engine:
    description:
      - C(guestfs) opens the guest in the libguestfs appliance (python3-guestfs); the host kernel never
        mounts the guest's filesystems and none of the guest's code runs on this host. The appliance runs
        under KVM where C(/dev/kvm) works and under TCG (C(force_tcg)) where it does not.
      - C(chroot) mounts the guest on this host over loop devices and runs its code in a confined chroot
        (own mount/PID namespaces and C(/proc), read-only C(/sys), no host devices, escape capabilities
        dropped). Faster where KVM is missing, but the host kernel parses the guest's filesystems; it cannot
        open LVM, btrfs subvolumes or an EFI system partition on hosts without device-mapper or vfat.
      - Without this option the environment variable E(XEN2KVM_FIXUP_ENGINE) of the host doing the work decides,
        else C(guestfs).
    type: str
    choices: [guestfs, chroot]
attributes:
  check_mode:
    support: full
    description: Inspects the guest (opened read-only) and reports the planned changes.
  diff_mode:
    support: full
    description: Shows each edited file.
notes:
  - Needs root. O(engine=guestfs) needs libguestfs (C(python3-guestfs), C(libguestfs-tools)); it uses
    C(LIBGUESTFS_BACKEND=direct) unless that variable says otherwise. O(engine=chroot) needs loop devices,
    C(mount), C(unshare) and C(chroot).
  - Supports Debian-family guests; others fail with "not supported" before anything is changed.
  - Works on raw images; convert to qcow2 afterwards if wanted.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - python3-guestfs (libguestfs 1.48 or later) for O(engine=guestfs), the default
  - python3-yaml when the guest has netplan files
  - for O(engine=chroot) root on a Linux host with loop devices, mount, umount, unshare (util-linux) and chroot
seealso:
  - module: xen2kvm.migration.xva_convert
  - module: xen2kvm.migration.kvm_domain
"""

EXAMPLES = r"""
- name: Make the converted guest bootable on KVM
  xen2kvm.migration.guest_fixup:
    disks: "{{ converted.disks | map(attribute='path') | list }}"
    spec: "{{ converted.spec }}"
  register: fixed

- name: The same, switching the guest to DHCP and leaving the guest agent out
  xen2kvm.migration.guest_fixup:
    disks: [/var/lib/libvirt/images/TestVM01-disk0.raw]
    network: dhcp
    fixups:
      guest_agent: false
    apt_proxy: http://proxy.example.com:3128

- name: On a KVM host without network, with the packages brought along
  xen2kvm.migration.guest_fixup:
    disks: [/var/lib/libvirt/images/TestVM01-disk0.raw]
    package_dir: /srv/xen2kvm/debs/bookworm
"""

RETURN = r"""
facts:
  description: The inspection of the guest (os, init, kernels, bootloader, network, fstab, tools).
  returned: always
  type: dict
changes:
  description: What was changed (or, in check mode, would be), one entry per change.
  returned: always
  type: list
  elements: dict
  contains:
    fixup:
      description: The fixup that made the change.
      type: str
      sample: console
    action:
      description: C(edit), C(create), C(remove), C(symlink), C(run), C(repartition), C(move) (an old backup
        moved out of a configuration directory) or C(restore) (a file put back).
      type: str
    path:
      description: The guest file, or the command that was run.
      type: str
      sample: /etc/default/grub
    why:
      description: Why the change is needed.
      type: str
seconds:
  description:
    - Where the time of the run went, in seconds. C(launch) opens the guest (the libguestfs
      appliance's start, or the loop mounts), C(inspect) reads it, C(fetch_packages) downloads
      what the fixups install, each fixup that ran has its own entry (package installs and the
      initramfs rebuild happen inside C(bootloader), C(initramfs) and C(guest_agent)), and
      C(total) is the whole run.
  returned: when the guest was opened
  type: dict
  sample: {launch: 31.2, inspect: 4.0, fetch_packages: 48.5, initramfs: 118.3, bootloader: 96.1, total: 402.7}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.appliance import GUESTFS_IMPORT_ERROR, HAS_GUESTFS
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import FIXUPS, FixupError, default_engine, fix_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._module_result import exit_with_diff
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import PackageError
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError


def enabled_fixups(module):
    switches = module.params["fixups"] or {}
    unknown = sorted(set(switches) - set(FIXUPS))
    if unknown:
        module.fail_json(msg="unknown fixups %s; known: %s" % (", ".join(unknown), ", ".join(FIXUPS)))
    return [name for name in FIXUPS if module.boolean(switches.get(name, True))]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            disks=dict(type="list", elements="path", required=True),
            spec=dict(type="dict"),
            root=dict(type="str"),
            fixups=dict(type="dict", default={}),
            network=dict(type="str", choices=["keep", "dhcp"], default="keep"),
            apt_proxy=dict(type="str"),
            apt_mirror=dict(type="str"),
            package_dir=dict(type="path"),
            resolv_conf=dict(type="str", default="host"),
            engine=dict(type="str", choices=["guestfs", "chroot"]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if (params["engine"] or default_engine()) == "guestfs" and not HAS_GUESTFS:
        module.fail_json(msg=missing_required_lib("python3-guestfs (Debian/Ubuntu package; libguestfs)"),
                         exception=str(GUESTFS_IMPORT_ERROR))
    try:
        result = fix_guest(params["disks"], spec=params["spec"], root=params["root"], enabled=enabled_fixups(module),
                           network=params["network"], apt_proxy=params["apt_proxy"],
                           apt_mirror=params["apt_mirror"], resolv_conf=params["resolv_conf"],
                           package_dir=params["package_dir"], check_mode=module.check_mode,
                           engine=params["engine"])
    except (FixupError, GuestError, PackageError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:  # e.g. a guest filesystem that turned read-only, a full disk
        module.fail_json(msg="guest_fixup failed: %s" % exc)
    exit_with_diff(module, result)


if __name__ == "__main__":
    main()
