# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The opt-in host engine of guest_fixup: the guest mounted on this host over loop devices.

    with ChrootSession(disks, readonly=False) as guest:   # the same interface as ApplianceSession
        guest.make_writable()
        guest.run(["update-initramfs", "-u", "-k", "all"])

Faster than the libguestfs appliance (no second kernel, no emulation where KVM is missing), but
the host kernel mounts the guest's filesystems, so it is only used when asked for (``engine:
chroot``).  Guest code runs in the hardened chroot of ``GuestMount.run_in_chroot``.

Why grub-mkconfig needs help here: grub-probe follows the loop device back to the image file on
the host and gives up (the seed how-to ended up with ``loop1`` in grub.cfg).  While grub-mkconfig
runs, the chroot gets (1) a private /dev holding the nodes the guest will have on KVM
(``/dev/vda1`` for the loop device of its root partition, ``/dev/disk/by-uuid/...``) and (2) a
grub-probe that answers from what we read in the partition table and superblocks, for exactly
those devices.  Nothing of that stays in the guest: both are mounts over it, removed in
``finally``.  The appliance engine needs none of it: there grub sees real disks.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex
import stat
import subprocess
import tempfile
from contextlib import contextmanager

from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import HostTree
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError

GRUB_FS_NAMES = {"ext2": "ext2", "ext3": "ext2", "ext4": "ext2", "xfs": "xfs", "btrfs": "btrfs", "vfat": "fat"}
BASIC_NODES = ("null", "zero", "full", "random", "urandom", "tty", "console")


class BootloaderError(GuestError):
    pass


def probe_table(mount, mapping):
    """What grub-probe must answer for each mounted filesystem of the guest, on KVM."""
    table = []
    by_volume = {m["volume"]: m["guest_path"] for m in mount.mounts if m.get("volume")}
    for volume in mount.volumes:
        if volume.fs is None or volume.loop is None or volume.name not in by_volume:
            continue
        kvm_device = mapping.rename("/dev/" + volume.name)
        disk = "/dev/vd" + disk_letters(volume.disk_index)
        scheme = mount.layouts[volume.disk_index].scheme
        partmap = {"mbr": "msdos", "gpt": "gpt"}.get(scheme, "msdos")
        number = volume.number or 1
        hint = "hd%d,%s%d" % (volume.disk_index, partmap, number)
        table.append({
            "guest_path": by_volume[volume.name],
            "device": kvm_device,
            "disk": disk,
            "drive": "(%s)" % hint,
            "hint": hint,
            "partmap": partmap,
            "fs": GRUB_FS_NAMES.get(volume.fs.type, volume.fs.type),
            "uuid": volume.fs.uuid or "",
            "label": volume.fs.label or "",
            "partuuid": volume.partition.partuuid if volume.partition else "",
            "loop": volume.loop.device,
            "whole_loop": mount.whole_disk_loops[volume.disk_index],
        })
    return table


def grub_probe_script(table):
    """A POSIX sh stand-in for grub-probe that knows only ``table``."""
    lines = ["#!/bin/sh",
             "# xen2kvm: answers grub-probe for the guest's KVM disks while grub-mkconfig runs in a chroot",
             'target=""; arg=""',
             'while [ $# -gt 0 ]; do',
             '  case "$1" in',
             '    --target=*) target="${1#--target=}" ;;',
             '    -t|--target) shift; target="$1" ;;',
             '    -m|--device-map) shift ;;',
             '    -*) ;;',
             '    *) arg="$1" ;;',
             '  esac',
             '  shift',
             'done',
             'vol=""',
             'case "$arg" in']
    # Longest mount point first, so /boot/grub is answered by /boot when it is separate.
    ordered = sorted(enumerate(table), key=lambda item: -len(item[1]["guest_path"]))
    for index, row in ordered:
        path = row["guest_path"].rstrip("/") or ""
        patterns = [shlex.quote(row["device"])]
        patterns += [shlex.quote(path or "/"), shlex.quote(path) + "/*"] if path else ["/", "/*"]
        lines.append("  %s) vol=%d ;;" % ("|".join(patterns), index))
    lines += ['esac', 'case "$vol:$target" in']
    for index, row in enumerate(table):
        answers = {
            "device": row["device"], "disk": row["disk"], "drive": row["drive"], "fs": row["fs"],
            "fs_uuid": row["uuid"], "fs_label": row["label"], "partuuid": row["partuuid"],
            "partmap": row["partmap"], "abstraction": "", "cryptodisk_uuid": "",
            "hints_string": "--hint-bios=%s --hint-efi=%s --hint-baremetal=ahci%s"
                            % (row["hint"], row["hint"], row["hint"][2:]),
            "compatibility_hint": row["hint"], "msdos_parttype": "83",
        }
        for target, answer in answers.items():
            lines.append("  %d:%s) echo %s ;;" % (index, target, shlex.quote(answer)) if answer
                         else "  %d:%s) ;;" % (index, target))
    lines += ['  *) echo "grub-probe (xen2kvm): cannot answer --target=$target for $arg" >&2; exit 1 ;;',
              'esac', ""]
    return "\n".join(lines)


def _run_host(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0:
        raise BootloaderError("%s failed: %s" % (" ".join(argv), proc.stderr.strip()))


@contextmanager
def kvm_view(root, table):
    """The chroot sees /dev and grub-probe as the guest will on KVM (see the module docstring)."""
    mounted = []
    # In the chroot's private /run (a tmpfs of GuestMount): even a killed run leaves no trace there.
    run = os.path.join(root, "run")
    script_dir = tempfile.mkdtemp(prefix="xen2kvm-grub-", dir=run if os.path.ismount(run) else None)
    try:
        dev = os.path.join(root, "dev")
        _run_host(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "xen2kvm-dev", dev])
        mounted.append(dev)
        for name in BASIC_NODES:
            st = os.stat("/dev/" + name)
            os.mknod(os.path.join(dev, name), st.st_mode, st.st_rdev)
        os.symlink("/proc/self/fd", os.path.join(dev, "fd"))
        os.makedirs(os.path.join(dev, "disk", "by-uuid"))
        for row in table:
            for node, loop in ((row["device"], row["loop"]), (row["disk"], row["whole_loop"])):
                if os.path.exists(os.path.join(root, node.lstrip("/"))):
                    continue
                st = os.stat(loop)
                if not stat.S_ISBLK(st.st_mode):
                    raise BootloaderError("%s is not a block device" % loop)
                os.mknod(os.path.join(root, node.lstrip("/")), stat.S_IFBLK | 0o600, st.st_rdev)
            if row["uuid"]:
                os.symlink("../../" + os.path.basename(row["device"]),
                           os.path.join(dev, "disk", "by-uuid", row["uuid"]))
        probe = os.path.join(script_dir, "grub-probe")
        with open(probe, "w") as handle:
            handle.write(grub_probe_script(table))
        os.chmod(probe, 0o755)
        target = os.path.join(root, "usr/sbin/grub-probe")
        if os.path.exists(target):
            _run_host(["mount", "--bind", probe, target])
            mounted.append(target)
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        for name in os.listdir(script_dir):
            os.unlink(os.path.join(script_dir, name))
        os.rmdir(script_dir)


def core_modules(table):
    """Modules core.img needs to find /boot/grub by UUID.  grub-install cannot tell them
    itself here: to it the partition's loop device is a disk of its own."""
    boot = next((row for row in table if row["guest_path"] == "/boot"), None) or \
        next(row for row in table if row["guest_path"] == "/")
    return " ".join(["biosdisk", "part_" + boot["partmap"], boot["fs"], "search_fs_uuid"])


class ChrootSession:
    """GuestMount behind the session interface the fixups use (see appliance.ApplianceSession)."""

    engine = "chroot"

    def __init__(self, disks, readonly=True, devices=None, root=None, network=False):
        self.disks = list(disks)
        self.readonly = readonly
        self.devices = devices
        self.root_hint = root
        self.mount = None
        self.tree = None
        self.writable = False

    def _open(self, readonly):
        self.mount = GuestMount(self.disks, readonly=readonly, devices=self.devices, root=self.root_hint)
        self.mount.__enter__()
        self.tree = HostTree(self.mount.root)
        self.writable = not readonly

    def __enter__(self):
        self._open(readonly=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(exc_type, exc, tb)
        return False

    def close(self, exc_type=None, exc=None, tb=None):
        mount, self.mount = self.mount, None
        if mount is not None:
            mount.__exit__(exc_type, exc, tb)

    def make_writable(self):
        if self.readonly:
            raise GuestError("the guest was opened read-only")
        if self.writable:
            return
        self.close()
        self._open(readonly=False)

    def run(self, argv, env=None, input=None, check=True, timeout=None):
        return self.mount.run_in_chroot(argv, env=env, input=input, check=check, timeout=timeout)

    @property
    def volumes(self):
        return self.mount.volumes

    @property
    def root_volume(self):
        return self.mount.root_volume

    @property
    def root_partition(self):
        return self.mount.root_partition

    @property
    def warnings(self):
        return self.mount.released

    def flush_disks(self):
        """Nothing to do: the loop devices share the host's page cache with the mounts."""

    @property
    def boot_disk(self):
        return self.mount.whole_disk_loops[0]

    def grub_core_modules(self, mapping):
        table = probe_table(self.mount, mapping)
        if not table:
            raise BootloaderError("no mounted guest filesystem to boot from")
        return core_modules(table)

    @contextmanager
    def grub_mkconfig_view(self, mapping):
        with kvm_view(self.mount.root, probe_table(self.mount, mapping)):
            yield
