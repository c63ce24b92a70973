"""Unit tests for plugins/module_utils/_libvirt/boot_check.py with a fake libvirt domain."""
import re

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt import boot_check as bc

LOG_XML = """<domain><devices><serial type='pty'>
<log file='{path}' append='{append}'/></serial></devices></domain>"""


class FakeDom:
    def __init__(self, log_path, active=False, append="off", on_create=None):
        self.log_path, self.active, self.append = log_path, active, append
        self.on_create = on_create
        self.created = 0

    def XMLDesc(self, flags=0):
        return LOG_XML.format(path=self.log_path, append=self.append)

    def isActive(self):
        return self.active

    def create(self):
        self.created += 1
        self.active = True
        if self.on_create:
            self.on_create()

    paused = None              # (reason, {disk: virDomainDiskErrorCode}) once qemu paused it

    def state(self):
        if self.paused:
            return (3, self.paused[0])
        return (1 if self.active else 5, 0)

    def diskErrors(self, flags=0):
        return dict(self.paused[1]) if self.paused else {}


class FakeConn:
    def close(self):
        pass


class Clock:
    def __init__(self):
        self.now = 100.0
        self.hooks = {}

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        for at, hook in list(self.hooks.items()):
            if self.now >= at:
                hook()
                del self.hooks[at]


@pytest.fixture
def env(monkeypatch, tmp_path):
    log = tmp_path / "serial.log"
    state = {"dom": None, "agent": False}
    monkeypatch.setattr(bc, "connect", lambda uri: FakeConn())
    monkeypatch.setattr(bc, "find_domain", lambda conn, name: state["dom"])
    monkeypatch.setattr(bc, "agent_ping", lambda dom, timeout=2: state["agent"])
    monkeypatch.setattr(bc, "libvirt", type("L", (), {"libvirtError": Exception}))
    return log, state


def run(clock, **params):
    params.setdefault("name", "vm")
    params.setdefault("poll_interval", 1)
    return bc.boot_check(params, clock=clock, sleep=clock.sleep)


def test_default_regex():
    rx = re.compile(bc.DEFAULT_LOGIN_REGEX)
    assert rx.search("debian login: ")
    assert rx.search("web01.example.com login:")
    assert not rx.search("Last login: Mon Jan  1")
    assert not rx.search(" login: ")


def test_console_lines_cleans(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(b"\x1b[0mabc\r\ndef\rghi\n\xffbad\nxen login: ")
    assert bc.console_lines(str(p)) == ["abc", "def", "ghi", "\ufffdbad", "xen login: "]
    assert bc.console_lines(str(p), offset=9) == ["def", "ghi", "\ufffdbad", "xen login: "]
    assert bc.console_lines(str(p), offset=10 ** 6) == bc.console_lines(str(p))  # truncated log
    assert bc.console_lines(str(tmp_path / "missing")) == []


def test_find_login_and_tail():
    rx = re.compile(bc.DEFAULT_LOGIN_REGEX)
    lines = ["a", "h login: ", "b", "h login: ", ""]
    assert bc.find_login(lines, rx) == 3
    assert bc.find_login(["x"], rx) is None
    assert bc.tail(["%d" % i for i in range(100)] + ["", ""]).splitlines() == \
        ["%d" % i for i in range(60, 100)]


def test_login_after_start(env):
    log, state = env
    clock = Clock()
    log.write_text("old boot\nold login: \n")
    state["dom"] = FakeDom(str(log), on_create=lambda: log.write_text("booting\n"))
    lines = "\n".join("line %d" % i for i in range(30))
    clock.hooks[clock.now + 5] = lambda: log.write_text("booting\n%s\nvm login: " % lines)
    r = run(clock, timeout=60)
    assert r["changed"] and r["started"] and r["method"] == "login"
    assert r["seconds"] == 5.0
    banner = r["banner"].splitlines()
    assert len(banner) == 20 and banner[-1] == "vm login: " and banner[0] == "line 11"
    assert state["dom"].created == 1


def test_append_log_only_new_output_counts(env):
    log, state = env
    clock = Clock()
    log.write_text("previous boot\nvm login: \n")

    def grow():
        with open(str(log), "a") as f:
            f.write("new boot\nvm login: ")
    state["dom"] = FakeDom(str(log), append="on")
    clock.hooks[clock.now + 3] = grow
    r = run(clock, timeout=60)
    assert r["seconds"] == 3.0 and r["banner"] == "new boot\nvm login: "


def test_agent(env):
    log, state = env
    clock = Clock()
    state["dom"] = FakeDom(str(log), active=True)
    clock.hooks[clock.now + 2] = lambda: state.update(agent=True)
    r = run(clock, timeout=60, wait_for="agent")
    assert r["method"] == "agent" and not r["changed"] and r["seconds"] == 2.0


def test_login_only_ignores_agent(env):
    log, state = env
    clock = Clock()
    state["agent"] = True
    state["dom"] = FakeDom(str(log), active=True)
    log.write_text("kernel\n")
    with pytest.raises(bc.BootCheckError) as err:
        run(clock, timeout=10, wait_for="login")
    assert "no login prompt after 10 s" in str(err.value)
    assert err.value.details["tail"] == "kernel"


def test_timeout_tail(env):
    log, state = env
    clock = Clock()
    state["dom"] = FakeDom(str(log), on_create=lambda: log.write_text(
        "\n".join("msg %d" % i for i in range(100)) + "\n"))
    with pytest.raises(bc.BootCheckError) as err:
        run(clock, timeout=30)
    tail = err.value.details["tail"].splitlines()
    assert tail == ["msg %d" % i for i in range(60, 100)]
    assert "msg 99" in str(err.value) and "msg 59" not in str(err.value)
    assert err.value.details["started"] and err.value.details["changed"]


def test_domain_stops(env):
    log, state = env
    clock = Clock()
    dom = FakeDom(str(log), on_create=lambda: log.write_text("Kernel panic\n"))
    state["dom"] = dom
    clock.hooks[clock.now + 4] = lambda: setattr(dom, "active", False)
    with pytest.raises(bc.BootCheckError, match="stopped after 4 s"):
        run(clock, timeout=30)


def test_a_guest_paused_on_a_full_disk_fails_at_once(env):
    log, state = env
    clock = Clock()
    dom = FakeDom(str(log), on_create=lambda: log.write_text("Booting Debian\nLoading initial ramdisk\n"))
    state["dom"] = dom
    clock.hooks[clock.now + 7] = lambda: setattr(dom, "paused", (5, {"vda": 2, "vdb": 0}))
    with pytest.raises(bc.BootCheckError) as err:
        run(clock, timeout=900)
    assert "paused after 7 s on a disk error (vda: no space left on the KVM host's filesystem" in str(err.value)
    assert "vdb" not in str(err.value)
    assert err.value.details["tail"].endswith("Loading initial ramdisk")
    assert err.value.details["state"] == "paused" and err.value.details["started"]


def test_a_paused_guest_without_a_disk_error_is_waited_for(env):
    """Paused by someone (reason 'user'), not by qemu: it may be resumed, so the timeout decides."""
    log, state = env
    clock = Clock()
    dom = FakeDom(str(log), active=True)
    dom.paused = (1, {})
    state["dom"] = dom
    clock.hooks[clock.now + 5] = lambda: (setattr(dom, "paused", None), log.write_text("vm login: "))
    assert run(clock, timeout=60)["seconds"] == 5.0


def test_io_error_pause_names_an_unknown_error():
    dom = FakeDom("/nonexistent")
    dom.paused = (5, {"sda": 1})
    assert bc.io_error_pause(dom) == "sda: an I/O error"
    dom.paused = (5, {})
    assert bc.io_error_pause(dom) == "a disk error libvirt did not name"


def test_check_mode_and_errors(env):
    log, state = env
    clock = Clock()
    state["dom"] = FakeDom(str(log))
    r = bc.boot_check({"name": "vm"}, check_mode=True, clock=clock, sleep=clock.sleep)
    assert r["changed"] and state["dom"].created == 0
    with pytest.raises(bc.BootCheckError, match="start=false"):
        run(clock, start=False)
    state["dom"] = None
    with pytest.raises(bc.BootCheckError, match="does not exist"):
        run(clock)


GETTY_FAILED = """Loading initial ramdisk ...
[ TIME ] Timed out waiting for device \x1b[0;1;39mdev-ttyS0.device\x1b[0m - /dev/ttyS0.
[DEPEND] Dependency failed for seri\u2026rvice - Serial Getty on ttyS0.
[  OK  ] Reached target getty.target - Login Prompts.
"""


def test_a_serial_getty_that_will_not_start_fails_the_login_wait_at_once(env):
    """systemd gave up on ttyS0's getty (its device timed out): no login: can come, so the check
    says so instead of waiting out its timeout."""
    log, state = env
    clock = Clock()
    dom = FakeDom(str(log), on_create=lambda: log.write_text("Booting Debian\n"))
    state["dom"] = dom
    clock.hooks[clock.now + 95] = lambda: log.write_text(GETTY_FAILED)
    with pytest.raises(bc.BootCheckError) as err:
        run(clock, timeout=600, wait_for="login")
    msg = str(err.value)
    assert "no login prompt can come on its serial console after 95 s" in msg
    assert "'[DEPEND] Dependency failed for seri\u2026rvice - Serial Getty on ttyS0.'" in msg
    assert "wait_for=any" in msg
    assert "Timed out waiting for device dev-ttyS0.device" in err.value.details["tail"]
    assert err.value.details["seconds"] == 95.0 and err.value.details["started"]


def test_a_failed_serial_getty_leaves_the_agent_to_answer(env):
    """With wait_for=any the guest agent may still prove the boot."""
    log, state = env
    clock = Clock()
    state["dom"] = FakeDom(str(log), on_create=lambda: log.write_text(GETTY_FAILED))
    clock.hooks[clock.now + 30] = lambda: state.update(agent=True)
    assert run(clock, timeout=600, wait_for="any")["method"] == "agent"


def test_serial_getty_failure_reads_only_ttyS0_and_older_systemd():
    assert bc.serial_getty_failure(["[DEPEND] Dependency failed for Serial Getty on ttyS1."]) is None
    assert bc.serial_getty_failure(["[  OK  ] Started serial-getty@ttyS0.service - Serial Getty on ttyS0."]) is None
    assert bc.serial_getty_failure(["[DEPEND] Dependency failed for Serial Getty on ttyS0."]) == \
        "[DEPEND] Dependency failed for Serial Getty on ttyS0."
