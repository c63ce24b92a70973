"""A test guest that attacks the host doing its fixup: probes in every place guest_fixup runs
the guest's own code.

    from hostile_guest import plant_probes, read_probe_log, HostTargets
    guest = guest_factory.build_variant("deb12-pv", tmp_path)
    targets = HostTargets.of_this_host(token)
    plant_probes(guest, targets)          # debugfs -w on the root filesystem: no mount
    ... guest_fixup ...
    log = read_probe_log(guest)           # debugfs again

The probes (PROBES) all call one program, /usr/local/sbin/xen2kvm-probe, with their name:

* ``initramfs-hook``: /etc/initramfs-tools/hooks/zz-xen2kvm-probe (update-initramfs);
* ``apt-hook``: ``DPkg::Pre-Invoke`` in /etc/apt/apt.conf.d (every dpkg run of apt-get);
* ``dpkg-trigger``: a file trigger on /usr/share/doc for initramfs-tools (in
  /var/lib/dpkg/triggers/File), whose postinst -- a maintainer script -- starts with the probe:
  any package apt installs activates it;
* ``grub-d``: /etc/grub.d/99_xen2kvm_probe (grub-mkconfig, update-grub).

Each run of the program, as root, tries what a compromised guest would:

* write ``xen2kvm-probe-<token>-<name>`` into /tmp and /root through ``/proc/<pid>/root`` of
  every process it can see (the host's, when the host's /proc is bound in);
* make block device nodes with the host's root disk's and loop0's major:minor, in /dev and in
  /tmp, and open them for writing (no byte is written);
* raise the host root disk's ``queue/read_ahead_kb`` in sysfs by 4 (harmless, detectable; the
  test puts it back when a run got through);

and appends what it did to /var/log/xen2kvm-probe.log in the guest, one line per fact, each
line starting with the token and the probe's name: ``ran``, ``wrote <path>``, ``mknod <node>``,
``opened-rw <node>``, ``sys-written <path>``.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guest_factory import _debugfs, run

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import host_mount_points

PROBE_LOG = "/var/log/xen2kvm-probe.log"
PROBE_PROGRAM = "/usr/local/sbin/xen2kvm-probe"
MARKER_PREFIX = "xen2kvm-probe-"
PROBES = ("initramfs-hook", "apt-hook", "dpkg-trigger", "grub-d")
READ_AHEAD_STEP = 4

INITRAMFS_HOOK = "/etc/initramfs-tools/hooks/zz-xen2kvm-probe"
APT_HOOK = "/etc/apt/apt.conf.d/00xen2kvm-probe"
GRUB_D_SCRIPT = "/etc/grub.d/99_xen2kvm_probe"
TRIGGER_POSTINST = "/var/lib/dpkg/info/initramfs-tools.postinst"
FILE_TRIGGERS = "/var/lib/dpkg/triggers/File"
TRIGGER_PATH = "/usr/share/doc"


@dataclass
class HostTargets:
    """What on this host the probes aim at, fixed when they are planted."""
    token: str
    disk_devices: list          # [(major, minor)]: the host's root disk, loop0
    read_ahead: str             # sysfs path of the root disk's read_ahead_kb

    @classmethod
    def of_this_host(cls, token: str) -> "HostTargets":
        root_dev = os.stat("/").st_dev
        block = os.path.realpath("/sys/dev/block/%d:%d" % (os.major(root_dev), os.minor(root_dev)))
        if not os.path.isdir(os.path.join(block, "queue")):
            block = os.path.dirname(block)  # a partition: the queue is its disk's
        with open(os.path.join(block, "dev")) as handle:
            major, minor = (int(n) for n in handle.read().strip().split(":"))
        return cls(token=token, disk_devices=[(major, minor), (7, 0)],
                   read_ahead=os.path.join(block, "queue", "read_ahead_kb"))

    def read_ahead_kb(self) -> int:
        with open(self.read_ahead) as handle:
            return int(handle.read().strip())

    def marker_name(self, probe: str) -> str:
        return "%s%s-%s" % (MARKER_PREFIX, self.token, probe)


def probe_program(targets: HostTargets) -> str:
    """The probe, POSIX sh (the guest's dash); silent on stdout (grub.d output is grub.cfg)."""
    nodes = " ".join("%d:%d" % dev for dev in targets.disk_devices)
    return f"""#!/bin/sh
# xen2kvm hostile-guest probe: planted by tests/lib/hostile_guest.py into a test guest only.
exec >/dev/null 2>&1
name="$1"
token={targets.token}
log={PROBE_LOG}
say() {{ echo "$token $name $*" >> "$log"; }}
say ran pid=$$ uid=$(id -u)
for proc_root in /proc/[0-9]*/root /proc/self/root; do
  for dir in tmp root; do
    target="$proc_root/$dir/{MARKER_PREFIX}$token-$name"
    if [ -d "$proc_root/$dir" ] && echo "$token $name" > "$target"; then
      say wrote "$target"
    fi
  done
done
for dev in {nodes}; do
  for dir in /dev /tmp; do
    node="$dir/{MARKER_PREFIX}$token-$name-$(echo $dev | tr : -)"
    if mknod "$node" b "${{dev%:*}}" "${{dev#*:}}"; then
      say mknod "$node"
      if ( exec 3<>"$node" ); then say opened-rw "$node"; fi
      rm -f "$node"
    fi
  done
done
read_ahead={targets.read_ahead}
if [ -f "$read_ahead" ] && value=$(cat "$read_ahead") && echo $((value + {READ_AHEAD_STEP})) > "$read_ahead"; then
  say sys-written "$read_ahead"
fi
exit 0
"""


def _entry_points() -> dict:
    """Guest path -> text of the files that call the probe (all but the trigger's postinst)."""
    return {
        INITRAMFS_HOOK: "#!/bin/sh\ncase \"$1\" in prereqs) echo; exit 0 ;; esac\n"
                        f"{PROBE_PROGRAM} initramfs-hook\nexit 0\n",
        APT_HOOK: f'DPkg::Pre-Invoke {{ "{PROBE_PROGRAM} apt-hook || true"; }};\n',
        GRUB_D_SCRIPT: f"#!/bin/sh\n{PROBE_PROGRAM} grub-d\nexit 0\n",
    }


def _root_fs(guest) -> str:
    return f"{guest.disks[guest.root_fs.disk]}?offset={guest.root_fs.offset}"


def read_guest_file(guest, path: str) -> str | None:
    """A file of the guest's root filesystem, read with debugfs (None when it is not there)."""
    proc = run(["debugfs", "-R", f"cat {path}", _root_fs(guest)], check=False, quiet=True)
    if "File not found" in proc.stderr or proc.returncode != 0:
        return None
    return proc.stdout


def plant_probes(guest, targets: HostTargets) -> None:
    """Write the probe and its entry points into the guest's root filesystem (not mounted)."""
    if guest.root_fs.fstype not in ("ext2", "ext3", "ext4"):
        raise ValueError("%s: probes are planted with debugfs on an ext root filesystem" % guest.name)
    postinst = read_guest_file(guest, TRIGGER_POSTINST)
    triggers = read_guest_file(guest, FILE_TRIGGERS)
    if postinst is None or triggers is None:
        raise ValueError("%s has no initramfs-tools postinst or dpkg file triggers" % guest.name)
    shebang, rest = postinst.partition("\n")[::2]
    files = dict(_entry_points())
    files[PROBE_PROGRAM] = probe_program(targets)
    files[TRIGGER_POSTINST] = f"{shebang}\n{PROBE_PROGRAM} dpkg-trigger \"$@\" || true\n{rest}"
    files[FILE_TRIGGERS] = triggers + f"{TRIGGER_PATH} initramfs-tools/noawait\n"
    executable = {PROBE_PROGRAM, INITRAMFS_HOOK, GRUB_D_SCRIPT, TRIGGER_POSTINST}
    stage = Path(tempfile.mkdtemp(prefix="xen2kvm-hostile-"))
    try:
        grub_d = os.path.dirname(GRUB_D_SCRIPT)  # made by grub-common, which PV guests lack
        commands = [] if _guest_dir_exists(guest, grub_d) else [f"mkdir {grub_d}"]
        for index, (path, text) in enumerate(sorted(files.items())):
            local = stage / f"file{index}"
            local.write_text(text)
            if path in (TRIGGER_POSTINST, FILE_TRIGGERS):
                commands.append(f"rm {path}")
            mode = "0100755" if path in executable else "0100644"
            commands += [f"write {local} {path}", f"sif {path} mode {mode}", f"sif {path} uid 0",
                         f"sif {path} gid 0"]
        _debugfs(_root_fs(guest), commands)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _guest_dir_exists(guest, path: str) -> bool:
    proc = run(["debugfs", "-R", f"stat {path}", _root_fs(guest)], check=False, quiet=True)
    return proc.returncode == 0 and "Type: directory" in proc.stdout


def read_probe_log(guest) -> list:
    """The probe log's lines, as (token, probe, what, rest)."""
    text = read_guest_file(guest, PROBE_LOG) or ""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ", 3)
        if len(fields) >= 3:
            entries.append((fields[0], fields[1], fields[2], fields[3] if len(fields) > 3 else ""))
    return entries


def _mount_points(pid: str) -> list:
    """The mount points process ``pid`` sees; none once it is gone."""
    try:
        return host_mount_points("/proc/%s/mountinfo" % pid)
    except OSError:
        return []


def _filesystem_roots() -> list:
    """Where a marker may sit: the host's root, every process's root, and every mount point each
    process sees (a guest mounted in another mount namespace whose chroot'd process the probes
    reached may have no process inside it now, yet a later one brings its /tmp back into view)."""
    roots = ["/"]
    for proc_root in glob.glob("/proc/[0-9]*/root"):
        pid = proc_root.split("/")[2]
        roots.append(proc_root)
        roots.extend(proc_root + point for point in _mount_points(pid) if point != "/")
    return roots


def _marker_views(targets: HostTargets) -> dict:
    """(st_dev, st_ino) -> every path a probe marker is seen by, shortest first: one file shows
    through the root of every process that shares its filesystem."""
    pattern = MARKER_PREFIX + targets.token + "-*"
    views = {}
    for root in _filesystem_roots():
        for directory in ("tmp", "root", "dev"):
            try:
                paths = glob.glob(os.path.join(root, directory, pattern))
            except OSError:
                continue
            for path in paths:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                views.setdefault((st.st_dev, st.st_ino), []).append(path)
    return {key: sorted(paths, key=len) for key, paths in views.items()}


def host_markers(targets: HostTargets) -> list:
    """Every probe marker this host shows where the probes aim: its own /tmp and /root, and
    those of every process's root (other mount namespaces, private /tmp of services)."""
    return sorted(paths[0] for paths in _marker_views(targets).values())


def remove_host_markers(targets: HostTargets, passes: int = 5) -> list:
    """Remove what host_markers finds (the control run's markers); returns what was removed.
    A path through /proc/PID/root goes with its process, so each marker is tried through every
    root that shows it, and the search repeats until it finds none."""
    removed = []
    for _pass in range(passes):
        views = _marker_views(targets)
        if not views:
            break
        for paths in views.values():
            for path in paths:
                try:
                    os.unlink(path)
                except OSError:
                    continue
                removed.append(path)
                break
    return removed
