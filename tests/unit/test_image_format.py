"""image_format (module_utils/_xva/reformat.py): fixed-up raw images of a real conversion become
qcow2 images that xva_convert with format qcow2 then finds done; the raw images go only once
their copies are complete; unknown files and disks in use are refused. Real XVAs (xva_writer),
real qemu-img, real processes."""
import json
import os
import shutil
import subprocess
import uuid

import pytest

from ansible_run import run_module
from xva_writer import VM, Disk, write_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reformat import ReformatError, reformat

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img (qemu-utils) not installed")
MIB = 1 << 20


def converted(tmp_path, name="web01"):
    """A two-disk VM converted to raw in tmp_path/images; returns (xva, raw paths)."""
    vm = VM(name=name, uuid=str(uuid.uuid4()), disks=[
        Disk(image=os.urandom(2 * MIB) + bytes(2 * MIB), userdevice=0),
        Disk(image=bytes(MIB) + os.urandom(MIB), userdevice=1, device="xvdb")])
    xva = str(tmp_path / ("%s.xva" % name))
    write_xva(xva, vm, checksum="sha1")
    result = convert_xva(xva, str(tmp_path / "images"))
    return xva, [disk["path"] for disk in result["disks"]]


def fix_up(path):
    """What a fixup does to a raw image: new data in place (mtime changes)."""
    with open(path, "r+b") as handle:
        handle.seek(MIB + 4096)
        handle.write(b"fixed up" * 512)


def same_data(qcow2, raw_copy):
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw_copy, qcow2],
                          check=False).returncode == 0


def test_fixed_raw_images_become_qcow2_that_xva_convert_finds_done(tmp_path):
    xva, raws = converted(tmp_path)
    for raw in raws:
        fix_up(raw)
        shutil.copy(raw, str(tmp_path / (os.path.basename(raw) + ".orig")))
    marker = os.path.join(os.path.dirname(raws[0]), ".%s.xen2kvm-fixup.json" % os.path.basename(raws[0]))
    with open(marker, "w") as handle:  # as guest_fixup leaves it beside the boot disk
        json.dump({"fingerprint": {"disks": [{"path": raws[0]}]}}, handle)
    result = reformat(raws)
    assert result["changed"] and result["removed"] == raws
    qcow2s = [disk["path"] for disk in result["disks"]]
    assert qcow2s == [raw[:-len("raw")] + "qcow2" for raw in raws]
    assert all(disk["format"] == "qcow2" for disk in result["disks"])
    for qcow2, raw in zip(qcow2s, raws):
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", qcow2], stdout=subprocess.PIPE,
                                         check=True).stdout)
        assert info["format"] == "qcow2" and same_data(qcow2, str(tmp_path / (os.path.basename(raw) + ".orig")))
    images = tmp_path / "images"
    assert sorted(os.listdir(images)) == sorted([os.path.basename(p) for p in qcow2s] + [
        ".%s.xen2kvm.json" % os.path.basename(qcow2s[0])])  # raw images, manifest, fixup marker, temps: gone

    again = convert_xva(xva, str(images), fmt="qcow2")
    assert again["changed"] is False and [d["path"] for d in again["disks"]] == qcow2s
    fix_up(qcow2s[0])  # booted: changed since, still this export's images
    again = convert_xva(xva, str(images), fmt="qcow2", check_mode=True)
    assert again["changed"] is False and again["disks"][0]["modified_since_conversion"] is True

    rerun = reformat(raws)  # the same call after success
    assert rerun == {"changed": False, "disks": rerun["disks"], "removed": []}
    assert [d["path"] for d in rerun["disks"]] == qcow2s


def test_check_mode_plans_and_touches_nothing(tmp_path):
    _xva, raws = converted(tmp_path)
    before = sorted(os.listdir(tmp_path / "images"))
    result = reformat(raws, check_mode=True)
    assert result["changed"] and [d["format"] for d in result["disks"]] == ["qcow2", "qcow2"]
    assert sorted(os.listdir(tmp_path / "images")) == before


def test_an_unknown_file_at_a_qcow2_name_is_replaced_only_with_force(tmp_path):
    _xva, raws = converted(tmp_path)
    squatter = raws[1][:-len("raw")] + "qcow2"
    with open(squatter, "wb") as handle:
        handle.write(b"someone's data")
    with pytest.raises(ReformatError, match="refusing to replace existing files, set force: true to replace them: %s"
                       % squatter):
        reformat(raws)
    assert all(os.path.exists(raw) for raw in raws) and open(squatter, "rb").read() == b"someone's data"
    assert not [n for n in os.listdir(tmp_path / "images") if "xen2kvm-part" in n]
    assert reformat(raws, force=True)["changed"]
    assert not any(os.path.exists(raw) for raw in raws)


def test_a_raw_image_in_use_is_refused(tmp_path):
    _xva, raws = converted(tmp_path)
    with open(raws[0], "rb") as image:
        holder = subprocess.Popen(["sleep", "30"], stdin=image)
    try:
        with pytest.raises(ReformatError, match=r"%s is in use by sleep \(pid %d\) has it open" % (raws[0], holder.pid)):
            reformat(raws)
    finally:
        holder.kill()
        holder.wait()
    assert all(os.path.exists(raw) for raw in raws)


def test_images_without_a_manifest_and_a_template_without_format_are_refused(tmp_path):
    _xva, raws = converted(tmp_path)
    with pytest.raises(ReformatError, match="no xva_convert manifest"):
        reformat(raws[1:])  # not the whole set
    with pytest.raises(ReformatError, match="does not give the images' names"):
        reformat(raws, name_template="{vm}-{index}.{format}")
    xva = str(tmp_path / "web01.xva")
    imgs = [d["path"] for d in convert_xva(xva, str(tmp_path / "img"), name_template="{vm}-disk{index}.img")["disks"]]
    with pytest.raises(ReformatError, match="needs the {format} field"):
        reformat(imgs, name_template="{vm}-disk{index}.img")
    assert all(os.path.exists(img) for img in imgs)
    plain = tmp_path / "plain.raw"
    plain.write_bytes(bytes(MIB))
    with pytest.raises(ReformatError, match="no xva_convert manifest"):
        reformat([str(plain)])


def test_the_module_through_ansible_playbook(tmp_path):
    _xva, raws = converted(tmp_path)
    planned = run_module("image_format", {"images": raws}, check=True)
    assert planned["changed"] and all(os.path.exists(raw) for raw in raws)
    done = run_module("image_format", {"images": raws})
    assert done["changed"] and done["removed"] == raws and not any(os.path.exists(raw) for raw in raws)
    assert run_module("image_format", {"images": raws})["changed"] is False
    failed = run_module("image_format", {"images": [str(tmp_path / "missing.raw")]}, expect_fail=True)
    assert "no xva_convert manifest" in failed["msg"]
