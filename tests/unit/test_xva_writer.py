"""Checks of the test XVA writer (tests/lib/xva_writer.py) against the XVA format rules."""
import gzip
import hashlib
import io
import os
import re
import subprocess
import tarfile
import threading
import time
import tracemalloc
import xmlrpc.client

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xva_writer as X
from xva_writer import CHUNK, Disk, Nic, VM, write_xva

ZERO_BLOCK = bytes(512)


# ----------------------------------------------------------------------------------------
# helpers: an independent raw tar walker and a sequential reconstruction
# ----------------------------------------------------------------------------------------
def walk(raw: bytes):
    """Yield (name, size, data, header) from raw tar bytes; stop at two zero blocks or EOF."""
    pos = 0
    while pos + 512 <= len(raw):
        hdr = raw[pos:pos + 512]
        if hdr == ZERO_BLOCK:
            return
        name = hdr[:100].split(b"\0", 1)[0].decode()
        size = int(hdr[124:136].split(b"\0", 1)[0] or b"0", 8)
        data = raw[pos + 512:pos + 512 + size]
        yield name, size, data, hdr
        pos += 512 + (size + 511) // 512 * 512


def ova_of(raw: bytes) -> dict:
    for name, _size, data, _hdr in walk(raw):
        if name == "ova.xml":
            return parse_ova(data.decode())
    raise AssertionError("no ova.xml")


def parse_ova(text: str) -> dict:
    (value,), _method = xmlrpc.client.loads("<params><param>%s</param></params>" % text)
    return value


def reconstruct(raw: bytes, ref: str, virtual_size: int, checksum="xxhash") -> bytes:
    """Rebuild one disk by the sequential rule, verifying checksums and counters."""
    out = bytearray(virtual_size)
    off, prev = 0, -1
    members = [(n, d) for n, _size, d, _hdr in walk(raw) if n.startswith(ref + "/")]
    i = 0
    while i < len(members):
        name, data = members[i]
        cnt = int(name.split("/")[1])
        assert re.fullmatch(r"\d{8}", name.split("/")[1])
        assert cnt > prev, "counters must strictly increase"
        if checksum:
            ext = X.CHECKSUM_EXT[checksum]
            cname, cdata = members[i + 1]
            assert cname == name + ext
            assert cdata.decode() == X.chunk_checksum(checksum, data)
            i += 1
        off += (cnt - prev - 1) * CHUNK
        assert off + len(data) <= virtual_size
        out[off:off + len(data)] = data
        off += len(data)
        prev = cnt
        i += 1
    return bytes(out)


class Sink:
    """A write-only, non-seekable binary sink (like a pipe)."""

    def __init__(self, keep=True):
        self.keep = keep
        self.buf = bytearray()
        self.n = 0

    def write(self, b):
        self.n += len(b)
        if self.keep:
            self.buf += b
        return len(b)

    def flush(self):
        pass


def xva_bytes(vm, **kw):
    s = Sink()
    r = write_xva(s, vm, **kw)
    return bytes(s.buf), r


def pattern(n, seed=1):
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


# ----------------------------------------------------------------------------------------
# tar container
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_headers_are_v7_and_stream_ends_with_two_zero_blocks(legacy):
    img = pattern(CHUNK + 1000)
    raw, r = xva_bytes(VM(disks=[Disk(img, ref=7)], legacy_types=legacy))
    pos = 0
    for name, size, data, hdr in walk(raw):
        assert hdr[257:263] != b"ustar\0" and b"ustar" not in hdr
        assert int(hdr[100:108].rstrip(b"\0"), 8) == (0 if legacy else 0o400)
        assert int(hdr[108:116].rstrip(b"\0"), 8) == 0
        assert int(hdr[116:124].rstrip(b"\0"), 8) == 0
        assert int(hdr[136:148].rstrip(b"\0"), 8) == 0
        assert hdr[156:157] == (b"\0" if legacy else b"0")
        stored = int(hdr[148:156].split(b"\0")[0], 8)
        assert stored == sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
        assert hdr[257:] == bytes(512 - 257)
        pos += 512 + (size + 511) // 512 * 512
    assert raw[pos:] == bytes(1024), "exactly two zero blocks, no record padding"
    assert len(raw) % 10240 != 0 or len(raw) == pos + 1024
    assert r["tar_bytes"] == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        ms = t.getmembers()
        assert [m.name for m in ms] == [n for n, _size in r["members"]]
        for m in ms:
            assert m.isfile() and m.uid == 0 and m.gid == 0 and m.mtime == 0


def test_ova_first_and_disks_in_string_order():
    disks = [Disk(pattern(100, i), ref=ref, userdevice=i, device="xvd" + "abc"[i])
             for i, ref in enumerate([9, 10, 100])]
    raw, r = xva_bytes(VM(disks=disks))
    names = [n for n, *_rest in walk(raw)]
    assert names[0] == "ova.xml"
    folders = []
    for n in names[1:]:
        f = n.split("/")[0]
        if not folders or folders[-1] != f:
            folders.append(f)
    assert folders == ["Ref:10", "Ref:100", "Ref:9"] == r["folders"]
    assert r["refs"] == ["Ref:9", "Ref:10", "Ref:100"]
    # every data member is immediately followed by its checksum member
    for a, b in zip(names[1::2], names[2::2]):
        assert b == a + ".xxhash"
    assert not any(n.endswith("/") for n in names), "no directory entries"


# ----------------------------------------------------------------------------------------
# chunks
# ----------------------------------------------------------------------------------------
def test_zero_chunks_omitted_first_last_present_short_last():
    vs = 6 * CHUNK + 4321
    img = bytearray(vs)
    img[2 * CHUNK + 5: 2 * CHUNK + 9] = b"data"   # chunk 2
    img[4 * CHUNK: 5 * CHUNK] = b"\x01" * CHUNK  # chunk 4
    raw, r = xva_bytes(VM(disks=[Disk(bytes(img), ref=5)]), checksum="sha1")
    data = [(n, s) for n, s, *_rest in walk(raw) if n.startswith("Ref:5/") and "." not in n]
    assert data == [("Ref:5/00000000", CHUNK), ("Ref:5/00000002", CHUNK),
                    ("Ref:5/00000004", CHUNK), ("Ref:5/00000006", 4321)]
    assert r["disks"][0]["omitted"] == 3
    assert reconstruct(raw, "Ref:5", vs, "sha1") == bytes(img)


def test_all_zero_disk_has_first_and_last_only():
    raw, _result = xva_bytes(VM(disks=[Disk(b"", virtual_size=5 * CHUNK, ref=3)]), checksum=None)
    assert [(name, size) for name, size, _data, _hdr in walk(raw)][1:] == [("Ref:3/00000000", CHUNK),
                                                                           ("Ref:3/00000004", CHUNK)]


def test_single_short_chunk_disk():
    raw, _result = xva_bytes(VM(disks=[Disk(b"abc", ref=3)]))
    assert [(name, size) for name, size, _data, _hdr in walk(raw)][1:] == [("Ref:3/00000000", 3),
                                                                           ("Ref:3/00000000.xxhash", 16)]


def test_keep_zero_chunks_writes_every_chunk():
    raw, _result = xva_bytes(VM(disks=[Disk(b"", virtual_size=4 * CHUNK, ref=3)]),
                             keep_zero_chunks=True, checksum=None)
    assert [n for n, *_rest in walk(raw)][1:] == ["Ref:3/%08d" % i for i in range(4)]


def test_keepalives_advance_counter_not_offset():
    vs = 8 * CHUNK + 100
    img = bytearray(vs)
    for p in (1, 2, 6):
        img[p * CHUNK] = p
    img[-1] = 0xFF
    raw, r = xva_bytes(VM(disks=[Disk(bytes(img), ref=4)]), keepalives={0: 2})
    members = [(n, s, d) for n, s, d, _hdr in walk(raw) if n.startswith("Ref:4/")]
    keep = [(n, d) for n, s, d in members if s == 0]
    # keep-alives before positions 2, 4, 6 (never before the first or the last chunk)
    assert [n for n, _data in keep] == ["Ref:4/00000002", "Ref:4/00000005", "Ref:4/00000008"]
    sums = {n: d for n, s, d in members}
    for n, _data in keep:
        assert sums[n + ".xxhash"] == b"EF46DB3751D8E999"  # XXH64("")
    assert r["disks"][0]["keepalives"] == 3
    assert reconstruct(raw, "Ref:4", vs) == bytes(img)
    # naive name * 1 MiB would be wrong here: the last chunk's counter is 11, position 8
    assert [n for n, s, _data in members if s == 100] == ["Ref:4/00000011"]


def test_keepalive_sha1_checksum_is_of_empty_input():
    raw, _result = xva_bytes(VM(disks=[Disk(pattern(4 * CHUNK), ref=4)]), keepalives={0: 1},
                             checksum="sha1")
    d = {n: data for n, _size, data, _hdr in walk(raw)}
    assert d["Ref:4/00000001"] == b""
    assert d["Ref:4/00000001.checksum"] == hashlib.sha1(b"").hexdigest().encode()
    assert reconstruct(raw, "Ref:4", 4 * CHUNK, "sha1") == pattern(4 * CHUNK)


@pytest.mark.parametrize("checksum", ["sha1", "xxhash", None])
def test_checksum_formats(checksum):
    img = pattern(CHUNK + 7)
    raw, _result = xva_bytes(VM(disks=[Disk(img, ref=2)]), checksum=checksum)
    d = {n: data for n, _size, data, _hdr in walk(raw)}
    if checksum == "sha1":
        assert re.fullmatch(rb"[0-9a-f]{40}", d["Ref:2/00000000.checksum"])
        assert d["Ref:2/00000000.checksum"].decode() == hashlib.sha1(img[:CHUNK]).hexdigest()
    elif checksum == "xxhash":
        assert re.fullmatch(rb"[0-9A-F]{16}", d["Ref:2/00000001.xxhash"])
        assert d["Ref:2/00000001.xxhash"].decode() == \
            xxhash.xxh64(img[CHUNK:], seed=0).hexdigest().upper()
    else:
        assert sorted(d) == ["Ref:2/00000000", "Ref:2/00000001", "ova.xml"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_chunks=st.integers(1, 9), tail=st.integers(0, CHUNK - 1),
       nonzero=st.sets(st.integers(0, 8)), every=st.one_of(st.none(), st.integers(1, 4)),
       keep_zero=st.booleans())
def test_roundtrip_property(n_chunks, tail, nonzero, every, keep_zero):
    vs = (n_chunks - 1) * CHUNK + (tail or CHUNK)
    img = bytearray(vs)
    for p in nonzero:
        if p * CHUNK < vs:
            img[p * CHUNK + (p * 7919) % min(CHUNK, vs - p * CHUNK)] = p + 1
    kw = {"keepalives": {0: every}} if every else {}
    raw, r = xva_bytes(VM(disks=[Disk(bytes(img), ref=1)]), keep_zero_chunks=keep_zero, **kw)
    assert reconstruct(raw, "Ref:1", vs) == bytes(img)
    data = [n for n, s, *_rest in walk(raw) if n.startswith("Ref:1/") and "." not in n]
    assert data[0] == "Ref:1/00000000"
    sizes = [s for n, s, *_rest in walk(raw) if n.startswith("Ref:1/") and "." not in n and s]
    assert sizes[-1] == vs - (n_chunks - 1) * CHUNK  # last chunk present, short if needed


# ----------------------------------------------------------------------------------------
# ova.xml
# ----------------------------------------------------------------------------------------
def test_ova_xml_is_bare_value_and_round_trips():
    vm = VM(name="Web <01> & co", vcpus=2, vcpus_max=4, cores_per_socket=2,
            memory_bytes=3 * 2**30, tags=["prod", "web"],
            disks=[Disk(b"x", ref=12, userdevice=1, device="xvdb", name="data", vdi_uuid="u1"),
                   Disk(b"y", ref=11, userdevice=0, bootable=True, name="root")],
            nics=[Nic(1, "AA:BB:CC:00:00:02", mtu=9000, network="storage", bridge="xenbr1"),
                  Nic(0, "aa:bb:cc:00:00:01")])
    raw, r = xva_bytes(vm)
    text = r["ova_xml"]
    assert text.startswith("<value><struct>") and text.endswith("</struct></value>")
    assert "<?xml" not in text and "<string>" not in text
    assert "<member><name>memory_static_max</name><value>3221225472</value></member>" in text
    assert "<member><name>xapi_major</name><value><i4>1</i4></value></member>" in text
    assert ova_of(raw) == parse_ova(text)
    top = parse_ova(text)
    assert set(top["version"]) == {"hostname", "date", "product_version", "product_brand",
                                   "build_number", "xapi_major", "xapi_minor", "export_vsn"}
    objs = {o["id"]: o for o in top["objects"]}
    assert all(re.fullmatch(r"Ref:\d+", i) for i in objs)
    vms = [o for o in top["objects"] if o["class"] == "VM"]
    assert len(vms) == 1
    v = vms[0]["snapshot"]
    assert v["name_label"] == "Web <01> & co"
    assert v["memory_static_max"] == "3221225472"
    assert v["VCPUs_at_startup"] == "2" and v["VCPUs_max"] == "4"
    assert v["platform"]["cores-per-socket"] == "2"
    assert v["domain_type"] == "pv" and v["HVM_boot_policy"] == ""
    assert v["PV_bootloader"] == "pygrub" and v["PV_args"] == "console=hvc0"
    assert v["tags"] == ["prod", "web"] and v["is_a_template"] is False
    assert "OpaqueRef:" in v["last_booted_record"] and v["last_booted_record"] != "OpaqueRef:NULL"
    vbds = [objs[i] for i in v["VBDs"]]
    assert all(b["class"] == "VBD" for b in vbds)
    cds = [b["snapshot"] for b in vbds if b["snapshot"]["type"] == "CD"]
    assert len(cds) == 1 and cds[0]["VDI"] == "OpaqueRef:NULL" and cds[0]["empty"] is True
    disks = sorted((b["snapshot"] for b in vbds if b["snapshot"]["type"] == "Disk"),
                   key=lambda s: int(s["userdevice"]))
    assert [d["userdevice"] for d in disks] == ["0", "1"]
    assert [d["VDI"] for d in disks] == ["Ref:11", "Ref:12"]
    assert disks[0]["bootable"] is True and disks[0]["mode"] == "RW"
    vdi = objs["Ref:12"]
    assert vdi["class"] == "VDI" and vdi["snapshot"]["uuid"] == "u1"
    assert vdi["snapshot"]["virtual_size"] == "1" and vdi["snapshot"]["name_label"] == "data"
    sr = objs[vdi["snapshot"]["SR"]]
    assert sr["class"] == "SR" and sr["snapshot"]["content_type"] == "user"
    assert set(r["refs"]) == {"Ref:11", "Ref:12"}
    vifs = sorted((objs[i]["snapshot"] for i in v["VIFs"]), key=lambda s: int(s["device"]))
    assert [x["MAC"] for x in vifs] == ["aa:bb:cc:00:00:01", "AA:BB:CC:00:00:02"]
    assert vifs[1]["MTU"] == "9000"
    net = objs[vifs[1]["network"]]
    assert net["class"] == "network" and net["snapshot"]["name_label"] == "storage"
    assert net["snapshot"]["bridge"] == "xenbr1"


def test_ova_hvm_uefi_and_old_export_without_domain_type():
    top = parse_ova(write_xva(Sink(), VM(domain_type="hvm", firmware="uefi",
                                         nvram={"EFI-variables": "AAAA"}))["ova_xml"])
    v = next(o["snapshot"] for o in top["objects"] if o["class"] == "VM")
    assert v["HVM_boot_policy"] == "BIOS order" and v["HVM_boot_params"]["firmware"] == "uefi"
    assert v["PV_bootloader"] == "" and v["NVRAM"] == {"EFI-variables": "AAAA"}
    top = parse_ova(write_xva(Sink(), VM(domain_type=None, hvm_boot_policy="BIOS order"))
                    ["ova_xml"])
    v = next(o["snapshot"] for o in top["objects"] if o["class"] == "VM")
    assert "domain_type" not in v and v["HVM_boot_policy"] == "BIOS order"
    top = parse_ova(write_xva(Sink(), VM(domain_type=None))["ova_xml"])
    v = next(o["snapshot"] for o in top["objects"] if o["class"] == "VM")
    assert "domain_type" not in v and v["HVM_boot_policy"] == ""


def test_legacy_types():
    r = write_xva(Sink(), VM(legacy_types=True, memory_bytes=2**30,
                             disks=[Disk(b"", virtual_size=10 * 2**30)]))
    assert "<value><string>TestVM01</string></value>" in r["ova_xml"]
    top = parse_ova(r["ova_xml"])
    v = next(o["snapshot"] for o in top["objects"] if o["class"] == "VM")
    assert v["memory_static_max"] == 2**30  # <i4>
    vdi = next(o["snapshot"] for o in top["objects"] if o["class"] == "VDI")
    assert vdi["virtual_size"] == str(10 * 2**30)  # too big for i4: <string>


def test_iso_and_suspend_vdis_have_no_folder():
    vm = VM(disks=[Disk(pattern(10), ref=20),
                   Disk(b"", virtual_size=CHUNK, ref=21, userdevice=3, device="xvdd",
                        sr_content_type="iso", name="debian.iso"),
                   Disk(b"", virtual_size=CHUNK, ref=22, userdevice=4, vdi_type="suspend")],
            cd_drive=False)
    raw, r = xva_bytes(vm)
    assert {n.split("/")[0] for n, *_rest in walk(raw)} == {"ova.xml", "Ref:20"}
    objs = {o["id"]: o for o in ova_of(raw)["objects"]}
    assert objs["Ref:21"]["class"] == "VDI" and objs["Ref:22"]["snapshot"]["type"] == "suspend"
    assert objs[objs["Ref:21"]["snapshot"]["SR"]]["snapshot"]["content_type"] == "iso"
    iso_vbd = next(o for o in objs.values() if o["class"] == "VBD"
                   and o["snapshot"]["VDI"] == "Ref:21")
    assert iso_vbd["snapshot"]["type"] == "CD"


# ----------------------------------------------------------------------------------------
# output plumbing
# ----------------------------------------------------------------------------------------
def test_gzip_and_zstd_wrap_the_whole_stream(tmp_path):
    import zstandard
    vm = VM(disks=[Disk(pattern(CHUNK + 5), ref=3)])
    plain = tmp_path / "a.xva"
    write_xva(plain, vm, compression=None)
    gz = tmp_path / "a.xva.gz"
    write_xva(gz, vm, compression="gzip")
    zs = tmp_path / "a.xva.zst"
    write_xva(zs, vm, compression="zstd")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert zs.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    for raw in (gzip.decompress(gz.read_bytes()),
                zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zs.read_bytes())).read()):
        names = [n for n, *_rest in walk(raw)]
        assert names[0] == "ova.xml" and "Ref:3/00000001" in names
        assert reconstruct(raw, "Ref:3", CHUNK + 5) == pattern(CHUNK + 5)
    subprocess.run(["zstd", "-t", "-q", str(zs)], check=True)


def test_writes_to_a_real_pipe():
    r_fd, w_fd = os.pipe()
    got = bytearray()

    def drain():
        with os.fdopen(r_fd, "rb") as f:
            while True:
                b = f.read(65536)
                if not b:
                    return
                got.extend(b)

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(w_fd, "wb") as w:
        write_xva(w, VM(disks=[Disk(pattern(3 * CHUNK), ref=8)]), compression="zstd")
    t.join()
    import zstandard
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(got))).read()
    assert reconstruct(raw, "Ref:8", 3 * CHUNK) == pattern(3 * CHUNK)


def test_big_sparse_file_packs_fast_in_constant_memory(tmp_path):
    path = tmp_path / "big.raw"
    vs = 30 * 2**30
    blk = pattern(CHUNK, 9)
    spots = [i * (vs // 70) + 12345 for i in range(70)]  # 70 x 10 MiB = 700 MiB of data
    with open(path, "wb") as f:
        f.truncate(vs)
        for s in spots:
            f.seek(s)
            for _copy in range(10):
                f.write(blk)
    sink = Sink(keep=False)
    tracemalloc.start()
    t0 = time.monotonic()
    r = write_xva(sink, VM(disks=[Disk(path, ref=1)]))
    elapsed = time.monotonic() - t0
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 60, f"packing took {elapsed:.1f}s"
    assert peak < 32 * 2**20, f"peak Python memory {peak} bytes"
    d = r["disks"][0]
    assert d["virtual_size"] == vs
    # each 10 MiB run starting mid-chunk spans 11 chunks; plus the first and the last chunk
    assert d["data_members"] == 70 * 11 + 1
    assert d["omitted"] == vs // CHUNK - d["data_members"]
    assert r["members"][-2][0] == "Ref:1/%08d" % (vs // CHUNK - 1)


def test_file_image_larger_virtual_size_reads_zeros_past_eof(tmp_path):
    p = tmp_path / "small.raw"
    p.write_bytes(pattern(CHUNK + 10))
    raw, _result = xva_bytes(VM(disks=[Disk(p, virtual_size=3 * CHUNK + 1, ref=6)]))
    assert reconstruct(raw, "Ref:6", 3 * CHUNK + 1) == pattern(CHUNK + 10) + bytes(
        2 * CHUNK - 9)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        write_xva(Sink(), VM(), checksum="md5")
    with pytest.raises(ValueError):
        write_xva(Sink(), VM(), compression="bz2")
    with pytest.raises(ValueError):
        write_xva(Sink(), VM(), fault="nope")
    with pytest.raises(ValueError):
        write_xva(Sink(), VM(disks=[Disk(b"a", ref=1), Disk(b"b", ref=1)]))


# ----------------------------------------------------------------------------------------
# faults
# ----------------------------------------------------------------------------------------
FVM = dict(disks=[Disk(pattern(4 * CHUNK + 77), ref=30), Disk(pattern(10, 2), ref=31,
                                                              userdevice=1)])


def fault_xva(fault, **kw):
    return xva_bytes(VM(**FVM), fault=fault, **kw)


def data_names(raw, ref="Ref:30"):
    return [n for n, *_rest in walk(raw) if n.startswith(ref + "/") and "." not in n[len(ref):]]


def test_fault_corrupt_chunk():
    raw, r = fault_xva("corrupt_chunk")
    assert r["fault_target"] == "Ref:30"
    with pytest.raises(AssertionError):
        reconstruct(raw, "Ref:30", 4 * CHUNK + 77)
    d = {n: data for n, _size, data, _hdr in walk(raw)}
    bad = [n for n in data_names(raw)
           if X.chunk_checksum("xxhash", d[n]) != d[n + ".xxhash"].decode()]
    assert bad == ["Ref:30/00000000"]


def test_fault_truncate():
    raw, _result = fault_xva("truncate")
    last = list(walk(raw))[-1]
    assert last[0] == "Ref:30/00000000" and len(last[2]) == CHUNK // 2 < last[1]
    assert not raw.endswith(bytes(1024))
    with pytest.raises(tarfile.ReadError):
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:
            for m in t:
                t.extractfile(m).read()


def test_fault_not_tar():
    raw, _result = fault_xva("not_tar")
    assert len(raw) == 65536 and raw[:2] != b"\x1f\x8b"
    with pytest.raises(tarfile.ReadError):
        tarfile.open(fileobj=io.BytesIO(raw))


def test_fault_first_not_ova():
    raw, _result = fault_xva("first_not_ova")
    names = [n for n, *_rest in walk(raw)]
    assert names[0] == "Ref:30/00000000"
    assert names.index("ova.xml") > names.index("Ref:30/00000004")
    assert "Ref:31/00000000" in names


def test_fault_bad_ova_xml():
    raw, _result = fault_xva("bad_ova_xml")
    name, _size, data, _hdr = next(walk(raw))
    assert name == "ova.xml"
    with pytest.raises(Exception):
        parse_ova(data.decode("latin-1"))


def test_fault_oversized_ova_xml():
    raw, _result = fault_xva("oversized_ova_xml")
    name, size, data, _hdr = next(walk(raw))
    assert name == "ova.xml" and size == 100 * 2**20
    assert len(raw) < 64 * 1024


@pytest.mark.parametrize("fault,expect", [
    ("dotdot_name", "Ref:30/../../etc/x"),
    ("absolute_name", "/etc/passwd"),
    ("stray_member", "stray.txt"),
    ("outside_folder", "Ref:99999/00000000"),
])
def test_fault_bad_names(fault, expect):
    raw, _result = fault_xva(fault)
    names = [n for n, *_rest in walk(raw)]
    assert names[0] == "ova.xml" and expect in names
    assert "Ref:30/00000004" in names and "Ref:31/00000000" in names


def test_fault_counters():
    raw, _result = fault_xva("counter_repeat")
    assert data_names(raw)[:2] == ["Ref:30/00000000", "Ref:30/00000000"]
    raw, _result = fault_xva("counter_decrease")
    assert data_names(raw)[:3] == ["Ref:30/00000000", "Ref:30/00000002", "Ref:30/00000001"]


def test_fault_past_virtual_size():
    raw, _result = fault_xva("past_virtual_size")
    sizes = {n: s for n, s, *_rest in walk(raw)}
    assert data_names(raw)[-2:] == ["Ref:30/00000004", "Ref:30/00000005"]
    assert sizes["Ref:30/00000004"] == 77 and sizes["Ref:30/00000005"] == CHUNK
    assert "Ref:30/00000005.xxhash" in sizes


def test_fault_chunk_larger():
    raw, _result = fault_xva("chunk_larger")
    sizes = {n: s for n, s, *_rest in walk(raw)}
    assert sizes["Ref:30/00000001"] == CHUNK + 4096 > sizes["Ref:30/00000000"]


def test_fault_missing_folder():
    raw, r = fault_xva("missing_folder")
    assert not data_names(raw) and data_names(raw, "Ref:31")
    assert "Ref:30" in {o["id"] for o in ova_of(raw)["objects"]}
    assert r["folders"] == ["Ref:31"]


@pytest.mark.parametrize("checksum", ["xxhash", "sha1"])
def test_fault_bad_checksum_format(checksum):
    raw, _result = fault_xva("bad_checksum_format", checksum=checksum)
    d = {n: data for n, _size, data, _hdr in walk(raw)}
    ext = X.CHECKSUM_EXT[checksum]
    bad = d["Ref:30/00000000" + ext]
    assert len(bad) == (16 if checksum == "xxhash" else 40)
    assert not re.fullmatch(rb"[0-9a-fA-F]+", bad)
    assert re.fullmatch(rb"[0-9a-fA-F]+", d["Ref:30/00000001" + ext])


def test_faults_with_compression():
    import zstandard
    s = Sink()
    write_xva(s, VM(**FVM), fault="truncate", compression="zstd")
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(s.buf))).read()
    assert list(walk(raw))[-1][0] == "Ref:30/00000000"
