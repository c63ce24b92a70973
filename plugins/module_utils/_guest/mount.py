# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mount a guest's disk images on the host so it can be inspected and fixed in a chroot.

    with GuestMount(["/images/vm-disk0.raw"]) as guest:
        guest.run_in_chroot(["update-initramfs", "-u", "-k", "all"])

Every partition gets its own loop device (offset + sizelimit) because the hosts we run on
have neither loop partition scanning nor device-mapper. The root filesystem is found by
looking, the rest is mounted from the guest's own fstab (nodev, nosuid), and the guest gets a
private /dev (only the basic nodes and its own loop devices) and /run.  Nothing of the host is
bound in: run_in_chroot gives each command its own namespaces, a fresh /proc and read-only
/sys, and no capability to leave them (see sandbox.py), since the guest's code is untrusted.

Leaving mounts or loop devices behind is the failure the seed procedure had, so cleanup is
unconditional: it runs on success, on exceptions, and on SIGTERM/SIGHUP (turned into an
exception while mounted). Only SIGKILL can skip it.
"""

import glob
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import resolve_guest_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import looks_like_root, parse_fstab
from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import mount_table, processes_using
from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.leftovers import (
    RunRecord,
    processes_in_guest,
    release_killed_runs,
    wait_until_detached,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import (
    LoopDevice,
    attach,
    loops_for_file,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import (
    GuestError,
    is_block_device,
    probe_filesystem,
    read_partition_table,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.sandbox import (
    SandboxUnavailable,
    sandbox_command,
    setup_failure,
)

# Where temp mount points go; /run is a tmpfs that a reboot empties, /tmp the fallback.
MOUNT_BASES = ("/run/xen2kvm", tempfile.gettempdir())

# Mounted afresh, per command, inside the command's own namespaces (see sandbox.py); the
# host's are never bound in: its /proc/<pid>/root leads into every host process's root.
NAMESPACE_MOUNTS = ("/proc", "/sys")
# A guest's own filesystems: device nodes or setuid binaries on them give nothing.
GUEST_MOUNT_OPTIONS = "nodev,nosuid"
# The chroot gets its own /dev and /run: package scripts in the guest (udev's postinst chgrp's
# /dev/kvm to the guest's own gid for "kvm") must never reach the host's devices or daemons.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty", "console")

# fstab mount points the fixups cannot do without: failing to map one is an error.
ESSENTIAL_MOUNTPOINTS = ("/boot", "/usr")

# Guest disk names as Xen PV (xvd), IDE (hd), SCSI/SATA (sd) and virtio (vd) spell them.
DEVICE_NAME_RE = re.compile(r"^(?:/dev/)?(xvd|hd|sd|vd)([a-z]+)(\d*)$")

# Journalling filesystems replay their log even on a read-only mount unless told not to.
NO_REPLAY_OPTIONS = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}

UMOUNT_ATTEMPTS = 5
CLEANUP_SIGNALS = ("SIGTERM", "SIGHUP")


class GuestInterrupted(GuestError):
    """A termination signal arrived while the guest was mounted (cleanup has run)."""


class GuestCommandError(GuestError):
    """A command run in the guest chroot failed."""

    def __init__(self, argv, returncode, stdout, stderr):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr or stdout or "").strip()[-2000:]
        GuestError.__init__(self, "command %s failed in the guest chroot with exit code %s: %s"
                            % (" ".join(self.argv), returncode, tail))


# --------------------------------------------------------------------------- helpers


def _run(argv, timeout=120):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, check=False)


def host_mount_points(mountinfo="/proc/self/mountinfo"):
    """Mount points of this mount namespace, from /proc/self/mountinfo (or another process's)."""
    return [point for _major, _minor, point in mount_table(mountinfo)]


def _mounted_device_numbers():
    return {os.makedev(major, minor) for major, minor, _point in mount_table()}


def _refuse_busy_block_device(path):
    """GuestError when the block device or one of its partitions is mounted or held."""
    rdev = os.stat(path).st_rdev
    sysdir = os.path.realpath("/sys/dev/block/%d:%d" % (os.major(rdev), os.minor(rdev)))
    numbers = {rdev: path}
    # Partitions are subdirectories with their own "partition" attribute.
    for part_dir in glob.glob(os.path.join(sysdir, "*", "partition")):
        part_dir = os.path.dirname(part_dir)
        try:
            with open(os.path.join(part_dir, "dev")) as fobj:
                major, minor = fobj.read().strip().split(":")
        except (OSError, ValueError):
            continue
        numbers[os.makedev(int(major), int(minor))] = "/dev/" + os.path.basename(part_dir)
    mounted = _mounted_device_numbers()
    busy = [name for number, name in numbers.items() if number in mounted]
    if busy:
        raise GuestError("block device %s is in use: %s mounted on the host"
                         % (path, ", ".join(sorted(busy))))
    holders = glob.glob(os.path.join(sysdir, "holders", "*")) + glob.glob(
        os.path.join(sysdir, "*", "holders", "*"))
    if holders:
        raise GuestError("block device %s is in use by %s (device-mapper/LVM/RAID)"
                         % (path, ", ".join(sorted(os.path.basename(h) for h in holders))))


def _disk_part_of(name):
    """"xvda" for "xvda1": partitions of a disk Xen gave as a partition are named after the disk."""
    match = DEVICE_NAME_RE.match(name)
    return match.group(1) + match.group(2) if match else name


class _Volume:
    """One filesystem-bearing piece of a guest disk: a partition or the whole disk."""

    def __init__(self, disk_index, name, number, start, size, partition, fs):
        self.disk_index = disk_index
        self.name = name  # guest device name: xvda2, or xvda for a bare filesystem
        self.number = number  # partition number, None for a bare filesystem
        self.start = start
        self.size = size
        self.partition = partition
        self.fs = fs
        self.loop = None

    def as_dict(self):
        return {
            "name": self.name,
            "disk": self.disk_index,
            "number": self.number,
            "start": self.start,
            "size": self.size,
            "fstype": self.fs.type if self.fs else None,
            "uuid": self.fs.uuid if self.fs else "",
            "label": self.fs.label if self.fs else "",
            "partuuid": self.partition.partuuid if self.partition else "",
            "partlabel": self.partition.name if self.partition else "",
            "loop": self.loop.device if self.loop else None,
        }


# --------------------------------------------------------------------------- GuestMount


class GuestMount:
    """Context manager mounting a guest's disks; see the module docstring.

    ``disks``: raw images (or block devices) in guest order. ``devices``: the guest's names
    for them (default xvda, xvdb, ...; guest_fixup passes the spec's Xen device names); only
    their letters matter when reading fstab, so /dev/sda1 and /dev/xvda1 both mean partition 1
    of the disk called xvda. A partition-style name (xvda1: a bare filesystem Xen gave as a
    partition) names that filesystem, and partition 1 once the disk has a table.  ``/dev/vdX``
    names are read as KVM sees the disks: the i-th disk is vd<letters(i)>.  ``root``: the guest
    device holding / (e.g. "xvda2") when it cannot be found by looking (multi-boot).
    """

    def __init__(self, disks, readonly=False, devices=None, root=None, bind_host=True,
                 mount_base=None):
        if isinstance(disks, str):
            disks = [disks]
        if not disks:
            raise GuestError("GuestMount needs at least one disk")
        self.disks = [os.path.abspath(d) for d in disks]
        self.readonly = readonly
        self.devices = list(devices) if devices else [
            "xvd" + chr(ord("a") + i) for i in range(len(self.disks))]
        if len(self.devices) != len(self.disks):
            raise GuestError("%d disks but %d device names" % (len(self.disks), len(self.devices)))
        self.root_hint = root
        self.bind_host = bind_host
        self.mount_base = mount_base

        self.root = None  # host path of the guest's /
        self.layouts = []
        self.volumes = []
        self.root_volume = None
        self.whole_disk_loop_devices = []  # LoopDevice per disk, in disk order
        self.cleanup_warnings = []
        self.skipped_fstab = []  # fstab entries we did not mount, with the reason

        self._loops = []  # every LoopDevice we attached, in attach order
        self._mounts = []  # dicts, in mount order
        self._tmpdir = None
        self._record = None  # leftovers.RunRecord: lets a later run release what a SIGKILL left
        self.released = []  # what a killed earlier run left and this one released
        self._previous_handlers = {}
        self._cleaning = False
        self._pending_signal = None
        self._active = False
        self._active_setup = False  # set once setup starts changing things
        self._ran_confined = False  # run_in_chroot was used

    # ----------------------------------------------------------------- public view

    @property
    def mounts(self):
        """What is mounted where: source, target (host), guest_path, fstype, kind, volume."""
        return [dict(m) for m in self._mounts]

    @property
    def loops(self):
        """Every loop device we attached, with the volume (or disk) it maps."""
        return [dict(loop.as_dict(), volume=getattr(loop, "volume_name", None))
                for loop in self._loops]

    @property
    def whole_disk_loops(self):
        """Loop device of each whole disk (offset 0), in disk order: grub-install's target."""
        return [loop.device for loop in self.whole_disk_loop_devices]

    @property
    def root_partition(self):
        """Guest device name holding /, e.g. "xvda2" (or "xvda" for a bare filesystem)."""
        return self.root_volume.name if self.root_volume else None

    @property
    def device_map(self):
        """Guest device name -> host loop device, for whole disks and mapped partitions."""
        mapping = {}
        for index, loop in enumerate(self.whole_disk_loop_devices):
            mapping[self.devices[index]] = loop.device
        for volume in self.volumes:
            if volume.loop is not None:
                mapping[volume.name] = volume.loop.device
        return mapping

    def facts(self):
        """A JSON-friendly summary for module results."""
        return {
            "root": self.root,
            "root_partition": self.root_partition,
            "disks": self.disks,
            "devices": self.devices,
            "whole_disk_loops": self.whole_disk_loops,
            "device_map": self.device_map,
            "volumes": [v.as_dict() for v in self.volumes],
            "mounts": self.mounts,
            "skipped_fstab": list(self.skipped_fstab),
            "partition_tables": [layout.as_dict() for layout in self.layouts],
        }

    def guest_path(self, path, follow_last=True):
        """Host path of the guest's ``path``; guest symlinks never lead out of the root."""
        self._require_active()
        return resolve_guest_path(self.root, path, follow_last=follow_last)

    def run_in_chroot(self, argv, env=None, input=None, check=True, timeout=None):
        """Run ``argv`` chrooted into the guest; returns the CompletedProcess (text output).

        ``input`` is a str fed to stdin. A non-zero exit raises GuestCommandError (with
        returncode, stdout, stderr) unless check=False.

        The environment is a clean, non-interactive one (CHROOT_ENV) updated with ``env``:
        the host's variables (locale, proxies, PATH) have no business in the guest.

        The command is the guest's code, so it runs confined (sandbox.py): its own mount, PID,
        IPC and UTS namespaces, pivoted into the guest, a fresh /proc and read-only /sys, and
        without the capabilities to mount, mknod, load modules, ptrace or do raw I/O.
        Whatever it leaves running is killed when it exits.
        """
        self._require_active()
        full_env = dict(CHROOT_ENV)
        if env:
            full_env.update(env)
        try:
            command = sandbox_command(self.root, argv, proc=self._namespace_mount("/proc"),
                                      sys_fs=self._namespace_mount("/sys"))
        except SandboxUnavailable as exc:
            raise GuestError(str(exc))
        self._ran_confined = True
        try:
            proc = subprocess.run(command, env=full_env, input=input, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, universal_newlines=True,
                                  timeout=timeout, cwd="/", check=False)
        except subprocess.TimeoutExpired:
            raise GuestError("command %s did not finish within %s s in the guest chroot"
                             % (" ".join(str(a) for a in argv), timeout))
        failure = setup_failure(proc.returncode, proc.stderr)
        if failure is not None:
            # Never retried unconfined: the guest's code does not run without the sandbox.
            raise GuestError("cannot confine %s in the guest: %s" % (" ".join(str(a) for a in argv), failure))
        if check and proc.returncode != 0:
            raise GuestCommandError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def _namespace_mount(self, guest_dir):
        """Whether commands get a fresh ``guest_dir`` (/proc, /sys): bind_host asks for them
        and the guest has the directory to mount them on."""
        return self.bind_host and os.path.isdir(resolve_guest_path(self.root, guest_dir))

    def resolve_source(self, source):
        """The _Volume an fstab source names (/dev/xvda1, UUID=, LABEL=, PARTUUID=, ...)."""
        volume, _how = self._resolve_source(source)
        return volume

    def loop_for(self, source):
        """Host loop device for an fstab-style source or a guest disk name, or None."""
        for index, name in enumerate(self.devices):
            if source in (name, "/dev/" + name):
                return self.whole_disk_loop_devices[index].device
        volume = self.resolve_source(source)
        return volume.loop.device if volume is not None and volume.loop else None

    # ----------------------------------------------------------------- context manager

    def __enter__(self):
        if self._active or self._tmpdir:
            raise GuestError("this GuestMount is already in use")
        self.layouts, self.volumes, self.whole_disk_loop_devices = [], [], []
        self.cleanup_warnings, self.skipped_fstab, self.root_volume = [], [], None
        self._preflight()
        try:
            self._install_signal_handlers()
            self._setup()
        except BaseException:
            try:
                self._cleaning = True
            finally:
                self._cleanup(failing=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            # From here on a termination signal is deferred, not raised (see _on_signal).
            self._cleaning = True
        finally:
            self._cleanup(failing=exc_type is not None)
        return False

    # ----------------------------------------------------------------- preflight

    def _preflight(self):
        """Refuse disks we must not touch, before changing anything."""
        self.released = release_killed_runs([self.mount_base] if self.mount_base else MOUNT_BASES, self.disks)
        seen = set()
        for disk in self.disks:
            if not os.path.exists(disk):
                raise GuestError("disk image %s does not exist" % disk)
            real = os.path.realpath(disk)
            if real in seen:
                raise GuestError("disk image %s is listed twice" % disk)
            seen.add(real)
            attached = loops_for_file(disk)
            if attached:
                raise GuestError(
                    "disk image %s is already attached to loop device(s) %s; detach them "
                    "(losetup -d) or stop what uses them first"
                    % (disk, ", ".join("%s (offset %d)" % (a["device"], a["offset"])
                                       for a in attached)))
            if is_block_device(disk):
                _refuse_busy_block_device(disk)
            users = processes_using(disk)
            if users:
                raise GuestError(
                    "disk image %s is in use (is its VM running?): %s"
                    % (disk, "; ".join("pid %d (%s) %s" % u for u in users)))
        # Read every table up front so a corrupt one fails before any loop is attached.
        self.layouts = [read_partition_table(disk) for disk in self.disks]
        for disk, layout in zip(self.disks, self.layouts):
            if layout.scheme == "none" and layout.bare_filesystem is None:
                raise GuestError("%s has neither a partition table nor a known filesystem "
                                 "(is it a raw image?)" % disk)

    # ----------------------------------------------------------------- setup

    def _setup(self):
        self._active = True
        self._active_setup = True
        self._tmpdir = self._make_tmpdir()
        self._record = RunRecord(self._tmpdir, self.disks)
        self.root = self._tmpdir
        self._collect_volumes()
        self._attach_loops()
        self.root_volume = self._find_root()
        self._mount_volume(self.root_volume, self.root, "/", kind="root")
        self._make_private(self.root)
        self._mount_fstab()
        if self.bind_host:
            self._private_filesystems()

    def _make_tmpdir(self):
        bases = [self.mount_base] if self.mount_base else MOUNT_BASES
        last = None
        for base in bases:
            try:
                os.makedirs(base, mode=0o700, exist_ok=True)
                # Canonical, so it compares equal to the paths in /proc/self/mountinfo.
                return os.path.realpath(tempfile.mkdtemp(prefix="guest-", dir=base))
            except OSError as exc:
                last = exc
        raise GuestError("cannot create a temporary mount point: %s" % last)

    def _collect_volumes(self):
        for index, layout in enumerate(self.layouts):
            disk = self.disks[index]
            name = self.devices[index]
            if layout.scheme == "none":
                self.volumes.append(_Volume(index, name, None, 0, layout.size, None,
                                            layout.bare_filesystem))
                continue
            for part in layout.data_partitions():
                if part.end > layout.size:
                    raise GuestError(
                        "%s: partition %d ends at byte %d, beyond the image end (%d): the "
                        "image is truncated" % (disk, part.number, part.end, layout.size))
                fs = probe_filesystem(disk, part.start)
                self.volumes.append(_Volume(index, "%s%d" % (_disk_part_of(name), part.number), part.number,
                                            part.start, part.size, part, fs))

    def _attach(self, disk, offset, size, label):
        self._record.attaching(disk, offset)
        loop = attach(disk, offset=offset, sizelimit=size, read_only=self.readonly)
        loop.volume_name = label
        self._loops.append(loop)
        return loop

    def _attach_loops(self):
        for index, disk in enumerate(self.disks):
            self.whole_disk_loop_devices.append(self._attach(disk, 0, 0, self.devices[index]))
        for volume in self.volumes:
            if volume.fs is None or not volume.fs.mountable:
                continue  # swap, LVM PVs, unknown data: nothing to mount, spare the loop
            if volume.number is None:
                # A bare filesystem is the whole disk: its loop is the whole-disk loop.
                volume.loop = self.whole_disk_loop_devices[volume.disk_index]
            else:
                volume.loop = self._attach(self.disks[volume.disk_index], volume.start,
                                           volume.size, volume.name)

    # ----------------------------------------------------------------- root

    def _find_root(self):
        candidates = [v for v in self.volumes
                      if v.loop is not None and v.fs.type != "vfat"]
        if self.root_hint:
            for volume in self.volumes:
                if self.root_hint in (volume.name, "/dev/" + volume.name):
                    if volume.loop is None:
                        raise GuestError("%s (%s) cannot be mounted as the root filesystem"
                                         % (volume.name, volume.fs.type if volume.fs else "no filesystem"))
                    return volume
            raise GuestError("root device %s is not on these disks (have: %s)"
                             % (self.root_hint, ", ".join(v.name for v in self.volumes)))
        roots = []
        unmountable = []
        for volume in candidates:
            try:
                self._mount_volume(volume, self.root, "/", kind="probe", probe=True)
            except GuestError as exc:
                unmountable.append(str(exc))  # e.g. features this host kernel lacks
                continue
            try:
                if looks_like_root(self.root):
                    roots.append(volume)
            finally:
                self._umount_record(self._mounts[-1])
        if len(roots) == 1:
            return roots[0]
        if not roots:
            found = ", ".join("%s: %s" % (v.name, v.fs.type if v.fs else "unknown")
                              for v in self.volumes) or "no partitions"
            hints = []
            if any(v.fs is not None and v.fs.type == "LVM2_member" for v in self.volumes):
                hints.append("the root filesystem may be on LVM, which cannot be activated here")
            if any(v.fs is not None and v.fs.type == "crypto_LUKS" for v in self.volumes):
                hints.append("encrypted (LUKS) volumes are not supported")
            hints.extend(unmountable)
            raise GuestError("no root filesystem (one with /etc/fstab and /etc/os-release) "
                             "found on %s (%s)%s" % (", ".join(self.disks), found,
                                                     "".join("; " + h for h in hints)))
        raise GuestError("several root filesystems found (%s): choose one with the root option "
                         "(for example root: %s)"
                         % (", ".join(v.name for v in roots), roots[-1].name))

    # ----------------------------------------------------------------- mounting

    def _mount_volume(self, volume, target, guest_path, kind, probe=False):
        fstype = volume.fs.type
        device = volume.loop.device
        if probe:
            # Looking must never write: no journal replay, no superblock updates.
            attempts = [["-o", ",".join(filter(None, ["ro", NO_REPLAY_OPTIONS.get(fstype), GUEST_MOUNT_OPTIONS]))]]
        elif self.readonly:
            attempts = [["-o", "ro," + GUEST_MOUNT_OPTIONS]]
            if fstype in NO_REPLAY_OPTIONS:
                # A dirty journal cannot be replayed on a read-only loop device.
                attempts.append(["-o", "ro,%s,%s" % (NO_REPLAY_OPTIONS[fstype], GUEST_MOUNT_OPTIONS)])
        else:
            attempts = [["-o", GUEST_MOUNT_OPTIONS]]
        errors = []
        for options in attempts:
            # Explicit type first; if the kernel names it differently (ext2 handled by
            # ext4), let mount probe.
            for type_args in (["-t", fstype], []):
                proc = _run(["mount"] + type_args + options + [device, target])
                if proc.returncode == 0:
                    self._mounts.append({
                        "source": device, "target": target, "guest_path": guest_path,
                        "fstype": fstype, "kind": kind, "volume": volume.name,
                        "options": options[1] if options else "rw",
                    })
                    return
                errors.append(proc.stderr.strip())
        raise GuestError("cannot mount %s (%s, %s) on %s: %s"
                         % (volume.name, fstype, device, guest_path, errors[-1]))

    def _make_private(self, target):
        # Keep our mounts from propagating to other mount namespaces (and back).
        _run(["mount", "--make-private", target])

    def _resolve_source(self, source):
        """(volume, how) for an fstab source; (None, reason) when it is not on our disks."""
        source = source.strip().strip('"')
        key = None
        for prefix, attr in (("UUID=", "uuid"), ("LABEL=", "label"), ("PARTUUID=", "partuuid"),
                             ("PARTLABEL=", "partlabel"), ("/dev/disk/by-uuid/", "uuid"),
                             ("/dev/disk/by-label/", "label"),
                             ("/dev/disk/by-partuuid/", "partuuid"),
                             ("/dev/disk/by-partlabel/", "partlabel")):
            if source.startswith(prefix):
                key = (attr, source[len(prefix):].strip('"'))
                break
        if key is not None:
            attr, wanted = key
            if not wanted:
                return None, "empty %s" % attr
            fold = attr in ("uuid", "partuuid")
            matches = []
            for volume in self.volumes:
                have = volume.as_dict()[attr]
                if have and (have.lower() == wanted.lower() if fold else have == wanted):
                    matches.append(volume)
            if len(matches) > 1:
                raise GuestError("%s matches several filesystems (%s); cloned disks?"
                                 % (source, ", ".join(v.name for v in matches)))
            return (matches[0], attr) if matches else (None, "no filesystem with that %s" % attr)
        match = DEVICE_NAME_RE.match(source)
        if not match:
            return None, "not a block device on these disks"
        letters, number = match.group(2), match.group(3)
        kvm_name = match.group(1) == "vd" and "vd" not in (_disk_part_of(n)[:2] for n in self.devices)
        for index, name in enumerate(self.devices):
            dev = DEVICE_NAME_RE.match(name)
            if kvm_name and dev:
                # After the move the guest names its disks in KVM order: vda, vdb, ...
                dev = DEVICE_NAME_RE.match("vd" + disk_letters(index))
            if not dev or dev.group(2) != letters:
                continue
            layout = self.layouts[index]
            if layout.scheme == "none":
                # A bare filesystem may have been handed to the guest as "xvda" or, in old
                # Xen configs, as a partition-named device ("xvda1").
                if number in ("", dev.group(3)) or not dev.group(3):
                    return self._volume_of(index, None), "device name"
                continue
            if not number:
                return None, "whole disk %s holds a partition table" % name
            volume = self._volume_of(index, int(number))
            if volume is not None:
                return volume, "device name"
        return None, "no such disk or partition"

    def _volume_of(self, disk_index, number):
        for volume in self.volumes:
            if volume.disk_index == disk_index and volume.number == number:
                return volume
        return None

    def _mount_fstab(self):
        fstab_path = resolve_guest_path(self.root, "/etc/fstab")
        with open(fstab_path, errors="replace") as fobj:
            entries = parse_fstab(fobj.read())
        # Parents before children: /boot before /boot/efi.
        entries.sort(key=lambda e: len([p for p in e["mountpoint"].split("/") if p]))
        mounted_volumes = {self.root_volume.name}
        for entry in entries:
            mountpoint = os.path.normpath(entry["mountpoint"])
            if entry["fstype"] == "swap" or mountpoint in ("none", "swap"):
                continue
            if not mountpoint.startswith("/"):
                self._skip(entry, "mount point is not an absolute path")
                continue
            volume, how = self._resolve_source(entry["source"])
            if mountpoint == "/":
                if volume is not None and volume is not self.root_volume:
                    self.cleanup_warnings.append(
                        "fstab names %s as / but the root found is %s"
                        % (entry["source"], self.root_volume.name))
                continue
            if volume is None:
                looks_local = entry["source"].startswith(("/dev/", "UUID=", "LABEL=", "PARTUUID=",
                                                          "PARTLABEL="))
                if looks_local and mountpoint in ESSENTIAL_MOUNTPOINTS:
                    raise GuestError("the guest's %s (%s in fstab) is not on the given disks: %s"
                                     % (mountpoint, entry["source"], how))
                self._skip(entry, how)
                continue
            if volume.loop is None:
                self._skip(entry, "%s holds %s, not a mountable filesystem"
                           % (volume.name, volume.fs.type if volume.fs else "no filesystem"))
                continue
            if volume.name in mounted_volumes:
                self._skip(entry, "%s is already mounted (subvolumes/bind mounts are not "
                                  "supported)" % volume.name)
                continue
            target = resolve_guest_path(self.root, mountpoint)
            if not os.path.lexists(target) and not self.readonly:
                # systemd creates missing mount points at boot too.
                os.makedirs(target, mode=0o755)
            if not os.path.isdir(target):
                if mountpoint in ESSENTIAL_MOUNTPOINTS:
                    raise GuestError("the guest has no directory %s to mount %s on"
                                     % (mountpoint, volume.name))
                self._skip(entry, "mount point directory is missing in the guest")
                continue
            try:
                self._mount_volume(volume, target, mountpoint, kind="fstab")
            except GuestError as exc:
                # e.g. a host kernel without vfat for /boot/efi: the fixups that need it
                # can see it in skipped_fstab; the ones that need /boot or /usr cannot run.
                if mountpoint in ESSENTIAL_MOUNTPOINTS:
                    raise
                self._skip(entry, str(exc))
                continue
            mounted_volumes.add(volume.name)

    def _skip(self, entry, reason):
        self.skipped_fstab.append({"source": entry["source"], "mountpoint": entry["mountpoint"],
                                   "reason": reason})

    def _private_dev_and_run(self):
        """A tmpfs /dev holding only the basic nodes and our loop devices, a devpts of its own,
        and an empty tmpfs /run."""
        dev = resolve_guest_path(self.root, "/dev")
        run = resolve_guest_path(self.root, "/run")
        for target, fstype, options in ((dev, "tmpfs", "mode=0755,size=4m,nosuid"),
                                        (run, "tmpfs", "mode=0755,size=64m,nosuid,nodev")):
            if not os.path.isdir(target):
                if self.readonly:
                    continue
                os.makedirs(target, mode=0o755)
            self._mount_private(fstype, "xen2kvm-" + os.path.basename(target), target, options)
            if target == dev:
                self._populate_dev(dev)

    def _mount_private(self, fstype, source, target, options):
        proc = _run(["mount", "-t", fstype, "-o", options, source, target])
        if proc.returncode != 0:
            raise GuestError("cannot mount a private %s on %s: %s" % (fstype, target, proc.stderr.strip()))
        self._mounts.append({"source": source, "target": target, "guest_path": target[len(self.root):] or "/",
                             "fstype": fstype, "kind": "private", "volume": None, "options": options})

    def _populate_dev(self, dev):
        for name in DEV_NODES:
            st = os.stat("/dev/" + name)
            node = os.path.join(dev, name)
            os.mknod(node, st.st_mode, st.st_rdev)
            os.chmod(node, stat.S_IMODE(st.st_mode))  # mknod honours the umask; apt's _apt user needs 0666
        for loop in self._loops:
            st = os.stat(loop.device)
            os.mknod(os.path.join(dev, os.path.basename(loop.device)), st.st_mode, st.st_rdev)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("ptmx", "pts/ptmx")):
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "pts"))
        self._mount_private("devpts", "devpts", os.path.join(dev, "pts"), "newinstance,ptmxmode=0666,mode=0620,nosuid,noexec")
        os.mkdir(os.path.join(dev, "shm"))
        self._mount_private("tmpfs", "xen2kvm-shm", os.path.join(dev, "shm"), "mode=1777,size=64m,nosuid,nodev")

    def _private_filesystems(self):
        """The private /dev and /run, and the directories run_in_chroot mounts /proc and /sys
        on.  Nothing of the host is bound: see NAMESPACE_MOUNTS."""
        self._private_dev_and_run()
        for guest_dir in NAMESPACE_MOUNTS:
            target = resolve_guest_path(self.root, guest_dir)
            if os.path.isdir(target):
                continue
            if self.readonly:
                self.cleanup_warnings.append("guest has no %s; commands run without it" % guest_dir)
                continue
            os.makedirs(target, mode=0o755)

    # ----------------------------------------------------------------- signals

    def _install_signal_handlers(self):
        self._previous_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread set handlers
        for name in CLEANUP_SIGNALS:
            signum = getattr(signal, name)
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame):
        if self._cleaning:
            # Do not abort a cleanup half-way; re-deliver once it is done.
            self._pending_signal = signum
            return
        raise GuestInterrupted("interrupted by %s while the guest was mounted"
                               % signal.Signals(signum).name)

    def _restore_signal_handlers(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    # ----------------------------------------------------------------- cleanup

    def _require_active(self):
        if not self._active or self.root is None:
            raise GuestError("the guest is not mounted (use GuestMount as a context manager)")

    def _cleanup(self, failing=False):
        self._cleaning = True
        self._active = False
        errors = []
        try:
            if self.root:
                self._kill_chroot_processes()
            for target in self._mounts_to_undo():
                try:
                    self._umount(target)
                except Exception as exc:  # keep going: every mount and loop gets its chance
                    errors.append(str(exc))
            self._mounts = []
            for loop in reversed(self._loops + self._unrecorded_loops()):
                try:
                    # A confined command's mount namespace may let go of the guest a moment
                    # after its processes are gone.
                    if not loop.detach() and not (self._ran_confined and wait_until_detached(loop.device, 3.0)):
                        self.cleanup_warnings.append(
                            "detaching %s was deferred by the kernel until its last user "
                            "closes it" % loop.device)
                except Exception as exc:
                    errors.append(str(exc))
            self._loops = []
            self._active_setup = False
            if self._tmpdir:
                try:
                    still = [p for p in host_mount_points()
                             if p == self._tmpdir or p.startswith(self._tmpdir + "/")]
                    if still:
                        errors.append("still mounted, left %s in place: %s"
                                      % (self._tmpdir, ", ".join(still)))
                    else:
                        # rmdir, never rmtree: if anything were still mounted, rmtree
                        # would delete the guest's files.
                        os.rmdir(self._tmpdir)
                        self._tmpdir = None
                        if self._record is not None:
                            self._record.remove()
                except OSError as exc:
                    errors.append("cannot remove %s: %s" % (self._tmpdir, exc))
        finally:
            self._cleaning = False
            self._restore_signal_handlers()
            pending, self._pending_signal = self._pending_signal, None
            if pending is not None:
                os.kill(os.getpid(), pending)
        if errors:
            self.cleanup_warnings.extend(errors)
            if not failing:
                raise GuestError("cleanup incomplete: " + "; ".join(errors))

    def _mounts_to_undo(self):
        """Every mount at or below our temp dir, innermost (most recent) first.

        Taken from the kernel's table rather than our records: a signal can land between a
        successful mount(8) and our bookkeeping, and a maintainer script in the chroot may
        have mounted something (binfmt_misc, a tmpfs) on top of ours. The temp dir is ours
        alone, so everything below it is ours to unmount.
        """
        recorded = [m["target"] for m in reversed(self._mounts)]
        if not self._tmpdir:
            return recorded
        live = [p for p in host_mount_points()
                if p == self._tmpdir or p.startswith(self._tmpdir + "/")]
        return list(reversed(live)) + [t for t in recorded if t not in live]

    def _unrecorded_loops(self):
        """Loop devices backed by our disks that we have no record of (same race as above).

        Preflight refused disks that were attached to any loop device, so every one found
        now was attached by us.
        """
        if not self._active_setup:
            return []
        known = set(loop.device for loop in self._loops)
        stray = []
        for disk in self.disks:
            for status in loops_for_file(disk):
                if status["device"] not in known:
                    stray.append(LoopDevice(device=status["device"], backing_file=disk,
                                            offset=status["offset"]))
        return stray

    def _kill_chroot_processes(self):
        # Daemons started by maintainer scripts in the chroot would keep mounts busy.
        pids = processes_in_guest(os.path.realpath(self.root), [loop.device for loop in self._loops])
        if not pids:
            return
        self.cleanup_warnings.append("killed processes left running in the guest chroot: %s"
                                     % ", ".join(str(p) for p in pids))
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists("/proc/%d" % p)]
                if not pids:
                    return
                time.sleep(0.05)

    def _umount(self, target):
        last = ""
        for attempt in range(UMOUNT_ATTEMPTS):
            if target not in host_mount_points():
                return
            proc = _run(["umount", target])
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            time.sleep(0.2 * (attempt + 1))  # a process may just be exiting
        if target in host_mount_points():
            proc = _run(["umount", "--lazy", target])
            if proc.returncode != 0:
                raise GuestError("cannot unmount %s: %s" % (target, proc.stderr.strip()))
            self.cleanup_warnings.append(
                "%s was busy (%s) and was unmounted lazily; its loop device frees itself "
                "once the last user is gone" % (target, last))

    def _umount_record(self, record):
        self._umount(record["target"])
        self._mounts.remove(record)
