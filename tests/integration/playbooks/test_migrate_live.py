"""playbooks/migrate.yml with a live source: VMs found on a pool (group xen_hosts) and exported
through XAPI, against the XAPI double over HTTPS on 127.0.0.1 (its self-signed certificate given
as xapi_ca_path, never validate_certs: false), with this machine as the KVM host.

- snapshot mode: a run killed with SIGTERM during the export leaves its snapshot behind (ansible-core
  runs no `always` section on SIGTERM: its handler forwards the signal to the workers and kills
  itself); the next run sweeps it, migrates the VM with its NICs' links down, releases its own
  snapshot and leaves no session; the source keeps running, unmarked; a third run changes nothing;
- shutdown mode: the source is stopped, exported, marked with the KVM host and domain, stays
  halted; a rerun sees the mark and does not export again;
- rollback: a boot check that fails, or an export cut mid-stream, after shutdown mode stopped the
  source starts it again and removes its mark (unless rollback: false), and the report says so;
- a wrong password fails clearly in xen_source, leaving no session, snapshot or image.

The guest-booting tests boot one guest each (deb12-pv, chroot fixup engine); run them under
`flock /tmp/xen2kvm-heavy.lock`.
"""
import os
import re
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from _play import KVM_HOST, QUIET_HOST, _playbook_run, guest_xva, play, recap, report
from xapi_double import XapiDouble, XapiVM
from xva_writer import VM, Disk, write_xva

pytestmark = [pytest.mark.slow, pytest.mark.root]

PASSWORD = "Pool-pw-4c2e-not-in-output"
POOL = "pool1"
PROGRESS = re.compile(r"^\[(?P<vm>[\w-]+)\] convert (?P<pct>\d+)% ")


def inventory(xapi, images, vms, password=PASSWORD):
    """kvm_hosts: this machine; xen_hosts: the double as pool1 (its CA file trusted); ``vms``:
    name -> per-VM variables (xen_host pool1 and kvm_host localhost added)."""
    return {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images))}},
        "xen_hosts": {"hosts": {POOL: {"xapi_url": xapi.url, "xapi_username": "root", "xapi_password": password,
                                       "xapi_ca_path": xapi.ca_file}}},
        "xen_vms": {"hosts": {name: dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost",
                                         xen_host=POOL, **extra) for name, extra in vms.items()}},
    }}}


def small_xva(workdir, name):
    """An XVA with one 3 MiB disk of random data: converts, but no fixup or boot would pass."""
    path = workdir / (name + ".xva")
    write_xva(str(path), VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(3 << 20), userdevice=0)]),
              checksum="sha1")
    return str(path)


def domain(conn, name):
    return ET.fromstring(conn.lookupByName(name).XMLDesc(0))


def link_states(conn, name):
    return [(iface.find("link").get("state") if iface.find("link") is not None else "up")
            for iface in domain(conn, name).findall("devices/interface")]


def mark_of(vm):
    return vm.other_config.get("xen2kvm_migrated_to"), [tag for tag in vm.tags if tag.startswith("xen2kvm-")]


def images_left(images, name):
    return sorted(p for p in (os.listdir(images) if images.exists() else []) if name in p)


def killed_during_the_export(workdir, inv, name, *extra):
    """Run migrate.yml and send ansible-playbook SIGTERM once the VM's conversion shows progress."""
    cmd, env = _playbook_run(workdir, inv, extra)
    lines = []
    with subprocess.Popen(cmd, cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line)
            match = PROGRESS.match(line)
            if match and match.group("vm") == name and int(match.group("pct")) > 0:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[0]
    return proc.returncode, "".join(lines) + rest


def wait_until(check, seconds=30):
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    return check()


@pytest.mark.second_lane  # boots a guest; its checks look at its own VM only
def test_snapshot_mode_killed_then_rerun_sweeps_and_migrates_with_links_down(qemu_tmp, conn, vm_names):
    name = vm_names("x2k-live-snap")
    images = qemu_tmp / "images"
    xva = guest_xva(qemu_tmp, name)
    args = ["-e", "report_dir=%s" % (qemu_tmp / "reports")]
    with XapiDouble([XapiVM(name, xva, power_state="Running")], password=PASSWORD, tls=True,
                    bytes_per_second=20 << 20) as xapi:
        inv = inventory(xapi, images, {name: {"export_mode": "snapshot"}})

        rc, output = killed_during_the_export(qemu_tmp, inv, name, *args)
        assert rc != 0, output
        # No `always` ran: the snapshot is left for the next run's sweep; the modules' sessions
        # were closed by the modules themselves.
        stale = [snap["uuid"] for snap in xapi.snapshots()]
        assert len(stale) == 1, output
        assert wait_until(lambda: xapi.live_sessions() == 0)
        assert wait_until(lambda: images_left(images, name) == []), images_left(images, name)  # no half image

        xapi.bytes_per_second = None
        rc, output = play(qemu_tmp, inv, *args)
        assert rc == 0, output
        assert xapi.snapshots() == [] and xapi.live_sessions() == 0, (xapi.snapshots(), xapi.live_sessions())
        assert stale[0] not in [vm.uuid for vm in xapi.vms]  # swept by xen_vm_export
        source = xapi.vm(name)
        assert source.power_state == "Running" and mark_of(source) == (None, [])
        assert link_states(conn, name) and set(link_states(conn, name)) == {"down"}
        assert conn.lookupByName(name).isActive()
        assert PASSWORD not in output
        entries, markdown = report(qemu_tmp / "reports")
        entry = entries[name]
        assert entry["status"] == "migrated" and entry["login_seconds"] > 0, entry
        assert (entry["source_pool"], entry["export_mode"], entry["rollback"]) == (POOL, "snapshot", None), entry
        assert entry["export_mb_per_s"] > 0 and "export" in entry["stage_seconds"], entry
        assert entry["source"].startswith(xapi.url + "/export?") and PASSWORD not in markdown
        assert re.search(r"^\| %s \| migrated \| localhost \| \S+ \| %s \| snapshot \|" % (name, POOL), markdown, re.M)

        snapshots_made = [call for call in xapi.calls if call[0] == "VM.snapshot"]
        rc, output = play(qemu_tmp, inv, *args)
        assert rc == 0, output
        assert recap(output, name)["changed"] == 0, output
        assert [call for call in xapi.calls if call[0] == "VM.snapshot"] == snapshots_made
        assert xapi.snapshots() == [] and xapi.live_sessions() == 0
        entries, _markdown = report(qemu_tmp / "reports")
        assert entries[name]["status"] == "unchanged", entries[name]


@pytest.mark.second_lane  # boots a guest; its checks look at its own VM only
def test_shutdown_mode_leaves_the_source_halted_and_marked_and_a_rerun_sees_the_mark(qemu_tmp, conn, vm_names):
    name = vm_names("x2k-live-shut")
    xva = guest_xva(qemu_tmp, name)
    args = ["-e", "report_dir=%s" % (qemu_tmp / "reports")]
    with XapiDouble([XapiVM(name, xva, power_state="Running")], password=PASSWORD, tls=True) as xapi:
        inv = inventory(xapi, qemu_tmp / "images", {name: {"export_mode": "shutdown", "export_compression": "gzip"}})
        rc, output = play(qemu_tmp, inv, *args)
        assert rc == 0, output
        source = xapi.vm(name)
        assert source.power_state == "Halted"
        assert mark_of(source) == ("localhost/%s" % name, ["xen2kvm-migrated-to:localhost/%s" % name]), mark_of(source)
        assert [compression for _uuid, compression in xapi.exports] == ["gzip"]
        assert xapi.snapshots() == [] and xapi.live_sessions() == 0
        assert "down" not in link_states(conn, name) and conn.lookupByName(name).isActive()
        entries, _markdown = report(qemu_tmp / "reports")
        entry = entries[name]
        assert entry["status"] == "migrated" and entry["export_mode"] == "shutdown" and entry["rollback"] is None, entry

        rc, output = play(qemu_tmp, inv, *args)
        assert rc == 0, output
        assert recap(output, name)["changed"] == 0, output
        assert len(xapi.exports) == 1  # not exported again
        assert xapi.vm(name).power_state == "Halted" and xapi.live_sessions() == 0
        entries, _markdown = report(qemu_tmp / "reports")
        assert entries[name]["status"] == "unchanged", entries[name]


@pytest.mark.second_lane  # boots a guest; its checks look at its own VM only
def test_a_failed_boot_check_starts_the_source_again_and_unmarks_it(qemu_tmp, conn, vm_names):
    """The boot check gives up after 3 s (a TCG guest needs far longer): the domain is powered off,
    the source that shutdown mode stopped runs again, without a mark; the report says so."""
    name = vm_names("x2k-live-back")
    xva = guest_xva(qemu_tmp, name)
    with XapiDouble([XapiVM(name, xva, power_state="Running")], password=PASSWORD, tls=True) as xapi:
        inv = inventory(xapi, qemu_tmp / "images", {name: {"export_mode": "shutdown", "kvm_import_boot_timeout": 3}})
        rc, output = play(qemu_tmp, inv, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc != 0, output
        source = xapi.vm(name)
        assert source.power_state == "Running" and mark_of(source) == (None, []), (source.power_state, mark_of(source))
        assert not conn.lookupByName(name).isActive()  # never two live copies
        assert xapi.live_sessions() == 0
        entries, markdown = report(qemu_tmp / "reports")
        entry = entries[name]
        assert entry["status"] == "failed" and entry["failed_stage"] == "kvm_import", entry
        assert entry["rollback"] == "source started again and unmarked", entry
        assert "| source started again and unmarked |" in markdown


@pytest.mark.parametrize("rollback", [True, False])
def test_an_export_cut_mid_stream_rolls_back_unless_told_not_to(qemu_tmp, vm_names, rollback):
    name = vm_names("x2k-live-cut")
    images = qemu_tmp / "images"
    xva = small_xva(qemu_tmp, name)
    with XapiDouble([XapiVM(name, xva, power_state="Running")], password=PASSWORD, tls=True,
                    cut_after=1 << 20) as xapi:
        inv = inventory(xapi, images, {name: {"export_mode": "shutdown", "rollback": rollback}})
        rc, output = play(qemu_tmp, inv, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc != 0, output
        source = xapi.vm(name)
        assert source.power_state == ("Running" if rollback else "Halted")
        assert mark_of(source) == (None, []) and xapi.live_sessions() == 0 and xapi.snapshots() == []
        assert images_left(images, name) == []
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["failed_stage"] == "convert", entry
        assert entry["rollback"] == ("source started again and unmarked" if rollback
                                     else "disabled: the source stays halted (rollback: false)"), entry


def test_a_wrong_password_fails_clearly_and_leaves_nothing(qemu_tmp):
    """-e vm=NAME of no inventory VM is looked for on the only pool of xen_hosts."""
    name = "x2k-live-pw-%s" % uuid.uuid4().hex[:6]
    images = qemu_tmp / "images"
    xva = small_xva(qemu_tmp, name)
    wrong = "Wrong-pw-77e1"
    with XapiDouble([XapiVM(name, xva, power_state="Running")], password=PASSWORD, tls=True) as xapi:
        inv = inventory(xapi, images, {}, password=wrong)
        rc, output = play(qemu_tmp, inv, "-e", "vm=%s" % name, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc != 0, output
        assert xapi.live_sessions() == 0 and xapi.snapshots() == [] and xapi.exports == []
        assert xapi.vm(name).power_state == "Running"
        assert wrong not in output and PASSWORD not in output
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["failed_stage"] == "xen_source" and entry["source_pool"] == POOL, entry
        assert re.search(r"authenticat", entry["error"], re.I) and xapi.url.split("//")[1] in entry["error"], entry
        assert wrong not in str(entry)
        assert images_left(images, name) == []


@pytest.mark.parametrize("case, words", [
    ("marked elsewhere", "is marked as migrated to kvm9/{name} at 2026-11-30T01:00:00+00:00, not to localhost; "
                         "it is not exported again"),
    ("marked and running", "is marked as migrated to localhost/{name} at 2026-11-30T01:00:00+00:00, yet it is Running "
                           "on Xen: two live copies"),
    ("halted mode", "is Running; export mode halted needs a halted VM"),
])
def test_a_vm_the_mode_or_mark_rules_out_stops_before_anything_is_exported(qemu_tmp, case, words):
    name = "x2k-live-rule-%s" % uuid.uuid4().hex[:6]
    target = {"marked elsewhere": "kvm9", "marked and running": "localhost"}.get(case)
    other_config = {"xen2kvm_migrated_to": "%s/%s" % (target, name),
                    "xen2kvm_migrated_at": "2026-11-30T01:00:00+00:00"} if target else {}
    power = "Halted" if case == "marked elsewhere" else "Running"
    vm = XapiVM(name, small_xva(qemu_tmp, name), power_state=power, other_config=other_config)
    with XapiDouble([vm], password=PASSWORD, tls=True) as xapi:
        inv = inventory(xapi, qemu_tmp / "images", {name: {"export_mode": "halted" if case == "halted mode" else "shutdown"}})
        rc, output = play(qemu_tmp, inv, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc != 0, output
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["failed_stage"] == "xen_source", entry
        assert words.format(name=name) in " ".join(entry["error"].split()), entry
        assert xapi.exports == [] and xapi.snapshots() == [] and xapi.live_sessions() == 0
        assert xapi.vm(name).power_state == power and xapi.vm(name).other_config == other_config
        assert not [call for call in xapi.calls if call[0] in ("VM.clean_shutdown", "VM.snapshot", "VM.start")]


@pytest.mark.parametrize("hosts, extra, words", [
    ({"kvm1": KVM_HOST, "kvm2": KVM_HOST}, [], "VM app07: kvm_host (not set) is not a host of the inventory group kvm_hosts"),
    ({"kvm1": KVM_HOST}, ["-e", "xen_host=pool9"],
     "VM app07: xen_host pool9 must be a host of the inventory group xen_hosts (it has pool1, pool2)"),
    ({"kvm1": KVM_HOST}, [], "VM app07 is not in the inventory group xen_vms (give -e xva=PATH to add it) and no "
                             "single pool to find it on (group xen_hosts has 2 hosts; give -e xen_host=POOL)"),
])
def test_a_vm_from_the_command_line_needs_one_pool_and_one_kvm_host(tmp_path, hosts, extra, words):
    pools = {"pool1": {}, "pool2": {}} if hosts.keys() == {"kvm1"} else {"pool1": {}}
    inv = {"all": {"children": {"kvm_hosts": {"hosts": hosts}, "xen_hosts": {"hosts": pools}}}}
    rc, output = play(tmp_path, inv, "-e", "vm=app07", "-e", "report_dir=%s" % (tmp_path / "reports"), *extra)
    assert rc != 0
    assert words in " ".join(output.split()), output
    assert "Migrate each VM" not in output
