"""kvm_host_slot through the real ansible-playbook: three VM hosts with forks=3 share one slot of
their KVM host (limit 1, as max_parallel: 1 does in migrate.yml), so their "heavy" stages (here a
sleep) never overlap; the waiters print who holds the slot; a release in ``always`` frees the
slot of a VM that failed; the slot belongs to the ansible-playbook process, not to the worker."""
import json
import os
import re
import signal
import subprocess
import uuid

import pytest
import yaml

from ansible_run import PLAYBOOK

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(REPO, "build", "collections")
MIGRATE = os.path.join(REPO, "playbooks", "migrate.yml")


def slot_play(slot_dir, spans_dir, limit):
    return [{
        "name": "Hold a slot of the KVM host while working",
        "hosts": "xen_vms",
        "gather_facts": False,
        "strategy": "ansible.builtin.free",
        "tasks": [{
            "name": "Work in a slot",
            "block": [
                {"name": "Wait for a slot", "register": "slot",
                 "xen2kvm.migration.kvm_host_slot": {"key": "{{ kvm_host }}", "holder": "{{ inventory_hostname }}",
                                                     "limit": limit, "dir": slot_dir, "timeout": 60}},
                {"name": "Work", "ansible.builtin.command": {
                    "argv": ["python3", "-c", "import json, sys, time; s = time.time(); time.sleep(2); "
                             "open(sys.argv[1], 'w').write(json.dumps([s, time.time()]))",
                             "%s/{{ inventory_hostname }}.json" % spans_dir]},
                 "changed_when": False},
                {"name": "Fail one VM after its work", "ansible.builtin.fail": {"msg": "planned failure"},
                 "when": "inventory_hostname == 'vm1'"},
            ],
            "always": [
                {"name": "Release the slot", "register": "released",
                 "xen2kvm.migration.kvm_host_slot": {"key": "{{ kvm_host }}", "holder": "{{ inventory_hostname }}",
                                                     "state": "released", "dir": slot_dir}},
                {"name": "Save the results", "delegate_to": "localhost", "ansible.builtin.copy": {
                    "content": "{{ {'slot': slot, 'released': released} | to_json }}",
                    "dest": "%s/{{ inventory_hostname }}.result" % spans_dir, "mode": "0644"}},
            ],
        }],
    }]


def test_three_vms_with_forks_3_take_turns_in_one_slot(tmp_path):
    slot_dir, spans_dir = tmp_path / "slots", tmp_path / "spans"
    spans_dir.mkdir()
    vms = {"vm%d" % i: {"kvm_host": "kvm1"} for i in range(3)}
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"},
                         "children": {"xen_vms": {"hosts": vms}}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(slot_play(str(slot_dir), str(spans_dir), 1)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(PLAYBOOK), "-i", str(tmp_path / "inventory.yml"), "--forks", "3",
                           str(tmp_path / "play.yml")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, timeout=300)
    output = proc.stdout
    assert proc.returncode != 0 and "planned failure" in output, output  # vm1 failed, as planned

    spans = sorted(json.loads((spans_dir / ("%s.json" % vm)).read_text()) for vm in vms)
    for (_start, end), (next_start, _end) in zip(spans, spans[1:]):
        assert end <= next_start, spans  # one at a time on kvm1, the failed VM's turn included
    assert spans[-1][0] - spans[0][0] >= 4  # each waited for the one before

    results = {vm: json.loads((spans_dir / ("%s.result" % vm)).read_text()) for vm in vms}
    assert all(r["released"]["released"] for r in results.values()), results
    assert all(not r["slot"]["changed"] and r["slot"]["slot"].endswith("/kvm1/slot-0") for r in results.values())
    waits = sorted(r["slot"]["wait_seconds"] for r in results.values())
    assert waits[0] < 1.5 and waits[1] >= 1.5 and waits[2] >= 3.5, waits

    # The waiters said whom they waited for, in one line each time (not a wall of retries).
    lines = re.findall(r"^\[(vm\d)\] waiting for a slot on kvm1 \(1 of 1 busy: (vm\d)\)$", output, re.M)
    assert len(lines) >= 2 and all(waiter != holder for waiter, holder in lines), output
    assert "FAILED - RETRYING" not in output
    assert os.listdir(slot_dir / "kvm1") == [".lock"]  # every slot given back


def children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
        return [int(child) for child in handle.read().split()]


def test_a_slot_left_by_a_killed_run_does_not_block_the_next(tmp_path):
    """The slot names the ansible-playbook process (the worker's parent): once that is gone, the
    slot is reclaimed. A run killed while holding it leaves the file; the next run gets it."""
    slot_dir = tmp_path / "slots"
    holder = [{"name": "Take the slot and hang", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Take", "xen2kvm.migration.kvm_host_slot": {"key": "kvm1", "holder": "stuck", "limit": 1,
                                                             "dir": str(slot_dir)}},
        {"name": "Hang", "ansible.builtin.pause": {"seconds": 120}}]}]
    taker = [{"name": "Take the slot", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Take", "xen2kvm.migration.kvm_host_slot": {"key": "kvm1", "holder": "next", "limit": 1,
                                                             "dir": str(slot_dir), "timeout": 0}}]}]
    (tmp_path / "holder.yml").write_text(yaml.safe_dump(holder))
    (tmp_path / "taker.yml").write_text(yaml.safe_dump(taker))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0")
    base = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3"]
    stuck = subprocess.Popen(base + [str(tmp_path / "holder.yml")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        for line in stuck.stdout:
            if "TASK [Hang]" in line:
                break
        record = json.loads((slot_dir / "kvm1" / "slot-0").read_text())
        assert record["pid"] == stuck.pid and record["holder"] == "stuck"
        busy = subprocess.run(base + [str(tmp_path / "taker.yml")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, check=False)
        assert busy.returncode != 0 and "no slot on kvm1 after waiting 0 s: 1 of 1 busy: stuck" in busy.stdout
    finally:
        workers = children(stuck.pid)  # in sessions of their own (ansible's worker setsid)
        stuck.kill()
        stuck.wait()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    free = subprocess.run(base + [str(tmp_path / "taker.yml")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    assert free.returncode == 0, free.stdout
    assert json.loads((slot_dir / "kvm1" / "slot-0").read_text())["holder"] == "next"


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.usefixtures("libvirt_uri")
def test_migrate_yml_holds_one_slot_per_vm_with_max_parallel_1(qemu_tmp, tmp_path):
    """Three VMs on one KVM host with max_parallel: 1 and forks=3 go through the heavy stages one
    after the other (disks of random bytes: each converts and then fails in the fixup, which
    needs no boot). The waiters say whom they wait for, the wait is not counted in the transfer's
    seconds, and every slot is given back, also by the VMs that failed."""
    from xva_writer import VM, Disk, write_xva

    vms = {}
    for index in range(3):
        name = "x2k-slot-%d-%s" % (index, uuid.uuid4().hex[:6])
        vms[name] = str(qemu_tmp / (name + ".xva"))
        write_xva(vms[name], VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(2 << 20), userdevice=0)]),
                  checksum="sha1")
    host = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
            "images_dir": str(qemu_tmp / "images"), "max_parallel": 1}
    vm_vars = {"ansible_connection": "local", "kvm_host": "localhost", "kvm_domain_type": "qemu"}
    inventory = {"all": {"children": {"kvm_hosts": {"hosts": {"localhost": host}},
                                      "xen_vms": {"hosts": {name: dict(vm_vars, xva=xva) for name, xva in vms.items()}}}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    cache = tmp_path / "cache"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               XDG_CACHE_HOME=str(cache))
    proc = subprocess.run([str(PLAYBOOK), "-i", str(tmp_path / "inventory.yml"), "--forks", "3", MIGRATE,
                           "-e", "report_dir=%s" % (tmp_path / "reports")], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=900)
    output = proc.stdout
    assert proc.returncode != 0, output
    entries = {e["vm"]: e for e in json.loads((tmp_path / "reports" / "migration-report.json").read_text())["vms"]}
    for name in vms:
        assert entries[name]["failed_stage"] == "fixup", entries[name]
    waits = re.findall(r"^\[(x2k-slot-\d-\w+)\] waiting for a slot on localhost \(1 of 1 busy: (x2k-slot-\d-\w+)\)$",
                       output, re.M)
    assert len({waiter for waiter, _holder in waits}) == 2 and all(w != h for w, h in waits), output
    # A waiter waits at least one holder's heavy stages; had the wait been counted in its
    # transfer, that transfer would take longer than the shortest heavy stages.
    heavy = [sum(entries[n]["stage_seconds"][s] for s in ("transfer", "kvm_preflight", "convert", "fixup"))
             for n in vms]
    assert max(entries[n]["stage_seconds"]["transfer"] for n in vms) < min(heavy), entries
    assert os.listdir(cache / "xen2kvm" / "slots" / "localhost") == [".lock"]
