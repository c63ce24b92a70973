"""The live-export scenario: one running VM on the pool (the XAPI double, still up: destroy stops
it), migrated by `playbooks/migrate.yml -e vm=x2k-mol-live` in shutdown mode and booted on this
machine's libvirt.

Checked against the pool's state as the double writes it (state.json, rewritten every 0.2 s) and
against what xva_info read from the export: no session, task or snapshot is left on the pool; the
source VM is halted and carries the mark naming this KVM host and the domain (other_config and
tag); it was exported once (the idempotence run saw the mark); the domain has the VM's vCPUs,
memory and MAC and reached login:; the first report names the pool, the export mode and its
speed, the rerun's says unchanged.
"""
import json
import time

import pytest

from conftest import domain_xml, serial_log, virsh

VM = "x2k-mol-live"
POOL = "molecule-pool"


@pytest.fixture(name="pool", scope="module")
def pool_fixture(work_dir):
    """The pool as the double saw it at least 0.5 s after this test started."""
    state_file = work_dir / "xapi" / "state.json"
    asked = time.time()
    deadline = time.monotonic() + 10
    while True:
        state = json.loads(state_file.read_text())
        if state["updated"] > asked + 0.5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state["updated"] > asked, "the XAPI double no longer updates %s: is it running?" % state_file
    return state


@pytest.fixture(name="source", scope="module")
def source_fixture(sources):
    assert list(sources) == [VM]
    return sources[VM]


def test_no_session_task_or_snapshot_is_left_on_the_pool(pool):
    assert pool["sessions"] == 0 and pool["tasks"] == 0
    assert pool["snapshots"] == []


def test_the_source_is_halted_marked_and_was_exported_once(pool):
    vm = pool["vms"][VM]
    assert vm["power_state"] == "Halted"
    assert vm["other_config"]["xen2kvm_migrated_to"] == "localhost/%s" % VM
    assert vm["other_config"]["xen2kvm_migrated_at"]
    assert "xen2kvm-migrated-to:localhost/%s" % VM in vm["tags"]
    assert [uuid for uuid, _compression in pool["exports"]] == [vm["uuid"]]


def test_domain_has_the_vms_vcpus_memory_and_mac_and_reached_login(host, source, first_report):
    domain = domain_xml(host, VM)
    assert int(domain.findtext("vcpu")) == source["vcpus"]
    assert int(domain.find("memory").text) == source["memory_mib"] * 1024
    assert [mac.get("address") for mac in domain.findall("devices/interface/mac")] == [nic["mac"] for nic in source["nics"]]
    # shutdown mode: the source is halted, so the domain's links are up
    assert [link.get("state") for link in domain.findall("devices/interface/link")] in ([], ["up"] * len(source["nics"]))
    assert virsh(host, "domstate", VM).strip() == "running"
    assert first_report[VM]["login_seconds"] > 0 and "login:" in serial_log(host, VM)


def test_report_names_the_pool_and_export_then_says_unchanged(first_report, report):
    first = first_report[VM]
    assert first["status"] == "migrated" and first["error"] is None, first
    assert (first["source_pool"], first["export_mode"], first["rollback"]) == (POOL, "shutdown", None), first
    assert first["export_mb_per_s"] > 0 and first["source"].startswith("https://127.0.0.1:"), first
    assert "molecule-live-export-pw" not in json.dumps(first)
    assert report[VM]["status"] == "unchanged", report[VM]
