# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "network": the guest's network comes up on virtio as it did on Xen.

Xen's netfront was ``eth0`` (``enX0`` with newer systemd); under KVM the same guest would call
its virtio NIC ``ens3`` or ``enp1s0``, and a static ``eth0`` stanza would never come up (the seed
how-to fell into that with DHCP on ``eth0``).  The names are pinned with ``net.ifnames=0`` on
the kernel command line (set by the console/bootloader step), ``enX<n>`` references become
``eth<n>``, stale persistent-net rules holding the Xen MACs are removed, and the address is
kept as it was unless ``network: dhcp`` is asked for.  Netplan files (Ubuntu-style guests) are
YAML and have their own unit, ``netplan``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import netplan

PERSISTENT_NET_RULES = "/etc/udev/rules.d/70-persistent-net.rules"
_ENX = re.compile(r"\benX(\d+)\b")
STATIC_ONLY_KEYWORDS = ("address", "netmask", "gateway", "network", "broadcast", "dns-nameservers", "dns-search")


def rename_xen_interfaces(text):
    return _ENX.sub(lambda m: "eth" + m.group(1), text)


def ifupdown_to_dhcp(text):
    """Turn every static IPv4 stanza into DHCP, dropping its address lines."""
    out = []
    in_static = False
    for line in text.splitlines(True):
        stripped = line.strip()
        words = stripped.split()
        if words[:1] == ["iface"] and len(words) >= 4:
            in_static = words[2] == "inet" and words[3] == "static"
            if in_static:
                line = line.replace("static", "dhcp", 1)
        elif words and (words[0] in ("auto", "source", "source-directory", "mapping")
                        or words[0].startswith("allow-")):
            in_static = False
        elif in_static and words and words[0] in STATIC_ONLY_KEYWORDS:
            continue
        out.append(line)
    return "".join(out)


def networkd_to_dhcp(text):
    text = re.sub(r"(?m)^\s*(Address|Gateway|DNS)\s*=.*\n?", "", text)
    if re.search(r"(?m)^\s*DHCP\s*=", text):
        return re.sub(r"(?m)^(\s*DHCP\s*=).*$", r"\1yes", text)
    return re.sub(r"(?m)^\[Network\][ \t]*$", "[Network]\nDHCP=yes", text, count=1)


def apply(guest, facts, network="keep"):
    """Fixup entry point."""
    net = facts["network"]
    if net.get("netplan"):
        netplan.require_yaml()  # before any change: a guest half-fixed for its network helps nobody
    # interfaces.d/*.xen2kvm left by an earlier version is sourced as configuration: move it away
    # and never edit it (each run used to back up the backup).
    legacy = set(guest.relocate_legacy_backups())
    if net.get("persistent_net_rules"):
        guest.remove(PERSISTENT_NET_RULES, "names tied to the Xen NIC; virtio NICs get eth0.. via net.ifnames=0")
    for path in net["ifupdown"]["files"]:
        if path in legacy:
            continue
        text = guest.read(path)
        if text is None:
            continue
        new = rename_xen_interfaces(text)
        if network == "dhcp":
            new = ifupdown_to_dhcp(new)
        guest.write(path, new, "interface names on virtio" + (", DHCP as asked" if network == "dhcp" else ""))
    for path in net.get("systemd_networkd") or []:
        text = guest.read(path)
        if text is not None:
            new = rename_xen_interfaces(text)
            guest.write(path, networkd_to_dhcp(new) if network == "dhcp" else new, "interface names on virtio")
    netplan.apply(guest, net.get("netplan") or [], network)
