"""xva_convert never replaces someone's data without force, and reports verification honestly
(issue 7 items 1 and 4).  Real XVAs from the test writer, real files, real conversions."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from xva_writer import VM, Disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError

MiB = 1 << 20
VM_UUID = "5a1e0c52-0000-4000-8000-000000000001"
OTHER_UUID = "5a1e0c52-0000-4000-8000-000000000002"


def content(seed, size=3 * MiB):
    data = bytearray(size)
    data[:MiB] = hashlib.shake_256(b"%d" % seed).digest(MiB)
    data[2 * MiB:2 * MiB + 4096] = b"\x5a" * 4096
    return bytes(data)


def make_vm(uuid=VM_UUID, name="web01", seed=1, disks=2):
    return VM(name=name, uuid=uuid, date="2026-11-30",
              disks=[Disk(image=content(seed + index), userdevice=index, device="xvd" + "ab"[index])
                     for index in range(disks)])


def export(path, vm, **options):
    """One export: like xapi, every call gives a different ova.xml (fresh object uuids)."""
    write_xva(str(path), vm, **options)
    return str(path)


def sha256_of(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def snapshot(paths):
    return [(os.stat(p).st_ino, sha256_of(p)) for p in paths]


def manifest_of(dest, first="web01-disk0.raw"):
    return json.loads((dest / (".%s.xen2kvm.json" % first)).read_text())


@pytest.fixture
def converted(tmp_path):
    xva = export(tmp_path / "web01-monday.xva", make_vm())
    dest = tmp_path / "images"
    result = convert_xva(xva, str(dest))
    return xva, dest, result, [d["path"] for d in result["disks"]]


def fix_up_in_place(path):
    """What a fixup or a boot does: writes into the image."""
    with open(path, "r+b") as handle:
        handle.seek(MiB + 512)
        handle.write(b"fixed up")


def repartition_like_bare_fs(path):
    """What the bare_fs fixup does: a new file renamed over the image (new inode, new size)."""
    tmp = path + ".new"
    shutil.copyfile(path, tmp)
    with open(tmp, "ab") as handle:
        handle.write(bytes(MiB))
    os.rename(tmp, path)


# ---- item 1: same source again --------------------------------------------------------------

def test_same_export_again_is_unchanged_even_after_fixups(converted):
    xva, dest, first, paths = converted
    fix_up_in_place(paths[0])
    repartition_like_bare_fs(paths[1])
    before = snapshot(paths)
    again = convert_xva(xva, str(dest))
    assert again["changed"] is False
    assert [d["modified_since_conversion"] for d in again["disks"]] == [True, True]
    assert snapshot(paths) == before
    assert convert_xva(xva, str(dest), check_mode=True)["changed"] is False


def test_untouched_rerun_reports_unmodified(converted):
    xva, dest, first, paths = converted
    again = convert_xva(xva, str(dest))
    assert again["changed"] is False and again["disks"] == first["disks"]
    assert not any(d["modified_since_conversion"] for d in again["disks"])


# ---- item 1: a different export of the same VM -----------------------------------------------

def test_fresh_export_of_the_same_vm_is_refused_naming_both(converted, tmp_path):
    monday, dest, first, paths = converted
    tuesday = export(tmp_path / "web01-tuesday.xva", make_vm())
    before = snapshot(paths)
    for check_mode in (True, False):
        with pytest.raises(XvaError) as caught:
            convert_xva(tuesday, str(dest), check_mode=check_mode)
        message = str(caught.value)
        assert "different export of the same VM" in message and "force: true" in message
        assert monday in message and tuesday in message and VM_UUID in message
        assert manifest_of(dest)["ova_sha256"][:12] in message
        assert "dated 2026-11-30" in message
    assert snapshot(paths) == before
    assert sorted(os.listdir(dest)) == [".web01-disk0.raw.xen2kvm.json", "web01-disk0.raw", "web01-disk1.raw"]


def test_force_replaces_a_different_export(converted, tmp_path):
    monday, dest, first, paths = converted
    changed_vm = make_vm(seed=7)
    tuesday = export(tmp_path / "web01-tuesday.xva", changed_vm)
    result = convert_xva(tuesday, str(dest), force=True)
    assert result["changed"] is True
    assert open(paths[0], "rb").read() == changed_vm.disks[0].image
    assert manifest_of(dest)["source"]["src"] == tuesday
    assert convert_xva(tuesday, str(dest))["changed"] is False
    with pytest.raises(XvaError, match="different export"):
        convert_xva(monday, str(dest))  # and now Monday's is the other one


def test_fixed_up_images_of_a_different_export_say_so(converted, tmp_path):
    monday, dest, first, paths = converted
    fix_up_in_place(paths[1])
    with pytest.raises(XvaError, match=r"web01-disk1.raw \(changed since its conversion\)"):
        convert_xva(export(tmp_path / "again.xva", make_vm()), str(dest))


# ---- item 1: another VM ----------------------------------------------------------------------

def test_another_vm_with_the_same_name_is_refused(converted, tmp_path):
    monday, dest, first, paths = converted
    other = export(tmp_path / "other-pool-web01.xva", make_vm(uuid=OTHER_UUID, seed=20))
    before = snapshot(paths)
    with pytest.raises(XvaError) as caught:
        convert_xva(other, str(dest))
    message = str(caught.value)
    assert "another VM" in message and VM_UUID in message and OTHER_UUID in message
    assert monday in message and other in message
    assert snapshot(paths) == before


def test_image_recorded_by_another_manifest_is_found(tmp_path):
    """The name template makes VM B's only image collide with VM A's second image, so the
    manifests differ: the owner is found in A's manifest all the same."""
    dest = tmp_path / "images"
    a = export(tmp_path / "a.xva", make_vm(name="a"))
    convert_xva(a, str(dest), name_template="d{userdevice}.raw")
    b_vm = VM(name="b", uuid=OTHER_UUID, disks=[Disk(image=content(9), userdevice=1)])
    b = export(tmp_path / "b.xva", b_vm)
    before = snapshot([str(dest / "d1.raw")])
    with pytest.raises(XvaError) as caught:
        convert_xva(b, str(dest), name_template="d{userdevice}.raw")
    assert "another VM" in str(caught.value) and "'a'" in str(caught.value) and a in str(caught.value)
    assert snapshot([str(dest / "d1.raw")]) == before


def test_an_image_taken_over_by_a_forced_conversion_is_not_claimed(tmp_path):
    """B replaced A's second image with force: A's rerun must not call that image its own."""
    dest = tmp_path / "images"
    a_vm = make_vm(name="a")
    a = export(tmp_path / "a.xva", a_vm)
    convert_xva(a, str(dest), name_template="d{userdevice}.raw")
    b = export(tmp_path / "b.xva", VM(name="b", uuid=OTHER_UUID, disks=[Disk(image=content(9), userdevice=1)]))
    convert_xva(b, str(dest), name_template="d{userdevice}.raw", force=True)
    with pytest.raises(XvaError) as caught:
        convert_xva(a, str(dest), name_template="d{userdevice}.raw")
    assert "d1.raw holds the image of another VM: VM 'b'" in str(caught.value)
    convert_xva(a, str(dest), name_template="d{userdevice}.raw", force=True)
    assert open(dest / "d1.raw", "rb").read() == a_vm.disks[1].image


def test_unknown_file_is_refused_and_named(tmp_path):
    dest = tmp_path / "images"
    dest.mkdir()
    (dest / "web01-disk1.raw").write_bytes(b"somebody's data")
    xva = export(tmp_path / "w.xva", make_vm())
    with pytest.raises(XvaError, match="web01-disk1.raw already exists and was not made from this XVA"):
        convert_xva(xva, str(dest))
    assert (dest / "web01-disk1.raw").read_bytes() == b"somebody's data"
    assert not (dest / "web01-disk0.raw").exists()


# ---- item 1: the same export, but an image was lost ---------------------------------------------

def test_lost_image_is_converted_again_when_the_others_are_untouched(converted):
    xva, dest, first, paths = converted
    os.unlink(paths[0])
    assert convert_xva(xva, str(dest))["changed"] is True
    assert open(paths[0], "rb").read() == make_vm().disks[0].image


def test_lost_image_does_not_undo_the_fixups_of_the_others(converted):
    xva, dest, first, paths = converted
    os.unlink(paths[0])
    fix_up_in_place(paths[1])
    before = snapshot(paths[1:])
    with pytest.raises(XvaError, match="web01-disk1.raw was converted from this export and was changed since"):
        convert_xva(xva, str(dest))
    assert snapshot(paths[1:]) == before
    assert convert_xva(xva, str(dest), force=True)["changed"] is True


def test_a_running_vm_disk_is_refused_even_with_force(converted, tmp_path):
    xva, dest, first, paths = converted
    tuesday = export(tmp_path / "tuesday.xva", make_vm())
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); time.sleep(60)",
                               paths[1]])
    try:
        deadline = time.monotonic() + 10
        while not any(os.path.realpath("/proc/%d/fd/%s" % (holder.pid, fd)) == paths[1]
                      for fd in os.listdir("/proc/%d/fd" % holder.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(XvaError, match="in use by python"):
            convert_xva(tuesday, str(dest), force=True)
    finally:
        holder.kill()
        holder.wait()


# ---- item 4: honest checksums_verified -------------------------------------------------------

def test_checksums_verified_is_false_when_not_verifying(tmp_path):
    xva = export(tmp_path / "v.xva", make_vm(), checksum="sha1")
    result = convert_xva(xva, str(tmp_path / "o"), verify_checksums=False)
    assert [d["checksums_verified"] for d in result["disks"]] == [False, False]
    recorded = manifest_of(tmp_path / "o")
    assert recorded["checksums"] == {"requested": False, "present": True, "verified": False}
    assert [d["checksums_verified"] for d in recorded["disks"]] == [False, False]


def test_rerun_asking_for_verification_verifies(tmp_path):
    """Converted unverified from an XVA with a corrupt chunk: a verifying rerun must find it."""
    xva = export(tmp_path / "bad.xva", make_vm(), checksum="xxhash", fault="corrupt_chunk")
    dest = tmp_path / "o"
    first = convert_xva(xva, str(dest), verify_checksums=False)
    paths = [d["path"] for d in first["disks"]]
    before = snapshot(paths)
    with pytest.raises(XvaError, match="checksum mismatch"):
        convert_xva(xva, str(dest))
    assert snapshot(paths) == before and sorted(os.listdir(dest))[0].endswith(".xen2kvm.json")
    assert convert_xva(xva, str(dest), verify_checksums=False)["changed"] is False


def test_verifying_rerun_of_a_good_export_records_it(tmp_path):
    xva = export(tmp_path / "good.xva", make_vm(), checksum="sha1")
    dest = tmp_path / "o"
    convert_xva(xva, str(dest), verify_checksums=False)
    verified = convert_xva(xva, str(dest))
    assert verified["changed"] is True and all(d["checksums_verified"] for d in verified["disks"])
    assert manifest_of(dest)["checksums"] == {"requested": True, "present": True, "verified": True}
    again = convert_xva(xva, str(dest))
    assert again["changed"] is False and all(d["checksums_verified"] for d in again["disks"])
    # Verified already: a rerun without verification changes nothing.
    assert convert_xva(xva, str(dest), verify_checksums=False)["changed"] is False


def test_verifying_rerun_does_not_undo_fixups(tmp_path):
    xva = export(tmp_path / "good.xva", make_vm(), checksum="sha1")
    dest = tmp_path / "o"
    paths = [d["path"] for d in convert_xva(xva, str(dest), verify_checksums=False)["disks"]]
    fix_up_in_place(paths[0])
    before = snapshot(paths)
    with pytest.raises(XvaError, match="without checksum verification and have been changed since"):
        convert_xva(xva, str(dest))
    assert snapshot(paths) == before
    unverified = convert_xva(xva, str(dest), verify_checksums=False)
    assert unverified["changed"] is False and not any(d["checksums_verified"] for d in unverified["disks"])
    assert convert_xva(xva, str(dest), force=True)["changed"] is True


def test_an_xva_without_checksums_is_not_converted_again_and_again(tmp_path):
    xva = export(tmp_path / "plain.xva", make_vm(), checksum=None)
    dest = tmp_path / "o"
    convert_xva(xva, str(dest), verify_checksums=False)
    again = convert_xva(xva, str(dest))
    assert again["changed"] is False and not any(d["checksums_verified"] for d in again["disks"])
