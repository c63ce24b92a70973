"""Progress of xva_convert in a real ansible-playbook run (issue 8 item 4): the action plugin runs
the module as an async job on the KVM host and prints ``[VM] convert 42% ... MiB/s ETA m:ss``
at least every 10 s, with no configuration, no ``FAILED - RETRYING`` and no ``ASYNC POLL`` lines,
and returns the module's own result (or error) at the end, leaving no job or status file behind.

The XVAs come through FIFOs the test feeds slowly, so a 12 MiB export takes ~25 s to convert.
The KVM host is 127.0.0.1 over a real sshd (tests/lib/sshd.py) with ``become``, as in migrate.yml:
VMs are inventory hosts of their own, strategy free, the convert role delegated to the KVM host.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from xva_writer import Disk, VM, half_filled_disk, write_xva

MiB = 1 << 20
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PROGRESS = re.compile(r"^\[(?P<vm>\w+)\] convert (?P<pct>\d+)% \d+/\d+ MiB [\d.]+ MiB/s ETA (\d+:\d\d|\?)$")
PART = ".xen2kvm-part"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two VMs of 24 MiB each (12 MiB of data: every other MiB is zero and not exported)."""
    work = tmp_path_factory.mktemp("progress-exports")
    vms = {}
    for seed, name in enumerate(("web01", "db01"), start=1):
        disks = [Disk(image=half_filled_disk(16 * MiB, seed), userdevice=0),
                 Disk(image=half_filled_disk(8 * MiB, seed + 10), userdevice=1, device="xvdb")]
        vm = VM(name="progress-test-" + name, disks=disks)
        path = work / ("%s.xva" % name)
        write_xva(str(path), vm, checksum="xxhash")
        vms[name] = (vm, path)
    return vms


class SlowFeed:
    """Writes ``data`` into a new FIFO at ``rate`` bytes per second (``upto``: stop there and
    hold the pipe open until ``release()``)."""

    def __init__(self, fifo, data, rate, upto=None):
        os.mkfifo(fifo)
        self.fifo, self.data, self.rate = fifo, data, rate
        self.upto = len(data) if upto is None else upto
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        step = max(int(self.rate / 10), 1)
        try:
            with open(self.fifo, "wb") as pipe:
                for start in range(0, self.upto, step):
                    pipe.write(self.data[start:min(start + step, self.upto)])
                    pipe.flush()
                    if self.released.wait(0.1):
                        return
                self.released.wait(120)
        except BrokenPipeError:
            pass

    def release(self):
        self.released.set()
        try:  # a writer still waiting for its reader: open the read end so it gives up
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.thread.join(10)


def run_playbook(work, inventory, play, on_line=None):
    """ansible-playbook as a user runs it, with no ansible.cfg and no callback settings; returns
    (rc, [(seconds since start, line)]) with each line stamped as it arrived."""
    (work / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (work / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    (work / "tmp").mkdir()
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               # only so the test can see that nothing is left in them (TMPDIR: on local connections)
               ANSIBLE_ASYNC_DIR=str(work / "async"), ANSIBLE_REMOTE_TMP=str(work / "remote_tmp"),
               TMPDIR=str(work / "tmp"))
    for name in [key for key in env if key.startswith("ANSIBLE_") and "CALLBACK" in key]:
        del env[name]
    started = time.monotonic()
    proc = subprocess.Popen([str(PLAYBOOK), "-i", str(work / "inventory.yml"), str(work / "play.yml")],
                            cwd=str(work), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for raw in proc.stdout:
        stamped = (time.monotonic() - started, raw.rstrip("\n"))
        lines.append(stamped)
        if on_line:
            on_line(stamped, proc)
    return proc.wait(), lines


def console(lines):
    return "\n".join("%6.1f %s" % stamped for stamped in lines)


def save_task(path):
    return {"name": "Save the result", "ansible.builtin.copy": {
        "content": "{{ converted | to_json }}", "dest": "%s/{{ inventory_hostname }}.json" % path, "mode": "0600"}}


def progress_dirs(tmp):
    return {name for name in os.listdir(tmp) if name.startswith("xen2kvm-progress.")}


class StatusDirWatch:
    """Notes the plugin's status directories in /tmp of an ssh target (where TMPDIR is not passed
    on) that belong to this test's VMs, by the VM name in their status file."""

    def __init__(self, vm_names):
        self.vm_names = set(vm_names)
        self.seen = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.wait(0.3):
            for name in progress_dirs("/tmp"):
                vm = read_json(Path("/tmp", name, "status.json")).get("vm")
                if vm in self.vm_names:
                    self.seen.setdefault(vm, set()).add(Path("/tmp", name))

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def assert_nothing_left(work):
    async_dir = work / "async"
    assert not async_dir.exists() or os.listdir(async_dir) == [], "async job files left: %s" % os.listdir(async_dir)
    # async_wrapper removes its module's directory itself, after its watcher (every 5 s) saw it end
    remote_tmp = work / "remote_tmp"
    wait_for(lambda: not remote_tmp.exists() or os.listdir(remote_tmp) == [], "the remote tmp to be emptied", 12)
    assert progress_dirs(work / "tmp") == set(), "status directories left: %s" % progress_dirs(work / "tmp")


def test_two_vms_show_progress_over_ssh_with_become(exports, sshd, tmp_path):
    feeds = {name: SlowFeed(tmp_path / ("%s.pipe" % name), path.read_bytes(), rate=800_000)
             for name, (_vm, path) in exports.items()}
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm1": {
            "ansible_host": "127.0.0.1", "ansible_port": sshd.port, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(sshd.client_key),
            "ansible_ssh_common_args": " ".join("-o %s" % option for option in sshd.client_options),
            "ansible_python_interpreter": "/usr/bin/python3",
            # the test sshd has no sftp subsystem: without this each file transfer first tries
            # sftp and scp, and warns
            "ansible_ssh_transfer_method": "piped",
            "ansible_become": True, "ansible_become_method": "su"}}},
        "xen_vms": {"hosts": {name: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                                     "kvm_host": "kvm1"} for name in exports}},
    }}}
    play = [{
        "name": "Convert each VM on its KVM host", "hosts": "xen_vms", "gather_facts": False,
        "strategy": "ansible.builtin.free",
        "tasks": [
            {"name": "Convert", "ansible.builtin.include_role": {
                "name": "xen2kvm.migration.convert", "apply": {"delegate_to": "{{ kvm_host }}"}},
             "vars": {"convert_src": "%s/{{ inventory_hostname }}.pipe" % tmp_path,
                      "convert_dest": "%s/images/{{ inventory_hostname }}" % tmp_path}},
            {"name": "Save the result", "ansible.builtin.copy": {
                "content": "{{ convert_result | to_json }}", "dest": "%s/{{ inventory_hostname }}.json" % tmp_path,
                "mode": "0600"}},
        ],
    }]
    watch = StatusDirWatch(vm.name for vm, _path in exports.values())
    try:
        rc, lines = run_playbook(tmp_path, inventory, play)
    finally:
        watch.stop()
        for feed in feeds.values():
            feed.release()
    out = console(lines)
    print(out)
    assert rc == 0, out
    assert "FAILED - RETRYING" not in out and "ASYNC" not in out, out
    play_start = next(t for t, line in lines if line.startswith("PLAY [Convert each VM"))
    for name, (vm, _path) in exports.items():
        stamps = [t for t, line in lines if (PROGRESS.match(line) or {"vm": None})["vm"] == name]
        percents = [int(PROGRESS.match(line)["pct"]) for t, line in lines if line.startswith("[%s] " % name)]
        done_at = next(t for t, line in lines if line.startswith("changed: [%s -> kvm1" % name))
        assert len(stamps) >= 3 and percents == sorted(percents) and percents[-1] > percents[0], out
        gaps = [later - earlier for earlier, later in zip([play_start] + stamps, stamps + [done_at])]
        assert max(gaps) <= 10.0, "a gap of %.1f s for %s:\n%s" % (max(gaps), name, out)
        assert done_at - play_start >= 12, "the conversion was not slow enough to test anything"
        result = json.loads((tmp_path / ("%s.json" % name)).read_text())
        assert result["changed"] is True and "ansible_job_id" not in result and "finished" not in result
        for disk, source in zip(result["disks"], vm.disks):
            assert disk["checksums_verified"] is True
            assert Path(disk["path"]).read_bytes() == source.image
        assert not [n for n in os.listdir(tmp_path / "images" / name) if PART in n]
    assert_nothing_left(tmp_path)
    assert sorted(watch.seen) == sorted(vm.name for vm, _path in exports.values()), watch.seen
    assert not [path for paths in watch.seen.values() for path in paths if path.exists()], watch.seen


def test_failures_give_the_module_error_and_leave_nothing(exports, tmp_path):
    """Four VMs at once: a corrupt export (the module's own message), a conversion killed with
    SIGKILL (said so, with its last progress), a task that hits its ``timeout`` (the conversion is
    stopped, its temporary files removed), a task with ``async`` and ``poll`` of its own - and
    check mode, which runs the module directly."""
    bad = tmp_path / "bad.xva"
    write_xva(str(bad), VM(name="bad", disks=[Disk(image=half_filled_disk(4 * MiB, 7))]), checksum="sha1",
              fault="corrupt_chunk")
    _vm, web01 = exports["web01"]
    data = web01.read_bytes()
    feeds = {"killed": SlowFeed(tmp_path / "killed.pipe", data, rate=1_000_000, upto=len(data) // 2),
             "timed": SlowFeed(tmp_path / "timed.pipe", data, rate=200_000),
             "userasync": SlowFeed(tmp_path / "userasync.pipe", data, rate=1_300_000)}
    hosts = {
        "corrupt": {"src": str(bad)},
        "userasync": {"src": str(tmp_path / "userasync.pipe"), "task_async": 600, "task_poll": 1},
        "killed": {"src": str(tmp_path / "killed.pipe"), "status": str(tmp_path / "killed.status.json")},
        "timed": {"src": str(tmp_path / "timed.pipe"), "status": str(tmp_path / "timed.status.json"), "task_timeout": 8},
    }
    inventory = {"all": {"hosts": {name: dict(host, ansible_connection="local",
                                              ansible_python_interpreter="/usr/bin/python3")
                                   for name, host in hosts.items()}}}
    convert = {"src": "{{ src }}", "dest": "%s/images/{{ inventory_hostname }}" % tmp_path,
               "status_file": "{{ status | default(omit) }}"}
    play = [{
        "name": "Convert", "hosts": "all", "gather_facts": False, "strategy": "ansible.builtin.free",
        "tasks": [
            {"name": "Plan", "xen2kvm.migration.xva_convert": dict(convert, src=str(bad)), "check_mode": True,
             "register": "planned"},
            {"name": "Save the plan", "ansible.builtin.copy": {
                "content": "{{ planned | to_json }}", "dest": "%s/{{ inventory_hostname }}.plan.json" % tmp_path,
                "mode": "0600"}},
            {"name": "Convert", "xen2kvm.migration.xva_convert": convert, "register": "converted",
             "timeout": "{{ task_timeout | default(0) }}", "ignore_errors": True,
             "async": "{{ task_async | default(0) }}", "poll": "{{ task_poll | default(15) }}"},
            save_task(tmp_path),
        ],
    }]
    killed_status = tmp_path / "killed.status.json"

    def kill_when_under_way():
        wait_for(lambda: read_json(killed_status).get("bytes_done", 0) > 0, "the conversion to start")
        time.sleep(4)  # so the plugin has read the status once
        os.kill(read_json(killed_status)["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_under_way, daemon=True)
    killer.start()
    try:
        rc, lines = run_playbook(tmp_path, inventory, play)
    finally:
        for feed in feeds.values():
            feed.release()
    killer.join(5)
    out = console(lines)
    print(out)
    results = {name: read_json(tmp_path / ("%s.json" % name)) for name in hosts}
    assert rc == 0, out  # every failure was ignored
    assert "FAILED - RETRYING" not in out and "ASYNC POLL" not in out, out
    assert [line for _t, line in lines if "ASYNC" in line] == [
        "ASYNC OK on userasync: jid=%s" % results["userasync"]["ansible_job_id"]], out

    for name in hosts:
        plan = read_json(tmp_path / ("%s.plan.json" % name))
        assert plan["changed"] is True and [d["format"] for d in plan["disks"]] == ["raw"], plan

    corrupt = results["corrupt"]
    assert corrupt["failed"] is True and corrupt["changed"] is False
    assert corrupt["msg"].startswith("checksum mismatch in member 'Ref:") and "MODULE FAILURE" not in corrupt["msg"]
    assert "fatal: [corrupt]: FAILED! => " in out and "checksum mismatch in member" in out
    assert os.listdir(tmp_path / "images" / "corrupt") == []

    killed = results["killed"]
    assert killed["failed"] is True, killed
    assert killed["msg"].startswith("MODULE FAILURE: xva_convert ended without a result (killed"), killed
    assert "last progress: [killed] convert " in killed["msg"], killed
    assert "fatal: [killed]: FAILED!" in out and "[ERROR]: Task failed: Action failed: MODULE FAILURE: xva_convert ended" in out

    # async and poll set on the task: progress lines, then ansible-core collects the job as usual
    userasync = results["userasync"]
    assert userasync["changed"] is True and userasync["finished"] is True, userasync
    assert [PROGRESS.match(line)["vm"] for _t, line in lines if line.startswith("[userasync] ")] != []
    assert Path(userasync["disks"][0]["path"]).read_bytes() == exports["web01"][0].disks[0].image

    timed = results["timed"]
    assert timed["failed"] is True and "timed out after 8" in timed["msg"].lower(), timed
    status = read_json(tmp_path / "timed.status.json")  # the module stopped itself, cleanly
    assert status["state"] == "failed" and "SIGTERM" in status["error"], status
    wait_for(lambda: not os.path.exists("/proc/%d" % status["pid"]), "the timed-out module to exit", timeout=10)
    assert os.listdir(tmp_path / "images" / "timed") == []
    assert_nothing_left(tmp_path)


def test_ctrl_c_stops_the_conversion(exports, tmp_path):
    """ansible-playbook interrupted (SIGINT, as Ctrl-C sends it): the conversion job must not go
    on in the background - the module gets the signal, removes its temporary files and ends."""
    _vm, web01 = exports["web01"]
    feed = SlowFeed(tmp_path / "web01.pipe", web01.read_bytes(), rate=300_000)
    inventory = {"all": {"hosts": {"web01": {"ansible_connection": "local",
                                             "ansible_python_interpreter": "/usr/bin/python3"}}}}
    play = [{"name": "Convert", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Convert", "xen2kvm.migration.xva_convert": {
            "src": str(tmp_path / "web01.pipe"), "dest": str(tmp_path / "images")}}]}]
    seen = {}

    def interrupt_at_the_first_progress_line(stamped, proc):
        if PROGRESS.match(stamped[1]) and not seen:
            (new_dir,) = progress_dirs(tmp_path / "tmp")
            seen["status"] = read_json(tmp_path / "tmp" / new_dir / "status.json")
            proc.send_signal(signal.SIGINT)

    try:  # the feed stays open meanwhile: the module must end by the signal, not by the end of its input
        rc, lines = run_playbook(tmp_path, inventory, play, on_line=interrupt_at_the_first_progress_line)
        out = console(lines)
        print(out)
        assert rc != 0 and "User interrupted execution" in out, out
        pid = seen["status"]["pid"]
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), "the module to end", timeout=15)
    finally:
        feed.release()
    wait_for(lambda: not [n for n in os.listdir(tmp_path / "images") if PART in n], "the temporary images to go", 5)
    wait_for(lambda: not os.listdir(tmp_path / "async"), "the job file to go", timeout=15)
    assert os.listdir(tmp_path / "images") == []
    assert_nothing_left(tmp_path)
