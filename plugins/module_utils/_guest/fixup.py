# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect → plan → fix a converted Xen guest so it boots on KVM (virt-v2v's order).

The guest is first mounted read-only and inspected; anything we cannot convert is refused
before a byte changes.  Then the fixups run in the order the checklist requires (kernel and
initramfs before the boot loader config), each a small unit in its own file, each idempotent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bare_fs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bootloader
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import console
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import devices
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import firstboot
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import guest_tools
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import initramfs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import network as network_fixup
from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import inspect_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt, packages_needed
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import describe_users, processes_using
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import write_json_atomically
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import QCOW_MAGIC, GuestError

FIXUPS = ("bare_fs", "devices", "console", "initramfs", "bootloader", "network", "remove_xen_tools",
          "guest_agent", "firstboot", "cleanup")
SUPPORTED_FAMILIES = ("debian",)


class FixupError(RuntimeError):
    """A fixup failed; the message names the step."""


def _check_disks(disks):
    if not disks:
        raise FixupError("no disks given")
    for path in disks:
        if not os.path.exists(path):
            raise FixupError("disk image %s does not exist" % path)
        with open(path, "rb") as handle:
            if handle.read(4) == QCOW_MAGIC:
                raise FixupError("%s is qcow2; guest_fixup works on raw images (xva_convert format=raw), "
                                 "convert to qcow2 afterwards" % path)


def xen_disk_names(spec, count):
    names = [d.get("device") or "" for d in (spec or {}).get("disks", [])][:count]
    return names + ["xvd" + disk_letters(i) for i in range(len(names), count)]


def refuse_unsupported(facts):
    family = facts["os"].get("family")
    if family not in SUPPORTED_FAMILIES:
        raise FixupError("%s is not supported: guest_fixup converts Debian-family guests only; nothing "
                         "was changed" % (facts["os"].get("pretty_name") or facts["os"].get("id") or "this guest"))
    if not facts["usable_kernels"]:
        raise FixupError("no installed kernel can boot on KVM (Xen-only kernels or no virtio_blk): %s; "
                         "install a stock kernel first; nothing was changed"
                         % ", ".join(k["version"] for k in facts["kernels"]) or "no kernels found")


def volume_uuids(mount, names, repartitioned):
    """KVM device name -> filesystem UUID for every volume of the guest (swap included)."""
    plain = devices.DeviceMap(names, repartitioned)
    return {plain.rename("/dev/" + volume.name): volume.fs.uuid
            for volume in mount.volumes if volume.fs is not None and volume.fs.uuid}


class GuestFixup:
    def __init__(self, disks, spec=None, enabled=None, network="keep", apt_proxy=None, apt_mirror=None,
                 resolv_conf="host", check_mode=False, package_dir=None):
        self.disks = [os.path.abspath(d) for d in disks]
        self.spec = spec or {}
        self.enabled = set(FIXUPS if enabled is None else enabled)
        self.network = network
        self.apt_options = {"apt_proxy": apt_proxy, "apt_mirror": apt_mirror, "resolv_conf": resolv_conf,
                            "package_dir": package_dir}
        self.check_mode = check_mode
        self.firmware = self.spec.get("firmware", "bios")

    # -- "already done?": a marker beside the boot disk, so a rerun after the VM was started
    # reports the guest as fixed instead of refusing to mount a disk in use.
    def _marker_path(self):
        directory, name = os.path.split(self.disks[0])
        return os.path.join(directory, ".%s.xen2kvm-fixup.json" % name)

    def _fingerprint(self):
        disks = []
        for path in self.disks:
            st = os.stat(path)
            disks.append({"path": path, "inode": st.st_ino, "size": st.st_size})
        options = json.dumps([sorted(self.enabled), self.network, self.firmware], sort_keys=True)
        return {"disks": disks, "options": hashlib.sha256(options.encode()).hexdigest()}

    def _fixed_earlier(self):
        try:
            with open(self._marker_path()) as handle:
                return json.load(handle).get("fingerprint") == self._fingerprint()
        except (OSError, ValueError):
            return False

    def _in_use_but_done(self):
        users = [user for path in self.disks for user in processes_using(path)]
        if not users:
            return None
        if not self._fixed_earlier():
            return None  # GuestMount refuses it, naming the process
        return {"changed": False, "changes": [], "diff": [], "facts": {}, "check_mode": self.check_mode,
                "warnings": ["the guest was fixed earlier and its disk is now in use by %s; not mounted"
                             % describe_users(users)]}

    def run(self):
        _check_disks(self.disks)
        done = self._in_use_but_done()
        if done is not None:
            return done
        result = self._run()
        if not self.check_mode:
            write_json_atomically(self._marker_path(), {"fingerprint": self._fingerprint(),
                                                        "changes": len(result["changes"])})
        return result

    def _run(self):
        with GuestMount(self.disks, readonly=True) as mount:
            facts = inspect_guest(mount.root, disk=self.disks[0])
            facts["root_partition"] = mount.root_partition
        refuse_unsupported(facts)
        changes, warnings = [], list(mount.released)
        repartitioned = self._bare_fs(changes)
        names = xen_disk_names(self.spec, len(self.disks))
        with GuestMount(self.disks, readonly=self.check_mode) as mount:
            mapping = devices.DeviceMap(names, repartitioned, volume_uuids(mount, names, repartitioned))
            facts = inspect_guest(mount.root, disk=self.disks[0])
            editor = GuestEditor(mount.root, self.check_mode, run=mount.run_in_chroot)
            editor.changes.extend(changes)
            with GuestApt(editor, mount.run_in_chroot, **self.apt_options) as apt:
                apt.fetch_first(*packages_needed(facts, self.enabled, self.firmware))  # before any change
                self._apply_all(editor, facts, mount, mapping, apt)
        warnings.extend(editor.warnings)
        return {"changed": bool(editor.changes), "changes": editor.changes, "diff": editor.diffs,
                "facts": facts, "warnings": warnings, "check_mode": self.check_mode}

    def _bare_fs(self, changes):
        if "bare_fs" not in self.enabled:
            return set()
        try:
            plan = bare_fs.repartition(self.disks[0], check_mode=self.check_mode)
        except Exception as exc:
            raise FixupError("fixup bare_fs failed: %s" % exc)
        if plan is None:
            return set()
        changes.append({"fixup": "bare_fs", "action": "repartition", "path": self.disks[0],
                        "why": "a bare %s filesystem cannot hold a boot loader; it now starts at 1 MiB"
                               % plan["filesystem"]})
        return {0}

    def _step(self, name, editor, func, *args):
        if name not in self.enabled:
            return
        editor.fixup = name
        try:
            func(*args)
        except (GuestError, OSError, RuntimeError, ValueError) as exc:
            raise FixupError("fixup %s failed: %s" % (name, exc))

    def _apply_all(self, editor, facts, mount, mapping, apt):
        ifnames0 = "network" in self.enabled
        firstboot_commands = []
        self._step("devices", editor, devices.apply, editor, mapping)
        self._step("console", editor, console.apply, editor, mapping, ifnames0)
        self._step("initramfs", editor, initramfs.apply, editor, facts)
        if self.firmware == "uefi":
            editor.warn("UEFI guest: the boot loader was left as it is (an EFI system partition cannot be "
                        "mounted on this host)")
        else:
            before = len(editor.changes)
            self._step("bootloader", editor, bootloader.apply, editor, facts, mount, mapping, apt, ifnames0)
            if len(editor.changes) > before:
                firstboot_commands += [
                    "echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections",
                    "grub-install /dev/vda", "update-grub"]
        self._step("network", editor, network_fixup.apply, editor, facts, self.network)
        self._step("remove_xen_tools", editor, guest_tools.remove_xen_tools, editor, facts, apt)
        self._step("guest_agent", editor, guest_tools.install_guest_agent, editor, facts, apt, firstboot_commands)
        self._step("firstboot", editor, firstboot.apply, editor, facts, firstboot_commands)
        self._step("cleanup", editor, guest_tools.remove_stale_caches, editor)


def fix_guest(disks, **options):
    return GuestFixup(disks, **options).run()
