"""Cross-check the test XVA writer against an independent implementation: xva-img.

xva-img (Debian 12 ships 1.4.2) rebuilds a raw disk from an *extracted* XVA disk folder:
``xva-img [-p] [-s] disk-export <Ref dir> <out.raw>``. It walks counters 0..max, writes 1 MiB of
zeros for each missing counter and each present member as it is, so omitted zero chunks, a short
last chunk and zero-length keep-alives all come out right. It verifies SHA-1 ``.checksum``
members and refuses a mismatch; 1.4.2 cannot read ``.xxhash`` members.
"""
import random
import re
import shutil
import subprocess

import pytest

from xva_writer import CHUNK, Disk, VM, write_xva

XVA_IMG = shutil.which("xva-img")
pytestmark = pytest.mark.skipif(XVA_IMG is None or shutil.which("tar") is None,
                                reason="xva-img (apt: xva-img) or tar not installed")


def xva_img_version() -> str:
    p = subprocess.run([XVA_IMG, "-h"], capture_output=True, text=True, check=False)  # -v prints no version
    m = re.search(r"xva-img (\d+\.\d+(?:\.\d+)?)", p.stdout + p.stderr)
    return m.group(1) if m else ""


def sparse_random_image(seed: int, n_chunks: int, tail: int) -> bytes:
    """Random content in some chunks, zeros (to be omitted) in others, a short last chunk."""
    rnd = random.Random(seed)
    vs = (n_chunks - 1) * CHUNK + tail
    img = bytearray(vs)
    for p in range(n_chunks):
        kind = rnd.choice(["zero", "zero", "full", "partial"])
        start, end = p * CHUNK, min((p + 1) * CHUNK, vs)
        if kind == "full":
            img[start:end] = rnd.randbytes(end - start)
        elif kind == "partial":
            a = rnd.randrange(start, end)
            b = min(end, a + rnd.randrange(1, 4096))
            img[a:b] = rnd.randbytes(b - a)
    img[0:16] = b"first chunk here"
    return bytes(img)


def export_with_xva_img(xva, ref, workdir, out_name="out.raw"):
    ex = workdir / ("x-" + out_name)
    ex.mkdir()
    subprocess.run(["tar", "-xf", str(xva), "-C", str(ex)], check=True)
    out = workdir / out_name
    p = subprocess.run([XVA_IMG, "-p", "disk-export", str(ex / ref), str(out)],
                       capture_output=True, text=True, check=False)
    return p, out


@pytest.mark.parametrize("keepalive_every", [None, 3])
@pytest.mark.parametrize("source", ["bytes", "file"])
def test_xva_img_rebuilds_the_same_disk(tmp_path, source, keepalive_every):
    img = sparse_random_image(seed=20240101, n_chunks=13, tail=12345)
    n_zero = sum(1 for p in range(1, 12) if not any(img[p * CHUNK:(p + 1) * CHUNK]))
    assert n_zero >= 2, "the layout must exercise omitted chunks"
    if source == "file":
        src = tmp_path / "src.raw"
        src.write_bytes(img)
        disk = Disk(src, ref=1730)
    else:
        disk = Disk(img, ref=1730)
    xva = tmp_path / "vm.xva"
    kw = {"keepalives": {0: keepalive_every}} if keepalive_every else {}
    r = write_xva(xva, VM(disks=[disk]), checksum="sha1", **kw)
    assert r["disks"][0]["omitted"] >= n_zero
    if keepalive_every:
        assert r["disks"][0]["keepalives"] > 0
    p, out = export_with_xva_img(xva, "Ref:1730", tmp_path)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == img


def test_xva_img_second_disk_in_string_order(tmp_path):
    a = sparse_random_image(seed=1, n_chunks=3, tail=CHUNK)
    b = sparse_random_image(seed=2, n_chunks=4, tail=1)
    xva = tmp_path / "two.xva"
    write_xva(xva, VM(disks=[Disk(a, ref=9), Disk(b, ref=10, userdevice=1, device="xvdb")]),
              checksum="sha1")
    p, out = export_with_xva_img(xva, "Ref:9", tmp_path, "a.raw")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == a
    p, out = export_with_xva_img(xva, "Ref:10", tmp_path, "b.raw")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b


def test_xva_img_rejects_corrupt_chunk(tmp_path):
    img = sparse_random_image(seed=7, n_chunks=4, tail=100)
    xva = tmp_path / "bad.xva"
    write_xva(xva, VM(disks=[Disk(img, ref=5)]), checksum="sha1", fault="corrupt_chunk")
    p, _out = export_with_xva_img(xva, "Ref:5", tmp_path)
    assert p.returncode != 0
    assert "checksum" in (p.stdout + p.stderr).lower()


def test_xva_img_1_4_cannot_read_xxhash(tmp_path):
    if not xva_img_version().startswith("1.4"):
        pytest.skip(f"xva-img {xva_img_version() or '?'} is not 1.4.x")
    xva = tmp_path / "xx.xva"
    write_xva(xva, VM(disks=[Disk(b"\x01" * 100, ref=5)]), checksum="xxhash")
    p, _out = export_with_xva_img(xva, "Ref:5", tmp_path)
    assert p.returncode != 0
