"""playbooks/migrate.yml with a live source reached over ssh (xen_hosts ``xapi_transport: ssh``):
the fake xe of tests/lib/fake_xe.py behind a real sshd on 127.0.0.1 drives the XAPI double, the
XAPI calls run xe over ssh from the controller, and the converter reads ``xe vm-export`` from xe's
standard output over ssh (the ``xe+ssh://`` source), with this machine as the KVM host.

- halted mode: the spec comes from the head of the export (xe gives none), the guest is
  converted, fixed up and boot-checked, the source stays halted and is marked;
- an export cut mid-stream after shutdown mode stopped the source starts it again, unmarked.
"""
import os
import sys
import uuid
from pathlib import Path

import pytest

from _play import KVM_HOST, QUIET_HOST, guest_xva, play, report
from test_migrate_live import images_left, mark_of
from xapi_double import XapiDouble, XapiVM
from xva_writer import VM, Disk, write_xva

pytestmark = [pytest.mark.slow, pytest.mark.root]

PASSWORD = "Pool-pw-ssh-9d1f-not-in-output"
POOL = "pool1"
FAKE_XE = Path(__file__).resolve().parents[2] / "lib" / "fake_xe.py"


def fake_xe(xapi, workdir):
    """An ``xe`` on the "Xen host" that points the fake xe at the double (only it knows the password)."""
    xe = workdir / "xen-bin" / "xe"
    xe.parent.mkdir(exist_ok=True)
    xe.write_text("#!/bin/sh\nFAKE_XE_URL=%s FAKE_XE_USER=root FAKE_XE_PASSWORD=%s exec %s %s \"$@\"\n"
                  % (xapi.url, PASSWORD, sys.executable, FAKE_XE))
    xe.chmod(0o755)
    return str(xe)


def inventory(xapi, sshd, workdir, vms):
    """kvm_hosts: this machine; xen_hosts: pool1 reached over ssh on 127.0.0.1 (no xapi_url, no
    password); ``vms``: name -> per-VM variables."""
    pool = {"xapi_transport": "ssh", "xapi_ssh_host": "127.0.0.1", "xapi_ssh_port": sshd.port,
            "xapi_ssh_user": "root", "xapi_ssh_private_key": str(sshd.client_key),
            "xapi_ssh_options": sshd.client_options, "xapi_xe_path": fake_xe(xapi, workdir)}
    return {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(workdir / "images"))}},
        "xen_hosts": {"hosts": {POOL: pool}},
        "xen_vms": {"hosts": {name: dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost",
                                         xen_host=POOL, **extra) for name, extra in vms.items()}},
    }}}


@pytest.mark.second_lane  # boots a guest; its checks look at its own VM only
def test_halted_mode_over_ssh_migrates_boots_and_marks_the_source(qemu_tmp, conn, vm_names, sshd):
    name = vm_names("x2k-live-xe")
    xva = guest_xva(qemu_tmp, name)
    with XapiDouble([XapiVM(name, xva, power_state="Halted")], password=PASSWORD) as xapi:
        inv = inventory(xapi, sshd, qemu_tmp, {name: {"export_mode": "halted"}})
        rc, output = play(qemu_tmp, inv, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc == 0, output
        source = xapi.vm(name)
        assert source.power_state == "Halted"
        assert mark_of(source) == ("localhost/%s" % name, ["xen2kvm-migrated-to:localhost/%s" % name]), mark_of(source)
        # xva_info read the head of one export, xva_convert the whole of another; nothing else.
        assert [exported for exported, _compression in xapi.exports] == [source.uuid, source.uuid]
        assert xapi.snapshots() == [] and xapi.live_sessions() == 0
        dom = conn.lookupByName(name)
        assert dom.isActive() and dom.UUIDString() == source.uuid
        assert PASSWORD not in output
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["status"] == "migrated" and entry["export_mode"] == "halted", entry
        assert entry["source"].startswith("xe+ssh://root@127.0.0.1:%d/?uuid=%s" % (sshd.port, source.uuid)), entry


def test_an_export_cut_mid_stream_over_ssh_starts_the_source_again(qemu_tmp, vm_names, sshd):
    name = "x2k-live-xecut-%s" % uuid.uuid4().hex[:6]
    # 8 MiB of random data, cut after 5: past what ssh buffers while xva_info reads the head of
    # the first export (its window is 2 MiB), inside the disk of the converter's export.
    xva = qemu_tmp / (name + ".xva")
    write_xva(str(xva), VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(8 << 20), userdevice=0)]),
              checksum="sha1")
    with XapiDouble([XapiVM(name, str(xva), power_state="Running")], password=PASSWORD, cut_after=5 << 20) as xapi:
        inv = inventory(xapi, sshd, qemu_tmp, {name: {"export_mode": "shutdown"}})
        rc, output = play(qemu_tmp, inv, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc != 0, output
        source = xapi.vm(name)
        assert source.power_state == "Running" and mark_of(source) == (None, [])
        assert xapi.live_sessions() == 0 and xapi.snapshots() == []
        assert images_left(qemu_tmp / "images", name) == []
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["failed_stage"] == "convert" and "over ssh broke off" in entry["error"], entry["error"]
        assert entry["rollback"] == "source started again and unmarked", entry
        assert not os.path.exists(qemu_tmp / "images") or not os.listdir(qemu_tmp / "images")
