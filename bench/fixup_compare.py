"""guest_fixup against Debian's virt-v2v on the test guests. A script, not a test: for each guest
variant it prints how long each tool takes to make the converted raw disks bootable on KVM and
whether (and how fast) the result reaches ``login:``.

For every variant (default: all of ``tests/lib/guest_factory.py list``; a name the factory does
not know, e.g. a variant another branch is still adding, gets a row saying so):

  ours      a private copy of the variant's raw disks (what xva_convert makes of its XVA, bit for
            bit) fixed by guest_fixup through ansible-playbook, with the VM spec xva_convert would
            return (disk names, firmware); then a second run, which must report changed=false;
            then the disks boot under qemu (TCG, virtio disks, user-mode network with no host
            access): seconds from power-on to ``login:`` on ttyS0, the device under ``/``, failed
            units, and "[FAILED]" / "Gave up waiting" lines of the console.
  virt-v2v  a fresh copy of the same disks through ``virt-v2v -i disk DISK0 -o local -of raw``
            (``-i libvirtxml`` when the VM has more than one disk: ``-i disk`` takes one); its
            seconds and outcome (the error when it stops), and its output booted the same way.

The fixup's phases are shown as guest_fixup returns them (``seconds``); otherwise the launch of
a bare libguestfs appliance is timed once on its own, the fixed cost of the guestfs engine. KVM or
TCG comes from kvm_preflight's check (``kvm_usable``): without KVM, libguestfs and virt-v2v run
with ``LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg``.

The table is printed as markdown and written as JSON to bench/out/fixup_compare.json (after each
variant, so an interrupted run keeps what it measured).

Heavy: it takes /tmp/xen2kvm-heavy.lock for the whole run (not when a parent process, e.g.
``flock /tmp/xen2kvm-heavy.lock ...``, holds it already). Needs root. Everything it starts (qemu,
ansible-playbook, virt-v2v and their children, the appliance) is stopped and its work directory
removed on exit, error, SIGINT, SIGTERM and SIGHUP (the directory stays with --keep).

Run: make bench BENCH=fixup, or .venv/bin/python bench/fixup_compare.py [--variants a,b] [--keep]
     [--no-v2v] [--no-boot] [--engine NAME] [--workdir DIR] (no shebang: run it with python).
"""

import argparse
import fcntl
import glob
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import xml.sax.saxutils
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"
sys.path.insert(0, str(REPO / "tests" / "lib"))
sys.path.insert(0, str(COLLECTIONS))

import guest_factory  # noqa: E402
from processes import alive  # noqa: E402
from qemu_boot import BootFailed, QemuGuest  # noqa: E402
from xva_writer import write_xva  # noqa: E402

PYTHON = Path(sys.executable)
PLAYBOOK = PYTHON.with_name("ansible-playbook")
HEAVY_LOCK = "/tmp/xen2kvm-heavy.lock"
OUT_JSON = REPO / "bench" / "out" / "fixup_compare.json"
BOOT_TIMEOUT = 420
V2V_TIMEOUT = 3600
FIXUP_TIMEOUT = 3600
TCG_ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
STRAY_PROGRAMS = (b"qemu-system", b"nbdkit", b"virt-v2v")
COLUMNS = ["variant", "fixup s", "rerun unchanged", "s to login", "virt-v2v result", "virt-v2v s",
           "virt-v2v s to login"]


def log(msg):
    print("[fixup_compare] %s" % msg, file=sys.stderr, flush=True)


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwinds like KeyboardInterrupt, so every ``finally`` cleans up."""


def raise_interrupted(signum, _frame):
    raise Interrupted("signal %d" % signum)


# --------------------------------------------------------------------------- processes we start
class Children:
    """The process groups this script started. Each runs in a session of its own (Ctrl-C reaches
    only this script); cleanup stops the whole tree, children that left the group included."""

    def __init__(self):
        self.procs = []

    def popen(self, cmd, **kwargs):
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, cmd, timeout, **kwargs):
        """(returncode, stdout) of ``cmd``; stopped (and a TimeoutExpired raised) after timeout."""
        proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
        try:
            out = proc.communicate(timeout=timeout)[0]
        except BaseException:
            self.stop(proc)
            raise
        self.procs.remove(proc)
        return proc.returncode, out

    def stop(self, proc, grace=90):
        """SIGTERM to the tree (guest_fixup releases its mounts and appliance on SIGTERM), then
        SIGKILL to whatever is left after ``grace`` seconds."""
        tree = [proc.pid] + descendants(proc.pid)
        signal_pids(tree, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        signal_pids([pid for pid in tree if alive(pid)], signal.SIGKILL)
        proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc)


def parent_pids():
    """{pid: parent pid} of every process, from /proc."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.split("/")[2])] = int(fields[1])
    return parents


def descendants(pid):
    parents = parent_pids()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


def ancestors(pid):
    parents = parent_pids()
    found = []
    while pid in parents and parents[pid] not in (0, pid):
        pid = parents[pid]
        found.append(pid)
    return found


def signal_pids(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_strays(workdir):
    """Processes still using the work directory (an appliance's qemu or nbdkit that a killed
    virt-v2v left, re-parented away from its tree) are ours too: stop them by pid."""
    spared = {os.getpid()} | set(ancestors(os.getpid()))
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(cmdline.split("/")[2])
        try:
            with open(cmdline, "rb") as handle:
                args = handle.read()
        except OSError:
            continue
        program = os.path.basename(args.split(b"\0", 1)[0])
        if pid not in spared and program.startswith(STRAY_PROGRAMS) and str(workdir).encode() in args:
            log("stopping stray process %d: %s" % (pid, args.replace(b"\0", b" ")[:120].decode(errors="replace")))
            signal_pids([pid], signal.SIGKILL)


# --------------------------------------------------------------------------- the heavy lock
def lock_held_by_ancestor(path):
    """Whether a parent of this process (``flock FILE command``) holds the flock on ``path``:
    taking it again would wait for ever."""
    inode = os.stat(path).st_ino
    mine = set(ancestors(os.getpid()))
    with open("/proc/locks") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode) \
                    and int(fields[4]) in mine:
                return True
    return False


def take_heavy_lock():
    """The machine-wide lock for heavy work, held until this process exits (None when a parent
    holds it for us)."""
    handle = open(HEAVY_LOCK, "a")
    if lock_held_by_ancestor(HEAVY_LOCK):
        log("%s is held by a parent process: running under it" % HEAVY_LOCK)
        handle.close()
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("waiting for %s (other heavy work is running)" % HEAVY_LOCK)
        start = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        log("got %s after %.0f s" % (HEAVY_LOCK, time.monotonic() - start))
    return handle


# --------------------------------------------------------------------------- the guest and its spec
def link_collection():
    namespace = COLLECTIONS / "ansible_collections" / "xen2kvm"
    namespace.mkdir(parents=True, exist_ok=True)
    if not (namespace / "migration").is_symlink():
        (namespace / "migration").symlink_to(REPO)


class _HaveOvaXml(Exception):
    pass


class _OvaXmlSink:
    """A write-only file that keeps the XVA's first tar member (ova.xml) and stops the writer
    there, so the spec comes without reading the disks."""

    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += bytes(data)
        if len(self.data) >= 512:
            size = int(self.data[124:136].rstrip(b"\0 ") or b"0", 8)
            if len(self.data) >= 512 + -(-size // 512) * 512:  # tar pads members to 512 bytes
                raise _HaveOvaXml()
        return len(data)

    def flush(self):
        pass


def spec_of(guest):
    """The spec xva_convert returns for this guest's XVA: its ova.xml read by the collection."""
    import io
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import read_ova_xml
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.tar import TarStream
    sink = _OvaXmlSink()
    try:
        write_xva(sink, guest.vm, checksum="xxhash")
    except _HaveOvaXml:
        pass
    spec, _vdi_ids, _raw = read_ova_xml(TarStream(io.BytesIO(sink.data)))
    return spec


def module_options():
    """guest_fixup's documented options (to know whether this checkout has ``engine``)."""
    source = (REPO / "plugins" / "modules" / "guest_fixup.py").read_text()
    documentation = re.search(r'^DOCUMENTATION = r"""(.*?)^"""', source, re.S | re.M).group(1)
    return yaml.safe_load(documentation)["options"]


def kvm_usable():
    from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.preflight import kvm_usable as usable
    return usable()


# --------------------------------------------------------------------------- ours: guest_fixup
def run_fixup(children, args, work, env):
    """guest_fixup through ansible-playbook, as tests/lib/ansible_run.py runs modules (the play
    saves the result itself); returns (seconds, result). The playbook runs in a process group of
    its own, so an interrupted run is stopped with SIGTERM and releases what it holds."""
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    play = [{
        "name": "guest_fixup", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
        "tasks": [
            {"name": "the module", "xen2kvm.migration.guest_fixup": args, "register": "result",
             "ignore_errors": True},
            {"name": "save the result", "ansible.builtin.copy": {"content": "{{ result | to_json }}",
                                                                 "dest": str(result_file)}},
        ],
    }]
    playbook = work / "fixup.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), **env)
    start = time.perf_counter()
    try:
        returncode, output = children.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)],
                                          FIXUP_TIMEOUT, env=env, cwd=str(work))
    except subprocess.TimeoutExpired:
        return round(time.perf_counter() - start, 1), {"failed": True, "msg": "timed out after %d s" % FIXUP_TIMEOUT}
    seconds = round(time.perf_counter() - start, 1)
    with open(work / "ansible.log", "a") as handle:
        handle.write(output)
    if returncode != 0 or not result_file.exists():
        return seconds, {"failed": True, "msg": "ansible-playbook rc %d: %s" % (returncode, last_lines(output))}
    return seconds, json.loads(result_file.read_text())


def last_lines(text, count=3):
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def fixup_phases(result):
    """The phases guest_fixup reports, {name: seconds}, or {} when it reports none."""
    value = result.get("seconds")
    if not isinstance(value, dict):
        return {}
    return {name: seconds for name, seconds in value.items() if isinstance(seconds, (int, float))}


def ours(children, guest, spec, work, engine, env):
    row = {"disks": [str(disk) for disk in guest.disks]}
    args = {"disks": row["disks"], "spec": spec}
    if engine:
        args["engine"] = engine
    log("%s: guest_fixup (%s)" % (guest.name, engine or "module default engine"))
    row["fixup_s"], first = run_fixup(children, args, work, env)
    row["fixup_changed"] = first.get("changed")
    row["fixup_changes"] = len(first.get("changes") or [])
    row["fixup_phases"] = fixup_phases(first)
    if first.get("failed"):
        row["fixup_error"] = first.get("msg")
        log("%s: guest_fixup failed after %.1f s: %s" % (guest.name, row["fixup_s"], row["fixup_error"]))
        return row
    log("%s: fixed in %.1f s (%d changes); second run" % (guest.name, row["fixup_s"], row["fixup_changes"]))
    row["rerun_s"], again = run_fixup(children, args, work, env)
    row["rerun_changed"] = again.get("changed")
    if again.get("failed"):
        row["rerun_error"] = again.get("msg")
    elif again.get("changed"):
        row["rerun_changes"] = [{key: change.get(key) for key in ("fixup", "action", "path")}
                                for change in again.get("changes") or []]
    return row


# --------------------------------------------------------------------------- booting a result
class FirmwareGuest(QemuGuest):
    """QemuGuest with OVMF for a UEFI guest (its own copy of the variable store)."""

    def __init__(self, disks, firmware, **kwargs):
        super().__init__(disks, **kwargs)
        self.firmware = firmware

    def command(self):
        cmd = super().command()
        if self.firmware == "uefi":
            variables = os.path.join(self.workdir, "OVMF_VARS.fd")
            shutil.copyfile(OVMF_VARS, variables)
            cmd += ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % OVMF_CODE,
                    "-drive", "if=pflash,format=raw,unit=1,file=%s" % variables]
        return cmd


def console_output(vm, command):
    """Output of ``command`` in the logged-in shell, between two markers only its output spells
    out (as the boot test reads it: the terminal may wrap the echoed line)."""
    vm.send("echo X2K$((1+1))BEGIN; %s; echo X2K$((40+2))END\n" % command)
    end = vm.expect(rb"X2K42END", 90)
    begin = vm.transcript.rindex(b"X2K2BEGIN", 0, end.start())
    text = vm.transcript[begin + len(b"X2K2BEGIN"):end.start()].decode("utf-8", "replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).strip()


ROOT_CHAIN = "lsblk -s -n -r -o NAME \"$(findmnt -n -o SOURCE / | sed 's/\\[.*//')\""
FAILED_UNITS = "if [ -d /run/systemd/system ]; then systemctl --failed --no-legend --plain; fi"


def boot_and_check(disks, spec, workdir):
    """Boot ``disks`` under TCG: seconds to ``login:``, the devices under ``/`` (virtio: vd*),
    failed units, and the console's complaints."""
    workdir.mkdir(parents=True, exist_ok=True)
    firmware = spec.get("firmware", "bios")
    if firmware == "uefi" and not os.path.exists(OVMF_CODE):
        return {"error": "UEFI guest but no %s (apt-get install ovmf)" % OVMF_CODE}
    log("booting %s (%s, TCG)" % (", ".join(os.path.basename(str(disk)) for disk in disks), firmware))
    info = {"firmware": firmware}
    try:
        with FirmwareGuest(disks, firmware, memory_mib=spec.get("memory_mib") or 1024, timeout=BOOT_TIMEOUT,
                           workdir=str(workdir)) as vm:
            try:
                info["login_s"] = round(vm.wait_for_login(), 1)
                vm.login_and_run("root", guest_factory.ROOT_PASSWORD, "true")
                info["root_chain"] = console_output(vm, ROOT_CHAIN).split()
                info["root_on_virtio"] = any(name.startswith("vd") for name in info["root_chain"])
                info["failed_units"] = [line.split()[0] for line in console_output(vm, FAILED_UNITS).splitlines()
                                        if line.strip()]
            except BootFailed as exc:
                info["error"] = str(exc).splitlines()[0]
                info["console_tail"] = vm.tail(15)
            console = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", vm.transcript.decode("utf-8", "replace"))
    except BootFailed as exc:
        return {"firmware": firmware, "error": str(exc).splitlines()[0]}
    info["console_problems"] = [line.strip() for line in console.splitlines()
                                if "[FAILED]" in line or "Gave up waiting" in line][:8]
    if "login_s" in info:
        log("login: after %.1f s; / on %s; failed units: %s" % (
            info["login_s"], "/".join(info.get("root_chain", [])), info.get("failed_units") or "none"))
    else:
        log("no login: %s" % info.get("error"))
    return info


# --------------------------------------------------------------------------- virt-v2v
def libvirt_xml(guest, spec, path):
    """A domain description for ``virt-v2v -i libvirtxml``: the VM's disks in order, memory,
    vCPUs and firmware (``-i disk`` takes a single disk)."""
    disks = "".join(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file=%s/>"
        "<target dev='xvd%s' bus='xen'/></disk>" % (xml.sax.saxutils.quoteattr(str(disk)), chr(ord("a") + index))
        for index, disk in enumerate(guest.disks))
    firmware = " firmware='efi'" if spec.get("firmware") == "uefi" else ""
    path.write_text("<domain type='xen'><name>%s</name><memory unit='MiB'>%d</memory><vcpu>%d</vcpu>"
                    "<os%s><type>hvm</type></os><devices>%s</devices></domain>\n"
                    % (xml.sax.saxutils.escape(guest.name), spec.get("memory_mib") or 1024, spec.get("vcpus") or 1,
                       firmware, disks))
    return path


def v2v_error(output):
    """The error virt-v2v stopped with, on one line (it wraps long messages)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if "virt-v2v: error:" in line:
            message = [line.split("virt-v2v: error:", 1)[1].strip()]
            for more in lines[index + 1:]:
                if not more.strip():
                    break
                message.append(more.strip())
            return " ".join(message)[:300]
    return last_lines(output)


def virt_v2v(children, guest, spec, work, env, boot):
    outdir = work / "v2v-out"
    tmpdir = work / "v2v-tmp"
    outdir.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    name = "x2k-v2v-%s" % guest.name
    if len(guest.disks) == 1:
        source = ["-i", "disk", str(guest.disks[0])]
    else:
        source = ["-i", "libvirtxml", str(libvirt_xml(guest, spec, work / "v2v-input.xml"))]
    cmd = ["virt-v2v"] + source + ["-o", "local", "-os", str(outdir), "-of", "raw", "-on", name]
    row = {"command": " ".join(cmd)}
    # Its temporary overlays go under the work directory (removed with it); the appliance
    # stays in the shared cache, or every run would rebuild it first.
    env = dict(os.environ, TMPDIR=str(tmpdir), LIBGUESTFS_CACHEDIR=os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp"),
               **env)
    log("%s: %s" % (guest.name, row["command"]))
    start = time.perf_counter()
    try:
        returncode, output = children.run(cmd, V2V_TIMEOUT, env=env, cwd=str(work))
    except subprocess.TimeoutExpired:
        row.update(seconds=round(time.perf_counter() - start, 1), ok=False, result="timed out")
        return row
    row["seconds"] = round(time.perf_counter() - start, 1)
    (work / "virt-v2v.log").write_text(output)
    row["ok"] = returncode == 0
    row["result"] = "ok" if row["ok"] else v2v_error(output)
    log("%s: virt-v2v %s after %.1f s" % (guest.name, row["result"], row["seconds"]))
    outputs = sorted(path for path in glob.glob(str(outdir / (name + "-sd*"))) if not path.endswith(".xml"))
    if row["ok"] and boot:
        row["boot"] = boot_and_check(outputs, spec, work / "boot-v2v") if outputs else {"error": "no output disk"}
    return row


# --------------------------------------------------------------------------- the appliance
def appliance_launch_seconds(disk, tcg):
    """Seconds a bare libguestfs appliance takes to launch on ``disk`` (read-only): the fixed
    cost of the guestfs engine, for when guest_fixup reports no phases itself."""
    import guestfs
    handle = guestfs.GuestFS(python_return_dict=True)
    try:
        handle.set_backend("direct")
        if tcg:
            handle.set_backend_settings(["force_tcg"])
        handle.add_drive_opts(str(disk), readonly=True, format="raw")
        start = time.perf_counter()
        handle.launch()
        seconds = time.perf_counter() - start
        handle.shutdown()
    finally:
        handle.close()
    return round(seconds, 1)


# --------------------------------------------------------------------------- the table
def cell_login(boot):
    if not boot:
        return "-"
    if "login_s" not in boot:
        return "no login (%s)" % boot.get("error", "?")[:60]
    notes = []
    if not boot.get("root_on_virtio"):
        notes.append("/ not on virtio")
    if boot.get("failed_units"):
        notes.append("failed: " + ", ".join(boot["failed_units"]))
    if any("Gave up waiting" in line for line in boot.get("console_problems", [])):
        notes.append("Gave up waiting")
    return "%.1f" % boot["login_s"] + (" (%s)" % "; ".join(notes) if notes else "")


def table_cells(row):
    name = row["variant"]
    if row.get("skipped"):
        return [name, row["skipped"], "", "", "", "", ""]
    mine, v2v = row.get("ours"), row.get("virt_v2v")
    stopped = "interrupted" if row.get("interrupted") else "-"
    if mine is None:
        return [name, stopped, "-", "-", "-", "-", "-"]
    if "fixup_error" in mine:
        fixup = "failed after %.1f: %s" % (mine["fixup_s"], mine["fixup_error"][:80])
        rerun = "-"
    else:
        fixup = "%.1f" % mine["fixup_s"]
        if "rerun_s" not in mine:
            rerun = stopped
        elif "rerun_error" in mine:
            rerun = "failed: %s" % mine["rerun_error"][:60]
        else:
            rerun = "%s (%.1f s)" % ("yes" if mine.get("rerun_changed") is False else "NO, changed",
                                     mine["rerun_s"])
    if v2v is None:
        v2v_cells = [stopped if row.get("interrupted") else "not run", "-", "-"]
    else:
        v2v_cells = [v2v["result"], "%.1f" % v2v["seconds"], cell_login(v2v.get("boot"))]
    return [name, fixup, rerun, cell_login(mine.get("boot"))] + v2v_cells


def markdown(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _column in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in table_cells(row)) + " |")
    return "\n".join(lines)


def write_json(report):
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT_JSON.with_name(OUT_JSON.name + ".part")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, OUT_JSON)


# --------------------------------------------------------------------------- one variant
def compare_variant(children, row, work, args, report):
    """Fills ``row`` (already in the report, written after each step: an interrupted run keeps
    what it measured)."""
    name = row["variant"]
    if name not in guest_factory.VARIANTS:
        row["skipped"] = "not in guest_factory list (not added yet)"
        log("%s: %s" % (name, row["skipped"]))
        return
    try:
        guest = guest_factory.build_variant(name, work / "ours")
    except guest_factory.GuestBuildError as exc:
        row["skipped"] = "could not build: %s" % str(exc).splitlines()[0][:100]
        return
    spec = spec_of(guest)
    row["firmware"], row["disks"] = spec.get("firmware"), len(guest.disks)
    row["ours"] = ours(children, guest, spec, work / "ours", args.engine, report["tool_env"])
    write_json(report)
    if report.get("appliance_launch_s") is None and "appliance" not in " ".join(row["ours"]["fixup_phases"]):
        log("guest_fixup reports no appliance start: timing a bare libguestfs appliance launch")
        report["appliance_launch_s"] = appliance_launch_seconds(guest.disks[0], not report["kvm_usable"])
    if not args.no_boot and "fixup_error" not in row["ours"]:
        row["ours"]["boot"] = boot_and_check(guest.disks, spec, work / "ours" / "boot")
        write_json(report)
    if args.no_v2v:
        return
    fresh = guest_factory.build_variant(name, work / "v2v")
    row["virt_v2v"] = virt_v2v(children, fresh, spec, work / "v2v", report["tool_env"], not args.no_boot)


def remove_variant_files(work):
    for sub in ("ours", "v2v"):
        shutil.rmtree(work / sub, ignore_errors=True)


def parse_args():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    parser.add_argument("--variants", default="",
                        help="comma-separated variant names (default: all of guest_factory.py list)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (disks, logs)")
    parser.add_argument("--no-v2v", action="store_true", help="leave virt-v2v out")
    parser.add_argument("--no-boot", action="store_true", help="boot nothing (no seconds to login)")
    parser.add_argument("--engine", default="",
                        help="guest_fixup's engine option (guestfs|chroot); default: the module's default")
    parser.add_argument("--workdir", default="", help="work directory (default: a new one under /var/tmp)")
    args = parser.parse_args()
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()] or list(guest_factory.VARIANTS)
    return args


def check_tools(args, options):
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (guest_fixup, loop devices, virt-v2v's appliance)")
    if args.engine and "engine" not in options:
        problems.append("--engine %s: this checkout's guest_fixup has no engine option" % args.engine)
    if args.engine and "engine" in options and args.engine not in (options["engine"].get("choices") or [args.engine]):
        problems.append("--engine %s: guest_fixup's engines are %s" % (args.engine,
                                                                       ", ".join(options["engine"]["choices"])))
    if not args.no_v2v and not (shutil.which("virt-v2v") and shutil.which("nbdkit")):
        problems.append("virt-v2v or nbdkit missing: apt-get install virt-v2v nbdkit (or --no-v2v)")
    if not PLAYBOOK.exists():
        problems.append("%s missing: run it with the project's .venv/bin/python (make install)" % PLAYBOOK)
    if problems:
        raise SystemExit("fixup_compare: " + "; ".join(problems))


def main():
    args = parse_args()
    options = module_options()
    check_tools(args, options)
    link_collection()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupted)
    tcg = not kvm_usable()
    engine = args.engine or (options.get("engine") or {}).get("default") or "chroot (no engine option)"
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": engine,
              "kvm_usable": not tcg, "accel": "TCG" if tcg else "KVM", "tool_env": TCG_ENV if tcg else {},
              "appliance_launch_s": None, "variants": args.variants, "rows": []}
    log("engine %s; kvm_preflight's kvm_usable: %s, so %s" % (engine, not tcg, report["accel"]))
    try:
        lock = take_heavy_lock()
    except (KeyboardInterrupt, Interrupted):
        raise SystemExit("fixup_compare: interrupted while waiting for %s; nothing was started" % HEAVY_LOCK)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fixup-compare-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    children = Children()
    try:
        for name in args.variants:
            report["rows"].append({"variant": name})
            compare_variant(children, report["rows"][-1], work / name, args, report)
            write_json(report)
            if not args.keep:
                remove_variant_files(work / name)
    except (KeyboardInterrupt, Interrupted) as exc:
        log("interrupted (%s): cleaning up" % (exc or "SIGINT"))
        report["interrupted"] = True
        if report["rows"]:
            report["rows"][-1]["interrupted"] = True
        write_json(report)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        children.stop_all()
        stop_strays(work)
        if args.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            lock.close()
    print_report(report)
    if report.get("interrupted"):
        raise SystemExit(130)


def print_report(report):
    print(markdown(report["rows"]))
    print()
    print("accel: %s (kvm_preflight's kvm_usable: %s); guest_fixup engine: %s"
          % (report["accel"], report["kvm_usable"], report["engine"]))
    if report["appliance_launch_s"] is not None:
        print("bare libguestfs appliance launch: %.1f s (%s)" % (report["appliance_launch_s"], report["accel"]))
    for row in report["rows"]:
        phases = row.get("ours", {}).get("fixup_phases")
        if phases:
            print("%s phases: %s" % (row["variant"], ", ".join("%s %.1f s" % item for item in phases.items())))
        for label, part in (("ours", row.get("ours", {})), ("virt-v2v", row.get("virt_v2v") or {})):
            boot = part.get("boot") or {}
            if boot.get("console_problems"):
                print("%s %s console: %s" % (row["variant"], label, " / ".join(boot["console_problems"])))
            if part.get("rerun_changes"):
                print("%s rerun changed: %s" % (row["variant"], part["rerun_changes"]))
    print("JSON: %s" % OUT_JSON.relative_to(REPO))


if __name__ == "__main__":
    main()
