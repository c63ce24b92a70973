"""migrate.yml with disk_format: qcow2 through the real ansible-playbook, this machine as the KVM
host: the guest is converted to raw, fixed up, turned into qcow2 and boots from the qcow2 image
(the domain's disk driver says qcow2); the raw images are gone; a rerun changes nothing and does
not convert again. A disk_format that is neither raw nor qcow2 is refused before anything runs."""
import glob
import json
import os
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

from _play import KVM_HOST, QUIET_HOST, guest_xva, play, recap, report

pytestmark = [pytest.mark.slow, pytest.mark.root]

QUIET_VM = dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost")


def test_a_qcow2_vm_boots_from_qcow2_and_its_rerun_changes_nothing(qemu_tmp, conn, remove_domain):
    name = "x2k-qcow2-%s" % uuid.uuid4().hex[:8]
    xva = guest_xva(qemu_tmp, name)
    images = qemu_tmp / "images"
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images))}},
        "xen_vms": {"hosts": {name: dict(QUIET_VM, xva=xva, disk_format="qcow2")}},
    }}}
    try:
        rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc == 0, output
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["status"] == "migrated" and entry["login_seconds"] > 0, entry
        assert [d["format"] for d in entry["disks"]] == ["qcow2"] and entry["disks"][0]["path"].endswith(".qcow2")
        qcow2 = str(images / ("%s-disk0.qcow2" % name))
        disk = ET.fromstring(conn.lookupByName(name).XMLDesc(0)).find("devices/disk[@device='disk']")
        assert disk.find("driver").get("type") == "qcow2" and disk.find("source").get("file") == qcow2
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", qcow2], stdout=subprocess.PIPE,
                                         check=True).stdout)
        assert info["format"] == "qcow2"
        assert sorted(os.listdir(images)) == sorted([os.path.basename(qcow2), ".%s.xen2kvm.json" % os.path.basename(qcow2)])
        made = os.stat(qcow2).st_ino

        rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
        assert rc == 0, output
        assert recap(output, name)["changed"] == 0 and recap(output, "localhost")["changed"] == 0, output
        # The rerun only looked: no conversion, no fixup, no qcow2 made again.
        for task in ("Convert the XVA into disk images", "Make the guest bootable on KVM", "Turn the fixed raw images into qcow2"):
            assert re.search(r"^TASK \[%s\] \**\nskipping: \[%s\]" % (re.escape(task), re.escape(name)), output, re.M), output
        assert os.stat(qcow2).st_ino == made and not glob.glob(str(images / "*.raw"))
        entry = report(qemu_tmp / "reports")[0][name]
        assert entry["status"] == "unchanged" and entry["disks"][0]["path"] == qcow2, entry
    finally:
        remove_domain(conn, name, logs=True)


def test_an_unknown_disk_format_is_refused_before_anything_runs(tmp_path):
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm1": KVM_HOST}},
        "xen_vms": {"hosts": {"vm1": {"ansible_connection": "local", "kvm_host": "kvm1", "xva": "/x.xva",
                                      "disk_format": "vmdk"}}},
    }}}
    rc, output = play(tmp_path, inventory, "-e", "report_dir=%s" % (tmp_path / "reports"))
    assert rc != 0
    assert "VM vm1: disk_format vmdk is neither raw nor qcow2" in output, output
    assert "Migrate each VM" not in output
