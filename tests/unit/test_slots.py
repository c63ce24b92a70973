"""The per-KVM-host slots of kvm_host_slot (module_utils/_slots.py) with real files and real
processes: a dead or reused owner pid is reclaimed, the limit holds for concurrent processes,
a timeout names the holders."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._slots import (
    SlotError, Slots, key_directory, process_start_time)

COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "build", "collections")


def sleeper():
    return subprocess.Popen(["sleep", "60"])


def test_a_slot_records_its_owner_and_holder(tmp_path):
    owner = sleeper()
    try:
        slots = Slots(str(tmp_path), "kvm1", 2, owner_pid=owner.pid)
        path, waited = slots.acquire("vmA", timeout=5)
        record = json.loads(open(path).read())
        assert record["pid"] == owner.pid and record["holder"] == "vmA"
        assert record["start_time"] is not None and record["start_time"] == process_start_time(owner.pid)
        assert waited < 1 and os.path.dirname(path) == os.path.join(str(tmp_path), "kvm1")
        assert slots.acquire("vmA", timeout=0)[0] == path  # the same holder of the same run: its slot
        assert slots.holders() == ["vmA"]
    finally:
        owner.kill()
        owner.wait()


def test_the_slot_of_a_dead_run_is_reclaimed(tmp_path):
    dead = sleeper()
    Slots(str(tmp_path), "kvm1", 1, owner_pid=dead.pid).acquire("vmA", timeout=0)
    alive = Slots(str(tmp_path), "kvm1", 1, owner_pid=os.getpid())
    with pytest.raises(SlotError, match=r"no slot on kvm1 after waiting 0 s: 1 of 1 busy: vmA"):
        alive.acquire("vmB", timeout=0)
    dead.kill()
    dead.wait()
    path, _waited = alive.acquire("vmB", timeout=0)
    assert json.loads(open(path).read())["holder"] == "vmB" and alive.holders() == ["vmB"]


def test_a_reused_pid_does_not_keep_the_slot(tmp_path):
    """The pid runs, but it is not the process that took the slot (another start time)."""
    directory = key_directory(str(tmp_path), "kvm1")
    os.makedirs(directory)
    with open(os.path.join(directory, "slot-0"), "w") as handle:
        json.dump({"pid": os.getpid(), "start_time": process_start_time(os.getpid()) - 1, "holder": "old"}, handle)
    slots = Slots(str(tmp_path), "kvm1", 1, owner_pid=os.getpid())
    assert slots.holders() == []
    assert slots.acquire("vmB", timeout=0)[0] == os.path.join(directory, "slot-0")


def test_an_unreadable_slot_file_is_reclaimed(tmp_path):
    directory = key_directory(str(tmp_path), "kvm1")
    os.makedirs(directory)
    open(os.path.join(directory, "slot-0"), "w").close()  # a writer that died before writing
    assert Slots(str(tmp_path), "kvm1", 1, owner_pid=os.getpid()).acquire("vmA", timeout=0)[0].endswith("slot-0")


def test_release_gives_back_only_the_holders_slot(tmp_path):
    slots = Slots(str(tmp_path), "kvm1", 2, owner_pid=os.getpid())
    slots.acquire("vmA", timeout=0)
    slots.acquire("vmB", timeout=0)
    other_run = Slots(str(tmp_path), "kvm1", 2, owner_pid=os.getppid())
    assert other_run.release("vmA") is False  # vmA of another run keeps its slot
    assert slots.release("vmA") is True and slots.holders() == ["vmB"]
    assert slots.release("vmA") is False


def test_waiting_reports_the_busy_holders_and_times_out(tmp_path):
    holder = Slots(str(tmp_path), "kvm1", 2, owner_pid=os.getpid())
    holder.acquire("vmA", timeout=0)
    holder.acquire("vmB", timeout=0)
    seen = []
    started = time.monotonic()
    with pytest.raises(SlotError) as raised:
        holder.acquire("vmC", timeout=2, on_wait=lambda busy, waited: seen.append(holder.describe(busy)))
    assert 1.5 < time.monotonic() - started < 5
    assert seen == ["2 of 2 busy: vmA, vmB"]  # once at the start, then only every 10 s
    assert "no slot on kvm1 after waiting 2 s: 2 of 2 busy: vmA, vmB (at most 2 VMs at once" in str(raised.value)


def test_a_waiter_gets_the_slot_when_it_is_released(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, %r)
        from ansible_collections.xen2kvm.migration.plugins.module_utils._slots import Slots
        slots = Slots(%r, "kvm1", 1, owner_pid=os.getpid())
        slots.acquire("vmA", timeout=0)
        print("held", flush=True)
        time.sleep(1.5)
        slots.release("vmA")
        time.sleep(30)
        """) % (COLLECTIONS, str(tmp_path))], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        path, waited = Slots(str(tmp_path), "kvm1", 1, owner_pid=os.getpid()).acquire("vmB", timeout=20)
        assert 0.5 < waited < 5 and path.endswith("slot-0")
    finally:
        first.kill()
        first.wait()


HOLDER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.xen2kvm.migration.plugins.module_utils._slots import Slots
    slots = Slots(sys.argv[2], "kvm1", int(sys.argv[3]), owner_pid=os.getpid())
    slots.acquire(sys.argv[4], timeout=60)
    start = time.time()
    time.sleep(0.8)
    end = time.time()
    slots.release(sys.argv[4])
    print(json.dumps([start, end]))
    """)


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrent_processes_never_exceed_the_limit(tmp_path, limit):
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, COLLECTIONS, str(tmp_path), str(limit), "vm%d" % i],
                              stdout=subprocess.PIPE, text=True) for i in range(5)]
    spans = []
    for proc in procs:
        out, _err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        spans.append(json.loads(out))
    events = sorted([(start, 1) for start, _end in spans] + [(end, -1) for _start, end in spans])
    running = peak = 0
    for _when, step in events:
        running += step
        peak = max(peak, running)
    assert peak == limit, spans  # never more, and the slots were used
    assert os.listdir(key_directory(str(tmp_path), "kvm1")) == [".lock"]


def test_keys_are_plain_directory_names(tmp_path):
    assert key_directory("/b", "kvm1.example.org") == "/b/kvm1.example.org"
    assert key_directory("/b", "../etc") == "/b/%2E.%2Fetc"
    assert key_directory("/b", "a/b") == "/b/a%2Fb"
    with pytest.raises(SlotError, match="at least 1"):
        Slots(str(tmp_path), "kvm1", 0)
