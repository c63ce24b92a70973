"""The issue's proof for the Xen layouts the appliance engine opens: LVM on a logical partition
(deb12-lvm), an Ubuntu-shaped install (GPT + bios_grub, ubuntu-vg/ubuntu-lv, netplan enX0,
cloud-init), a btrfs ``@rootfs`` subvolume (deb12-btrfs) and a UEFI guest (deb12-uefi).

Each goes XVA → xva_convert → guest_fixup through ansible (default engine, the converted spec) →
kvm_domain (domain type qemu, user-mode NIC, the spec's firmware) → kvm_boot_check sees
``login:``; then, with the guest running, its QEMU guest agent shows what the guest itself sees:
``/`` on a virtio disk, no failed unit, cloud-init not run as a new instance and the same SSH
host keys (ubuntu-like), the fallback ``\\EFI\\BOOT\\BOOTX64.EFI`` used (deb12-uefi).  After a
clean shutdown a second guest_fixup changes nothing.

One guestfs fixup takes minutes under TCG and the machine has two cores, so each variant's whole
chain is one job on a pool of two workers, started for all selected variants when the first test
asks for its result; the tests only read the results.  Seconds per variant are printed and
appended to tests/output/layout-boot.jsonl.
"""

import base64
import concurrent.futures
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ansible_run
import guest_factory

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

libvirt = pytest.importorskip("libvirt", reason="libvirt-python (Debian: python3-libvirt) missing")
libvirt_qemu = pytest.importorskip("libvirt_qemu", reason="libvirt-python (libvirt_qemu) missing")

# second_lane: only the appliance and libvirt, no host mounts; make test runs it beside the rest
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.second_lane]

VARIANTS = ("deb12-lvm", "ubuntu-like", "deb12-btrfs", "deb12-uefi")
WORKERS = 2                      # the machine has two cores: two TCG guests at a time
BOOT_TIMEOUT = 900               # seconds to login: under TCG on a loaded host
AGENT_TIMEOUT = 300
SHUTDOWN_TIMEOUT = 300
RESULTS = Path(__file__).resolve().parents[2] / "output" / "layout-boot.jsonl"
_results_lock = threading.Lock()


# ------------------------------------------------------------------------------ guest agent


def _agent(dom, command, arguments=None, timeout=30):
    request = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0))["return"]


def _wait_for_agent(dom):
    deadline = time.monotonic() + AGENT_TIMEOUT
    while True:
        try:
            _agent(dom, "guest-ping", timeout=5)
            return
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise AssertionError("guest agent did not answer within %d s: %s" % (AGENT_TIMEOUT, exc))
            time.sleep(3)


def guest_sh(dom, script, timeout=300):
    """(exit code, stdout, stderr) of ``/bin/sh -c script`` run by the guest agent."""
    pid = _agent(dom, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                     "capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = _agent(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            def text(key):
                return base64.b64decode(status.get(key, "")).decode(errors="replace")
            return status.get("exitcode", -1), text("out-data"), text("err-data")
        if time.monotonic() > deadline:
            raise AssertionError("guest command still running after %d s: %s" % (timeout, script))
        time.sleep(1)


# ------------------------------------------------------------------------------ the chain


def _cloud_identity(disks):
    """The SSH host keys ({file: public key}) and cloud-init's instance directories the guest
    has before the migration, read-only in the appliance."""
    import guestfs
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(["force_tcg"])
    try:
        for disk in disks:
            g.add_drive_opts(str(disk), format="raw", readonly=True)
        g.launch()
        root, = g.inspect_os()
        for mountpoint, device in sorted(g.inspect_get_mountpoints(root).items(), key=lambda m: len(m[0])):
            g.mount_ro(device, mountpoint)
        keys = {path: g.cat(path) for path in g.glob_expand("/etc/ssh/ssh_host_*_key.pub")}
        instances = sorted(g.ls("/var/lib/cloud/instances")) if g.is_dir("/var/lib/cloud/instances") else []
        return keys, instances
    finally:
        g.close()


def _shut_down(dom):
    """Shut the guest down from inside and wait until the domain is off.  Not the agent's
    guest-shutdown: it runs ``shutdown -h +0``, which needs logind over D-Bus, and these minimal
    guests have no D-Bus; systemctl talks to systemd directly."""
    pid = _agent(dom, "guest-exec", {"path": "/bin/systemctl", "arg": ["poweroff", "--no-block"]})["pid"]
    assert pid
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while dom.isActive():
        if time.monotonic() > deadline:
            raise AssertionError("domain still running %d s after the agent's shutdown" % SHUTDOWN_TIMEOUT)
        time.sleep(2)


def _observe_running_guest(dom, variant):
    """What the running guest itself reports, through its agent."""
    seen = {}
    _wait_for_agent(dom)
    # the login prompt can come before the last units: wait until systemd has finished booting
    seen["system_state"] = guest_sh(dom, "systemctl is-system-running --wait")[1].strip()
    _rc, source, _err = guest_sh(dom, "findmnt -n -o SOURCE /")
    seen["root_source"] = source.strip()
    device = re.sub(r"\[.*\]$", "", seen["root_source"])          # btrfs: /dev/vda1[/@rootfs]
    seen["root_ancestors"] = guest_sh(dom, "lsblk -s -n -r -o NAME %s" % device)[1].split()
    seen["failed_units"] = guest_sh(dom, "systemctl --failed --no-legend --plain")[1].strip()
    if variant == "ubuntu-like":
        seen["cloud_init_disabled_file"] = guest_sh(dom, "test -e /etc/cloud/cloud-init.disabled")[0] == 0
        seen["cloud_init_status"] = guest_sh(dom, "cloud-init status 2>&1")[1].strip()
        seen["ssh_host_keys"] = {}
        for path in guest_sh(dom, "ls /etc/ssh/ssh_host_*_key.pub")[1].split():
            seen["ssh_host_keys"][path] = guest_sh(dom, "cat %s" % path)[1]
        seen["cloud_instances"] = sorted(guest_sh(dom, "ls /var/lib/cloud/instances")[1].split())
        seen["addresses"] = guest_sh(dom, "ip -o -4 addr show")[1]
        seen["links"] = guest_sh(dom, "ip -o link show")[1]
    if variant == "deb12-uefi":
        rc, out, _err = guest_sh(dom, "command -v efibootmgr >/dev/null && efibootmgr -v")
        seen["efibootmgr"] = out if rc == 0 else None
    return seen


def _record(row):
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with _results_lock, open(RESULTS, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def migrate_and_prove(variant, base, conn, remove_domain):
    """The whole chain for one variant; returns what was measured and seen (or raises)."""
    out = {"variant": variant}
    work = base / variant
    guest = guest_factory.build_variant(variant, work / "build")
    out["hostname"] = guest.hostname
    out["static_ip"] = guest.static_ip
    out["mac"] = guest.mac
    if variant == "ubuntu-like":
        out["ssh_host_keys_before"], out["cloud_instances_before"] = _cloud_identity(guest.disks)
    xva = guest.xva(str(work / "vm.xva"), checksum="sha1")
    shutil.rmtree(str(work / "build"))
    converted = convert_xva(str(xva), str(work / "images"))
    os.unlink(str(xva))
    out["spec_firmware"] = converted["spec"].get("firmware")
    disks = [d["path"] for d in converted["disks"]]
    fixup_args = {"disks": disks, "spec": converted["spec"], "engine": "guestfs"}  # the appliance, whatever the default

    name = "x2k-layout-%s-%s" % (variant, uuid.uuid4().hex[:6])
    out["domain"] = name
    t0 = time.monotonic()
    try:
        try:
            fixed = ansible_run.run_module("guest_fixup", fixup_args)
        finally:                                  # a failed fixup's seconds are recorded too
            out["fixup_seconds"] = round(time.monotonic() - t0, 1)
        out["fixup_changed"] = fixed["changed"]
        out["fixup_phases"] = fixed.get("seconds")
        ansible_run.run_module("kvm_domain", {
            "spec": converted["spec"], "disks": converted["disks"], "name": name,
            "domain_type": "qemu", "default_network": "user", "state": "defined"})
        dom = conn.lookupByName(name)
        booted = ansible_run.run_module("kvm_boot_check", {
            "name": name, "timeout": BOOT_TIMEOUT, "wait_for": "login"})
        # the running domain's XML: libvirt fills in the firmware's loader and NVRAM at start
        xml = ET.fromstring(dom.XMLDesc(0))
        out["domain_nvram"] = xml.findtext("os/nvram")
        out["domain_loader"] = xml.findtext("os/loader")
        out["has_agent_channel"] = any(t.get("name") == "org.qemu.guest_agent.0"
                                       for t in xml.iter("target"))
        out["login_seconds"] = booted["seconds"]
        out["banner"] = booted["banner"]
        out.update(_observe_running_guest(dom, variant))
        with open(booted["console_log"], errors="replace") as f:
            out["console"] = f.read()
        _shut_down(dom)

        t0 = time.monotonic()
        again = ansible_run.run_module("guest_fixup", fixup_args)
        out["rerun_seconds"] = round(time.monotonic() - t0, 1)
        out["rerun_changed"] = again["changed"]
        out["rerun_phases"] = again.get("seconds")
        out["rerun_changes"] = again.get("changes")
    finally:
        remove_domain(conn, name, logs=True)
        shutil.rmtree(str(work), ignore_errors=True)
        row = {k: out.get(k) for k in ("variant", "fixup_seconds", "rerun_seconds", "login_seconds", "fixup_phases",
                                       "rerun_phases")}
        row["completed"] = "rerun_seconds" in out
        row["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print("\nlayout %(variant)s: fixup %(fixup_seconds)s s, login after %(login_seconds)s s, "
              "rerun %(rerun_seconds)s s (completed: %(completed)s)" % row)
        _record(row)
    return out


# ------------------------------------------------------------------------------ fixtures


def _selected_variants(session):
    """The variants whose test survived -k / deselection, in collection order."""
    chosen = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if item.module.__name__ == __name__ and callspec and "variant" in callspec.params:
            if callspec.params["variant"] not in chosen:
                chosen.append(callspec.params["variant"])
    return chosen


@pytest.fixture(scope="module")
def layout_runs(request, libvirt_uri, remove_domain):
    """{variant: Future} of every selected variant's chain, two at a time."""
    conn = libvirt.open(libvirt_uri)
    base = Path(tempfile.mkdtemp(prefix="x2k-layouts-", dir="/var/tmp"))
    os.chmod(str(base), 0o755)                          # qemu (libvirt-qemu) reads the images
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    futures = {v: pool.submit(migrate_and_prove, v, base, conn, remove_domain)
               for v in _selected_variants(request.session)}
    yield futures
    pool.shutdown(wait=True)
    conn.close()
    shutil.rmtree(str(base), ignore_errors=True)


@pytest.fixture(scope="module")
def layout_run(variant, layout_runs):
    try:
        return layout_runs[variant].result()
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))


# ------------------------------------------------------------------------------ the proof


# make test: LVM with a separate /boot (deb12-lvm) and UEFI (deb12-uefi); make test-all also the
# Ubuntu-shaped guest and btrfs (their fixups take the same appliance paths plus netplan/cloud-init
# and a subvolume).
IN_MAKE_TEST = ("deb12-lvm", "deb12-uefi")


@pytest.mark.parametrize("variant", [v if v in IN_MAKE_TEST else pytest.param(v, marks=pytest.mark.all_variants)
                                     for v in VARIANTS], scope="module")
def test_layout_migrates_and_boots(variant, layout_run):
    run = layout_run
    assert run["fixup_changed"] is True
    phases = run["fixup_phases"]  # where guest_fixup's time went, as the module reports it
    assert {"launch", "inspect", "fetch_packages", "initramfs", "bootloader", "total"} <= set(phases), phases
    assert phases["launch"] > 0 and phases["total"] <= run["fixup_seconds"]
    assert run["has_agent_channel"]
    assert "%s login:" % run["hostname"] in run["banner"]
    assert run["login_seconds"] > 0

    assert run["system_state"] == "running", run["failed_units"]
    assert run["failed_units"] == ""
    assert any(re.fullmatch(r"vd[a-z]+", n) for n in run["root_ancestors"]), \
        "/ (%s) is not on a virtio disk: %s" % (run["root_source"], run["root_ancestors"])
    assert "Gave up waiting" not in run["console"]
    assert "[FAILED]" not in run["console"]

    if variant in ("deb12-lvm", "ubuntu-like"):
        assert run["root_source"].startswith("/dev/mapper/"), run["root_source"]
    if variant == "deb12-btrfs":
        assert run["root_source"].endswith("[/@rootfs]"), run["root_source"]
    if variant == "ubuntu-like":
        assert run["cloud_init_disabled_file"]
        assert re.search(r"status: (disabled|not run)", run["cloud_init_status"]), run["cloud_init_status"]
        # a new instance would get a new instance directory and new SSH host keys
        assert run["cloud_instances_before"], "the image has no cloud-init instance to keep"
        assert run["cloud_instances"] == run["cloud_instances_before"]
        assert run["ssh_host_keys_before"], "the image has no SSH host keys to keep"
        assert run["ssh_host_keys"] == run["ssh_host_keys_before"]
        # The Xen stanza matches its NIC by MAC (and names it enX0 with set-name): left as it is,
        # it still configures the virtio NIC, which has the Xen MAC, under that name.
        nic = re.search(r"^\d+: (\w+): .*link/ether %s " % re.escape(run["mac"].lower()), run["links"], re.M)
        assert nic, run["links"]
        assert re.search(r"^\d+: %s\s+inet %s/24 " % (nic.group(1), re.escape(run["static_ip"])),
                         run["addresses"], re.M), (nic.group(1), run["addresses"])
    if variant == "deb12-uefi":
        assert run["spec_firmware"] == "uefi"
        assert run["domain_nvram"], "no NVRAM in the domain"
        fallback = re.search(r'BdsDxe: starting Boot\d+ "UEFI Misc Device|\\EFI\\BOOT\\BOOTX64\.EFI',
                             run["console"], re.I)
        current = None
        if run["efibootmgr"]:
            number = re.search(r"^BootCurrent: (\w+)", run["efibootmgr"], re.M).group(1)
            current = re.search(r"^Boot%s\*? .*$" % number, run["efibootmgr"], re.M).group(0)
        assert fallback or (current and re.search(r"BOOTX64\.EFI|UEFI Misc Device", current, re.I)), \
            "not booted through the fallback path; efibootmgr: %s" % run["efibootmgr"]
    else:
        assert run["spec_firmware"] == "bios"

    assert run["rerun_changed"] is False, run["rerun_changes"]
    print("\n%s: fixup %.1f s, login after %.1f s, rerun %.1f s"
          % (variant, run["fixup_seconds"], run["login_seconds"], run["rerun_seconds"]))
