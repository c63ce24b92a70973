"""xva_convert (the real module file, run as Ansible runs it) under signals, SIGKILL and strace
(issue 7 items 3 and 5): a conversion from a pipe the test feeds slowly is stopped halfway."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xva_writer import VM, Disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import owner_tag
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
COLLECTIONS = REPO / "build" / "collections"
MODULES = COLLECTIONS / "ansible_collections" / "xen2kvm" / "migration" / "plugins" / "modules"
PART = ".xen2kvm-part"


def disk_bytes(seed, size):
    data = bytearray(size)
    for index in range(0, size // MiB, 2):
        data[index * MiB:(index + 1) * MiB] = hashlib.shake_256(b"%d-%d" % (seed, index)).digest(MiB)
    return bytes(data)


@pytest.fixture(scope="module")
def xva(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "web01.xva"
    write_xva(str(path), VM(name="web01", disks=[Disk(image=disk_bytes(1, 8 * MiB), userdevice=0),
                                                 Disk(image=disk_bytes(2, 8 * MiB), userdevice=1)]))
    return path


def default_signals():
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def start_module(name, args, tmp_path, **popen):
    """Run a module file the way Ansible's test-module does: arguments in a JSON file."""
    args_file = tmp_path / ("%s-args.json" % name)
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    return subprocess.Popen(popen.pop("prefix", []) + [sys.executable, str(MODULES / ("%s.py" % name)),
                                                       str(args_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=default_signals, **popen)


def module_result(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError("module printed no JSON (rc %s): %r %r" % (proc.returncode, out[-2000:], err[-2000:]))


class HalfFeed:
    """Feeds the first half of ``data`` into ``fifo``, then holds the pipe open without writing."""

    def __init__(self, fifo, data):
        self.fifo, self.data = fifo, data
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with open(self.fifo, "wb") as pipe:
                pipe.write(self.data[:len(self.data) // 2])
                pipe.flush()
                self.release.wait(120)
        except BrokenPipeError:
            pass

    def stop(self):
        self.release.set()
        self.thread.join(10)


def temps_in(directory):
    return sorted(n for n in os.listdir(directory) if PART in n) if os.path.isdir(directory) else []


def wait_until(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def status_state(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start_half_fed_conversion(xva, tmp_path, fmt="raw"):
    fifo = tmp_path / "export.pipe"
    os.mkfifo(fifo)
    dest, status = tmp_path / "images", tmp_path / "status.json"
    proc = start_module("xva_convert", {"src": str(fifo), "dest": str(dest), "format": fmt,
                                        "status_file": str(status)}, tmp_path)
    feed = HalfFeed(fifo, xva.read_bytes())
    wait_until(lambda: temps_in(dest) and status_state(status).get("state") == "running"
               and status_state(status).get("bytes_done", 0) > 0, "the conversion to be under way")
    return proc, feed, dest, status


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_removes_temporary_files_and_marks_the_status_failed(xva, tmp_path, signame):
    proc, feed, dest, status = start_half_fed_conversion(xva, tmp_path)
    try:
        proc.send_signal(getattr(signal, signame))
        result = module_result(proc)
    finally:
        feed.stop()
    assert result["failed"] is True and "interrupted by %s" % signame in result["msg"]
    assert os.listdir(dest) == []
    final = status_state(status)
    assert final["state"] == "failed" and signame in final["error"]
    assert not [n for n in os.listdir(tmp_path) if PART in n]  # nor a status-file temp


def test_sigkill_leftovers_are_swept_by_the_next_run(xva, tmp_path):
    proc, feed, dest, status = start_half_fed_conversion(xva, tmp_path)
    try:
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        feed.stop()
    left = temps_in(dest)
    assert left and all(".%d@" % proc.pid in name for name in left)
    # A live conversion's temporary file (this test process stands in for its owner) stays.
    live = dest / (".other-disk0.raw%s.%s.raw" % (PART, owner_tag()))
    live.write_bytes(b"in flight")
    again = module_result(start_module("xva_convert", {"src": str(xva), "dest": str(dest)}, tmp_path))
    assert again["changed"] is True
    assert temps_in(dest) == [live.name] and live.read_bytes() == b"in flight"
    assert [Path(d["path"]).read_bytes()[:MiB] for d in again["disks"]] == [disk_bytes(1, MiB), disk_bytes(2, MiB)]


@pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="needs mkfs.ext4")
def test_signal_during_bare_filesystem_repartition_leaves_the_disk_alone(tmp_path):
    """The copy is stopped (SIGSTOP) the moment its temporary file appears, then sent SIGTERM."""
    image = tmp_path / "bare.raw"
    with open(image, "wb") as handle:
        handle.truncate(768 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)], check=True)
    with open(image, "r+b") as handle:  # data to copy: the superblock stays, the rest is filler
        handle.seek(64 * MiB)
        for index in range(64, 768, 4):
            handle.write(hashlib.shake_256(b"%d" % index).digest(MiB) + bytes(3 * MiB))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    code = ("import sys; from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bare_fs\n"
            "try:\n    bare_fs.repartition(sys.argv[1])\nexcept bare_fs.BareFsError as exc:\n"
            "    print(exc); sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(image)], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), preexec_fn=default_signals)
    try:
        wait_until(lambda: temps_in(tmp_path) or proc.poll() is not None, "the repartition's temporary file")
        proc.send_signal(signal.SIGSTOP)
        assert temps_in(tmp_path), "the copy finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        out, _err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3 and b"interrupted by SIGTERM" in out
    assert temps_in(tmp_path) == []
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


_STRACE_LINE = re.compile(r'^\d+\s+(fsync|fdatasync|rename|renameat2?)\((.*)\)\s+= 0')


def synced_and_renamed(trace):
    """Events in order: ("sync", path) and ("rename", old, new)."""
    events = []
    for line in trace.splitlines():
        match = _STRACE_LINE.match(line)
        if not match:
            continue
        call, args = match.groups()
        if call in ("fsync", "fdatasync"):
            events.append(("sync", re.match(r"\d+<(.*)>$", args).group(1)))
        else:
            names = re.findall(r'"([^"]*)"', args)
            events.append(("rename", names[0], names[1]))
    return events


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_images_manifest_and_directories_are_synced_before_success(xva, tmp_path):
    dest = tmp_path / "new" / "images"
    trace = tmp_path / "trace.txt"
    proc = start_module("xva_convert", {"src": str(xva), "dest": str(dest), "format": "qcow2"}, tmp_path,
                        prefix=["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                                "-o", str(trace)])
    result = module_result(proc, timeout=120)
    assert result["changed"] is True, result
    events = synced_and_renamed(trace.read_text())
    renames = {event[2]: (index, event[1]) for index, event in enumerate(events) if event[0] == "rename"}
    manifest = str(dest / ".web01-disk0.qcow2.xen2kvm.json")
    for final in [d["path"] for d in result["disks"]] + [manifest]:
        at, temp = renames[final]
        assert ("sync", temp) in events[:at], "%s was renamed into place unsynced" % final
        assert ("sync", str(dest)) in events[at:], "the directory entry of %s was not synced" % final
    for created in (tmp_path, tmp_path / "new"):  # the new directories' entries
        assert ("sync", str(created)) in events


def test_rerun_after_an_interrupted_run_converts(xva, tmp_path):
    """Nothing of the interrupted run is mistaken for a result: the rerun converts in full."""
    proc, feed, dest, status = start_half_fed_conversion(xva, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        module_result(proc)
    finally:
        feed.stop()
    result = convert_xva(str(xva), str(dest))
    assert result["changed"] is True and Path(result["disks"][1]["path"]).read_bytes() == disk_bytes(2, 8 * MiB)
