"""The ssh transport of the live source: xe on the "Xen host" (the fake xe of tests/lib/fake_xe.py
behind a real sshd on 127.0.0.1, driving the XAPI double over XML-RPC), the xen_vm_* modules with
``transport: ssh``, and xva_convert reading ``xe vm-export ... filename=`` from xe's standard
output over ssh (the ``xe+ssh://`` source).  Every test ends with no session and no xen2kvm
snapshot left on the pool."""

import os
import sys
from pathlib import Path

import pytest

import ansible_run
from sshd import free_port
from xapi_double import XapiDouble, XapiVM
from xva_writer import Disk, VM, half_filled_disk, write_xva

# second_lane: only the XAPI double, sshd on 127.0.0.1 and their own files; make test runs these
# beside the other integration tests (lane 1 was the long one)
pytestmark = pytest.mark.second_lane

MiB = 1 << 20
PASSWORD = "Pool-pw-ssh-3b9e-not-in-output"
FAKE_XE = Path(__file__).resolve().parents[2] / "lib" / "fake_xe.py"


@pytest.fixture(scope="module")
def fixture_vm(tmp_path_factory):
    work = tmp_path_factory.mktemp("xe-ssh")
    vm = VM(name="web01", vcpus=2, memory_bytes=512 * MiB,
            disks=[Disk(image=half_filled_disk(4 * MiB, 21), userdevice=0, bootable=True, name="web01 root"),
                   Disk(image=half_filled_disk(2 * MiB + 4096, 22), userdevice=1, device="xvdb", name="web01 data")])
    xva = work / "web01.xva"
    write_xva(str(xva), vm, checksum="xxhash", compression=None)
    return vm, xva


@pytest.fixture(name="pool")
def pool_fixture(fixture_vm, tmp_path, sshd):
    """The double (plain HTTP on 127.0.0.1: only the fake xe talks to it) with web01 running and
    db01 halted, and an ``xe`` wrapper that points the fake xe at it."""
    _vm, xva = fixture_vm
    vms = [XapiVM("web01", xva, power_state="Running"), XapiVM("db01", xva, power_state="Halted")]
    with XapiDouble(vms, password=PASSWORD) as xapi:
        xe = tmp_path / "bin" / "xe"
        xe.parent.mkdir()
        xe.write_text("#!/bin/sh\nFAKE_XE_URL=%s FAKE_XE_USER=root FAKE_XE_PASSWORD=%s exec %s %s \"$@\"\n"
                      % (xapi.url, PASSWORD, sys.executable, FAKE_XE))
        xe.chmod(0o755)
        xapi.xe_path = str(xe)
        yield xapi
        assert xapi.live_sessions() == 0, "an xe command left its XAPI session open"
        ours = [s["name_label"] for s in xapi.snapshots() if s["name_label"].startswith("xen2kvm-")]
        assert ours == [], "snapshots left behind: %s" % ours


def over_ssh(pool, sshd, **more):
    args = {"transport": "ssh", "ssh_host": "127.0.0.1", "ssh_port": sshd.port, "ssh_user": "root",
            "ssh_private_key": str(sshd.client_key), "ssh_options": sshd.client_options, "xe_path": pool.xe_path}
    args.update(more)
    return args


def convert_args(sshd, src, dest):
    return {"src": src, "dest": str(dest), "ssh_private_key": str(sshd.client_key), "ssh_options": sshd.client_options}


def run(module, args, **kwargs):
    kwargs.setdefault("interpreter", sys.executable)
    return ansible_run.run_module(module, args, **kwargs)


def test_snapshot_mode_streams_the_export_over_ssh_into_identical_disks_and_leaves_no_snapshot(
        pool, fixture_vm, sshd, tmp_path):
    vm, _xva = fixture_vm
    web = pool.vm("web01")
    own_vdis = sorted(v["uuid"] for v in pool.vdis_of(web))

    info = run("xen_vm_info", over_ssh(pool, sshd, name="web01"))
    assert info["vm"]["uuid"] == web.uuid and info["vm"]["power_state"] == "Running"
    assert info["vm"]["host"] == "xenhost1" and info["spec"] is None

    prepared = run("xen_vm_export", over_ssh(pool, sshd, name="web01", use_compression="zstd"))
    [snap] = pool.snapshots()
    assert prepared["snapshot_uuid"] == prepared["exported_uuid"] == snap["uuid"]
    assert snap["is_a_template"] is False and snap["ha_always_run"] is False
    assert snap["other_config"]["xen2kvm_snapshot_of"] == web.uuid
    assert prepared["export_src"] == "xe+ssh://root@127.0.0.1:%d/?uuid=%s&compress=zstd&xe=%s" % (
        sshd.port, snap["uuid"], pool.xe_path)
    assert web.power_state == "Running"

    converted = run("xva_convert", convert_args(sshd, prepared["export_src"], tmp_path / "images"))
    assert [Path(d["path"]).read_bytes() for d in converted["disks"]] == [d.image for d in vm.disks]
    assert all(d["checksums_verified"] for d in converted["disks"])
    assert pool.exports == [(snap["uuid"], "zstd")]
    assert PASSWORD not in str(converted) and PASSWORD not in str(prepared)

    released = run("xen_vm_export", over_ssh(pool, sshd, state="released", snapshot_uuid=snap["uuid"],
                                             uuid=web.uuid))
    assert released["changed"] is True and pool.snapshots() == []
    assert not any(vdi.get("is_a_snapshot") for vdi in pool.objects["VDI"].values())
    assert sorted(v["uuid"] for v in pool.vdis_of(web)) == own_vdis
    again = run("xen_vm_export", over_ssh(pool, sshd, state="released", snapshot_uuid=snap["uuid"]))
    assert again["changed"] is False


def test_shutdown_mode_leaves_the_vm_halted_and_exports_it_over_ssh(pool, fixture_vm, sshd, tmp_path):
    vm, _xva = fixture_vm
    prepared = run("xen_vm_export", over_ssh(pool, sshd, name="web01", mode="shutdown", use_compression="gzip"))
    assert prepared["stopped"] is True and prepared["snapshot_uuid"] is None
    assert pool.vm("web01").power_state == "Halted"
    info = run("xva_info", {"src": prepared["export_src"], "ssh_private_key": str(sshd.client_key),
                            "ssh_options": sshd.client_options})
    assert [d["virtual_size"] for d in info["spec"]["disks"]] == [len(d.image) for d in vm.disks]
    assert pool.vm("web01").power_state == "Halted"

    halted = run("xen_vm_export", over_ssh(pool, sshd, name="web01", mode="halted"))
    assert halted["changed"] is False and halted["exported_uuid"] == pool.vm("web01").uuid


def test_halted_mode_refuses_a_running_vm_naming_it(pool, sshd):
    failed = run("xen_vm_export", over_ssh(pool, sshd, name="web01", mode="halted"), expect_fail=True)
    assert "web01" in failed["msg"] and "Running" in failed["msg"] and "halted" in failed["msg"]


def test_exporting_a_running_vm_directly_fails_clearly(pool, sshd, tmp_path):
    src = "xe+ssh://root@127.0.0.1:%d/?uuid=%s&compress=zstd&xe=%s" % (
        sshd.port, pool.vm("web01").uuid, pool.xe_path)
    failed = run("xva_convert", convert_args(sshd, src, tmp_path / "images"), expect_fail=True)
    assert "wrong power state" in failed["msg"] and "running" in failed["msg"]
    assert not (tmp_path / "images").exists() or os.listdir(tmp_path / "images") == []


def test_a_cut_export_fails_clearly_and_released_over_ssh_destroys_the_snapshot(pool, sshd, tmp_path):
    pool.cut_after = 300 * 1024  # xapi's connection dies mid-export: xe exits non-zero
    prepared = run("xen_vm_export", over_ssh(pool, sshd, name="web01"))
    failed = run("xva_convert", convert_args(sshd, prepared["export_src"], tmp_path / "images"), expect_fail=True)
    assert "over ssh broke off after" in failed["msg"] and "export from xapi ended" in failed["msg"], failed["msg"]
    assert len(pool.snapshots()) == 1
    released = run("xen_vm_export", over_ssh(pool, sshd, state="released", snapshot_uuid=prepared["snapshot_uuid"]))
    assert released["changed"] is True and pool.snapshots() == []


def test_wrong_host_key_and_unreachable_host_are_named(pool, sshd, tmp_path):
    stranger = tmp_path / "known_hosts"
    key_type, other_key = sshd.other_key.with_suffix(".pub").read_text().split()[:2]  # not the server's key
    stranger.write_text("[127.0.0.1]:%d %s %s\n" % (sshd.port, key_type, other_key))
    options = ["UserKnownHostsFile=%s" % stranger, "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes"]
    failed = run("xen_vm_export", over_ssh(pool, sshd, name="web01", ssh_options=options), expect_fail=True)
    assert "127.0.0.1" in failed["msg"] and "host key" in failed["msg"], failed["msg"]

    closed = free_port()
    failed = run("xen_vm_info", over_ssh(pool, sshd, name="web01", ssh_port=closed), expect_fail=True)
    assert "127.0.0.1" in failed["msg"] and "nothing listens on the ssh port" in failed["msg"], failed["msg"]

    src = "xe+ssh://root@127.0.0.1:%d/?uuid=%s&compress=zstd" % (closed, pool.vm("db01").uuid)
    failed = run("xva_convert", convert_args(sshd, src, tmp_path / "images"), expect_fail=True)
    assert "cannot reach 127.0.0.1" in failed["msg"] and "nothing listens" in failed["msg"], failed["msg"]
    assert pool.snapshots() == []


def test_mark_and_power_over_ssh(pool, sshd):
    marked = run("xen_vm_mark", over_ssh(pool, sshd, name="db01", kvm_host="kvm1", domain="db01"))
    assert marked["changed"] is True and marked["mark"]["migrated_to"] == "kvm1/db01"
    assert "xen2kvm-migrated-to:kvm1/db01" in pool.vm("db01").tags
    run("xen_vm_mark", over_ssh(pool, sshd, name="db01", state="absent"))
    assert pool.vm("db01").tags == [] and "xen2kvm_migrated_to" not in pool.vm("db01").other_config

    started = run("xen_vm_power", over_ssh(pool, sshd, name="db01", state="running"))
    assert started["changed"] is True and pool.vm("db01").power_state == "Running"
    stopped = run("xen_vm_power", over_ssh(pool, sshd, name="db01", state="halted", shutdown_timeout=30))
    assert stopped["power_state"] == "Halted" and pool.vm("db01").power_state == "Halted"
