"""naubackup_find: the newest finished NAUBackup export, on real directory trees."""

import os

import pytest

from ansible_run import run_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.naubackup import (
    NauBackupError, find_newest_finished)


def backup(root, vm, stamp, suffix=".xva", success=True, mtime=None):
    folder = root / vm / ("backup-%s" % stamp)
    folder.mkdir(parents=True)
    xva = folder / (vm + suffix)
    xva.write_bytes(b"xva of %s" % stamp.encode())
    (folder / "vm-metadata.xml").write_text("<vm/>")
    if success:
        (folder / "success").write_text("")
    if mtime is not None:
        os.utime(folder, (mtime, mtime))
    return folder


def test_newest_finished_by_folder_name_not_mtime(tmp_path):
    backup(tmp_path, "web01", "2024-05-01-(01:00:00)", mtime=2_000_000_000)
    new = backup(tmp_path, "web01", "2024-05-10-(01:00:00)", mtime=1_000_000_000)
    backup(tmp_path, "web01", "2024-05-09-(23:59:59)")
    found = find_newest_finished(str(tmp_path), "web01")
    assert found["folder"] == str(new) and found["xva"] == str(new / "web01.xva")
    assert found["date"] == "2024-05-10T01:00:00"
    assert found["skipped"] == []


def test_unfinished_newer_backup_is_skipped_and_listed(tmp_path):
    done = backup(tmp_path, "web01", "2024-05-01-(01:00:00)")
    running = backup(tmp_path, "web01", "2024-05-02-(01:00:00)", success=False)
    found = find_newest_finished(str(tmp_path), "web01")
    assert found["xva"] == str(done / "web01.xva")
    assert [s["folder"] for s in found["skipped"]] == [str(running)]
    assert "success" in found["skipped"][0]["reason"]


def test_gzip_export_and_name_with_spaces(tmp_path):
    folder = backup(tmp_path, "My Test VM", "2024-06-01-(12:30:00)", suffix=".xva.gz")
    found = find_newest_finished(str(tmp_path), "My Test VM")
    assert found["xva"] == str(folder / "My Test VM.xva.gz")


def test_odd_folder_names_are_ignored(tmp_path):
    good = backup(tmp_path, "web01", "2024-05-01-(01:00:00)")
    for name in ("backup-2099-01-01", "backup-2099-13-01-(01:00:00)", "old", "backup-2099-01-01-(01:00:00).bak"):
        odd = tmp_path / "web01" / name
        odd.mkdir()
        (odd / "web01.xva").write_bytes(b"x")
        (odd / "success").write_text("")
    (tmp_path / "web01" / "backup-2099-02-02-(01:00:00)").write_text("a file, not a folder")
    assert find_newest_finished(str(tmp_path), "web01")["folder"] == str(good)


def test_success_without_xva_is_skipped(tmp_path):
    good = backup(tmp_path, "web01", "2024-05-01-(01:00:00)")
    empty = backup(tmp_path, "web01", "2024-05-02-(01:00:00)")
    (empty / "web01.xva").unlink()
    found = find_newest_finished(str(tmp_path), "web01")
    assert found["folder"] == str(good)
    assert "web01.xva" in found["skipped"][0]["reason"]


def test_none_finished_names_what_was_found(tmp_path):
    backup(tmp_path, "web01", "2024-05-01-(01:00:00)", success=False)
    backup(tmp_path, "web01", "2024-05-02-(01:00:00)", success=False)
    with pytest.raises(NauBackupError) as exc:
        find_newest_finished(str(tmp_path), "web01")
    msg = str(exc.value)
    assert "no finished backup of VM 'web01'" in msg
    assert "backup-2024-05-01-(01:00:00)" in msg and "backup-2024-05-02-(01:00:00)" in msg


def test_missing_vm_and_empty_vm_dir(tmp_path):
    with pytest.raises(NauBackupError, match="no backups of VM 'web02'"):
        find_newest_finished(str(tmp_path), "web02")
    (tmp_path / "web02").mkdir()
    with pytest.raises(NauBackupError, match="no backup folders"):
        find_newest_finished(str(tmp_path), "web02")
    with pytest.raises(NauBackupError, match="does not exist"):
        find_newest_finished(str(tmp_path / "nope"), "web02")


def test_module_through_ansible_in_check_mode(tmp_path):
    folder = backup(tmp_path, "Win 2019", "2024-05-01-(01:00:00)")
    backup(tmp_path, "Win 2019", "2024-05-03-(01:00:00)", success=False)
    result = run_module("naubackup_find", {"path": str(tmp_path), "vm": "Win 2019"}, check=True)
    assert result["xva"] == str(folder / "Win 2019.xva") and result["changed"] is False
    assert len(result["skipped"]) == 1
    failed = run_module("naubackup_find", {"path": str(tmp_path), "vm": "nobody"}, expect_fail=True)
    assert "no backups of VM 'nobody'" in failed["msg"]
