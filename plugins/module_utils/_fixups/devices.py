# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "devices": Xen disk names (xvd*, and hd*/sd* on HVM) become the virtio names (vd*).

On KVM the disks are attached as virtio in boot order, so the i-th disk is ``vd<letter i>``.
A bare-filesystem disk (a PV guest's ``xvda1`` given as a whole disk) is rebuilt with a
partition table, so what the guest called ``xvda1`` becomes ``vda1``.  ``UUID=``/``LABEL=``
references are left alone: they survive the move as they are.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters

XEN_DISK_NAME = re.compile(r"^(?:/dev/)?(xvd|hd|sd|vd)([a-z]+)(\d*)$")
_XEN_DISK = XEN_DISK_NAME


class DeviceMap:
    """Maps the guest's Xen-era device names to the names it will see on KVM.

    ``xen_names``: the name the guest used for each disk, in KVM boot order (VBD ``device``:
    ``xvda``, or ``xvda1`` for a bare filesystem given as a partition).  ``repartitioned``:
    indexes of bare-filesystem disks that get a partition table (their filesystem becomes
    partition 1).
    """

    def __init__(self, xen_names, repartitioned=(), uuids=None):
        self.by_letters = {}
        self.whole = {}
        self.uuids = dict(uuids or {})  # KVM device ("/dev/vda2") -> filesystem UUID
        for index, name in enumerate(xen_names):
            match = _XEN_DISK.match(name or "")
            letters = match.group(2) if match else disk_letters(index)
            partition = match.group(3) if match else ""
            new_disk = "vd" + disk_letters(index)
            if partition:
                # The whole disk was one filesystem that the guest called a partition.
                self.whole[letters + partition] = new_disk + ("1" if index in repartitioned else "")
            elif index in repartitioned:
                self.whole[letters] = new_disk + "1"
            else:
                self.by_letters[letters] = new_disk

    def rename(self, device):
        """``/dev/xvda2`` -> ``/dev/vda2``; anything that is not a Xen-style disk name is kept."""
        match = _XEN_DISK.match(device)
        if not match:
            return device
        prefix = "/dev/" if device.startswith("/dev/") else ""
        kind, letters, partition = match.groups()
        if kind == "vd":
            return device  # already a KVM name (ours, from an earlier run): renaming it again would shift it
        if letters + partition in self.whole:
            return prefix + self.whole[letters + partition]
        if letters in self.by_letters:
            return prefix + self.by_letters[letters] + partition
        return device

    def stable(self, device):
        """``UUID=...`` for a device whose filesystem UUID is known, else the KVM name: UUIDs do
        not depend on the order disks are attached in."""
        renamed = self.rename(device)
        uuid = self.uuids.get(renamed) if renamed.startswith("/dev/vd") else None
        return "UUID=" + uuid if uuid else renamed


def rename_fields(text, mapping, columns, stable=False):
    """Rename the device in the given 0-based ``columns`` of a whitespace table (fstab,
    crypttab), keeping comments and the original spacing."""
    out = []
    for line in text.splitlines(True):
        if line.lstrip().startswith("#") or not line.strip():
            out.append(line)
            continue
        parts = re.split(r"(\s+)", line)
        fields = parts[0::2]
        for column in columns:
            if column < len(fields) and fields[column]:
                fields[column] = (mapping.stable if stable else mapping.rename)(fields[column])
        parts[0::2] = fields
        out.append("".join(parts))
    return "".join(out)


def fix_fstab(text, mapping):
    return rename_fields(text, mapping, (0,), stable=True)


def fix_crypttab(text, mapping):
    return rename_fields(text, mapping, (1,))


def fix_resume_conf(text, mapping):
    return re.sub(r"(?m)^(\s*RESUME=)(\S+)", lambda m: m.group(1) + mapping.stable(m.group(2)), text)


def rename_in_words(text, mapping):
    """Rename every ``/dev/<xen disk>`` word in free text (menu.lst, kernel arguments)."""
    return re.sub(r"/dev/(?:xvd|hd|sd)[a-z]+\d*\b", lambda m: mapping.rename(m.group(0)), text)


def apply(guest, mapping):
    """Fixup entry point: fstab (swap included), crypttab, the initramfs resume setting."""
    # An earlier version's conf.d/resume.xen2kvm would keep RESUME=/dev/xvdX alive.
    guest.relocate_legacy_backups()
    edits = (("/etc/fstab", fix_fstab, "Xen disk names -> virtio names"),
             ("/etc/crypttab", fix_crypttab, "Xen disk names -> virtio names"),
             ("/etc/initramfs-tools/conf.d/resume", fix_resume_conf, "resume device on virtio"),
             ("/etc/uswsusp.conf", rename_in_words, "resume device on virtio"))
    for path, transform, why in edits:
        text = guest.read(path)
        if text is not None:
            guest.write(path, transform(text, mapping), why)
