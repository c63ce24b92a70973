"""xva_info and xva_convert run through real ansible-core, and the HTTP export path against the
XAPI test double (redirect, chunked transfer without Content-Length, session or basic auth)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import ansible_run
from ansible.module_utils.urls import open_url

from xapi_double import XapiDouble, XapiVM
from xva_writer import Disk, Nic, VM, half_filled_disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva, xva_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError

MiB = 1 << 20


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    work = tmp_path_factory.mktemp("xvamod")
    vm = VM(name="TestVM01", vcpus=2, memory_bytes=1024 * MiB,
            disks=[Disk(image=half_filled_disk(6 * MiB, 1), userdevice=0, bootable=True),
                   Disk(image=half_filled_disk(3 * MiB + 4096, 2), userdevice=1, device="xvdb")],
            nics=[Nic(device=0, mac="de:ad:be:ef:00:01", network="Pool-wide network associated with eth0")])
    xva = work / "TestVM01.xva"
    write_xva(str(xva), vm, checksum="xxhash", compression="zstd")
    return vm, xva


def run_module(module, args, check=False, expect_fail=False):
    """Run one module through ansible-playbook; returns its registered result."""
    return ansible_run.run_module(module, args, check=check, expect_fail=expect_fail)


def test_xva_info_module(sample):
    vm, xva = sample
    result = run_module("xva_info", {"src": str(xva)})
    spec = result["spec"]
    assert result["changed"] is False and result["compression"] == "zstd"
    assert (spec["name"], spec["vcpus"], spec["memory_mib"]) == ("TestVM01", 2, 1024)
    assert [d["virtual_size"] for d in spec["disks"]] == [6 * MiB, 3 * MiB + 4096]
    assert spec["nics"][0]["mac"] == "de:ad:be:ef:00:01"


def test_xva_convert_module_check_run_rerun(sample, tmp_path):
    vm, xva = sample
    args = {"src": str(xva), "dest": str(tmp_path / "images"), "format": "qcow2",
            "status_file": str(tmp_path / "status.json")}
    planned = run_module("xva_convert", args, check=True)
    assert planned["changed"] is True and not (tmp_path / "images").exists()
    assert [os.path.basename(d["path"]) for d in planned["disks"]] == ["TestVM01-disk0.qcow2", "TestVM01-disk1.qcow2"]
    done = run_module("xva_convert", args)
    assert done["changed"] is True
    assert all(d["checksums_verified"] and d["format"] == "qcow2" for d in done["disks"])
    for disk, source in zip(done["disks"], vm.disks):
        back = tmp_path / "back.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", disk["path"], str(back)], check=True)
        assert back.read_bytes() == source.image
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "done"
    again = run_module("xva_convert", args)
    assert again["changed"] is False and again["disks"] == done["disks"]


def test_xva_convert_module_reports_bad_input(tmp_path):
    xva = tmp_path / "bad.xva"
    write_xva(str(xva), VM(disks=[Disk(image=half_filled_disk(4 * MiB, 3))]), checksum="sha1", fault="corrupt_chunk")
    result = run_module("xva_convert", {"src": str(xva), "dest": str(tmp_path / "o")}, expect_fail=True)
    assert "checksum mismatch" in result["msg"] and "Ref:" in result["msg"]
    assert os.listdir(tmp_path / "o") == []


def test_http_export_with_session_redirect_and_no_length(sample, tmp_path):
    vm, xva = sample
    with XapiDouble([XapiVM("TestVM01", xva)]) as xapi:
        session = xapi.login()
        url = "%s/export?uuid=%s" % (xapi.url, xapi.vms[0].uuid)
        assert xva_info(url, open_url, {"session_id": session})["spec"]["name"] == "TestVM01"
        result = convert_xva(url, str(tmp_path / "o"), open_url_func=open_url, url_options={"session_id": session})
        assert any(r.startswith("/member/export") for r in xapi.requests)  # the redirect was followed
        assert Path(result["disks"][1]["path"]).read_bytes() == vm.disks[1].image


def test_http_export_through_the_module_with_basic_auth(sample, tmp_path):
    vm, xva = sample
    with XapiDouble([XapiVM("TestVM01", xva)], password="pw") as xapi:
        url = "%s/export?uuid=%s" % (xapi.url, xapi.vms[0].uuid)
        result = run_module("xva_convert", {"src": url, "dest": str(tmp_path / "o"), "url_username": "root",
                                            "url_password": "pw"})
        assert Path(result["disks"][0]["path"]).read_bytes() == vm.disks[0].image
        denied = run_module("xva_info", {"src": url, "url_username": "root", "url_password": "wrong"},
                            expect_fail=True)
        assert "401" in denied["msg"] and "pw" not in denied["msg"]


def test_http_stream_cut_off_leaves_nothing(sample, tmp_path):
    vm, xva = sample
    with XapiDouble([XapiVM("TestVM01", xva)], cut_after=os.path.getsize(xva) // 2) as xapi:
        url = "%s/export?uuid=%s" % (xapi.url, xapi.vms[0].uuid)
        (tmp_path / "o").mkdir()
        with pytest.raises(XvaError, match="truncated|corrupt") as caught:
            convert_xva(url, str(tmp_path / "o"), open_url_func=open_url, url_options={"session_id": xapi.login()})
    print(caught.value)
    assert os.listdir(tmp_path / "o") == []


def test_xva_convert_module_refuses_a_fresh_export_over_used_images(tmp_path):
    """A second export of the same VM (new Ref numbers, same VM uuid) must not replace images
    that may have run on KVM since; the message names both exports, force replaces."""
    vm = VM(name="TestVM02", uuid="6b0d3f4e-0000-4000-8000-0000000000aa",
            disks=[Disk(image=half_filled_disk(2 * MiB, 5), userdevice=0)])
    monday, tuesday = tmp_path / "monday.xva", tmp_path / "tuesday.xva"
    write_xva(str(monday), vm, checksum="sha1")
    write_xva(str(tuesday), vm, checksum="sha1")
    dest = tmp_path / "images"
    first = run_module("xva_convert", {"src": str(monday), "dest": str(dest), "verify_checksums": False})
    assert first["disks"][0]["checksums_verified"] is False  # checksums present, but not compared
    refused = run_module("xva_convert", {"src": str(tuesday), "dest": str(dest)}, expect_fail=True)
    assert "different export of the same VM" in refused["msg"] and "force: true" in refused["msg"]
    assert str(monday) in refused["msg"] and str(tuesday) in refused["msg"]
    forced = run_module("xva_convert", {"src": str(tuesday), "dest": str(dest), "force": True})
    assert forced["changed"] is True and forced["disks"][0]["checksums_verified"] is True
    assert Path(forced["disks"][0]["path"]).read_bytes() == vm.disks[0].image
