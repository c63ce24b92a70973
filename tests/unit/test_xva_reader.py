"""The streaming XVA reader against every shape the test writer produces (docs/xva-format.md)."""

import hashlib
import re
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xva_writer import VM, Disk, Nic, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva, xva_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import reader as reader_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError

MiB = 1 << 20


def sparse_disk(chunks, size=None, seed=1):
    """Bytes of a disk: ``chunks`` maps a 1 MiB index to a fill pattern; None → random."""
    size = size if size is not None else (max(chunks) + 1) * MiB
    data = bytearray(size)
    for index, fill in chunks.items():
        start = index * MiB
        end = min(start + MiB, size)
        if fill is None:
            data[start:end] = hashlib.shake_256(b"%d-%d" % (seed, index)).digest(end - start)
        else:
            data[start:end] = bytes([fill]) * (end - start)
    return bytes(data)


def image_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def leftovers(dest):
    return sorted(name for name in os.listdir(dest)) if os.path.isdir(dest) else []


@pytest.fixture
def two_disk_vm():
    root = sparse_disk({0: None, 1: 0, 3: None, 4: 7}, size=5 * MiB + 12345)
    data = sparse_disk({0: None, 2: None}, size=3 * MiB)
    return VM(name="Test VM/01", vcpus=2, memory_bytes=1536 * MiB,
              disks=[Disk(image=data, userdevice=1, device="xvdb", ref=9),
                     Disk(image=root, userdevice=0, device="xvda", bootable=True, ref=10)],
              nics=[Nic(device=1, mac="AA:00:00:00:00:02"), Nic(device=0, mac="aa:00:00:00:00:01")])


@pytest.mark.parametrize("checksum", ["sha1", "xxhash", None])
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_every_disk_is_rebuilt_byte_for_byte(tmp_path, two_disk_vm, checksum, compression):
    xva = tmp_path / "vm.xva"
    write_xva(str(xva), two_disk_vm, checksum=checksum, compression=compression, keepalives={0: 2, 1: 1})
    result = convert_xva(str(xva), str(tmp_path / "out"))
    disks = result["disks"]
    assert [d["userdevice"] for d in disks] == [0, 1]
    assert [os.path.basename(d["path"]) for d in disks] == ["Test_VM_01-disk0.raw", "Test_VM_01-disk1.raw"]
    assert image_bytes(disks[0]["path"]) == two_disk_vm.disks[1].image
    assert image_bytes(disks[1]["path"]) == two_disk_vm.disks[0].image
    assert disks[0]["virtual_size"] == 5 * MiB + 12345 == os.path.getsize(disks[0]["path"])
    assert all(d["checksums_verified"] is (checksum is not None) for d in disks)
    assert result["compression"] == (compression or "none")
    assert leftovers(tmp_path / "out") == sorted(
        ["Test_VM_01-disk0.raw", "Test_VM_01-disk1.raw", ".Test_VM_01-disk0.raw.xen2kvm.json"])


def test_output_is_sparse_for_omitted_and_present_zero_chunks(tmp_path):
    content = sparse_disk({0: None, 40: None}, size=64 * MiB)
    vm = VM(disks=[Disk(image=content)])
    for keep_zero in (False, True):
        xva = tmp_path / ("z%d.xva" % int(keep_zero))
        write_xva(str(xva), vm, keep_zero_chunks=keep_zero)
        disk = convert_xva(str(xva), str(tmp_path / ("o%d" % int(keep_zero))))["disks"][0]
        assert image_bytes(disk["path"]) == content
        assert disk["allocated_bytes"] <= 3 * MiB


def test_keepalives_advance_the_counter_not_the_offset(tmp_path):
    content = sparse_disk({i: None for i in range(6)}, size=6 * MiB - 100)
    xva = tmp_path / "k.xva"
    write_xva(str(xva), VM(disks=[Disk(image=content)]), keepalives={0: 1})
    disk = convert_xva(str(xva), str(tmp_path / "o"))["disks"][0]
    assert image_bytes(disk["path"]) == content
    assert disk["chunks"] > 6  # the keep-alives were read as members


def test_info_reads_only_ova_xml(tmp_path, two_disk_vm):
    xva = tmp_path / "i.xva"
    write_xva(str(xva), two_disk_vm, checksum="sha1")
    with open(xva, "r+b") as handle:  # spoil the disk data: info must not notice
        handle.seek(os.path.getsize(xva) // 2)
        handle.write(b"garbage")
    spec = xva_info(str(xva))["spec"]
    assert spec["name"] == "Test VM/01" and spec["vcpus"] == 2 and spec["memory_mib"] == 1536
    assert [d["device"] for d in spec["disks"]] == ["xvda", "xvdb"]
    assert [n["mac"] for n in spec["nics"]] == ["aa:00:00:00:00:01", "aa:00:00:00:00:02"]
    assert spec["disks"][0]["ref"] == "Ref:10" and spec["disks"][0]["bootable"] is True


def test_info_skips_cd_iso_and_suspend_vdis(tmp_path):
    vm = VM(cd_drive=True, disks=[Disk(image=bytes(MiB), userdevice=0),
                                  Disk(image=bytes(MiB), userdevice=3, sr_content_type="iso"),
                                  Disk(image=bytes(MiB), userdevice=4, vdi_type="suspend")])
    xva = tmp_path / "cd.xva"
    write_xva(str(xva), vm)
    spec = xva_info(str(xva))["spec"]
    assert [d["userdevice"] for d in spec["disks"]] == [0]
    assert convert_xva(str(xva), str(tmp_path / "o"))["disks"][0]["virtual_size"] == MiB


def test_info_understands_old_exports_and_hvm_uefi(tmp_path):
    old = VM(domain_type=None, pv_bootloader="pygrub", legacy_types=True, tags=["web", "prod"],
             cores_per_socket=2, vcpus=4, vcpus_max=4, disks=[Disk(image=bytes(MiB))])
    write_xva(str(tmp_path / "old.xva"), old)
    spec = xva_info(str(tmp_path / "old.xva"))["spec"]
    assert spec["xen_domain_type"] == "pv" and spec["tags"] == ["web", "prod"] and spec["cores_per_socket"] == 2
    hvm = VM(domain_type="hvm", firmware="uefi", pv_bootloader="", pv_args="", disks=[Disk(image=bytes(MiB))])
    write_xva(str(tmp_path / "hvm.xva"), hvm, compression="zstd")
    info = xva_info(str(tmp_path / "hvm.xva"))
    assert info["spec"]["xen_domain_type"] == "hvm" and info["spec"]["firmware"] == "uefi"
    assert info["compression"] == "zstd"


FAULTS = {
    "corrupt_chunk": "checksum mismatch",
    "truncate": "truncated",
    "not_tar": "not an XVA",
    "first_not_ova": "first member",
    "bad_ova_xml": "invalid ova.xml",
    "oversized_ova_xml": "more than the",
    "dotdot_name": "'..'",
    "absolute_name": "absolute path",
    "outside_folder": "outside any disk folder",
    "counter_repeat": "does not increase",
    "counter_decrease": "does not increase",
    "past_virtual_size": "past its virtual_size",
    "chunk_larger": "larger than the first chunk",
    "missing_folder": "missing from the XVA",
    "bad_checksum_format": "not a",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_bad_input_fails_clearly_and_leaves_nothing(tmp_path, fault, compression):
    content = sparse_disk({0: None, 1: None, 3: None, 5: None}, size=6 * MiB)
    vm = VM(disks=[Disk(image=content, userdevice=0), Disk(image=content[:2 * MiB], userdevice=1)])
    xva = tmp_path / "bad.xva"
    write_xva(str(xva), vm, checksum="sha1", compression=compression, fault=fault)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(XvaError) as caught:
        convert_xva(str(xva), str(dest))
    assert FAULTS[fault] in str(caught.value)
    assert leftovers(dest) == []
    assert not os.path.exists("/etc/x")


@pytest.mark.parametrize("tool", ["bzip2", "xz"])
def test_foreign_compression_is_named(tmp_path, tool):
    xva = tmp_path / "f.xva"
    write_xva(str(xva), VM(disks=[Disk(image=sparse_disk({0: None}))]))
    subprocess.run([tool, "-1", str(xva)], check=True)
    with pytest.raises(XvaError, match="%s-compressed" % tool):
        convert_xva(str(xva) + {"bzip2": ".bz2", "xz": ".xz"}[tool], str(tmp_path / "o"))
    assert leftovers(tmp_path / "o") == []


def test_gzip_corruption_is_reported(tmp_path):
    xva = tmp_path / "g.xva"
    write_xva(str(xva), VM(disks=[Disk(image=sparse_disk({0: None, 1: None}))]), compression="gzip")
    raw = bytearray(xva.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    xva.write_bytes(bytes(raw))
    with pytest.raises(XvaError, match="corrupt|checksum|truncated"):
        convert_xva(str(xva), str(tmp_path / "o"))
    assert leftovers(tmp_path / "o") == []


def test_rerun_is_unchanged_and_force_converts_again(tmp_path, two_disk_vm):
    xva = tmp_path / "r.xva"
    write_xva(str(xva), two_disk_vm)
    first = convert_xva(str(xva), str(tmp_path / "o"))
    assert first["changed"] is True
    second = convert_xva(str(xva), str(tmp_path / "o"))
    assert second["changed"] is False and second["disks"] == first["disks"]
    assert convert_xva(str(xva), str(tmp_path / "o"), check_mode=True)["changed"] is False
    assert convert_xva(str(xva), str(tmp_path / "o"), force=True)["changed"] is True
    # An image changed since its conversion (fixed up, booted, damaged) is never replaced unasked.
    os.truncate(first["disks"][1]["path"], 10)
    kept = convert_xva(str(xva), str(tmp_path / "o"))
    assert kept["changed"] is False and [d["modified_since_conversion"] for d in kept["disks"]] == [False, True]
    assert convert_xva(str(xva), str(tmp_path / "o"), force=True)["changed"] is True
    assert image_bytes(first["disks"][1]["path"]) == two_disk_vm.disks[0].image


def test_check_mode_plans_without_writing(tmp_path, two_disk_vm):
    xva = tmp_path / "c.xva"
    write_xva(str(xva), two_disk_vm)
    result = convert_xva(str(xva), str(tmp_path / "o"), fmt="qcow2", check_mode=True)
    assert result["changed"] is True
    assert [d["path"] for d in result["disks"]] == [str(tmp_path / "o" / "Test_VM_01-disk0.qcow2"),
                                                    str(tmp_path / "o" / "Test_VM_01-disk1.qcow2")]
    assert not (tmp_path / "o").exists()


def test_foreign_file_is_not_overwritten_without_force(tmp_path):
    xva = tmp_path / "f.xva"
    write_xva(str(xva), VM(name="vm", disks=[Disk(image=sparse_disk({0: None}))]))
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "vm-disk0.raw").write_bytes(b"precious")
    with pytest.raises(XvaError, match="already exists"):
        convert_xva(str(xva), str(dest))
    assert (dest / "vm-disk0.raw").read_bytes() == b"precious"
    convert_xva(str(xva), str(dest), force=True)
    assert os.path.getsize(dest / "vm-disk0.raw") == MiB


def test_the_disk_of_a_running_vm_is_never_converted_over(tmp_path):
    xva = tmp_path / "u.xva"
    write_xva(str(xva), VM(name="vm", disks=[Disk(image=sparse_disk({0: None}))]))
    first = convert_xva(str(xva), str(tmp_path / "o"))["disks"][0]["path"]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); time.sleep(60)", first])
    try:
        deadline = time.monotonic() + 10
        while not any(os.path.realpath(os.path.join("/proc/%d/fd" % holder.pid, fd)) == first
                      for fd in os.listdir("/proc/%d/fd" % holder.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert convert_xva(str(xva), str(tmp_path / "o"))["changed"] is False  # done is done
        with pytest.raises(XvaError, match="in use by python"):
            convert_xva(str(xva), str(tmp_path / "o"), force=True)
    finally:
        holder.kill()
        holder.wait()


def test_qcow2_output_passes_qemu_img_check(tmp_path, two_disk_vm):
    xva = tmp_path / "q.xva"
    two_disk_vm.disks[0].vdi_uuid = "0b9b7a52-6a5d-4c8e-9c1e-000000000001"
    two_disk_vm.disks[1].vdi_uuid = "0b9b7a52-6a5d-4c8e-9c1e-000000000002"
    write_xva(str(xva), two_disk_vm, compression="zstd")
    disks = convert_xva(str(xva), str(tmp_path / "o"), fmt="qcow2", name_template="{vdi_uuid}.{format}")["disks"]
    for disk, source in zip(disks, (two_disk_vm.disks[1], two_disk_vm.disks[0])):
        assert os.path.basename(disk["path"]) == source.vdi_uuid + ".qcow2"
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk["path"]], check=True,
                                         stdout=subprocess.PIPE).stdout)
        # qcow2 counts whole 512-byte sectors, so an odd VDI size is rounded up with zeros.
        assert info["format"] == "qcow2" and info["virtual-size"] == -(-disk["virtual_size"] // 512) * 512
        raw = tmp_path / "back.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", disk["path"], str(raw)], check=True)
        back = image_bytes(raw)
        assert back[:disk["virtual_size"]] == source.image and not back[disk["virtual_size"]:].strip(b"\0")
    assert not [n for n in leftovers(tmp_path / "o") if ".xen2kvm-part" in n]


def test_reads_from_a_pipe(tmp_path, two_disk_vm):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=write_xva, args=(str(fifo), two_disk_vm), kwargs={"compression": "gzip"})
    feeder.start()
    result = convert_xva(str(fifo), str(tmp_path / "o"))
    feeder.join()
    assert image_bytes(result["disks"][0]["path"]) == two_disk_vm.disks[1].image


def test_reads_from_stdin_dash(tmp_path, two_disk_vm):
    xva = tmp_path / "s.xva"
    write_xva(str(xva), two_disk_vm, compression="zstd")
    code = ("import sys, json; sys.path[:0] = %r;"
            "from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva;"
            "print(json.dumps(convert_xva('-', %r)['disks']))") % (
        [p for p in sys.path if p.endswith("collections")], str(tmp_path / "o"))
    with open(xva, "rb") as stdin:
        out = subprocess.run([sys.executable, "-c", code], stdin=stdin, check=True, stdout=subprocess.PIPE).stdout
    disks = json.loads(out)
    assert image_bytes(disks[1]["path"]) == two_disk_vm.disks[0].image


def test_status_file_reports_progress(tmp_path):
    """A slow source (a pipe fed over ~3 s): the status file must be refreshed while it runs."""
    content = sparse_disk({i: None for i in range(0, 64, 3)}, size=64 * MiB)
    xva = tmp_path / "p.xva"
    write_xva(str(xva), VM(disks=[Disk(image=content)]), compression="gzip")
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    data = xva.read_bytes()

    def feed_slowly():
        with open(fifo, "wb") as pipe:
            for start in range(0, len(data), len(data) // 12 + 1):
                pipe.write(data[start:start + len(data) // 12 + 1])
                pipe.flush()
                time.sleep(0.25)

    status = tmp_path / "status.json"
    seen = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            if status.exists():
                seen.append(json.loads(status.read_text()))
            time.sleep(0.2)

    feeder = threading.Thread(target=feed_slowly)
    poller = threading.Thread(target=poll)
    feeder.start()
    poller.start()
    convert_xva(str(fifo), str(tmp_path / "o"), status_file=str(status))
    stop.set()
    poller.join()
    feeder.join()
    final = json.loads(status.read_text())
    assert final["state"] == "done" and final["bytes_done"] == final["bytes_total"] == 64 * MiB
    assert final["percent"] == 100.0 and final["mb_per_s"] > 0
    assert {"eta_s", "stream_bytes_read", "updated"} <= set(final)
    running = [snap for snap in seen if snap["state"] == "running"]
    assert len({snap["stream_bytes_read"] for snap in running}) >= 2, "no progress seen while running"
    assert all(snap["bytes_total"] == 64 * MiB for snap in running)


def test_status_of_a_file_source_counts_the_export_not_the_empty_disk(tmp_path):
    """A 64 MiB disk holding 4 MiB: the export is what has to be read, so its size is the 100 %."""
    data = bytearray(64 * MiB)
    data[:4 * MiB] = os.urandom(4 * MiB)
    xva = tmp_path / "sparse.xva"
    write_xva(str(xva), VM(disks=[Disk(image=bytes(data), userdevice=0)]))
    status = tmp_path / "status.json"
    convert_xva(str(xva), str(tmp_path / "o"), status_file=str(status))
    final = json.loads(status.read_text())
    assert final["bytes_total"] == final["bytes_done"] == os.path.getsize(xva) < 8 * MiB
    assert final["disk_bytes_total"] == 64 * MiB and final["percent"] == 100.0


def test_disk_full_fails_cleanly(tmp_path):
    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(dest)], check=True)
    try:
        content = sparse_disk({i: None for i in range(8)}, size=8 * MiB)
        xva = tmp_path / "full.xva"
        write_xva(str(xva), VM(disks=[Disk(image=content)]))
        with pytest.raises(XvaError, match="disk full"):
            convert_xva(str(xva), str(dest))
        assert leftovers(dest) == []
    finally:
        subprocess.run(["umount", str(dest)], check=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.dictionaries(st.integers(0, 11), st.one_of(st.none(), st.integers(0, 3)), max_size=8),
       tail=st.integers(0, MiB - 1), checksum=st.sampled_from(["sha1", "xxhash", None]),
       compression=st.sampled_from([None, "gzip", "zstd"]), keep_zero=st.booleans(),
       keepalive=st.one_of(st.none(), st.integers(1, 4)))
def test_round_trip_of_random_sparse_disks(tmp_path, layout, tail, checksum, compression, keep_zero, keepalive):
    size = 12 * MiB + tail
    content = sparse_disk(layout, size=size, seed=len(layout))
    work = tmp_path / ("rt-%d" % time.monotonic_ns())
    work.mkdir()
    xva = work / "rt.xva"
    write_xva(str(xva), VM(disks=[Disk(image=content)]), checksum=checksum, compression=compression,
              keep_zero_chunks=keep_zero, keepalives={0: keepalive} if keepalive else None)
    disk = convert_xva(str(xva), str(work / "o"))["disks"][0]
    assert image_bytes(disk["path"]) == content


# ------------------------------------------------------------------ issue 7: suspended VMs, empty and padded disks


@pytest.mark.parametrize("checksum", ["sha1", "xxhash"])
def test_suspended_vm_export_converts_without_its_suspend_image(tmp_path, checksum):
    """xe vm-export preserve-power-state=true streams the suspend VDI with checksum members."""
    root = sparse_disk({0: None, 2: None}, size=3 * MiB)
    vm = VM(disks=[Disk(image=root, userdevice=0, ref=12),
                   Disk(image=sparse_disk({0: None, 1: 9}, size=2 * MiB), vdi_type="suspend", ref=11)])
    xva = tmp_path / "suspended.xva"
    written = write_xva(str(xva), vm, checksum=checksum, preserve_power_state=True)
    assert written["folders"] == ["Ref:11", "Ref:12"]  # the suspend image comes first in the tar
    result = convert_xva(str(xva), str(tmp_path / "o"))
    assert [d["ref"] for d in result["disks"]] == ["Ref:12"]
    assert image_bytes(result["disks"][0]["path"]) == root
    assert result["disks"][0]["checksums_verified"] is True


def test_suspend_image_is_skipped_after_the_disks_too(tmp_path):
    root = sparse_disk({0: None}, size=MiB)
    vm = VM(disks=[Disk(image=root, userdevice=0, ref=1),
                   Disk(image=sparse_disk({0: None}, size=MiB), vdi_type="suspend", ref=2)])
    xva = tmp_path / "s2.xva"
    write_xva(str(xva), vm, checksum="sha1", preserve_power_state=True, compression="gzip")
    assert image_bytes(convert_xva(str(xva), str(tmp_path / "o"))["disks"][0]["path"]) == root


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_only_the_images_kept_are_synced(tmp_path, two_disk_vm, monkeypatch, fmt):
    """Raw images are flushed while written and fsynced before the rename; the raw file a qcow2
    image is made from is deleted at once, so syncing it would only write the data twice."""
    xva = tmp_path / "s.xva"
    write_xva(str(xva), two_disk_vm)
    synced = []
    for name in ("fsync", "fdatasync"):
        def record(fd, real=getattr(os, name)):
            synced.append(os.readlink("/proc/self/fd/%d" % fd))
            return real(fd)
        monkeypatch.setattr(os, name, record)
    monkeypatch.setattr(reader_module._Writer, "FLUSH_EVERY", MiB)  # the flusher's turn comes
    disks = convert_xva(str(xva), str(tmp_path / "o"), fmt=fmt)["disks"]
    raw_temps = [p for p in synced if ".xen2kvm-part" in p and p.endswith(".raw")]
    qcow2_temps = [p for p in synced if ".xen2kvm-part" in p and p.endswith(".qcow2")]
    if fmt == "raw":
        # each image: at least one flush on the way and the final fsync
        assert len(raw_temps) >= 2 * len(disks) and len(set(raw_temps)) == len(disks) and not qcow2_temps
    else:
        assert not raw_temps and len(set(qcow2_temps)) == len(disks)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_zero_size_vdi_gives_an_empty_image(tmp_path, fmt):
    root = sparse_disk({0: None}, size=2 * MiB)
    vm = VM(disks=[Disk(image=root, userdevice=0), Disk(image=b"", virtual_size=0, userdevice=1)])
    xva = tmp_path / "empty.xva"
    written = write_xva(str(xva), vm)
    assert len(written["folders"]) == 1  # xapi writes no chunk, so no folder, for an empty VDI
    disks = convert_xva(str(xva), str(tmp_path / "o"), fmt=fmt)["disks"]
    assert [d["virtual_size"] for d in disks] == [2 * MiB, 0]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disks[1]["path"]], check=True,
                                     stdout=subprocess.PIPE).stdout)
    assert info["format"] == fmt and info["virtual-size"] == 0
    assert disks[1]["chunks"] == 0


@pytest.mark.parametrize("size", [3 * MiB + 12345, MiB - 1, 1])
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_last_chunk_padded_to_a_full_chunk_is_accepted(tmp_path, size, compression):
    """Xen Orchestra pads the last chunk to 1 MiB; the bytes past virtual_size are zeros."""
    content = sparse_disk({i: None for i in range(-(-size // MiB))}, size=size)
    xva = tmp_path / "xo.xva"
    written = write_xva(str(xva), VM(disks=[Disk(image=content)]), checksum="xxhash", compression=compression,
                        pad_last_chunk=True)
    assert all(member_size in (0, 16, MiB) for name, member_size in written["members"] if name != "ova.xml")
    disk = convert_xva(str(xva), str(tmp_path / "o"))["disks"][0]
    assert os.path.getsize(disk["path"]) == size
    assert image_bytes(disk["path"]) == content


def _xva_with_dirty_padding(path, content):
    """A padded last chunk whose padding is not zero (with a matching checksum)."""
    from xva_writer import chunk_checksum, v7_header
    import io
    buffer = io.BytesIO()
    written = write_xva(buffer, VM(disks=[Disk(image=content)]), checksum="sha1", pad_last_chunk=True)
    data = bytearray(buffer.getvalue())
    last_name = [name for name, _size in written["members"] if not name.endswith(".checksum")][-1]
    header = v7_header(last_name, MiB)
    start = bytes(data).index(header) + 512
    data[start + MiB - 1] = 0x77
    csum_header = v7_header(last_name + ".checksum", 40)
    csum_at = bytes(data).index(csum_header, start) + 512
    data[csum_at:csum_at + 40] = chunk_checksum("sha1", bytes(data[start:start + MiB])).encode()
    path.write_bytes(bytes(data))


def test_padding_that_is_not_zero_is_refused(tmp_path):
    content = sparse_disk({0: None, 1: None}, size=MiB + 100)
    xva = tmp_path / "dirty.xva"
    _xva_with_dirty_padding(xva, content)
    with pytest.raises(XvaError, match=r"Ref:\d+/00000001.* offset \d+.*past its virtual_size"):
        convert_xva(str(xva), str(tmp_path / "o"))
    assert leftovers(tmp_path / "o") == []


# ------------------------------------------------------------------ issue 7: bad bytes anywhere end in XvaError


def _plain_xva(tmp_path):
    content = sparse_disk({0: None, 2: None}, size=3 * MiB + 4096)
    buffer = tmp_path / "good.xva"
    written = write_xva(str(buffer), VM(disks=[Disk(image=content)]), checksum="sha1", keepalives={0: 1})
    return bytearray(buffer.read_bytes()), written["members"]


def _header_offsets(members):
    offsets, pos = [], 0
    for _name, size in members:
        offsets.append(pos)
        pos += 512 + size + (-size % 512)
    return offsets


def _fix_checksum(data, at):
    header = data[at:at + 512]
    header[148:156] = b" " * 8
    header[148:156] = b"%07o\0" % sum(header)
    data[at:at + 512] = header


def _pax(records, body=b""):
    for key, value in records:
        record = b" %s=%s\n" % (key, value)
        length = len(record) + 1
        length = len(record) + len(str(length))
        body += str(length).encode() + record
    from xva_writer import v7_header
    header = bytearray(v7_header("PaxHeader", len(body), typeflag=b"x"))
    return bytes(header) + body + bytes(-len(body) % 512)


def _set_field(start, end, value):
    def corrupt(data, at):
        field = (value + bytes(end - start))[:end - start]
        data[at + start:at + end] = field
        _fix_checksum(data, at)
    return corrupt


def _insert(blob):
    def corrupt(data, at):
        data[at:at] = blob
    return corrupt


def _flip_checksum(data, at):
    data[at + 150] ^= 0x01


def _truncate_inside(data, at):
    del data[at + 100:]


HEADER_DAMAGE = {
    "checksum": (_flip_checksum, "checksum"),
    "size not octal": (_set_field(124, 136, b"9x9x9x9x9x9\0"), "size field"),
    "size base-256 huge": (_set_field(124, 136, b"\x80" + b"\xff" * 11), "larger than|more than|truncated|expected a hex digest"),
    "size octal huge": (_set_field(124, 136, b"77777777777\0"), "larger than|more than|truncated|expected a hex digest"),
    "type symlink": (_set_field(156, 157, b"2"), "tar type"),
    # the member's data becomes the name of the next member: named, at the next member's offset
    "type long name": (_set_field(156, 157, b"L"), "too large|not UTF-8|outside|truncated|checksum|first member"),
    "name not utf-8": (_set_field(0, 100, b"Ref:\xff\xfe/00000000"), "not UTF-8"),
    "pax size not a number": (_insert(_pax([(b"size", b"12abc")])), "pax"),
    "pax size negative": (_insert(_pax([(b"size", b"-512")])), "pax"),
    "pax record length garbage": (_insert(_pax([], b"9z path=x\n")), "pax"),
    "pax record length too long": (_insert(_pax([], b"99 path=x\n")), "pax"),
    "pax path not utf-8": (_insert(_pax([(b"path", b"Ref:\xff/00000000")])), "not UTF-8"),
    "truncated header": (_truncate_inside, "truncated"),
}


@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
def test_damaged_tar_headers_fail_with_member_and_offset(tmp_path, damage):
    corrupt, expected = HEADER_DAMAGE[damage]
    good, members = _plain_xva(tmp_path)
    offsets = _header_offsets(members)
    # every header: ova.xml, the first chunk, its checksum, a keep-alive, the last chunk
    for index in sorted({0, 1, 2, 3, len(members) - 2, len(members) - 1}):
        data = bytearray(good)
        at = offsets[index]
        corrupt(data, at)
        xva = tmp_path / ("bad-%d.xva" % index)
        xva.write_bytes(bytes(data))
        dest = tmp_path / ("o-%d" % index)
        with pytest.raises(XvaError) as caught:
            convert_xva(str(xva), str(dest))
        message = str(caught.value)
        assert re.search(expected, message), (index, message)
        if damage != "type long name":
            assert "offset %d" % at in message or "offset %d" % (at + 512) in message, (index, message)
        assert re.search(r"offset \d+", message), message
        names = {members[index][0]} | ({members[index - 1][0]} if index else {"the first tar header"})
        assert damage == "type long name" or any(repr(name) in message or name in message for name in names), (index, message)
        assert leftovers(dest) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
       compression=st.sampled_from([None, "gzip", "zstd"]), in_headers=st.booleans())
def test_random_byte_flips_raise_only_xva_errors(tmp_path, flips, compression, in_headers):
    work = tmp_path / ("flip-%d" % time.monotonic_ns())
    work.mkdir()
    good, members = _plain_xva(work)
    offsets = _header_offsets(members)
    data = bytearray(good)
    for where, mask in flips:
        if in_headers:
            at = offsets[int(where * len(offsets))] + int(where * 997) % 512
        else:
            at = int(where * len(data))
        data[at] ^= mask
    if compression == "gzip":
        import gzip
        data = gzip.compress(bytes(data), compresslevel=1)
    elif compression == "zstd":
        import zstandard
        data = zstandard.ZstdCompressor(level=1).compress(bytes(data))
    xva = work / "flipped.xva"
    xva.write_bytes(bytes(data))
    try:
        convert_xva(str(xva), str(work / "o"))
    except XvaError:
        assert leftovers(work / "o") == []


@pytest.mark.parametrize("secureboot, firmware, expected", [
    ("true", "uefi", True), ("false", "uefi", False), ("auto", "uefi", False), ("true", "bios", False),
    (None, "uefi", False)])
def test_secure_boot_and_vtpm_come_from_ova_xml(tmp_path, secureboot, firmware, expected):
    vm = VM(domain_type="hvm", firmware=firmware, secure_boot=secureboot, vtpm=expected,
            disks=[Disk(image=bytes(MiB))])
    xva = tmp_path / "sb.xva"
    write_xva(str(xva), vm)
    spec = xva_info(str(xva))["spec"]
    assert spec["secure_boot"] is expected and spec["firmware"] == firmware
    assert spec["vtpm"] is expected
