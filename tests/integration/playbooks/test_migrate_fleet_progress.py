"""A fleet exported live over XAPI's HTTP /export (the XAPI stand-in, at a limited rate as a busy
pool's link would send), three VMs with --forks 3 through playbooks/migrate.yml: every VM shows
its progress (percent, MiB/s, ETA) at least every 10 s while it converts, with no FAILED -
RETRYING walls, all three boot to login:, the report has a row for each, and the pool's
password reaches neither the output nor the report. The whole output and the report are kept in
tests/output/fleet-progress.log and fleet-report.md for a look at what a user sees."""
import pathlib
import re
import uuid

import pytest

from _play import KVM_HOST, QUIET_HOST, REPO, guest_xva, play_streaming, report
from xapi_double import XapiDouble, XapiVM

# second_lane: boots guests of its own; its checks look at its own VMs only
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.second_lane]

PASSWORD = "Fleet-pw-9d1e-not-in-output"
PROGRESS = re.compile(r"^\[(?P<vm>[\w-]+)\] convert (?P<pct>\d+)% [\d.]+/[\d.]+ [MG]iB [\d.]+ MiB/s ETA ")
RATE = 40 << 20  # per export: ~700 MiB of guest data takes about 18 s


def test_a_fleet_over_http_shows_progress_and_boots(qemu_tmp, conn, remove_domain):
    names = ["x2k-fleet-%d-%s" % (i, uuid.uuid4().hex[:6]) for i in range(3)]
    xvas = [guest_xva(qemu_tmp, name) for name in names]
    vms = [XapiVM(name, xva) for name, xva in zip(names, xvas)]
    try:
        with XapiDouble(vms, password=PASSWORD, bytes_per_second=RATE) as xapi:
            authed = xapi.url.replace("http://", "http://root:%s@" % PASSWORD)
            hosts = {vm.name: dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost",
                                   xva="%s/export?uuid=%s" % (authed, vm.uuid)) for vm in vms}
            inventory = {"all": {"children": {
                # two slots, as on the two cores here: three TCG guests booting at once beside
                # the other lane starve their udev past systemd's 90 s device timeout (no ttyS0
                # getty, no login:); the third VM waits for a slot, as in a fleet larger than its host
                "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(qemu_tmp / "images"),
                                                          max_parallel=2)}},
                "xen_vms": {"hosts": hosts}}}}
            lines = play_streaming(qemu_tmp, inventory, "--forks", "3", "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        output = "".join(text for _at, text in lines)
        kept = pathlib.Path(REPO) / "tests" / "output" / "fleet-progress.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(
            "".join("%7.1f %s" % (at, text) for at, text in lines))
        assert lines[-1][1].startswith("rc 0"), output
        assert "FAILED - RETRYING" not in output and "ASYNC POLL" not in output
        assert PASSWORD not in output
        for name in names:
            seen = [(at, int(m.group("pct"))) for at, text in lines
                    for m in [PROGRESS.match(text)] if m and m.group("vm") == name]
            assert len(seen) >= 2, (name, output)
            assert all(later - earlier <= 10 for (earlier, _p1), (later, _p2) in zip(seen, seen[1:])), seen
            assert [pct for _at, pct in seen] == sorted(pct for _at, pct in seen), seen
        entries, markdown = report(qemu_tmp / "reports")
        kept.with_name("fleet-report.md").write_text(markdown)
        for name in names:
            assert entries[name]["status"] == "migrated" and entries[name]["login_seconds"] > 0, entries[name]
            assert re.search(r"^\| %s \| migrated \| localhost \|" % re.escape(name), markdown, re.M), markdown
        assert PASSWORD not in markdown + str(entries)
    finally:
        for name in names:
            remove_domain(conn, name, logs=True)
