"""Benchmark of xva_convert against its anchors (issue 2). A script, not a test: it prints a
table of times and ratios and writes it to docs/performance.md.

  anchor  tar -xf + xva-img -p disk-export (C++), the usual way today
  floor   cp --sparse=always of the converted raw image (writes the same data, nothing else)
  zstd    zstd -dc > /dev/null of the zstd XVA
  gzip    gzip -dc > /dev/null (and pigz -dc, when installed) of the gzip XVA

Every command runs with a warm page cache (the XVA is read once before), best of --runs.

Run: make bench, or .venv/bin/python bench/xva_bench.py [--runs N] (no shebang: run it with python).
"""

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lib"))
sys.path.insert(0, str(REPO / "build" / "collections"))

from xva_writer import VM, Disk, write_xva  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
TARGETS = {"anchor": 0.3, "floor": 2.0, "zstd": 1.3, "gzip": 1.0}


def link_collection():
    ns = REPO / "build" / "collections" / "ansible_collections" / "xen2kvm"
    ns.mkdir(parents=True, exist_ok=True)
    if not (ns / "migration").is_symlink():
        (ns / "migration").symlink_to(REPO)


def make_disk(path, size, data_bytes, seed=7):
    """A sparse raw disk of ``size`` with ``data_bytes`` of data in scattered 1 MiB chunks: half
    random (incompressible), half text, roughly like a used root file system."""
    rng = random.Random(seed)
    chunks = size // MiB
    wanted = data_bytes // MiB
    positions = sorted(set([0, chunks - 1] + rng.sample(range(1, chunks - 1), wanted - 2)))
    text = b"".join(b"Nov 25 21:52:%02d host kernel: [%8d.%06d] eth0: link up %d\n" % (i % 60, i, i * 7, i)
                    for i in range(20000))
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index, pos in enumerate(positions):
            half = os.urandom(MiB // 2) if index % 2 == 0 else rng.randbytes(MiB // 2)
            chunk = (half + text[(index * 4096) % len(text):] + text)[:MiB]
            handle.seek(pos * MiB)
            handle.write(chunk)
    return len(positions) * MiB


def timed(cmd, shell=False, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, **kw)
    return time.perf_counter() - start


def best(runs, func):
    return min(func() for _run in range(runs))


def convert_cmd(xva, dest):
    code = ("import sys; sys.path.insert(0, %r);"
            "from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva;"
            "convert_xva(%r, %r, force=True)") % (str(REPO / "build" / "collections"), str(xva), str(dest))
    return [sys.executable, "-c", code]


def ours(xva, dest):
    shutil.rmtree(dest, ignore_errors=True)
    return timed(convert_cmd(xva, dest))


def peak_rss_mib(xva, dest):
    shutil.rmtree(dest, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + convert_cmd(xva, dest), check=True,
                          stderr=subprocess.PIPE, text=True) if shutil.which("time") else None
    if proc is not None:
        return int(proc.stderr.strip().splitlines()[-1]) / 1024
    subprocess.run(convert_cmd(xva, dest), check=True)
    return max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024


def anchor(xva, work):
    extract = work / "extract"
    shutil.rmtree(extract, ignore_errors=True)
    extract.mkdir()
    out = work / "anchor.raw"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", str(xva), "-C", str(extract)], check=True)
    ref = next(p for p in extract.iterdir() if p.name.startswith("Ref:"))
    subprocess.run(["xva-img", "-p", "disk-export", str(ref) + "/", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    shutil.rmtree(extract)
    out.unlink()
    return took


def floor(raw, work):
    out = work / "floor.raw"
    out.unlink(missing_ok=True)
    took = timed(["cp", "--sparse=always", str(raw), str(out)])
    out.unlink()
    return took


def warm(path):
    with open(path, "rb") as handle:
        while handle.read(8 * MiB):
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=700)
    parser.add_argument("--big-gib", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write-doc", default=str(REPO / "docs" / "performance.md"))
    args = parser.parse_args()
    link_collection()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="xva-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, rss = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(args, rows, rss)


def run(args, work):
    disk = work / "disk.raw"
    data = make_disk(disk, args.size_gib * GiB, args.data_mib * MiB)
    vm = VM(name="bench", disks=[Disk(image=str(disk), userdevice=0)])
    xvas = {}
    for label, checksum, compression in (("sha1", "sha1", None), ("xxhash", "xxhash", None),
                                         ("zstd", "xxhash", "zstd"), ("gzip", "sha1", "gzip")):
        xvas[label] = work / ("bench-%s.xva" % label)
        write_xva(str(xvas[label]), vm, checksum=checksum, compression=compression)
        warm(xvas[label])
    dest = work / "out"
    rows = []
    t_ours = best(args.runs, lambda: ours(xvas["sha1"], dest))
    t_anchor = best(args.runs, lambda: anchor(xvas["sha1"], work))
    t_floor = best(args.runs, lambda: floor(dest / "bench-disk0.raw", work))
    rows.append(("plain XVA, SHA-1", t_ours, "tar -xf + xva-img disk-export", t_anchor, "anchor"))
    rows.append(("plain XVA, SHA-1", t_ours, "cp --sparse=always of the image", t_floor, "floor"))
    t_xx = best(args.runs, lambda: ours(xvas["xxhash"], dest))
    rows.append(("plain XVA, XXH64", t_xx, "cp --sparse=always of the image", t_floor, "floor"))
    t_zours = best(args.runs, lambda: ours(xvas["zstd"], dest))
    t_zstd = best(args.runs, lambda: timed("zstd -dc %s > /dev/null" % xvas["zstd"], shell=True))
    rows.append(("zstd XVA, XXH64", t_zours, "zstd -dc > /dev/null", t_zstd, "zstd"))
    t_gours = best(args.runs, lambda: ours(xvas["gzip"], dest))
    decoders = ["gzip"] + (["pigz"] if shutil.which("pigz") else [])
    t_gzip = min(best(args.runs, lambda d=d: timed("%s -dc %s > /dev/null" % (d, xvas["gzip"]), shell=True))
                 for d in decoders)
    rows.append(("gzip XVA, SHA-1", t_gours, "fastest of %s -dc > /dev/null" % "/".join(decoders), t_gzip, "gzip"))
    rss = {"%d GiB" % args.size_gib: peak_rss_mib(xvas["sha1"], dest)}
    big = work / "big.raw"
    make_disk(big, args.big_gib * GiB, args.data_mib * MiB, seed=11)
    big_xva = work / "big.xva"
    write_xva(str(big_xva), VM(name="bench", disks=[Disk(image=str(big), userdevice=0)]), checksum="xxhash")
    big.unlink()
    rss["%d GiB" % args.big_gib] = peak_rss_mib(big_xva, dest)
    shutil.rmtree(dest, ignore_errors=True)
    print("data in the disk: %d MiB of %d GiB" % (data // MiB, args.size_gib))
    return rows, rss


def report(args, rows, rss):
    lines = ["| case | ours (s) | reference | reference (s) | ratio | target | met |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for case, t_ours, ref, t_ref, kind in rows:
        ratio = t_ours / t_ref
        lines.append("| %s | %.2f | %s | %.2f | %.2f× | ≤ %.1f× | %s |"
                     % (case, t_ours, ref, t_ref, ratio, TARGETS[kind], "yes" if ratio <= TARGETS[kind] else "NO"))
    lines.append("")
    lines.append("| peak RSS of a conversion | MiB | target | met |")
    lines.append("| --- | ---: | --- | --- |")
    for size, mib in rss.items():
        lines.append("| %s sparse disk | %.1f | < 100 MiB | %s |" % (size, mib, "yes" if mib < 100 else "NO"))
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        doc = Path(args.write_doc)
        text = doc.read_text() if doc.exists() else ""
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        block = "%s\nMeasured %s on %s (%d cores), `make bench`, best of %d runs, warm page cache:\n\n%s\n%s" % (
            start, time.strftime("%Y-%m-%d"), os.uname().nodename, os.cpu_count(), args.runs, table, end)
        if start in text and end in text:
            text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = (text or "# Performance\n\n") + block + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
