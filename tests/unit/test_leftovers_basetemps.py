"""leftovers.sweep_dead_pytest_basetemps: a killed session's directory goes, a live one stays."""
import subprocess

import leftovers


def _session_dir(root, number, pid):
    path = root / ("pytest-%d" % number)
    (path / "test_x0").mkdir(parents=True)
    (path / "test_x0" / "disk0.raw").write_bytes(b"\0" * 4096)
    if pid is not None:
        (path / ".lock").write_text(str(pid))
    return path


def test_only_sessions_whose_pid_is_gone_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        killed = _session_dir(tmp_path, 7, dead.pid)
        running = _session_dir(tmp_path, 8, live.pid)
        ended = _session_dir(tmp_path, 6, None)         # lock removed at a normal end
        garbled = _session_dir(tmp_path, 9, None)
        (garbled / ".lock").write_text("not a pid")
        other = tmp_path / "not-a-session"
        other.mkdir()

        swept = leftovers.sweep_dead_pytest_basetemps(str(tmp_path))

        assert swept == [str(killed)]
        assert not killed.exists()
        assert running.exists() and ended.exists() and garbled.exists() and other.exists()
    finally:
        live.kill()
        live.wait()


def test_the_root_is_pytests_own(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(tmp_path))
    assert leftovers.pytest_basetemp_root().startswith(str(tmp_path) + "/pytest-of-")
