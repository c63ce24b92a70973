# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "initramfs": every kernel's initramfs carries the virtio drivers.

A guest built or last rebuilt under Xen with ``MODULES=dep`` or a list holds only
``xen-blkfront`` and cannot find its root disk on KVM (the seed how-to missed this).  The
drivers are listed in /etc/initramfs-tools/modules (always included, whatever MODULES says)
and the initramfs is rebuilt for each kernel.  ``MODULES=dep`` becomes ``most``: inside a chroot
``dep`` would look at the host's devices, not the guest's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

VIRTIO_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "virtio_console")
MODULES_FILE = "/etc/initramfs-tools/modules"
CONF_FILE = "/etc/initramfs-tools/initramfs.conf"


class InitramfsError(RuntimeError):
    pass


def add_modules(text):
    present = {line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    missing = [name for name in VIRTIO_DRIVERS if name not in present and name.replace("_", "-") not in present]
    if not missing:
        return text
    block = "# added by xen2kvm: drivers to find disk and network on KVM\n" + "".join(m + "\n" for m in missing)
    return text + ("" if text.endswith("\n") or not text else "\n") + block


def modules_most(text):
    return re.sub(r"(?m)^(\s*MODULES\s*=\s*)dep\s*$", r"\1most", text)


def initramfs_path(kernel):
    return (kernel.get("initramfs") or {}).get("path")


def initramfs_has_virtio(guest, kernel, initrd=None):
    """True when the kernel finds virtio disks without help: built in, or in its initramfs."""
    if kernel.get("virtio_blk") == "builtin":
        return True
    initrd = initrd or initramfs_path(kernel)
    if not initrd or not guest.exists(initrd):
        return False
    listing = guest.inspect_run(["lsinitramfs", initrd])
    return listing is not None and "/virtio_blk.ko" in listing


def apply(guest, facts):
    """Fixup entry point: needs a Debian-family guest with initramfs-tools."""
    if not guest.exists("/usr/sbin/update-initramfs") and not guest.exists("/sbin/update-initramfs"):
        raise InitramfsError("the guest has no initramfs-tools (update-initramfs); cannot add virtio drivers")
    modules = guest.read(MODULES_FILE, "")
    guest.write(MODULES_FILE, add_modules(modules), "virtio drivers in every initramfs")
    conf = guest.read(CONF_FILE)
    if conf is not None:
        guest.write(CONF_FILE, modules_most(conf), "MODULES=dep in a chroot would pick the host's drivers")
    for kernel in facts["kernels"]:
        if not kernel.get("usable_on_kvm"):
            continue
        if initramfs_has_virtio(guest, kernel) and not guest.changed_path(MODULES_FILE, CONF_FILE):
            continue
        version = kernel["version"]
        mode = "-u" if initramfs_path(kernel) else "-c"
        guest.run(["update-initramfs", mode, "-k", version], "rebuild the initramfs of %s with virtio" % version)
        built = initramfs_path(kernel) or "/boot/initrd.img-%s" % version
        if not guest.check_mode and not initramfs_has_virtio(guest, kernel, built):
            raise InitramfsError("the rebuilt initramfs of kernel %s still lacks virtio_blk" % version)
