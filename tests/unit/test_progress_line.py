"""The progress line the xva_convert action plugin prints (issue 8 item 4), from status files as
the module writes them: parsed by read_status, formatted by progress_line."""

import json
import os
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import (
    ProgressReporter, format_duration, progress_line, read_status)

MiB = 1 << 20
GiB = 1 << 30

# Written by xva_convert while it ran (a 740 MiB VM, a slow source), and when it was done.
RUNNING = {
    "bytes_done": 325058560, "bytes_total": 775946240, "elapsed_s": 3.6, "eta_s": 5.0, "mb_per_s": 85.3,
    "percent": 41.9, "pid": 4242, "state": "running", "stream_bytes_read": 170917376,
    "stream_bytes_total": 405798912, "updated": "2026-12-01T18:23:34Z", "vm": "TestVM01",
}
DONE = {
    "bytes_done": 25165824, "bytes_total": 25165824, "elapsed_s": 0.0, "eta_s": 0.0, "mb_per_s": 791.5,
    "percent": 100.0, "pid": 12550, "state": "done", "stream_bytes_read": 13675008,
    "stream_bytes_total": 13675008, "updated": "2026-12-01T18:23:34Z", "vm": "TestVM01",
}


def test_a_running_conversion():
    assert progress_line("TestVM01", RUNNING) == "[TestVM01] convert 41% 310/740 MiB 85 MiB/s ETA 0:05"


def test_a_finished_conversion_shows_its_state_instead_of_an_eta():
    assert progress_line("web01", DONE) == "[web01] convert 100% 24/24 MiB 792 MiB/s done"


def test_all_written_but_still_running_is_finishing():
    """Syncing and, for qcow2, qemu-img convert come after the last byte: no "ETA 0:00" then."""
    status = dict(DONE, state="running")
    assert progress_line("web01", status) == "[web01] convert 100% 24/24 MiB 792 MiB/s finishing"


def test_a_failed_conversion():
    status = dict(RUNNING, state="failed", error="interrupted by SIGTERM")
    assert progress_line("web01", status) == "[web01] convert 41% 310/740 MiB 85 MiB/s failed"


def test_a_slow_start_has_no_rate_yet_and_an_unknown_eta():
    status = dict(RUNNING, bytes_done=0, percent=0.0, mb_per_s=0.0, eta_s=None)
    assert progress_line("db1", status) == "[db1] convert 0% 0/740 MiB 0.0 MiB/s ETA ?"


def test_big_disks_in_gib_and_long_etas_in_hours():
    status = dict(RUNNING, bytes_done=51 * GiB + 300 * MiB, bytes_total=200 * GiB, percent=25.6, mb_per_s=112.4,
                  eta_s=4 * 3600 + 3 * 60 + 7.4)
    assert progress_line("files", status) == "[files] convert 25% 51.3/200.0 GiB 112 MiB/s ETA 4:03:07"


def test_a_phase_is_shown_when_the_status_has_one():
    assert progress_line("vm", dict(RUNNING, phase="qcow2")).startswith("[vm] qcow2 41% ")


def test_no_total_shows_what_was_done():
    status = dict(RUNNING, bytes_total=0, percent=None, eta_s=None)
    assert progress_line("vm", status) == "[vm] convert 310 MiB 85 MiB/s ETA ?"


def test_before_the_first_status_the_wait_is_shown():
    assert progress_line("TestVM01", None, 12.4) == "[TestVM01] convert starting (0:12)"
    assert progress_line("TestVM01", None) == "[TestVM01] convert starting"


def test_format_duration():
    assert [format_duration(s) for s in (0, 5, 59.6, 61, 3599, 3600, 90061)] == [
        "0:00", "0:05", "1:00", "1:01", "59:59", "1:00:00", "25:01:01"]


def test_read_status_takes_only_a_json_object():
    assert read_status(json.dumps(RUNNING)) == RUNNING
    assert read_status("") is None
    assert read_status('{"bytes_done": 12') is None  # cut short
    assert read_status("[1, 2]") is None
    assert read_status(None) is None


def test_a_status_file_written_by_the_reporter_reads_back_into_a_line(tmp_path):
    """The real writer and the real reader: 3 of 8 MiB done, then done."""
    path = tmp_path / "status.json"
    progress = {"done": 0}
    reporter = ProgressReporter(str(path), lambda: (progress["done"], 8 * MiB, {"vm": "TestVM01"}), interval=0.05)
    with reporter:
        progress["done"] = 3 * MiB
        deadline = time.monotonic() + 5
        while (read_status(path.read_text()) or {}).get("bytes_done") != 3 * MiB:
            assert time.monotonic() < deadline, "the status file was not refreshed"
            time.sleep(0.02)
        running = read_status(path.read_text())
        line = progress_line("TestVM01", running)
        assert running["pid"] == os.getpid() and running["state"] == "running"
        assert line.startswith("[TestVM01] convert 37% 3/8 MiB ") and " MiB/s ETA " in line
        progress["done"] = 8 * MiB
    final = read_status(path.read_text())
    assert progress_line("TestVM01", final).startswith("[TestVM01] convert 100% 8/8 MiB ")
    assert progress_line("TestVM01", final).endswith(" done")
