# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "cloud_init": cloud-init must not take the first KVM boot for a new instance.

A guest deployed with cloud-init read its settings under Xen from a config drive or a NoCloud
ISO.  That datasource does not come to KVM; cloud-init would find no instance ID, or another
one, treat the boot as the first of a new instance and, as such, write a fallback network
configuration (DHCP on the first NIC, replacing the static address) and delete and regenerate
the SSH host keys (users then meet a changed-host-key warning).

Two layers, so the VM stays as it was even if someone turns cloud-init back on:

- ``/etc/cloud/cloud-init.disabled``: cloud-init's documented off switch (its systemd generator
  then leaves ``cloud-init.target`` out of the boot);
- ``/etc/cloud/cloud.cfg.d/99-xen2kvm.cfg`` (read last): ``manual_cache_clean: true`` makes
  cloud-init trust its cache in /var/lib/cloud (the instance it already set up) instead of
  comparing instance IDs, ``datasource_list: [ None ]`` leaves it no datasource that could hand
  it a new instance ID, and should the cache ever be cleaned, ``network: {config: disabled}``,
  ``ssh_deletekeys: false`` and ``preserve_hostname: true`` keep the network configuration,
  the host keys and the host name.

/var/lib/cloud stays: it is the record of the instance cloud-init trusts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

MARKERS = ("/etc/cloud/cloud.cfg", "/usr/bin/cloud-init")
DISABLED = "/etc/cloud/cloud-init.disabled"
CONFIG = "/etc/cloud/cloud.cfg.d/99-xen2kvm.cfg"

DISABLED_TEXT = """\
# xen2kvm: cloud-init is off since this VM moved from Xen to KVM: its Xen datasource (config
# drive or NoCloud ISO) is gone, and as a "new instance" it would rewrite the network
# configuration and the SSH host keys.  See %s before removing this file.
""" % CONFIG

CONFIG_TEXT = """\
# xen2kvm: this VM moved from Xen to KVM without its cloud-init datasource.  Should cloud-init
# be turned on again (/etc/cloud/cloud-init.disabled removed), it must not take the VM for a
# new instance: trust the instance cached in /var/lib/cloud, look for no other datasource, and
# keep the network configuration, SSH host keys and host name as they are.
manual_cache_clean: true
datasource_list: [ None ]
network: {config: disabled}
ssh_deletekeys: false
preserve_hostname: true
"""


def has_cloud_init(guest):
    return any(guest.exists(path) for path in MARKERS)


def apply(guest, facts):
    """Fixup entry point; ``facts`` (inspect_guest's) are not needed: the files tell."""
    if not has_cloud_init(guest):
        return
    guest.write(DISABLED, DISABLED_TEXT, "cloud-init off: its Xen datasource is gone", mode=0o644)
    guest.write(CONFIG, CONFIG_TEXT, "if cloud-init is turned on again, it keeps the network, host keys and "
                "host name (no new instance without its Xen datasource)", mode=0o644)
