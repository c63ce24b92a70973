"""xen_vm_info, xen_vm_export, xen_vm_mark and xen_vm_power through real ansible-core against the
XAPI test double over HTTPS (its self-signed certificate trusted through ca_path), and
xva_convert pulling the export they prepare.  Every test ends with no session and no task left
on the pool, and no snapshot unless the test says why."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ansible_run
from xapi_double import XapiDouble, XapiVM
from xva_writer import Disk, Nic, VM, half_filled_disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import xva_info
from ansible.module_utils.urls import open_url

# second_lane: only the XAPI double, sshd on 127.0.0.1 and their own files; make test runs these
# beside the other integration tests (lane 1 was the long one)
pytestmark = pytest.mark.second_lane

MiB = 1 << 20
PASSWORD = "Pool-pw-7c1f-not-in-output"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def fixture_vm(tmp_path_factory):
    """A plain XVA as xapi writes it before compressing (the double compresses on request)."""
    work = tmp_path_factory.mktemp("xapi")
    vm = VM(name="web01", vcpus=2, memory_bytes=1024 * MiB,
            disks=[Disk(image=half_filled_disk(5 * MiB, 11), userdevice=0, bootable=True, name="web01 root"),
                   Disk(image=half_filled_disk(2 * MiB + 4096, 12), userdevice=1, device="xvdb", name="web01 data")],
            nics=[Nic(device=0, mac="de:ad:be:ef:10:01"),
                  Nic(device=1, mac="de:ad:be:ef:10:02", network="backup", bridge="xenbr1")])
    xva = work / "web01.xva"
    write_xva(str(xva), vm, checksum="xxhash", compression=None)
    return vm, xva


@pytest.fixture(name="pool")
def pool_fixture(fixture_vm):
    """A pool with web01 running, db01 halted and two VMs both named twin; cleanup asserted."""
    _vm, xva = fixture_vm
    vms = [XapiVM("web01", xva, power_state="Running"), XapiVM("db01", xva, power_state="Halted"),
           XapiVM("twin", xva), XapiVM("twin", xva, power_state="Running")]
    with XapiDouble(vms, password=PASSWORD, tls=True, export_port_redirect=True) as xapi:
        yield xapi
        assert xapi.live_sessions() == 0, "a module left its XAPI session open"
        assert xapi.live_tasks() == 0, "a module left a task on the pool"
        ours = [s["name_label"] for s in xapi.snapshots() if s["name_label"].startswith("xen2kvm-")]
        assert ours == [], "snapshots left behind: %s" % ours


def creds(xapi, **more):
    args = {"xapi_url": xapi.url, "username": "root", "password": PASSWORD, "ca_path": xapi.ca_file}
    args.update(more)
    return args


def run(module, args, **kwargs):
    """One module through ansible-playbook, with the venv's python (it has XenAPI)."""
    kwargs.setdefault("interpreter", sys.executable)
    return ansible_run.run_module(module, args, **kwargs)


def comparable(spec):
    """A spec without what differs between a live VM and its export: the disks' refs (OpaqueRef
    vs Ref:N) and the source record."""
    spec = dict(spec)
    spec.pop("source")
    spec["disks"] = [{k: v for k, v in disk.items() if k != "ref"} for disk in spec["disks"]]
    return spec


# ------------------------------------------------------------------ xen_vm_info


def test_info_finds_a_vm_by_name_and_by_uuid_with_the_spec_of_its_export(pool, fixture_vm):
    _vm, xva = fixture_vm
    web = pool.vm("web01")
    by_name = run("xen_vm_info", creds(pool, name="web01"))
    assert by_name["changed"] is False
    assert by_name["vm"] == {"uuid": web.uuid, "name": "web01", "power_state": "Running", "host": "xenhost1",
                             "tags": [], "mark": {}}
    exported = xva_info(str(xva), open_url, {})["spec"]
    expected = dict(comparable(exported), uuid=web.uuid)
    assert comparable(by_name["spec"]) == expected
    assert [d["vdi_uuid"] for d in by_name["spec"]["disks"]] == [v["uuid"] for v in pool.vdis_of(web)]
    assert by_name["spec"]["source"]["product_brand"] == "XCP-ng" and by_name["spec"]["source"]["export_vsn"] == 0
    by_uuid = run("xen_vm_info", creds(pool, uuid=web.uuid))
    assert by_uuid["spec"] == by_name["spec"] and by_uuid["vm"] == by_name["vm"]
    halted = run("xen_vm_info", creds(pool, name="db01"), check=True)
    assert halted["vm"]["power_state"] == "Halted" and halted["vm"]["host"] is None


def test_info_an_ambiguous_name_lists_the_uuids(pool):
    result = run("xen_vm_info", creds(pool, name="twin"), expect_fail=True)
    twins = sorted(vm.uuid for vm in pool.vms if vm.name == "twin")
    assert "2 VMs are named 'twin'" in result["msg"] and "give uuid" in result["msg"]
    assert all(uuid in result["msg"] for uuid in twins)
    chosen = run("xen_vm_info", creds(pool, uuid=twins[1]))
    assert chosen["vm"]["uuid"] == twins[1]


def test_info_unknown_vm_and_snapshot_uuid_are_named(pool):
    missing = run("xen_vm_info", creds(pool, name="nope"), expect_fail=True)
    assert missing["msg"] == "pool %s has no VM named 'nope' (templates and snapshots are not counted)" % pool.url
    bad_uuid = run("xen_vm_info", creds(pool, uuid="0b7a3c5e-0000-4000-8000-000000000000"), expect_fail=True)
    assert "has no VM with uuid 0b7a3c5e-0000-4000-8000-000000000000" in bad_uuid["msg"]
    both = run("xen_vm_info", creds(pool, name="web01", uuid=pool.vm("web01").uuid), expect_fail=True)
    assert "mutually exclusive" in both["msg"]


def test_wrong_password_is_a_clear_error_and_leaves_no_session(pool):
    result = run("xen_vm_info", creds(pool, name="web01", password="wrong-pw-4711"), expect_fail=True)
    assert result["msg"] == ("XAPI at %s refused the login of user 'root': wrong user name or password "
                             "(SESSION_AUTHENTICATION_FAILED)" % pool.url)
    assert "wrong-pw-4711" not in str(result)
    assert pool.live_sessions() == 0
    assert ("session.login_with_password", ("root",)) in pool.calls


def test_an_untrusted_certificate_asks_for_ca_path(pool):
    args = creds(pool, name="web01")
    del args["ca_path"]
    result = run("xen_vm_info", args, expect_fail=True)
    assert "TLS certificate of %s is not trusted" % pool.url in result["msg"] and "ca_path" in result["msg"]
    assert PASSWORD not in str(result)


def test_refused_connection_is_named(pool):
    import socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = run("xen_vm_info", creds(pool, name="web01", xapi_url="https://127.0.0.1:%d" % port), expect_fail=True)
    assert result["msg"] == "cannot connect to XAPI at https://127.0.0.1:%d: connection refused" % port


def test_credentials_from_the_environment_as_community_general_reads_them(pool):
    env = {"XENSERVER_HOST": pool.url, "XENSERVER_USER": "root", "XENSERVER_PASSWORD": PASSWORD}
    result = run("xen_vm_info", {"name": "db01", "ca_path": pool.ca_file}, extra_env=env)
    assert result["vm"]["name"] == "db01"


def test_without_the_sdk_the_module_says_what_to_install(pool):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import XenAPI"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 has XenAPI; no interpreter without it here")
    result = run("xen_vm_info", creds(pool, name="web01"), interpreter="/usr/bin/python3", expect_fail=True)
    assert "Failed to import the required Python library (XenAPI)" in result["msg"]


# ------------------------------------------------------------------ xen_vm_export + xva_convert


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_snapshot_export_converts_to_the_fixture_disks_and_release_destroys_only_the_snapshot(
        pool, fixture_vm, tmp_path, compression):
    vm, _xva = fixture_vm
    web = pool.vm("web01")
    own_vdis = sorted(v["uuid"] for v in pool.vdis_of(web))
    base = creds(pool, name="web01")

    planned = run("xen_vm_export", dict(base, use_compression=compression), check=True)
    assert planned["changed"] is True and planned["snapshot_uuid"] is None and pool.snapshots() == []

    prepared = run("xen_vm_export", dict(base, use_compression=compression))
    assert prepared["changed"] is True and prepared["power_state_before"] == "Running"
    assert prepared["swept"] == [] and prepared["stopped"] is False
    [snap] = pool.snapshots()
    assert snap["uuid"] == prepared["snapshot_uuid"] == prepared["exported_uuid"]
    assert snap["name_label"].startswith("xen2kvm-web01-") and snap["snapshot_of"] == web.ref
    assert snap["is_a_template"] is False and snap["ha_always_run"] is False
    assert snap["other_config"]["xen2kvm_snapshot_of"] == web.uuid
    assert prepared["export_src"] == "%s/export?uuid=%s&use_compression=%s" % (pool.url, snap["uuid"], compression)
    assert web.power_state == "Running"

    converted = run("xva_convert", {"src": prepared["export_src"], "dest": str(tmp_path / "images"),
                                    "url_username": "root", "url_password": PASSWORD, "ca_path": pool.ca_file})
    assert [Path(d["path"]).read_bytes() for d in converted["disks"]] == [d.image for d in vm.disks]
    assert all(d["checksums_verified"] for d in converted["disks"])
    assert pool.exports == [(snap["uuid"], compression)]
    assert len(pool.member_requests) == 1  # the 302 to the second port was followed
    assert PASSWORD not in str(converted)
    assert sorted(os.listdir(tmp_path)) == ["images"]  # nothing staged beside the images

    snap_vdis = [vdi for vdi in pool.objects["VDI"].values() if vdi.get("is_a_snapshot")]
    assert len(snap_vdis) == 2
    released = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": snap["uuid"]})
    assert released["changed"] is True and pool.snapshots() == []
    assert not any(vdi.get("is_a_snapshot") for vdi in pool.objects["VDI"].values())
    assert sorted(v["uuid"] for v in pool.vdis_of(web)) == own_vdis
    again = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": snap["uuid"]})
    assert again["changed"] is False
    nothing = run("xen_vm_export", {**creds(pool), "state": "released"})
    assert nothing["changed"] is False


def test_release_refuses_what_it_did_not_make(pool):
    web = pool.vm("web01")
    refused = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": web.uuid}, expect_fail=True)
    assert "is not a snapshot made by xen2kvm; refusing to destroy it" in refused["msg"]
    theirs = pool.rpc_value("VM.snapshot", web.ref, "before-upgrade")
    theirs_uuid = pool.rpc_value("VM.get_uuid", theirs)
    refused = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": theirs_uuid},
                  expect_fail=True)
    assert "'before-upgrade'" in refused["msg"] and [s["uuid"] for s in pool.snapshots()] == [theirs_uuid]
    of_web = run("xen_vm_export", creds(pool, name="web01"))
    refused = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": of_web["snapshot_uuid"],
                                    "uuid": pool.vm("db01").uuid}, expect_fail=True)
    assert "is a snapshot of another VM than %s" % pool.vm("db01").uuid in refused["msg"]
    released = run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": of_web["snapshot_uuid"],
                                     "uuid": web.uuid})
    assert released["changed"] is True and [s["uuid"] for s in pool.snapshots()] == [theirs_uuid]


def test_prepare_sweeps_the_snapshots_a_killed_run_left(pool):
    web = pool.vm("web01")
    killed = run("xen_vm_export", creds(pool, name="web01"))  # its play died before the release
    unmarked = pool.rpc_value("VM.snapshot", web.ref, "xen2kvm-web01-20260101T000000Z")  # killed before the mark
    users = pool.rpc_value("VM.snapshot", web.ref, "before-upgrade")
    stale = {killed["snapshot_uuid"], pool.rpc_value("VM.get_uuid", unmarked)}
    assert len(pool.snapshots()) == 3

    planned = run("xen_vm_export", creds(pool, name="web01"), check=True)
    assert set(planned["swept"]) == stale and len(pool.snapshots()) == 3

    fresh = run("xen_vm_export", creds(pool, name="web01"))
    assert set(fresh["swept"]) == stale
    left = sorted([fresh["snapshot_uuid"], pool.rpc_value("VM.get_uuid", users)])
    assert sorted(s["uuid"] for s in pool.snapshots()) == left
    run("xen_vm_export", {**creds(pool), "state": "released", "snapshot_uuid": fresh["snapshot_uuid"]})
    assert [s["name_label"] for s in pool.snapshots()] == ["before-upgrade"]
    assert len([v for v in pool.objects["VDI"].values() if v.get("is_a_snapshot")]) == 2  # the user's own


def test_a_failure_after_the_snapshot_destroys_it_again(pool):
    pool.fail_next["VM.set_is_a_template"] = ["OPERATION_NOT_ALLOWED", "Snapshot conversion is blocked"]
    result = run("xen_vm_export", creds(pool, name="web01"), expect_fail=True)
    assert "XAPI does not allow this: Snapshot conversion is blocked (OPERATION_NOT_ALLOWED)" in result["msg"]
    assert "web01" in result["msg"] and pool.url in result["msg"]
    assert pool.snapshots() == []
    assert not any(vdi.get("is_a_snapshot") for vdi in pool.objects["VDI"].values())


def test_a_blocked_snapshot_is_named(pool):
    pool.vm("web01").blocked_operations["snapshot"] = "frozen for the audit"
    result = run("xen_vm_export", creds(pool, name="web01"), expect_fail=True)
    assert result["msg"] == ("VM 'web01' (%s) on pool %s: an administrator blocked this operation on it "
                             "(blocked_operations: frozen for the audit) (OPERATION_BLOCKED)"
                             % (pool.vm("web01").uuid, pool.url))
    assert pool.snapshots() == []


def test_sigterm_during_prepare_leaves_no_snapshot(pool, tmp_path):
    """The module process gets SIGTERM while XAPI is busy making the snapshot exportable: the
    snapshot is destroyed and the session logged out before it exits."""
    pool.delay_calls["VM.set_is_a_template"] = 30
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO / "build" / "collections"))
    proc = subprocess.Popen([sys.executable, str(script), pool.url, PASSWORD, pool.ca_file], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not any(method == "VM.set_is_a_template" for method, _args in pool.calls):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert "stopped by SIGTERM" in output, output
    pool.delay_calls.clear()
    assert pool.snapshots() == [] and pool.live_sessions() == 0


PREPARE_SCRIPT = r'''
import sys
from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import SignalGuard
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.actions import export_action
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.module import Interrupted
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError, xapi_session

url, password, ca_path = sys.argv[1:4]
try:
    with SignalGuard(lambda name: Interrupted("stopped by %s" % name)) as guard:
        with xapi_session(url, "root", password, True, ca_path) as client:
            client.signal_guard = guard
            print(export_action(client, "prepared", name="web01"))
except XapiError as exc:
    print(exc)
'''


def test_shutdown_mode_stops_the_vm_and_exports_it(pool):
    web = pool.vm("web01")
    planned = run("xen_vm_export", creds(pool, name="web01", mode="shutdown"), check=True)
    assert planned["changed"] is True and planned["stopped"] is True and web.power_state == "Running"
    stopped = run("xen_vm_export", creds(pool, name="web01", mode="shutdown", use_compression="none"))
    assert stopped["changed"] is True and stopped["stopped"] is True and stopped["power_state_before"] == "Running"
    assert web.power_state == "Halted" and stopped["vm"]["power_state"] == "Halted"
    assert stopped["export_src"] == "%s/export?uuid=%s" % (pool.url, web.uuid) and stopped["snapshot_uuid"] is None
    again = run("xen_vm_export", creds(pool, name="web01", mode="shutdown"))
    assert again["changed"] is False and again["stopped"] is False
    assert pool.snapshots() == []


def test_shutdown_timeout_leaves_the_vm_running_and_says_so(pool):
    web = pool.vm("web01")
    web.shutdown_seconds = None  # the guest ignores the request
    result = run("xen_vm_export", creds(pool, name="web01", mode="shutdown", shutdown_timeout=2), expect_fail=True)
    assert "VM 'web01' (%s) on pool %s did not shut down within 2 s" % (web.uuid, pool.url) in result["msg"]
    assert "still running when this gave up" in result["msg"]
    assert web.power_state == "Running" and not any(m == "VM.hard_shutdown" for m, _a in pool.calls)


def test_halted_mode_needs_a_halted_vm(pool):
    refused = run("xen_vm_export", creds(pool, name="web01", mode="halted"), expect_fail=True)
    assert "is Running; export_mode halted needs a halted VM" in refused["msg"]
    db = pool.vm("db01")
    ready = run("xen_vm_export", creds(pool, name="db01", mode="halted", use_compression="gzip"))
    assert ready["changed"] is False and ready["power_state_before"] == "Halted"
    assert ready["export_src"] == "%s/export?uuid=%s&use_compression=gzip" % (pool.url, db.uuid)


# ------------------------------------------------------------------ xen_vm_mark


def test_mark_present_and_absent_are_idempotent_with_a_diff(pool):
    db = pool.vm("db01")
    args = creds(pool, name="db01", kvm_host="kvm1", domain="db01")
    planned = run("xen_vm_mark", args, check=True, diff=True)
    assert planned["changed"] is True and db.other_config == {} and db.tags == []
    assert planned["diff"]["before"] == {"other_config": {}, "tags": []}
    assert planned["diff"]["after"]["tags"] == ["xen2kvm-migrated-to:kvm1/db01"]

    marked = run("xen_vm_mark", args, diff=True)
    assert marked["changed"] is True
    assert db.other_config["xen2kvm_migrated_to"] == "kvm1/db01" and db.tags == ["xen2kvm-migrated-to:kvm1/db01"]
    assert marked["mark"]["migrated_at"] == db.other_config["xen2kvm_migrated_at"]
    assert marked["diff"]["after"]["other_config"] == db.other_config
    assert run("xen_vm_info", creds(pool, name="db01"))["vm"]["mark"] == marked["mark"]

    again = run("xen_vm_mark", args, diff=True)
    assert again["changed"] is False and again["diff"]["before"] == again["diff"]["after"]

    moved = run("xen_vm_mark", dict(args, kvm_host="kvm2"), diff=True)
    assert moved["changed"] is True and db.tags == ["xen2kvm-migrated-to:kvm2/db01"]
    assert moved["diff"]["before"]["tags"] == ["xen2kvm-migrated-to:kvm1/db01"]

    db.tags.append("production")
    removed = run("xen_vm_mark", creds(pool, name="db01", state="absent"), diff=True)
    assert removed["changed"] is True and removed["mark"] == {}
    assert db.other_config == {} and db.tags == ["production"]
    assert run("xen_vm_mark", creds(pool, name="db01", state="absent"))["changed"] is False


def test_mark_present_needs_its_target(pool):
    result = run("xen_vm_mark", creds(pool, name="db01"), expect_fail=True)
    assert "kvm_host" in result["msg"] and "domain" in result["msg"]


# ------------------------------------------------------------------ xen_vm_power


def test_power_starts_and_stops_a_vm(pool):
    db = pool.vm("db01")
    planned = run("xen_vm_power", creds(pool, name="db01", state="running"), check=True)
    assert planned["changed"] is True and planned["power_state"] == "Running" and db.power_state == "Halted"
    started = run("xen_vm_power", creds(pool, name="db01", state="running"))
    assert started["changed"] is True and db.power_state == "Running" and started["vm"]["host"] == "xenhost1"
    assert run("xen_vm_power", creds(pool, name="db01", state="running"))["changed"] is False
    stopped = run("xen_vm_power", creds(pool, name="db01", state="halted", shutdown_timeout=30))
    assert stopped["changed"] is True and stopped["power_state_before"] == "Running" and db.power_state == "Halted"


def test_power_passes_xapi_failures_on_by_name(pool):
    pool.fail_next["VM.start"] = ["VM_BAD_POWER_STATE", pool.vm("db01").ref, "halted", "suspended"]
    result = run("xen_vm_power", creds(pool, name="db01", state="running"), expect_fail=True)
    assert result["msg"] == ("VM 'db01' (%s) on pool %s is suspended, and the operation needs it halted "
                             "(VM_BAD_POWER_STATE)" % (pool.vm("db01").uuid, pool.url))
