"""playbooks/migrate.yml through the real ansible-playbook, with this machine as the KVM host
(domain type qemu, user-mode NICs: no host network is touched): one VM given on the command line
boots and is reported, its rerun changes nothing; in a fleet a corrupt XVA fails with its stage
and reason in the report while the good VM still migrates, and the run exits non-zero."""
import glob
import os
import re
import uuid
import xml.etree.ElementTree as ET

import pytest

from _play import KVM_HOST, QUIET_HOST, guest_xva, play, recap, report
from xva_writer import VM, Disk, write_xva

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(name="names")
def names_fixture(vm_names):
    return vm_names


def corrupt_xva(workdir, name):
    vm = VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(3 << 20), userdevice=0)])
    path = workdir / (name + ".xva")
    write_xva(str(path), vm, checksum="sha1", fault="corrupt_chunk")
    return str(path)


def test_one_vm_from_the_command_line_boots_and_its_rerun_changes_nothing(qemu_tmp, names, conn):
    name = names()
    xva = guest_xva(qemu_tmp, name)
    report_dir = qemu_tmp / "reports"
    inventory = {"all": {"children": {"kvm_hosts": {"hosts": {"localhost": KVM_HOST}}}}}
    args = ["-e", "vm=%s" % name, "-e", "xva=%s" % xva, "-e", "images_dir=%s" % (qemu_tmp / "images"),
            "-e", "report_dir=%s" % report_dir, "-e", "vcpus=2", "-e", "memory_mib=640"]
    args += [x for k, v in QUIET_HOST.items() for x in ("-e", "%s=%s" % (k, v))]

    rc, output = play(qemu_tmp, inventory, *args)
    assert rc == 0, output
    assert "Report: %s/migration-report.md" % report_dir in output
    assert recap(output, name)["changed"] > 0
    entries, markdown = report(report_dir)
    entry = entries[name]
    assert entry["status"] == "migrated", entry
    assert entry["kvm_host"] == "localhost" and entry["source"] == xva and entry["domain_type"] == "qemu"
    assert set(entry["stage_seconds"]) == {"xen_source", "transfer", "kvm_preflight", "convert", "fixup", "kvm_import"}
    assert entry["stage_seconds"]["kvm_import"] > 1 and entry["login_seconds"] > 0
    assert entry["conversion_mb_per_s"] > 0
    assert entry["disks"] and all(d["path"].startswith(str(qemu_tmp / "images")) for d in entry["disks"])
    assert "console" in entry["fixups"]
    assert re.search(r"^\| %s \| migrated \| localhost \|" % name, markdown, re.M), markdown
    domain = ET.fromstring(conn.lookupByName(name).XMLDesc(0))  # the overrides reached the domain
    assert domain.findtext("vcpu") == "2" and int(domain.findtext("memory")) == 640 * 1024

    rc, output = play(qemu_tmp, inventory, *args)
    assert rc == 0, output
    assert recap(output, name)["changed"] == 0, output
    assert recap(output, "localhost")["changed"] == 0, output
    entries, markdown = report(report_dir)
    assert entries[name]["status"] == "unchanged" and entries[name]["error"] is None
    assert re.search(r"^\| %s \| unchanged \|" % name, markdown, re.M), markdown


def test_a_corrupt_xva_fails_alone_and_is_reported(qemu_tmp, names):
    good, bad = names(), names()
    images = qemu_tmp / "images"
    vm_vars = dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost")
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images))}},
        "xen_vms": {"hosts": {good: dict(vm_vars, xva=guest_xva(qemu_tmp, good)),
                              bad: dict(vm_vars, xva=corrupt_xva(qemu_tmp, bad))}},
    }}}
    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"), "--forks", "2")
    assert rc != 0, output
    assert "VM %s failed in stage convert" % bad in output
    entries, markdown = report(qemu_tmp / "reports")
    assert entries[good]["status"] == "migrated" and entries[good]["login_seconds"] > 0, entries[good]
    assert entries[bad]["status"] == "failed" and entries[bad]["failed_stage"] == "convert", entries[bad]
    assert "checksum" in entries[bad]["error"], entries[bad]
    assert re.search(r"^\| %s \| failed \|.*\| convert: .*checksum" % bad, markdown, re.M), markdown
    assert not glob.glob(str(images / ("%s*" % bad))) and not glob.glob(str(images / (".%s*" % bad)))


def test_a_failed_fixup_removes_only_the_images_this_run_converted(qemu_tmp, names):
    """A disk with no filesystem converts and then fails the fixup: the images converted by
    this run go (with xva_convert's record of them); images that were there before the run stay."""
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

    fresh, earlier = names(), names()
    images = qemu_tmp / "images"
    xvas = {}
    for name in (fresh, earlier):
        xvas[name] = str(qemu_tmp / (name + ".xva"))
        write_xva(xvas[name], VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(2 << 20), userdevice=0)]),
                  checksum="sha1")
    before = convert_xva(xvas[earlier], str(images))["disks"][0]["path"]
    vm_vars = dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost")
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images))}},
        "xen_vms": {"hosts": {name: dict(vm_vars, xva=xva) for name, xva in xvas.items()}},
    }}}
    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
    assert rc != 0, output
    entries, _markdown = report(qemu_tmp / "reports")
    for name in (fresh, earlier):
        assert entries[name]["status"] == "failed" and entries[name]["failed_stage"] == "fixup", entries[name]
        assert "neither a partition table nor a known filesystem" in entries[name]["error"]
    assert sorted(os.listdir(images)) == sorted([os.path.basename(before), ".%s.xen2kvm.json" % os.path.basename(before)])


@pytest.mark.parametrize("extra, words", [
    (["-e", "vm=TestVM01", "-e", "xva=/nowhere/TestVM01.xva"],
     "-e xva= needs -e vm=NAME, and -e kvm_host=HOST unless the inventory group kvm_hosts has exactly one host (it has 2)"),
    (["-e", "xva=/nowhere/TestVM01.xva"], "-e xva= needs -e vm=NAME"),
    (["-e", "vm=NoSuchVM"], "VM NoSuchVM is not in the inventory group xen_vms (give -e xva=PATH to add it)"),
    (["-e", "vm=orphan"], "VM orphan: kvm_host kvm9 is not a host of the inventory group kvm_hosts"),
])
def test_the_command_line_and_inventory_are_checked_before_anything_runs(tmp_path, extra, words):
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm1": KVM_HOST, "kvm2": KVM_HOST}},
        "xen_vms": {"hosts": {"orphan": {"ansible_connection": "local", "kvm_host": "kvm9", "xva": "/x.xva"}}},
    }}}
    rc, output = play(tmp_path, inventory, "-e", "report_dir=%s" % (tmp_path / "reports"), *extra)
    assert rc != 0
    assert words in " ".join(output.split()), output
    assert "Migrate each VM" not in output and not (tmp_path / "reports").exists()


def test_without_report_dir_the_report_goes_to_the_current_directory(tmp_path):
    """A VM whose XVA is missing fails in xen_source (nothing else runs); the report is still
    written, by default to migration-reports/ in the directory ansible-playbook runs in."""
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm1": KVM_HOST}},
        "xen_vms": {"hosts": {"gone": {"ansible_connection": "local", "kvm_host": "kvm1",
                                       "xva": str(tmp_path / "gone.xva")}}},
    }}}
    rc, output = play(tmp_path, inventory)
    assert rc != 0, output
    entries, _markdown = report(tmp_path / "migration-reports")
    assert entries["gone"]["failed_stage"] == "xen_source"
    assert "gone.xva, does not exist on the KVM host" in entries["gone"]["error"]


def test_a_naubackup_folder_is_resolved_to_its_newest_finished_export(qemu_tmp, names):
    """naubackup_dir instead of xva: the newest finished backup's XVA is the one converted (and
    named as the source in the report); here a corrupt one, so the run stops in convert."""
    name = names()
    root = qemu_tmp / "naubackup"
    for stamp, finished in (("2026-11-30-(01:00:00)", True), ("2026-12-01-(01:00:00)", True),
                            ("2026-12-02-(01:00:00)", False)):
        folder = root / name / ("backup-%s" % stamp)
        folder.mkdir(parents=True)
        vm = VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(2 << 20), userdevice=0)])
        write_xva(str(folder / (name + ".xva")), vm, checksum="sha1", fault="corrupt_chunk")
        if finished:
            (folder / "success").write_text("")
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(qemu_tmp / "images"))}},
        "xen_vms": {"hosts": {name: dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost",
                                         naubackup_dir=str(root))}},
    }}}
    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
    assert rc != 0, output
    entries, _markdown = report(qemu_tmp / "reports")
    assert entries[name]["source"] == str(root / name / "backup-2026-12-01-(01:00:00)" / (name + ".xva")), entries[name]
    assert entries[name]["failed_stage"] == "convert" and "checksum" in entries[name]["error"]
