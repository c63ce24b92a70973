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

import contextlib
import hashlib
import json
import os
import re
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bare_fs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bootloader
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import cloud_init
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import console
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import devices
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import efi
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import firstboot
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import guest_tools
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import initramfs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import network as network_fixup
from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import as_tree, read_text
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.appliance import ApplianceSession
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.chroot import ChrootSession
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import inspect_guest, read_fstab
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import loops_for_file
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt, packages_needed
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import describe_users, processes_using
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import write_json_atomically
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import QCOW_MAGIC, GuestError

# What the disks were called under Xen and which ones bare_fs gave a partition table: a later
# run without the spec (or after the repartitioning) must map the same names the same way.
DISK_RECORD = "/var/lib/xen2kvm/disks.json"
FIXUPS = ("bare_fs", "devices", "console", "initramfs", "bootloader", "network", "cloud_init", "remove_xen_tools",
          "guest_agent", "firstboot", "cleanup")
SUPPORTED_FAMILIES = ("debian",)
# guestfs: the libguestfs appliance (default); chroot: loop mounts on this host (opt-in, faster).
ENGINES = ("guestfs", "chroot")
ENGINE_VARIABLE = "XEN2KVM_FIXUP_ENGINE"


def default_engine():
    """guestfs, unless this host's XEN2KVM_FIXUP_ENGINE names another (a site-wide choice)."""
    return os.environ.get(ENGINE_VARIABLE) or "guestfs"


class FixupError(RuntimeError):
    """A fixup failed; the message names the step."""


class PhaseClock:
    """Seconds per phase of a run (appliance launch, inspection, package downloads, each fixup),
    returned as ``seconds`` so a slow migration shows at once where its time went."""

    def __init__(self):
        self.started = time.monotonic()
        self.seconds = {}

    @contextlib.contextmanager
    def phase(self, name):
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - start, 1)

    def summary(self):
        return dict(self.seconds, total=round(time.monotonic() - self.started, 1))


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


def _refuse_busy(disks):
    """An image a VM or a loop device uses may change under the appliance: refuse it."""
    for path in disks:
        users = processes_using(path)
        if users:
            raise FixupError("%s is in use by %s; stop it first; nothing was changed" % (path, describe_users(users)))
        loops = loops_for_file(path)
        if loops:
            raise FixupError("%s is attached to %s; detach it first (losetup -d); nothing was changed"
                             % (path, ", ".join(loop["device"] for loop in loops)))


def _letters(name):
    match = devices.XEN_DISK_NAME.match(name)
    return match.group(2) if match else None


def xen_disk_names(spec, count):
    """What the guest called each of ``count`` disks (boot order) under Xen: the spec's VBD
    ``device``, else the name its ``userdevice`` gives (Xen names PV disk N xvd<letter N>: 0 ->
    xvda, 2 -> xvdc), never the list position.  Disks the spec does not describe get the first
    letters no other disk has."""
    names = []
    for position, disk in enumerate(((spec or {}).get("disks") or [])[:count]):
        device = str(disk.get("device") or "").strip()
        if device.startswith("/dev/"):
            device = device[len("/dev/"):]
        if not device:
            userdevice = str(disk.get("userdevice", "")).strip()
            device = "xvd" + disk_letters(int(userdevice) if userdevice.isdigit() else position)
        names.append(device)
    taken = {_letters(name) for name in names}
    index = 0
    while len(names) < count:
        if disk_letters(index) not in taken:
            names.append("xvd" + disk_letters(index))
        index += 1
    twice = sorted(name for name in set(names) if names.count(name) > 1)
    if twice:
        raise FixupError("the spec gives several disks the device name %s; nothing was changed" % ", ".join(twice))
    return names


def read_disk_record(root, count):
    """What an earlier run recorded in the guest about its ``count`` disks, or None."""
    text = read_text(as_tree(root), DISK_RECORD)
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    names, repartitioned = record.get("xen_names"), record.get("repartitioned")
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) and _letters(n) for n in names):
        return None
    if not isinstance(repartitioned, list) or not all(isinstance(i, int) and 0 <= i < count for i in repartitioned):
        return None
    return {"xen_names": names, "repartitioned": set(repartitioned)}


def names_from_fstab(guest, names):
    """Without a spec: the guest's own names for its bare-filesystem disks, read from its fstab.

    The root is found by looking, so the fstab line for / says what the guest called that disk
    (a PV guest's ``xvda1``).  Another bare disk takes the one Xen-style fstab name of its
    filesystem type (swap for a swap disk) that names no partition of a partitioned disk."""
    names = list(names)
    entries = [e for e in read_fstab(guest.tree) if devices.XEN_DISK_NAME.match(e["source"])
               and not e["source"].startswith(("/dev/vd", "vd"))]
    root = guest.root_volume
    if root is not None and root.number is None:
        for entry in entries:
            if os.path.normpath(entry["mountpoint"]) == "/":
                names[root.disk_index] = entry["source"].rsplit("/", 1)[-1]
    partitioned = {(_letters(names[v.disk_index]), str(v.number)) for v in guest.volumes if v.number is not None}
    bare = [v for v in guest.volumes if v.number is None and v is not root and v.fs is not None]
    for volume in bare:
        same_type = [v for v in bare if v.fs.type == volume.fs.type]
        candidates = []
        for entry in entries:
            match = devices.XEN_DISK_NAME.match(entry["source"])
            name = entry["source"].rsplit("/", 1)[-1]
            if name in names or (match.group(2), match.group(3)) in partitioned:
                continue
            if entry["fstype"] == volume.fs.type or (entry["fstype"] == "auto" and volume.fs.type != "swap"):
                candidates.append(name)
        if len(same_type) == 1 and len(candidates) == 1:
            names[volume.disk_index] = candidates[0]
    return names


def refuse_unsupported(facts):
    family = facts["os"].get("family")
    if family not in SUPPORTED_FAMILIES:
        raise FixupError("%s is not supported: guest_fixup converts Debian-family guests only; nothing "
                         "was changed" % (facts["os"].get("pretty_name") or facts["os"].get("id") or "this guest"))
    if not facts["usable_kernels"]:
        raise FixupError("no installed kernel can boot on KVM (Xen-only kernels or no virtio_blk): %s; "
                         "install a stock kernel first; nothing was changed"
                         % ", ".join(k["version"] for k in facts["kernels"]) or "no kernels found")


def volume_name(names, volume):
    """The guest's Xen name of a partition or bare-filesystem disk, by the names in use now."""
    name = names[volume.disk_index]
    return name if volume.number is None else re.sub(r"\d+$", "", name) + str(volume.number)


def volume_uuids(guest, names, repartitioned):
    """KVM device name -> filesystem UUID for every volume of the guest (swap included)."""
    plain = devices.DeviceMap(names, repartitioned)
    return {plain.rename("/dev/" + volume_name(names, volume)): volume.fs.uuid
            for volume in guest.volumes if volume.fs is not None and volume.fs.uuid}


class GuestFixup:
    def __init__(self, disks, spec=None, enabled=None, network="keep", apt_proxy=None, apt_mirror=None,
                 resolv_conf="host", check_mode=False, root=None, package_dir=None, engine=None):
        self.disks = [os.path.abspath(d) for d in disks]
        self.spec = spec or {}
        self.enabled = set(FIXUPS if enabled is None else enabled)
        self.network = network
        self.apt_options = {"apt_proxy": apt_proxy, "apt_mirror": apt_mirror, "resolv_conf": resolv_conf,
                            "package_dir": package_dir}
        self.check_mode = check_mode
        self.firmware = self.spec.get("firmware", "bios")
        self.root = root  # the guest's name for the device holding /, when several disks hold one
        engine = engine or default_engine()
        if engine not in ENGINES:
            raise FixupError("engine must be one of %s, not %s" % (", ".join(ENGINES), engine))
        self.engine = engine
        self.clock = PhaseClock()

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
        if self.engine == "guestfs":
            _refuse_busy(self.disks)  # GuestMount does its own checks
        result = self._run()
        result["seconds"] = self.clock.summary()
        if not self.check_mode:
            write_json_atomically(self._marker_path(), {"fingerprint": self._fingerprint(),
                                                        "changes": len(result["changes"])})
        return result

    @contextlib.contextmanager
    def _open(self, names, network=False):
        """The guest, read-only until make_writable(), in the engine asked for."""
        session = ChrootSession if self.engine == "chroot" else ApplianceSession
        with contextlib.ExitStack() as stack:
            with self.clock.phase("launch"):
                guest = stack.enter_context(session(self.disks, readonly=self.check_mode, devices=names,
                                                    root=self.root, network=network and not self.check_mode))
            yield guest

    def _run(self):
        names = xen_disk_names(self.spec, len(self.disks))
        repartition = self._repartition_due()
        with self._open(names, network=True) as guest:
            facts = self._inspect(guest)
            names, repartitioned_earlier = self._names_and_history(guest, names)
            refuse_unsupported(facts)
            warnings = list(guest.warnings)
            if not repartition:
                return self._fix(guest, names, repartitioned_earlier, [], warnings)
            self._fetch_packages_into_guest(guest, facts)
        changes = []
        repartitioned = self._bare_fs(changes) | repartitioned_earlier
        with self._open(names, network=True) as guest:
            warnings.extend(w for w in guest.warnings if w not in warnings)
            return self._fix(guest, names, repartitioned, changes, warnings)

    def _inspect(self, guest):
        with self.clock.phase("inspect"):
            facts = inspect_guest(guest.tree, disk=self.disks[0])
        facts["root_partition"] = guest.root_partition
        facts["engine"] = guest.engine
        return facts

    def _fix(self, guest, names, repartitioned, changes, warnings):
        if not self.check_mode:
            guest.make_writable()
        mapping = devices.DeviceMap(names, repartitioned, volume_uuids(guest, names, repartitioned))
        facts = self._inspect(guest)
        editor = GuestEditor(guest.tree, self.check_mode, run=guest.run)
        editor.changes.extend(changes)
        with GuestApt(editor, guest.run, **self._apt_options_for(guest)) as apt:
            with self.clock.phase("fetch_packages"):
                apt.fetch_first(*packages_needed(facts, self.enabled, self.firmware))  # before any change
            editor.fixup = "devices"
            editor.write(DISK_RECORD, json.dumps({"xen_names": names, "repartitioned": sorted(repartitioned)}) + "\n",
                         "what the disks were called under Xen, for later runs")
            self._apply_all(editor, facts, guest, mapping, apt)
        warnings.extend(editor.warnings)
        return {"changed": bool(editor.changes), "changes": editor.changes, "diff": editor.diffs,
                "facts": facts, "warnings": warnings, "check_mode": self.check_mode}

    def _apt_options_for(self, guest):
        options = dict(self.apt_options)
        if guest.engine == "guestfs" and options["resolv_conf"] == "host":
            # The appliance has its own resolver (libguestfs puts it in the guest while a command
            # runs); the host's may be a 127.0.0.x stub the appliance cannot reach.
            options["resolv_conf"] = None
        return options

    def _names_and_history(self, guest, names):
        """The disk names to use and the disks an earlier run repartitioned: the spec's names
        when given, else the ones an earlier run recorded, else those the guest's fstab shows."""
        record = read_disk_record(guest.tree, len(self.disks))
        earlier = record["repartitioned"] if record else set()
        if self.spec.get("disks"):
            return names, earlier
        if record:
            return record["xen_names"], earlier
        return names_from_fstab(guest, names), earlier

    def _repartition_due(self):
        return ("bare_fs" in self.enabled and not self.check_mode
                and bare_fs.bare_root_filesystem(self.disks[0]) is not None)

    def _fetch_packages_into_guest(self, guest, facts):
        """Repartitioning is the first change: the packages the fixups need go into the guest's
        package cache before it, so an offline host fails with the disk as it was."""
        guest.make_writable()
        editor = GuestEditor(guest.tree, False, run=guest.run)
        with GuestApt(editor, guest.run, **self._apt_options_for(guest)) as apt:
            with self.clock.phase("fetch_packages"):
                apt.fetch_first(*packages_needed(facts, self.enabled, self.firmware))

    def _bare_fs(self, changes):
        if "bare_fs" not in self.enabled:
            return set()
        try:
            with self.clock.phase("bare_fs"):
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
            with self.clock.phase(name):
                func(*args)
        except (GuestError, OSError, RuntimeError, ValueError) as exc:
            raise FixupError("fixup %s failed: %s" % (name, exc))

    def _apply_all(self, editor, facts, guest, mapping, apt):
        ifnames0 = "network" in self.enabled
        firstboot_commands = []
        self._step("devices", editor, devices.apply, editor, mapping)
        self._step("console", editor, console.apply, editor, mapping, ifnames0)
        self._step("initramfs", editor, initramfs.apply, editor, facts)
        if self.firmware == "uefi":
            self._step("bootloader", editor, efi.apply, editor, facts, apt)
        else:
            before = len(editor.changes)
            self._step("bootloader", editor, bootloader.apply, editor, facts, guest, mapping, apt, ifnames0)
            if len(editor.changes) > before:
                firstboot_commands += [
                    "echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections",
                    "grub-install /dev/vda", "update-grub"]
        self._step("network", editor, network_fixup.apply, editor, facts, self.network)
        self._step("cloud_init", editor, cloud_init.apply, editor, facts)
        self._step("remove_xen_tools", editor, guest_tools.remove_xen_tools, editor, facts, apt)
        self._step("guest_agent", editor, guest_tools.install_guest_agent, editor, facts, apt, firstboot_commands)
        self._step("firstboot", editor, firstboot.apply, editor, facts, firstboot_commands)
        self._step("cleanup", editor, guest_tools.remove_stale_caches, editor)


def fix_guest(disks, **options):
    return GuestFixup(disks, **options).run()
