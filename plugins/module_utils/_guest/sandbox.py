# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a guest's own code in a mounted guest tree without handing it the host.

The ``chroot`` engine runs the guest's maintainer scripts, initramfs hooks and /etc/grub.d as
root.  A plain chroot with the host's /proc bound in lets that code write through
``/proc/<pid>/root`` into the host, make device nodes of the host's disks, load modules or
write /proc/sys/kernel/core_pattern.  Here every command runs instead:

* in new mount, PID, IPC and UTS namespaces (``unshare``): it sees only its own processes, and
  when it exits the kernel kills whatever it left running;
* with a fresh /proc of that PID namespace (its writable knobs -- /proc/sys, sysrq-trigger,
  ... -- bound read-only, kcore and the like hidden) and a fresh read-only sysfs;
* after ``pivot_root`` into the guest with the old root detached: no path, fd or chroot
  escape leads back to the host's filesystems, which a chroot would still hold;
* with DROPPED_CAPABILITIES gone from its bounding, permitted, effective, inheritable and
  ambient sets, so that neither it nor anything it executes can mount, mknod, load modules,
  ptrace, touch raw I/O, reboot or reconfigure the network.

The setup runs as the namespace's pid 1 in the host's python (INIT_SOURCE), which then
execs the guest command: no process with the host's root stays visible to the guest.
Networking stays the host's: apt in the guest downloads from the guest's or the given mirror.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import shutil
import sys

# Capability numbers from linux/capability.h; names as in capabilities(7).
DROPPED_CAPABILITIES = {
    "CAP_DAC_READ_SEARCH": 2,   # open_by_handle_at: reach host files by handle ("shocker")
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# Below the fresh /proc: host-wide knobs a root process may write without any capability
# (core_pattern and modprobe in /proc/sys run programs on the host; sysrq-trigger reboots it).
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "scsi", "driver", "asound")
# Read as root they leak host memory and kernel state.
PROC_HIDDEN = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "kallsyms")

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000

# Exit status of the namespace's setup when it fails, before the guest command runs.
SETUP_FAILED = 125

# pid 1 of the new namespaces: mount /proc and /sys, pivot into the guest, drop capabilities,
# exec the guest command.  Everything it needs is imported before the host's root goes away.
INIT_SOURCE = r'''
import ctypes, errno, json, os, subprocess, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 2, 24, 47, 4

def fail(what, err=None):
    err = ctypes.get_errno() if err is None else err
    sys.stderr.write("xen2kvm sandbox: %s: %s\n" % (what, os.strerror(err)))
    sys.stderr.flush()
    os._exit(cfg["setup_failed"])

def mount(source, target, fstype, flags):
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags, None):
        fail("mount %s on %s" % (fstype or source, target))

def bind_read_only(path):
    mount(path, path, None, BIND | REC)
    mount(None, path, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV | NOEXEC)

# The mount namespace is made here, not by unshare(1): unshare stays outside it, so a run
# killed with SIGKILL leaves no host-rooted process pinning the guest's filesystems.
if libc.unshare(cfg["clone_flags"]):
    fail("new mount, IPC and UTS namespaces")
root = cfg["root"]
mount(None, "/", None, REC | PRIVATE)
if cfg["proc"]:
    proc = root + "/proc"
    mount("proc", proc, "proc", NOSUID | NODEV | NOEXEC)
    for name in cfg["proc_read_only"]:
        if os.path.lexists(proc + "/" + name):
            bind_read_only(proc + "/" + name)
    for name in cfg["proc_hidden"]:
        if os.path.isfile(proc + "/" + name):
            mount("/dev/null", proc + "/" + name, None, BIND)
if cfg["sys"]:
    mount("sysfs", root + "/sys", "sysfs", RDONLY | NOSUID | NODEV | NOEXEC)

old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os.chdir(root)
if subprocess.call([cfg["pivot_root"], ".", "."]) != 0:
    fail("pivot_root into %s" % root, errno.EPERM)
os.fchdir(old_root)
os.close(old_root)
if libc.umount2(b".", MNT_DETACH):
    fail("detaching the host's root")
os.chdir("/")

for cap in cfg["drop"]:
    if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) and ctypes.get_errno() != errno.EINVAL:
        fail("dropping capability %d" % cap)
libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
if libc.capget(header, data):
    fail("reading capabilities")
for cap in cfg["drop"]:
    for field in range(3):
        data[3 * (cap // 32) + field] &= ~(1 << (cap % 32)) & 0xffffffff
if libc.capset(header, data):
    fail("dropping capabilities")

argv = cfg["argv"]
try:
    os.execvpe(argv[0], argv, os.environ)
except OSError as exc:
    sys.stderr.write("xen2kvm sandbox: cannot run %s in the guest: %s\n" % (argv[0], exc.strerror))
    os._exit(127 if exc.errno == errno.ENOENT else 126)
'''


class SandboxUnavailable(RuntimeError):
    """The host lacks what the sandbox needs (unshare, pivot_root)."""


def _host_tool(name):
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        raise SandboxUnavailable("%s (util-linux) is missing on this host: guest code cannot be run "
                                 "isolated from the host" % name)
    return path


def sandbox_command(root, argv, proc=True, sys_fs=True, python=None):
    """The host command that runs ``argv`` in the guest tree mounted at ``root``.

    ``root`` must be a mount point (GuestMount's root volume).  ``proc``/``sys_fs``: mount a
    fresh /proc and a read-only /sys in the guest (their directories must exist).
    """
    config = {
        "root": root,
        "argv": [str(a) for a in argv],
        "proc": bool(proc),
        "sys": bool(sys_fs),
        "proc_read_only": list(PROC_READ_ONLY),
        "proc_hidden": list(PROC_HIDDEN),
        "drop": sorted(DROPPED_CAPABILITIES.values()),
        "pivot_root": _host_tool("pivot_root"),
        "setup_failed": SETUP_FAILED,
        "clone_flags": CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS,
    }
    # unshare(1) for the PID namespace (it must fork); the rest is INIT_SOURCE's.
    # -I -S: nothing from the environment or site-packages gets into pid 1.
    return [_host_tool("unshare"), "--pid", "--fork", "--kill-child", "--",
            python or sys.executable or "python3", "-I", "-S", "-c", INIT_SOURCE, json.dumps(config)]


def setup_failure(returncode, stderr):
    """The sandbox's own complaint when its setup (not the guest command) failed, else None."""
    if returncode != SETUP_FAILED:
        return None
    lines = [line for line in (stderr or "").splitlines() if line.startswith("xen2kvm sandbox: ")]
    return lines[-1] if lines else None
