"""Variations of a built test guest (tests/lib/guest_factory.py): another VM name, a data disk,
a malformed XVA. They change only the private copies and the VM description, never the cache.

Read with real tools on the images: sfdisk, blkid, debugfs ("image?offset=N", no loop device),
e2fsck -n on a read-only loop device (always detached), tar for the XVA.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import xxhash

import guest_factory as gf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, losetup)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("sfdisk", "debugfs", "mkfs.ext4", "blkid", "losetup")),
                       reason="needs fdisk, e2fsprogs, util-linux"),
]

FACTORY = Path(gf.__file__)


def _sh(*cmd, check=True):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=check)


def _cat(disk, offset, path):
    proc = _sh("debugfs", "-R", "cat %s" % path, "%s?offset=%d" % (disk, offset))
    assert not [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")], proc.stderr
    return proc.stdout


def _fsck_clean(disk, fs):
    with gf.losetup(disk, offset=fs.offset, sizelimit=fs.size, read_only=True) as dev:
        proc = _sh("e2fsck", "-fn", dev, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(name="guest")
def guest_fixture(tmp_path):
    try:
        return gf.build_variant("deb12-pv", tmp_path)
    except gf.SuiteUnavailable as exc:
        pytest.skip(str(exc))


def test_rename_gives_another_name_and_a_uuid_of_its_own(guest, tmp_path):
    original = guest.vm.uuid
    gf.rename_vm(guest, "web01")
    assert guest.vm.name == "web01" and guest.vm.uuid != original
    again = gf.rename_vm(gf.build_variant("deb12-pv", tmp_path / "again"), "web01")
    assert again.vm.uuid == guest.vm.uuid  # derived from the name: a rebuild is the same VM


def test_a_data_disk_is_the_second_xen_disk_and_mounted_from_fstab(guest):
    fstab_before = _cat(guest.disks[0], guest.root_fs.offset, "/etc/fstab")
    gf.rename_vm(guest, "data01")
    gf.add_data_disk(guest, 64)

    root, data = guest.disks
    assert data.name == "deb12-pv-disk1.raw" and data.stat().st_size == 64 << 20
    table = json.loads(_sh("sfdisk", "--json", data).stdout)["partitiontable"]
    assert table["label"] == "dos"
    assert [(p["start"], p["size"], p["type"]) for p in table["partitions"]] == [(2048, 63 << 11, "83")]
    data_fs = guest.filesystems[-1]
    assert (data_fs.disk, data_fs.device, data_fs.mountpoint) == (1, "/dev/xvdb1", "/srv/data")
    probe = _sh("blkid", "-p", "-O", str(data_fs.offset), "-o", "export", data).stdout
    assert "TYPE=ext4" in probe and "UUID=%s" % data_fs.uuid in probe
    assert _cat(data, data_fs.offset, "/" + gf.DATA_DISK_MARKER) == "data01\n"

    fstab = _cat(root, guest.root_fs.offset, "/etc/fstab")
    assert fstab == fstab_before + "/dev/xvdb1\t/srv/data\text4\tdefaults\t0\t2\n"
    stat = _sh("debugfs", "-R", "stat /srv/data", "%s?offset=%d" % (root, guest.root_fs.offset)).stdout
    assert "Type: directory" in stat
    stat = _sh("debugfs", "-R", "stat /etc/fstab", "%s?offset=%d" % (root, guest.root_fs.offset)).stdout
    assert "Mode:  0644" in stat and "User:     0   Group:     0" in stat
    _fsck_clean(root, guest.root_fs)
    _fsck_clean(data, data_fs)

    assert [(d.device, d.userdevice, d.bootable) for d in guest.vm.disks] == [("xvda", 0, True), ("xvdb", 1, False)]
    assert "xvdb" not in _cat(guest.cache_path / "disk0.raw", guest.root_fs.offset, "/etc/fstab")


def test_a_data_disk_needs_a_private_partitioned_disk(tmp_path):
    with pytest.raises(gf.GuestBuildError, match="copy=True"):
        gf.add_data_disk(gf.build_variant("deb12-pv", tmp_path, copy=False), 16)
    with pytest.raises(gf.GuestBuildError, match="one partitioned disk"):
        gf.add_data_disk(gf.build_variant("deb12-pv-bare", tmp_path), 16)


def _read_xva(xva):
    """(ova.xml text, disk folders, data members whose xxhash member does not match), streamed."""
    ova, digests, sums = None, {}, {}
    with tarfile.open(xva, "r|") as tar:
        for member in tar:
            body = tar.extractfile(member).read() if member.isfile() else b""
            if member.name == "ova.xml":
                ova = body.decode()
            elif member.name.endswith(".xxhash"):
                sums[member.name[:-len(".xxhash")]] = body.decode()
            elif member.isfile():
                digests[member.name] = "%016X" % xxhash.xxh64_intdigest(body)
    folders = {name.split("/")[0] for name in digests}
    return ova, folders, [name for name, digest in digests.items() if sums.get(name) != digest]


def test_cli_packs_a_named_two_disk_vm_and_a_corrupt_one(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for out, extra in ((good, []), (bad, ["--fault", "corrupt_chunk"])):
        _sh(sys.executable, FACTORY, "build", "deb12-pv", "--out", out, "--xva", "--xva-only",
            "--name", "two-disks", "--data-disk-mib", "16", *extra)
        assert os.listdir(out) == ["two-disks.xva"]  # the disk copies went once packed
    ova, folders, mismatches = _read_xva(good / "two-disks.xva")
    assert "<value>two-disks</value>" in ova and "<value>xvdb</value>" in ova
    assert len(folders) == 2 and mismatches == []
    assert len(_read_xva(bad / "two-disks.xva")[2]) == 1


def test_cli_refuses_a_fault_without_an_xva(tmp_path):
    proc = _sh(sys.executable, FACTORY, "build", "deb12-pv", "--out", tmp_path, "--fault", "truncate", check=False)
    assert proc.returncode == 2 and "--fault and --xva-only need --xva" in proc.stderr
