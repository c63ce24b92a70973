# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "guest_tools": the Xen guest tools out, the QEMU guest agent in.

Every ``xe-guest-utilities*`` package (XenServer's tools and their -xenstore/-latest siblings) and
XCP-ng's ``xen-guest-agent`` is purged: they talk to xenstore, which does not exist on KVM.
Tools installed without a package are not deleted file by file; a warning names what is left.
qemu-guest-agent lets libvirt ping and shut down the guest; it is installed in the chroot when
the guest's mirror is reachable, else at first boot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

STALE_CACHES = ("/etc/blkid.tab", "/etc/blkid.tab.old", "/etc/lvm/cache/.cache")


def remove_xen_tools(guest, facts, apt):
    packages = facts.get("xen_tools_packages") or []
    if packages:
        apt.purge(packages, "Xen guest tools need xenstore, which KVM does not have")
    elif facts.get("xen_tools_files"):
        guest.warn("Xen guest tools without a package were left in the guest (%s): remove them with their own "
                   "uninstaller" % ", ".join(facts["xen_tools_files"]))


def install_guest_agent(guest, facts, apt, firstboot_commands):
    if facts.get("qemu_guest_agent"):
        return
    if apt.can_install(["qemu-guest-agent"]):
        apt.install(["qemu-guest-agent"], "lets libvirt talk to the guest")
        return
    firstboot_commands.append("apt-get install -y qemu-guest-agent")
    if facts["init"]["init"] == "systemd":
        firstboot_commands.append("systemctl start qemu-guest-agent")
    guest.warn("the guest's package mirror is unreachable from here: qemu-guest-agent is installed at first boot")


def remove_stale_caches(guest):
    for path in STALE_CACHES:
        guest.remove(path, "caches of Xen-era device names")
