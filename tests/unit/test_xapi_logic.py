"""The pure parts of the live XAPI source: URLs, snapshot names and ownership, the mark plan,
error messages, and the spec built from XAPI records (the same reading as an XVA's ova.xml)."""

import socket
import ssl
import xmlrpc.client

import pytest
import XenAPI

from xva_writer import Disk, Nic, VM, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.export import (
    export_url, is_our_snapshot, snapshot_name)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.marks import (
    marked_record, plan_mark, read_mark)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import (
    XapiError, describe_failure, normalise_url, translate)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.spec import records_document, version_record
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.ova_xml import parse_ova_xml, vm_spec

POOL = "https://xenhost1"
NOW = "2026-01-02T03:04:05Z"


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize("given, expected", [
    ("xenhost1", "https://xenhost1"),
    ("xenhost1:8443", "https://xenhost1:8443"),
    ("https://xenhost1/", "https://xenhost1"),
    ("https://192.0.2.7:443", "https://192.0.2.7:443"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
])
def test_a_bare_host_means_https(given, expected):
    assert normalise_url(given) == expected


@pytest.mark.parametrize("given, message", [
    ("", "xapi_url is empty"),
    ("ftp://xenhost1", "is not an https:// URL"),
    ("https://root:pw@xenhost1", "must not carry credentials"),
    ("https://xenhost1/export?uuid=1&session_id=OpaqueRef:secret", "has a path or query"),
])
def test_bad_pool_urls_are_refused_by_name(given, message):
    with pytest.raises(XapiError, match=message) as caught:
        normalise_url(given)
    assert "secret" not in str(caught.value) and "pw@" not in str(caught.value)


def test_export_url_carries_the_compression_and_no_secret():
    assert export_url(POOL, "0f5e-1", "zstd") == "https://xenhost1/export?uuid=0f5e-1&use_compression=zstd"
    assert export_url(POOL, "0f5e-1", "gzip") == "https://xenhost1/export?uuid=0f5e-1&use_compression=gzip"
    assert export_url(POOL, "0f5e-1", "none") == "https://xenhost1/export?uuid=0f5e-1"
    assert export_url(POOL, "a b&c", "none") == "https://xenhost1/export?uuid=a+b%26c"
    with pytest.raises(XapiError, match="use_compression must be one of zstd, gzip, none, not 'lz4'"):
        export_url(POOL, "0f5e-1", "lz4")


# ------------------------------------------------------------------ snapshots


def test_snapshot_names_say_whose_and_when():
    assert snapshot_name("web01", now=1767323045) == "xen2kvm-web01-20260102T030405Z"


@pytest.mark.parametrize("record, ours", [
    ({"is_a_snapshot": True, "other_config": {"xen2kvm_snapshot_of": "vm-1"}, "name_label": "x"}, True),
    ({"is_a_snapshot": True, "other_config": {"xen2kvm_snapshot_of": "vm-2"}, "name_label": "xen2kvm-web01-1"}, False),
    ({"is_a_snapshot": True, "other_config": {}, "name_label": "xen2kvm-web01-20260101T000000Z"}, True),
    ({"is_a_snapshot": True, "other_config": {}, "name_label": "before-upgrade"}, False),
    ({"is_a_snapshot": True, "other_config": {}, "name_label": "xen2kvm-web02-20260101T000000Z"}, False),
    ({"is_a_snapshot": False, "other_config": {"xen2kvm_snapshot_of": "vm-1"}, "name_label": "xen2kvm-web01-1"},
     False),
])
def test_only_our_snapshots_of_this_vm_are_swept(record, ours):
    assert is_our_snapshot(record, "vm-1", "web01") is ours


def test_release_accepts_any_snapshot_we_made_but_nothing_else():
    assert is_our_snapshot({"is_a_snapshot": True, "other_config": {"xen2kvm_snapshot_of": "vm-9"}})
    assert is_our_snapshot({"is_a_snapshot": True, "name_label": "xen2kvm-db-20260101T000000Z"})
    assert not is_our_snapshot({"is_a_snapshot": True, "name_label": "nightly"})
    assert not is_our_snapshot({"is_a_snapshot": False, "name_label": "xen2kvm-db-20260101T000000Z"})


# ------------------------------------------------------------------ the mark


def test_marking_an_unmarked_vm():
    record = {"other_config": {"mac_seed": "x"}, "tags": ["production"]}
    plan = plan_mark(record, "present", "kvm1", "web01", NOW)
    assert plan["calls"] == [("VM.add_to_other_config", ("xen2kvm_migrated_to", "kvm1/web01")),
                             ("VM.add_to_other_config", ("xen2kvm_migrated_at", NOW)),
                             ("VM.add_tags", ("xen2kvm-migrated-to:kvm1/web01",))]
    assert plan["before"] == {"other_config": {}, "tags": []}
    after = marked_record(record, plan)
    assert after["other_config"] == {"mac_seed": "x", "xen2kvm_migrated_to": "kvm1/web01", "xen2kvm_migrated_at": NOW}
    assert after["tags"] == ["production", "xen2kvm-migrated-to:kvm1/web01"]
    assert read_mark(after) == {"kvm_host": "kvm1", "domain": "web01", "migrated_to": "kvm1/web01",
                                "migrated_at": NOW, "tag": "xen2kvm-migrated-to:kvm1/web01"}


def test_the_same_mark_again_changes_nothing_and_keeps_its_time():
    record = {"other_config": {"xen2kvm_migrated_to": "kvm1/web01", "xen2kvm_migrated_at": "2025-12-31T00:00:00Z"},
              "tags": ["xen2kvm-migrated-to:kvm1/web01"]}
    plan = plan_mark(record, "present", "kvm1", "web01", NOW)
    assert plan["calls"] == [] and plan["before"] == plan["after"]


def test_a_mark_naming_another_target_is_replaced():
    record = {"other_config": {"xen2kvm_migrated_to": "kvm1/web01", "xen2kvm_migrated_at": "2025-12-31T00:00:00Z"},
              "tags": ["xen2kvm-migrated-to:kvm1/web01", "web"]}
    plan = plan_mark(record, "present", "kvm2", "web01", NOW)
    assert plan["calls"] == [("VM.remove_from_other_config", ("xen2kvm_migrated_to",)),
                             ("VM.remove_from_other_config", ("xen2kvm_migrated_at",)),
                             ("VM.add_to_other_config", ("xen2kvm_migrated_to", "kvm2/web01")),
                             ("VM.add_to_other_config", ("xen2kvm_migrated_at", NOW)),
                             ("VM.remove_tags", ("xen2kvm-migrated-to:kvm1/web01",)),
                             ("VM.add_tags", ("xen2kvm-migrated-to:kvm2/web01",))]


def test_a_lost_tag_is_put_back_alone():
    record = {"other_config": {"xen2kvm_migrated_to": "kvm1/web01", "xen2kvm_migrated_at": NOW}, "tags": []}
    assert plan_mark(record, "present", "kvm1", "web01", "later")["calls"] == [
        ("VM.add_tags", ("xen2kvm-migrated-to:kvm1/web01",))]


def test_unmarking_removes_keys_and_tags_and_nothing_else():
    record = {"other_config": {"xen2kvm_migrated_to": "kvm1/web01", "xen2kvm_migrated_at": NOW, "keep": "1"},
              "tags": ["xen2kvm-migrated-to:kvm1/web01", "web"]}
    plan = plan_mark(record, "absent", now=NOW)
    assert plan["calls"] == [("VM.remove_from_other_config", ("xen2kvm_migrated_to",)),
                             ("VM.remove_from_other_config", ("xen2kvm_migrated_at",)),
                             ("VM.remove_tags", ("xen2kvm-migrated-to:kvm1/web01",))]
    after = marked_record(record, plan)
    assert after["other_config"] == {"keep": "1"} and after["tags"] == ["web"] and read_mark(after) == {}
    assert plan_mark(after, "absent")["calls"] == []


def test_a_mark_seen_only_as_a_tag_is_still_a_mark():
    assert read_mark({"other_config": {}, "tags": ["xen2kvm-migrated-to:kvm3/db"]})["domain"] == "db"


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize("details, expected", [
    (["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"],
     "XAPI at https://xenhost1 refused the login of user 'root': wrong user name or password "
     "(SESSION_AUTHENTICATION_FAILED)"),
    (["VM_BAD_POWER_STATE", "OpaqueRef:1", "halted, suspended", "running"],
     "VM 'web01' on pool https://xenhost1 is running, and the operation needs it halted, suspended "
     "(VM_BAD_POWER_STATE)"),
    (["HANDLE_INVALID", "VM", "OpaqueRef:1"],
     "VM 'web01' on pool https://xenhost1: the VM OpaqueRef:1 no longer exists (HANDLE_INVALID); it was removed "
     "while this ran"),
    (["UUID_INVALID", "VM", "0f5e"], "pool https://xenhost1 has no VM with uuid 0f5e (UUID_INVALID)"),
    (["OPERATION_NOT_ALLOWED", "HA is on"],
     "VM 'web01' on pool https://xenhost1: XAPI does not allow this: HA is on (OPERATION_NOT_ALLOWED)"),
    (["VM_IS_SNAPSHOT", "OpaqueRef:1", "start"],
     "VM 'web01' on pool https://xenhost1: start is not allowed on a snapshot (VM_IS_SNAPSHOT)"),
    (["SR_FULL", "1", "2"], "VM 'web01' on pool https://xenhost1: XAPI failed with SR_FULL 1 2"),
])
def test_xapi_failures_read_as_sentences(details, expected):
    assert describe_failure(details, POOL, "VM 'web01'") == expected


def test_transport_failures_name_the_pool():
    cases = [
        (ConnectionRefusedError(111, "Connection refused"), "cannot connect to XAPI at https://xenhost1: connection refused"),
        (socket.timeout("timed out"), "XAPI at https://xenhost1 did not answer in time (timed out)"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS failure talking to https://xenhost1"),
        (xmlrpc.client.ProtocolError("xenhost1/", 404, "Not Found", {}),
         "https://xenhost1 does not answer like XAPI: HTTP 404 Not Found"),
        (XenAPI.Failure(["VM_BAD_POWER_STATE", "OpaqueRef:1", "running", "halted"]),
         "VM 'web01' on pool https://xenhost1 is halted, and the operation needs it running (VM_BAD_POWER_STATE)"),
    ]
    for exc, message in cases:
        error = translate(exc, POOL, "VM 'web01'")
        assert isinstance(error, XapiError) and str(error).startswith(message), str(error)
    assert translate(XenAPI.Failure(["UUID_INVALID", "VM", "x"]), POOL).code == "UUID_INVALID"


# ------------------------------------------------------------------ spec from records


def test_the_spec_from_xapi_records_is_the_spec_of_their_export(tmp_path):
    """The records XAPI hands out are the ones an export writes into ova.xml: the same VM read
    both ways gives the same spec (but for the disks' refs, which are the records' own refs)."""
    vm = VM(name="web01", vcpus=2, vcpus_max=4, memory_bytes=3 * 1024 * 2**20, domain_type="hvm", firmware="uefi",
            secure_boot="true", tags=["web"],
            disks=[Disk(image=b"\1" * 4096, userdevice=1, device="xvdb"),
                   Disk(image=b"\2" * 4096, userdevice=0, bootable=True)],
            nics=[Nic(device=1, mac="AA:BB:CC:00:00:02", network="dmz", bridge="xenbr1"),
                  Nic(device=0, mac="aa:bb:cc:00:00:01")])
    written = write_xva(str(tmp_path / "vm.xva"), vm)
    document = parse_ova_xml(written["ova_xml"].encode())
    from_export, _ids = vm_spec(document)

    records, vm_ref, vm_record = {}, None, None
    for obj in document["objects"]:
        if obj["class"] == "VM":
            vm_ref, vm_record = obj["id"], obj["snapshot"]
        else:
            records[(obj["class"], obj["id"])] = obj["snapshot"]
    software_version = {"product_brand": "XCP-ng", "product_version": "8.2.1", "build_number": "b58",
                        "date": "2021-12-03", "hostname": "xenhost1", "xapi": "1.20"}
    live, _ids = vm_spec(records_document(vm_ref, vm_record, records, version_record(software_version)))

    assert live["source"] == {"hostname": "xenhost1", "date": "2021-12-03", "product_brand": "XCP-ng",
                              "product_version": "8.2.1", "build_number": "b58", "xapi_version": "1.20",
                              "export_vsn": 0}
    live.pop("source")
    from_export.pop("source")
    assert live == from_export
    assert (live["vcpus"], live["vcpus_max"], live["memory_mib"], live["firmware"], live["secure_boot"]) == (
        2, 4, 3072, "uefi", True)
    assert [d["userdevice"] for d in live["disks"]] == [0, 1] and [n["device"] for n in live["nics"]] == [0, 1]
    assert live["nics"][1]["mac"] == "aa:bb:cc:00:00:02"
