"""The xen_source role alone through ansible-playbook: it resolves the XVA (given, or the newest
finished NAUBackup export), checks it, reads its spec and sets its three facts."""

import os
import shutil

import pytest

from role_run import run_role
from xva_writer import VM, Disk, write_xva

MiB = 1 << 20
FACTS = ["xen_source_xva_src", "xen_source_spec", "xen_source_disk_bytes"]


def make_vm(name):
    return VM(name=name, vcpus=1, memory_bytes=256 * MiB,
              disks=[Disk(image=b"\x01" * MiB, virtual_size=8 * MiB, userdevice=0, bootable=True),
                     Disk(image=b"\x02" * MiB, virtual_size=3 * MiB, userdevice=1, device="xvdb")])


def nau_backup(root, name, stamp, success=True, compression=None):
    folder = root / name / ("backup-%s" % stamp)
    folder.mkdir(parents=True)
    xva = folder / (name + (".xva.gz" if compression == "gzip" else ".xva"))
    write_xva(str(xva), make_vm(name), checksum="sha1", compression=compression)
    if success:
        (folder / "success").write_text("")
    return xva


def test_given_xva_sets_the_facts(tmp_path):
    xva = tmp_path / "Web 01.xva"
    write_xva(str(xva), make_vm("Web 01"), checksum="xxhash")
    saved, _out = run_role("xen_source", {"xen_source_vm": "Web 01", "xen_source_xva": str(xva)}, save=FACTS)
    assert saved["xen_source_xva_src"] == str(xva)
    assert saved["xen_source_spec"]["name"] == "Web 01"
    assert int(saved["xen_source_disk_bytes"]) == 11 * MiB


def test_naubackup_dir_takes_the_newest_finished_export(tmp_path):
    done = nau_backup(tmp_path, "db01", "2024-05-01-(01:00:00)", compression="gzip")
    nau_backup(tmp_path, "db01", "2024-05-02-(01:00:00)", success=False)
    saved, _out = run_role("xen_source", {"xen_source_vm": "db01", "xen_source_naubackup_dir": str(tmp_path)},
                           save=FACTS, check=True)
    assert saved["xen_source_xva_src"] == str(done)
    assert int(saved["xen_source_disk_bytes"]) == 11 * MiB


@pytest.mark.parametrize("given", ["none", "several"])
def test_exactly_one_source(tmp_path, given):
    role_vars = {"xen_source_vm": "db01"}
    if given == "several":
        role_vars.update(xen_source_xva=str(tmp_path / "a.xva"), xen_source_naubackup_dir=str(tmp_path))
    _saved, out = run_role("xen_source", role_vars, expect_fail=True)
    assert ("give exactly one of xen_source_xva, xen_source_naubackup_dir and xen_source_xapi_url "
            "(or xen_source_xapi_transport ssh) for VM db01 (%s given)" % given) in out


def test_missing_local_xva_fails_clearly(tmp_path):
    _saved, out = run_role("xen_source", {"xen_source_vm": "db01", "xen_source_xva": str(tmp_path / "gone.xva")},
                           expect_fail=True)
    assert "gone.xva, does not exist on the KVM host" in out


def test_no_finished_backup_fails_naming_the_folders(tmp_path):
    nau_backup(tmp_path, "db01", "2024-05-02-(01:00:00)", success=False)
    _saved, out = run_role("xen_source", {"xen_source_vm": "db01", "xen_source_naubackup_dir": str(tmp_path)},
                           expect_fail=True)
    assert "no finished backup of VM 'db01'" in out and "backup-2024-05-02-(01:00:00)" in out


def test_name_mismatch_fails_unless_allowed(tmp_path):
    xva = tmp_path / "other.xva"
    write_xva(str(xva), make_vm("other"), checksum="sha1")
    _saved, out = run_role("xen_source", {"xen_source_vm": "db01", "xen_source_xva": str(xva)}, expect_fail=True)
    assert 'holds VM "other"' in out and "xen_source_allow_name_mismatch" in out
    saved, _out = run_role("xen_source", {"xen_source_vm": "db01", "xen_source_xva": str(xva),
                                          "xen_source_allow_name_mismatch": True}, save=FACTS)
    assert saved["xen_source_spec"]["name"] == "other"


def test_ssh_source_is_not_stat_locally_and_its_spec_is_read(tmp_path):
    """An ssh:// source (another host; here a real sshd on 127.0.0.1) is handed to xva_info with
    the ssh options, not looked for on the KVM host."""
    sshd_lib = pytest.importorskip("sshd")
    if not shutil.which("sshd") and not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("openssh-server not installed")
    server = sshd_lib.LoopbackSshd(tmp_path / "sshd").start()
    try:
        xva = tmp_path / "remote web.xva"
        write_xva(str(xva), make_vm("remote web"), checksum="xxhash", compression="zstd")
        src = server.url(str(xva))
        saved, _out = run_role("xen_source", {"xen_source_vm": "remote web", "xen_source_xva": src,
                                              "xen_source_ssh_options": server.client_options,
                                              "xen_source_ssh_private_key": str(server.client_key),
                                              "xen_source_timeout": 20}, save=FACTS + ["xen_source_xva_stat"])
        scp_like = "root@127.0.0.1:%s" % xva
        scp_saved, _out = run_role("xen_source", {
            "xen_source_vm": "remote web", "xen_source_xva": scp_like,
            "xen_source_ssh_options": server.client_options + ["Port=%d" % server.port],
            "xen_source_ssh_private_key": str(server.client_key)}, save=FACTS + ["xen_source_xva_stat"])
    finally:
        server.stop()
    assert saved["xen_source_xva_stat"]["skipped"] is True
    assert saved["xen_source_xva_src"] == src and saved["xen_source_spec"]["name"] == "remote web"
    assert int(saved["xen_source_disk_bytes"]) == 11 * MiB
    assert scp_saved["xen_source_xva_stat"]["skipped"] is True and scp_saved["xen_source_xva_src"] == scp_like
    assert scp_saved["xen_source_spec"]["name"] == "remote web"
