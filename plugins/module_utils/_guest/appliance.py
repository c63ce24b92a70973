# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest opened in the libguestfs appliance: the default engine of guest_fixup.

    with ApplianceSession(["/images/vm-disk0.raw"], readonly=False, network=True) as guest:
        facts = inspect_guest(guest.tree)
        guest.make_writable()
        guest.run(["update-initramfs", "-u", "-k", "all"])

libguestfs starts a small VM with its own kernel (LVM, btrfs, vfat, md, LUKS), finds the guest's
root with its inspection, mounts the guest's filesystems there as the guest's fstab says, and
runs commands chrooted in the guest inside that VM.  Nothing of the guest is mounted by the host
kernel and none of its code (maintainer scripts, initramfs hooks, /etc/grub.d) runs on the host.

The filesystems are mounted read-only first (no journal replay), so inspection and the refusals
happen before anything changes; ``make_writable`` remounts them read-write.  The appliance is
shut down on success, on errors and on SIGTERM/SIGHUP; libguestfs' recovery process kills it if
this process dies any other way.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shlex
import signal
from contextlib import contextmanager

from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import GuestfsTree
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.preflight import kvm_usable

try:
    import guestfs
    HAS_GUESTFS = True
    GUESTFS_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the host
    guestfs = None
    HAS_GUESTFS = False
    GUESTFS_IMPORT_ERROR = exc

# Filesystems whose journal a read-only mount would still replay unless told not to.
READ_ONLY_OPTIONS = {"ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,norecovery"}
ESSENTIAL_MOUNTPOINTS = ("/", "/boot", "/usr")
# Scratch space for command input/output: a tmpfs over the guest's /tmp in the appliance, so
# nothing of ours lands on the guest's disk and read-only guests can run read-only commands.
SCRATCH = "/tmp/.xen2kvm-run"
CLEANUP_SIGNALS = ("SIGTERM", "SIGHUP")
APPLIANCE_MEMORY_MIB = 1024  # update-initramfs and apt in the appliance need more than the default
APPLIANCE_MAX_CPUS = 4
# Where the appliance's udev links each drive by its label (libguestfs' add_drive_opts label=).
LABELLED_DRIVES = "/dev/disk/guestfs/"


class GuestInterrupted(GuestError):
    pass


class CommandResult:
    def __init__(self, argv, returncode, stdout, stderr):
        self.args = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class GuestCommandFailed(GuestError):
    def __init__(self, argv, result):
        self.argv = argv
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        GuestError.__init__(self, "%s failed in the guest (exit %d): %s"
                            % (" ".join(argv), result.returncode, (result.stderr or result.stdout).strip()[-2000:]))


class _Filesystem:
    def __init__(self, fs_type, uuid):
        self.type = fs_type
        self.uuid = uuid


class _Volume:
    """A partition or a whole-disk filesystem, named as the guest knew it under Xen."""

    def __init__(self, disk_index, name, number, fs, device):
        self.disk_index = disk_index
        self.name = name
        self.number = number
        self.fs = fs
        self.device = device  # the appliance's name (/dev/sda1)


def appliance_settings():
    """libguestfs backend and settings for this host: direct, and TCG where KVM does not work."""
    backend = os.environ.get("LIBGUESTFS_BACKEND") or "direct"
    settings = [s for s in (os.environ.get("LIBGUESTFS_BACKEND_SETTINGS") or "").split(":") if s]
    if not kvm_usable() and "force_tcg" not in settings:
        settings.append("force_tcg")
    return backend, settings


def appliance_cpus():
    """vCPUs for the appliance: XEN2KVM_APPLIANCE_CPUS, else 1 (measured: more vCPUs under TCG on a
    busy 2-core host slowed the appliance's boot down instead of speeding it up)."""
    try:
        return max(1, min(APPLIANCE_MAX_CPUS, int(os.environ.get("XEN2KVM_APPLIANCE_CPUS", "1"))))
    except ValueError:
        return 1


def drive_label(index):
    """The label of the index-th disk.  The API's /dev/sdX names follow the order the disks were
    added and libguestfs translates them, but the appliance's kernel may enumerate the drives in
    another order (the appliance's own disk first): /dev/sda in a command's arguments is then
    another disk.  Commands name a disk by its label link instead."""
    return "disk" + disk_letters(index)


class ApplianceSession:
    """One launched libguestfs handle with the guest's filesystems mounted."""

    engine = "guestfs"

    def __init__(self, disks, readonly=True, devices=None, root=None, network=False):
        self.disks = list(disks)
        self.readonly = readonly
        self.network = network and not readonly
        self.xen_names = list(devices) if devices else ["xvd" + disk_letters(i) for i in range(len(disks))]
        self.root_hint = root
        self.g = None
        self.tree = None
        self.root_device = None
        self.mountpoints = {}      # guest mount point -> appliance mountable
        self.volumes = []
        self.warnings = []
        self.writable = False
        self.writable_now = False
        self.encrypted = []
        self._previous_handlers = {}
        self._runs = 0

    # -- lifecycle
    def __enter__(self):
        self._install_signal_handlers()
        try:
            self._launch()
            self._find_volumes()
            self._find_root()
            self._mount(writable=False)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failing=exc_type is not None)
        return False

    def close(self, failing=False):
        handle, self.g = self.g, None
        try:
            if handle is not None:
                try:
                    handle.umount_all()
                    handle.shutdown()
                except RuntimeError as exc:
                    if not failing:
                        raise GuestError("the guest could not be closed cleanly: %s" % exc)
                finally:
                    handle.close()
        finally:
            self._restore_signal_handlers()

    def _launch(self):
        if not HAS_GUESTFS:
            raise GuestError("python3-guestfs is not installed on this host (Debian/Ubuntu: apt-get install "
                             "python3-guestfs): it opens the guest in the libguestfs appliance (%s)"
                             % GUESTFS_IMPORT_ERROR)
        handle = guestfs.GuestFS(python_return_dict=True)
        backend, settings = appliance_settings()
        handle.set_backend(backend)
        if settings:
            handle.set_backend_settings(settings)
        handle.set_network(self.network)
        if handle.get_memsize() < APPLIANCE_MEMORY_MIB:
            handle.set_memsize(APPLIANCE_MEMORY_MIB)
        # apt and update-initramfs in the appliance use more than one CPU (TCG too is multi-threaded)
        handle.set_smp(appliance_cpus())
        for index, disk in enumerate(self.disks):
            handle.add_drive_opts(disk, format="raw", readonly=self.readonly, label=drive_label(index))
        self.g = handle
        try:
            handle.launch()
        except RuntimeError as exc:
            raise GuestError("the libguestfs appliance did not start (backend %s%s): %s; libguestfs-test-tool "
                             "tells why" % (backend, ", " + ",".join(settings) if settings else "", exc))
        self.tree = GuestfsTree(handle)

    # -- what is on the disks
    def _disk_index(self, device):
        devices = self.g.list_devices()
        return devices.index(device) if device in devices else None

    def _find_volumes(self):
        filesystems = self.g.list_filesystems()
        # list_filesystems leaves out what it cannot mount, a LUKS container among them
        self.encrypted = sorted(dev for dev in self.g.list_partitions() + self.g.list_devices()
                                if self._vfs_type(dev) == "crypto_LUKS")
        for device in self.g.list_devices():
            index = self._disk_index(device)
            parts = [p for p in self.g.list_partitions() if self.g.part_to_dev(p) == device]
            if not parts and device in filesystems:
                self.volumes.append(self._volume(index, None, device, filesystems))
            for part in parts:
                self.volumes.append(self._volume(index, self.g.part_to_partnum(part), part, filesystems))

    def _volume(self, index, number, device, filesystems):
        kind = filesystems.get(device)
        fs = None
        if kind and kind != "unknown":
            try:
                uuid = self.g.vfs_uuid(device)
            except RuntimeError:
                uuid = ""
            fs = _Filesystem(kind, uuid)
        # xvda2 for partition 2 of the disk Xen called xvda (or xvda1, a bare filesystem given as a partition)
        name = self.xen_names[index] if number is None else re.sub(r"\d+$", "", self.xen_names[index]) + str(number)
        return _Volume(index, name, number, fs, device)

    @property
    def root_volume(self):
        """The partition (or bare disk) holding /; None when / is on an LV."""
        return next((v for v in self.volumes if v.device == self._root_block_device()), None)

    def _root_block_device(self):
        device = self.root_device or ""
        match = re.match(r"^btrfsvol:(/dev/[^/]+)/", device)  # a btrfs subvolume: btrfsvol:/dev/sda1/@rootfs
        return match.group(1) if match else device

    @property
    def root_partition(self):
        """The guest's name for the device holding / ("xvda2"), or the appliance's LV name."""
        volume = self.root_volume
        return volume.name if volume is not None else self.root_device

    def _find_root(self):
        roots = self.g.inspect_os()
        if not roots:
            if self.encrypted:
                raise GuestError("the guest's root filesystem is not readable: %s is LUKS-encrypted. An encrypted "
                                 "root needs its passphrase at every boot and cannot be converted unattended; "
                                 "decrypt it first. Nothing was changed" % ", ".join(self.encrypted))
            raise GuestError("no operating system found on %s (libguestfs inspection found no root filesystem); "
                             "nothing was changed" % ", ".join(self.disks))
        if len(roots) > 1:
            wanted = self._hinted_root(roots)
            if wanted is None:
                raise GuestError("several operating systems found (%s); say which root to use with the root "
                                 "option (the guest's name for its device, such as xvda2)" % ", ".join(roots))
            roots = [wanted]
        self.root_device = roots[0]
        self.mountpoints = self.g.inspect_get_mountpoints(self.root_device)

    def _hinted_root(self, roots):
        if not self.root_hint:
            return None
        name = self.root_hint.rsplit("/", 1)[-1]
        for volume in self.volumes:
            if volume.name == name and volume.device in roots:
                return volume.device
        return None

    # -- mounting
    def _mount(self, writable):
        self.writable_now = writable
        for mountpoint in sorted(self.mountpoints, key=lambda m: (m.count("/"), m) if m != "/" else (0, "")):
            mountable = self.mountpoints[mountpoint]
            try:
                if mountpoint != "/" and not self.g.is_dir(mountpoint, followsymlinks=False):
                    raise RuntimeError("no directory %s in the guest" % mountpoint)
                if writable:
                    self.g.mount(mountable, mountpoint)
                else:
                    self.g.mount_options(READ_ONLY_OPTIONS.get(self._vfs_type(mountable), "ro"),
                                         mountable, mountpoint)
            except RuntimeError as exc:
                if mountpoint in ESSENTIAL_MOUNTPOINTS:
                    raise GuestError("the guest's %s (%s) cannot be mounted: %s" % (mountpoint, mountable, exc))
                self.warnings.append("%s (%s) was not mounted: %s" % (mountpoint, mountable, exc))
        self._mount_scratch()
        self.writable = writable

    def _vfs_type(self, mountable):
        try:
            return self.g.vfs_type(mountable)
        except RuntimeError:
            return ""

    def _mount_scratch(self):
        # Runs the guest's own mount binary: that is fine, it runs in the appliance.  With the
        # network on, libguestfs swaps the guest's resolv.conf around every command, which a
        # read-only guest refuses: commands wait for make_writable() then.
        if self.network and not self.writable_now:
            return
        if self.g.is_dir("/tmp", followsymlinks=False):
            self.g.sh("mount -t tmpfs -o mode=1777,size=512m xen2kvm-scratch /tmp")
            self.g.mkdir_p(SCRATCH)
            self.g.chmod(0o700, SCRATCH)

    def make_writable(self):
        """Remount the guest's filesystems read-write, for the fixups."""
        if self.readonly:
            raise GuestError("the guest was opened read-only")
        if self.writable:
            return
        self.g.umount_all()
        self._mount(writable=True)

    # -- commands in the guest
    def run(self, argv, env=None, input=None, check=True, timeout=None):
        """Run ``argv`` chrooted in the guest, inside the appliance."""
        if self.g is None:
            raise GuestError("the guest is not open")
        if not self.g.is_dir(SCRATCH):
            raise GuestError("the guest has no /tmp; commands cannot run in it")
        self._runs += 1
        base = "%s/%d" % (SCRATCH, self._runs)
        stdin = "/dev/null"
        if input is not None:
            self.g.write(base + ".in", input.encode("utf-8") if not isinstance(input, bytes) else input)
            stdin = base + ".in"
        exports = "".join("export %s=%s; " % (key, shlex.quote(str(value))) for key, value in sorted((env or {}).items()))
        command = " ".join(shlex.quote(a) for a in argv)
        if timeout:
            # the guest's coreutils timeout: exit 124 when it had to stop the command
            command = "timeout --kill-after=10 %d %s" % (int(timeout), command)
        script = ("cd / && export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "
                  "DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true; %s(%s) <%s >%s.out 2>%s.err; "
                  "echo $? >%s.rc" % (exports, command, stdin, base, base, base))
        try:
            self.g.sh(script)
            result = CommandResult(argv, int(self.g.read_file(base + ".rc").strip() or 1),
                                   self.g.read_file(base + ".out").decode("utf-8", "replace"),
                                   self.g.read_file(base + ".err").decode("utf-8", "replace"))
        except RuntimeError as exc:
            raise GuestError("%s could not run in the guest: %s" % (argv[0], exc))
        finally:
            self.g.rm_f(base + ".in")
            self.g.rm_f(base + ".out")
            self.g.rm_f(base + ".err")
            self.g.rm_f(base + ".rc")
        if timeout and result.returncode in (124, 137):
            raise GuestError("%s did not finish within %d s in the guest" % (argv[0], int(timeout)))
        if check and result.returncode != 0:
            raise GuestCommandFailed(argv, result)
        return result

    # -- what the boot loader fixup needs
    def flush_disks(self):
        """Write out and drop the appliance's cached view of the disks, so a tool that reads the
        whole disk (grub-install) sees what the filesystems just wrote."""
        self.g.sync()
        for device in self.g.list_devices():
            self.g.blockdev_flushbufs(device)
        self.g.drop_caches(3)

    @property
    def boot_disk(self):
        """The first disk as a command in the appliance must name it (see drive_label)."""
        return LABELLED_DRIVES + drive_label(0)

    def grub_core_modules(self, mapping):
        return None  # grub-install sees the real disk here and picks them itself

    @contextmanager
    def grub_mkconfig_view(self, mapping):
        yield

    # -- signals
    def _install_signal_handlers(self):
        for name in CLEANUP_SIGNALS:
            signum = getattr(signal, name)
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _on_signal(self, signum, _frame):
        raise GuestInterrupted("interrupted by signal %d; the guest was closed" % signum)

    def _restore_signal_handlers(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
