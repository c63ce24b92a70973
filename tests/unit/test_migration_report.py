"""migration_report: entries from migrate.yml's records, merged by VM name, rendered, written
atomically; and the module itself through ansible-playbook."""

import json
import os

import pytest

from ansible_run import run_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._report.report import (
    ReportError, normalize_record, render_markdown, write_report)

GIB = 1024 ** 3


def migrated(vm="web01", **extra):
    record = {
        "vm": vm, "status": "migrated", "source": "/backup/%s/%s.xva" % (vm, vm), "kvm_host": "kvm1",
        "domain": vm, "domain_type": "qemu", "converted": True,
        "stage_seconds": {"xen_source": "0.52", "transfer": 0.1, "kvm_preflight": 0.4, "convert": 10.0,
                          "fixup": 20.04, "kvm_import": 30.0},
        "disks": [{"path": "/img/%s-disk0.raw" % vm, "format": "raw", "virtual_size": 2 * GIB,
                   "allocated_bytes": 123456, "seconds": 4.0},
                  {"path": "/img/%s-disk1.raw" % vm, "format": "raw", "virtual_size": GIB, "seconds": "2.0"}],
        "fixups": ["console", "fstab", "console"], "login_seconds": "41.26", "boot_method": "login",
        "failed_stage": None, "error": None,
    }
    record.update(extra)
    return record


def failed(vm="db01"):
    return {"vm": vm, "status": "failed", "kvm_host": "kvm1", "source": "/backup/db01.xva",
            "stage_seconds": {"xen_source": 0.3}, "disks": [], "converted": False,
            "failed_stage": "xen_source", "error": "checksum mismatch in Ref:12/00000003 | bad", "fixups": []}


def test_entry_sums_disks_and_stages_and_computes_conversion_speed():
    entry = normalize_record(migrated(), "2026-12-01T00:00:00+00:00")
    assert entry["disk_bytes"] == 3 * GIB
    assert [disk["virtual_bytes"] for disk in entry["disks"]] == [2 * GIB, GIB]
    assert entry["stage_seconds"]["xen_source"] == 0.5 and entry["stage_seconds"]["fixup"] == 20.0
    assert entry["total_seconds"] == 61.0
    assert entry["conversion_mb_per_s"] == 512.0  # 3072 MiB in 6 s
    assert entry["fixups"] == ["console", "fstab"]
    assert entry["login_seconds"] == 41.3
    assert entry["failed_stage"] is None and entry["error"] is None


def test_an_export_urls_credentials_never_reach_the_report():
    url = "https://root:Pool-pw-1@xenhost1/export?uuid=5d1c&session_id=OpaqueRef:77aa"
    entry = normalize_record(migrated(source=url), "2026-12-01T00:00:00+00:00")
    assert entry["source"] == "https://xenhost1/export?uuid=5d1c&session_id=********"
    markdown = render_markdown([entry], "2026-12-01T00:00:00+00:00")
    assert "Pool-pw-1" not in markdown and "77aa" not in markdown and "xenhost1" in markdown


def test_an_unchanged_run_has_no_conversion_speed():
    entry = normalize_record(migrated(status="unchanged", converted=False), "now")
    assert entry["conversion_mb_per_s"] is None and entry["status"] == "unchanged"


@pytest.mark.parametrize("record, words", [
    ({"status": "migrated"}, "without a VM name"),
    ({"vm": "x", "status": "done"}, "status 'done'"),
])
def test_bad_records_are_refused(record, words):
    with pytest.raises(ReportError, match=words):
        normalize_record(record, "now")


def test_markdown_lists_each_vm_with_its_error_and_escapes_pipes():
    entries = [normalize_record(r, "now") for r in (failed(), migrated())]
    text = render_markdown(entries, "now")
    lines = text.splitlines()
    assert "VMs: 1 migrated, 0 unchanged, 1 failed." in text
    db_row = next(line for line in lines if line.startswith("| db01 |"))
    assert "| failed |" in db_row and "xen_source: checksum mismatch in Ref:12/00000003 \\| bad" in db_row
    web_row = next(line for line in lines if line.startswith("| web01 |"))
    assert "| migrated |" in web_row and "convert 10.0" in web_row and "| 512.0 |" in web_row
    assert "console, fstab" in web_row
    assert "- web01: `/img/web01-disk1.raw` (raw, 1073741824 bytes)" in lines


def test_a_rerun_replaces_its_vms_and_keeps_the_others(tmp_path):
    write_report(str(tmp_path), [migrated("web01"), failed("db01")], "t1")
    result = write_report(str(tmp_path), [migrated("db01", status="migrated")], "t2")
    data = json.loads((tmp_path / "migration-report.json").read_text())
    by_vm = {entry["vm"]: entry for entry in data["vms"]}
    assert sorted(by_vm) == ["db01", "web01"]
    assert by_vm["db01"]["status"] == "migrated" and by_vm["db01"]["updated"] == "t2"
    assert by_vm["db01"]["error"] is None
    assert by_vm["web01"]["updated"] == "t1"
    assert result["summary"] == "1 migrated, 0 unchanged, 0 failed"
    markdown = (tmp_path / "migration-report.md").read_text()
    assert "| web01 | migrated" in markdown and "| db01 | migrated" in markdown
    assert sorted(os.listdir(tmp_path)) == ["migration-report.json", "migration-report.md"]  # no temp left


def test_the_same_content_is_not_rewritten(tmp_path):
    assert write_report(str(tmp_path), [migrated()], "t1")["changed"] is True
    assert write_report(str(tmp_path), [migrated()], "t1")["changed"] is False


def test_a_foreign_json_file_is_not_overwritten(tmp_path):
    (tmp_path / "migration-report.json").write_text('{"something": "else"}')
    with pytest.raises(ReportError, match="not a migration report"):
        write_report(str(tmp_path), [migrated()], "t1")
    assert (tmp_path / "migration-report.json").read_text() == '{"something": "else"}'
    assert not (tmp_path / "migration-report.md").exists()


def test_module_writes_and_merges_through_ansible(tmp_path):
    first = run_module("migration_report", {"dir": str(tmp_path / "r"), "records": [migrated(), failed()]})
    assert first["changed"] is True and first["summary"] == "1 migrated, 0 unchanged, 1 failed"
    assert first["json"] == str(tmp_path / "r" / "migration-report.json")
    second = run_module("migration_report", {"dir": str(tmp_path / "r"),
                                             "records": [migrated(status="unchanged", converted=False)]})
    assert [entry["vm"] for entry in second["vms"]] == ["db01", "web01"]
    assert [entry["status"] for entry in second["vms"]] == ["failed", "unchanged"]


def test_module_refuses_a_bad_record_cleanly(tmp_path):
    result = run_module("migration_report", {"dir": str(tmp_path), "records": [{"vm": "x"}]}, expect_fail=True)
    assert "status None is not one of migrated, unchanged, failed" in result["msg"]
    assert os.listdir(tmp_path) == []


def test_module_in_check_mode_writes_nothing(tmp_path):
    result = run_module("migration_report", {"dir": str(tmp_path / "r"), "records": [migrated()]}, check=True)
    assert result["records"][0]["vm"] == "web01"
    assert not (tmp_path / "r").exists()


def live(vm="web02", **extra):
    """A VM exported live from a pool (shutdown mode) whose conversion took 8 s for 3 GiB."""
    stage_seconds = dict(migrated()["stage_seconds"], export=12.0, convert=8.0)
    return migrated(vm, source="https://pool1.example/export?uuid=5d1c&use_compression=zstd",
                    source_pool="pool1", export_mode="shutdown", stage_seconds=stage_seconds, **extra)


def test_a_live_export_records_its_pool_mode_and_export_speed():
    entry = normalize_record(live(), "now")
    assert entry["source_pool"] == "pool1" and entry["export_mode"] == "shutdown"
    assert entry["export_mb_per_s"] == 384.0  # 3072 MiB over the 8 s of the export->convert stream
    assert entry["stage_seconds"]["export"] == 12.0 and entry["rollback"] is None
    row = next(line for line in render_markdown([entry], "now").splitlines() if line.startswith("| web02 |"))
    assert "| pool1 | shutdown |" in row and "| 384.0 |" in row
    assert "xen_source 0.5 transfer 0.1 kvm_preflight 0.4 export 12.0 convert 8.0" in row


def test_an_xva_source_has_no_pool_fields_and_a_rerun_no_export_speed():
    entry = normalize_record(migrated(), "now")
    assert (entry["source_pool"], entry["export_mode"], entry["export_mb_per_s"], entry["rollback"]) == (
        None, None, None, None)
    unchanged = normalize_record(live(status="unchanged", converted=False), "now")
    assert unchanged["export_mb_per_s"] is None and unchanged["export_mode"] == "shutdown"


def test_a_rollback_is_reported_with_the_failure():
    record = live(status="failed", failed_stage="kvm_import", error="no login: prompt within 600 s",
                  rollback="source started again and unmarked")
    entry = normalize_record(record, "now")
    assert entry["rollback"] == "source started again and unmarked"
    row = next(line for line in render_markdown([entry], "now").splitlines() if line.startswith("| web02 |"))
    assert row.endswith("| kvm_import: no login: prompt within 600 s | source started again and unmarked |"), row


def test_module_keeps_the_live_fields_through_ansible(tmp_path):
    result = run_module("migration_report", {"dir": str(tmp_path), "records": [live()]})
    entry = result["records"][0]
    assert (entry["source_pool"], entry["export_mode"], entry["export_mb_per_s"]) == ("pool1", "shutdown", 384.0)
    saved = json.loads((tmp_path / "migration-report.json").read_text())["vms"][0]
    assert saved["export_mb_per_s"] == 384.0 and saved["source"].startswith("https://pool1.example/export?")
