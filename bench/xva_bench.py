"""Benchmark of xva_convert against its anchors (issues 2 and 11). A script, not a test: it
prints a table of times and ratios, each against a reference measured in the same run, and writes
it to docs/performance.md.

  anchor  tar -xf + xva-img -p disk-export (C++), the usual way today
  floor   cp --sparse=always of the converted raw image (writes the same data, nothing else);
          beside it, not judged: cp followed by sync --data of the copy, the same bytes made as
          durable as our conversion makes its images (flushed while written, fsync at the end)
  zstd    zstd -dc > /dev/null of the zstd XVA
  gzip    the fastest of igzip, pigz, gzip -dc > /dev/null (those installed) of the gzip XVA
          (each also decoded the other way, for comparison: zstd by a decoder process,
          XEN2KVM_DECODER=external, gzip in process, XEN2KVM_DECODER=library)
  no fsync  the plain, zstd and gzip conversions once more with fsync and fdatasync patched out
          in the bench's child: what durability costs, and how far the rest is from the targets
          (not a user option)
  http    the same conversion from http://127.0.0.1 (a server in another process that sends the
          XVA chunked, without Content-Length, as XAPI does) against the conversion from the file

Every command runs with a warm page cache (the XVA is read once before), best of --runs (5), and
the table shows the spread of the runs. With --profile (make bench PROFILE=1) each of our
conversions runs with XEN2KVM_PROFILE set, and a second table shows where the last run of each
case spent its time (plugins/module_utils/_xva/profile.py).

Run: make bench BENCH=xva [PROFILE=1], or .venv/bin/python bench/xva_bench.py [--runs N] [--profile]
(no shebang: run it with python).
"""

import argparse
import http.server
import json
import os
import random
import resource
import shutil
import statistics
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
# ratio = ours / reference; the goals of issue 11 (the anchor's of issue 2). Rows without a
# kind (the in-process decoders, for comparison) have no target.
UNSYNCED = "no fsync (bench only)"
TARGETS = {"anchor": 0.3, "floor-sha1": 2.5, "floor-xxhash": 2.0, "zstd": 1.3, "gzip": 1.2, "http": 1.1}
GZIP_DECODERS = ("igzip", "pigz", "gzip")
PROFILE_PHASES = ("reading", "decompressing", "hashing", "writing", "syncing", "parsing")
HTTP_CHUNK = 1 << 20


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
    return measured(cmd, shell, **kw)[0]


def measured(cmd, shell=False, **kw):
    """(wall seconds, CPU seconds) of ``cmd``: its processes' user + system time, children included
    (a shell's command, an external decoder). The CPU time hardly moves with the machine's load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, **kw)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(runs, func):
    return min(func() for _run in range(runs))


class Runs:
    """The times of one case's runs: the best is the figure, the rest is its spread. A run is a
    wall time or (wall, CPU); ``cpu`` is the least CPU time of the runs, None when not measured."""

    def __init__(self, runs):
        pairs = [run if isinstance(run, tuple) else (run, None) for run in runs]
        self.times = sorted(wall for wall, _cpu in pairs)
        cpus = [cpu for _wall, cpu in pairs if cpu is not None]
        self.cpu = min(cpus) if cpus else None

    @property
    def best(self):
        return self.times[0]

    def spread(self):
        if len(self.times) == 1:
            return "%.2f" % self.best
        return "%.2f / %.2f / %.2f" % (self.best, statistics.median(self.times), self.times[-1])


def runs_of(runs, func):
    return Runs([func() for _run in range(runs)])


# What durability costs: the bench's child runs without fsync and fdatasync (no user option
# does this; the images of a migration must be on disk before its source is shut down).
NO_SYNC = "import os; os.fsync = os.fdatasync = lambda fd: None;"


def convert_cmd(src, dest, with_urls=False, durable=True):
    """convert_xva in a fresh interpreter; ``with_urls`` imports ansible's open_url as xva_convert
    does (for a URL, and for the file it is compared with, so both pay the same imports)."""
    code = "" if durable else NO_SYNC
    code += ("import sys; sys.path.insert(0, %r);"
             "from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva;"
             % str(REPO / "build" / "collections"))
    if with_urls:
        code += ("from ansible.module_utils.urls import open_url;"
                 "convert_xva(%r, %r, force=True, open_url_func=open_url, url_options={'timeout': 60})"
                 % (str(src), str(dest)))
    else:
        code += "convert_xva(%r, %r, force=True)" % (str(src), str(dest))
    return [sys.executable, "-c", code]


class Ours:
    """Our conversions, each in a fresh process; with a profile directory, each one saves where
    its time went there (the last run of a case wins) and its CPU time is kept beside."""

    def __init__(self, dest, profile_dir=None):
        self.dest = dest
        self.profile_dir = profile_dir
        self.profiles = {}

    def __call__(self, case, src, with_urls=False, decoder=None, durable=True):
        shutil.rmtree(self.dest, ignore_errors=True)
        env = dict(os.environ)
        env.pop("XEN2KVM_PROFILE", None)
        if decoder:
            env["XEN2KVM_DECODER"] = decoder
        if self.profile_dir is not None:
            path = self.profile_dir / ("%s.json" % case.replace(" ", "-").replace(",", "").replace("=", "-"))
            env["XEN2KVM_PROFILE"] = str(path)
        took, cpu = measured(convert_cmd(src, self.dest, with_urls, durable), env=env)
        if self.profile_dir is not None:
            phases = json.loads(path.read_text())
            phases["wall"] = took
            phases["cpu"] = cpu
            self.profiles[case] = phases
        return took, cpu


def peak_rss_mib(xva, dest):
    shutil.rmtree(dest, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + convert_cmd(xva, dest), check=True,
                          stderr=subprocess.PIPE, text=True) if shutil.which("time") else None
    if proc is not None:
        return int(proc.stderr.strip().splitlines()[-1]) / 1024
    subprocess.run(convert_cmd(xva, dest), check=True)
    return max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024


def shell_run(command):
    return measured(command, shell=True)


def anchor(xva, work):
    extract = work / "extract"
    shutil.rmtree(extract, ignore_errors=True)
    extract.mkdir()
    out = work / "anchor.raw"
    out.unlink(missing_ok=True)
    # One shell, so the glob of the extracted folder and both commands count in the same CPU time.
    took = measured(["sh", "-c", 'tar -xf "$1" -C "$2" && xva-img -p disk-export "$2"/Ref:*/ "$3" > /dev/null',
                     "anchor", str(xva), str(extract), str(out)])
    shutil.rmtree(extract)
    out.unlink()
    return took


def floor(raw, work, durable=False):
    """cp of the image; ``durable``: and its fdatasync (``sync --data``), as our conversion ends."""
    out = work / "floor.raw"
    out.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)  # the writeback of earlier runs is not this run's
    took = measured(["sh", "-c", 'cp --sparse=always "$1" "$2" && sync --data "$2"', "floor", str(raw), str(out)]
                    if durable else ["cp", "--sparse=always", str(raw), str(out)])
    out.unlink()
    return took


def warm(path):
    with open(path, "rb") as handle:
        while handle.read(8 * MiB):
            pass


class _ChunkedHandler(http.server.BaseHTTPRequestHandler):
    """GET /NAME sends the file NAME of the served directory chunked, without Content-Length,
    as XAPI's /export does; the data goes out with sendfile, so the server costs little CPU."""

    protocol_version = "HTTP/1.1"
    directory = None

    def do_GET(self):
        path = os.path.join(self.directory, os.path.basename(self.path.split("?")[0]))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset < size:
                step = min(HTTP_CHUNK, size - offset)
                sock.sendall(b"%x\r\n" % step)
                while step:
                    sent = os.sendfile(sock.fileno(), handle.fileno(), offset, step)
                    offset += sent
                    step -= sent
                sock.sendall(b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        self.close_connection = True

    def log_message(self, *args):
        pass


def serve(directory):
    """The HTTP server's own process (--serve DIR): prints its port, serves until killed."""
    _ChunkedHandler.directory = directory
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class HttpServer:
    def __init__(self, directory):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(directory)],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def url(self, path):
        return "http://127.0.0.1:%d/%s" % (self.port, Path(path).name)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.proc.stdout.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=700)
    parser.add_argument("--big-gib", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="set XEN2KVM_PROFILE for our conversions and print where their time went")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write-doc", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    link_collection()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="xva-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, rss, profiles = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(args, rows, rss, profiles)


def write_xvas(work, disk):
    vm = VM(name="bench", disks=[Disk(image=str(disk), userdevice=0)])
    xvas = {}
    for label, checksum, compression in (("sha1", "sha1", None), ("xxhash", "xxhash", None),
                                         ("zstd", "xxhash", "zstd"), ("gzip", "sha1", "gzip")):
        xvas[label] = work / ("bench-%s.xva" % label)
        write_xva(str(xvas[label]), vm, checksum=checksum, compression=compression)
        warm(xvas[label])
    return xvas


def run(args, work):
    disk = work / "disk.raw"
    data = make_disk(disk, args.size_gib * GiB, args.data_mib * MiB)
    xvas = write_xvas(work, disk)
    disk.unlink()
    dest = work / "out"
    profile_dir = work / "profiles" if args.profile else None
    if profile_dir:
        profile_dir.mkdir()
    ours = Ours(dest, profile_dir)
    # (case, ours, reference, reference runs, target kind, judged: False = the target shown
    # in parentheses, for a row that explains a miss rather than counts)
    rows = []
    n = args.runs

    def unsynced(label, short, key, reference, t_reference, kind):
        return (label + ", " + UNSYNCED, runs_of(n, lambda: ours(short + ", " + UNSYNCED, xvas[key], durable=False)),
                reference, t_reference, kind, False)

    plain = (("plain XVA, SHA-1", "plain SHA-1", "sha1", "floor-sha1"),
             ("plain XVA, XXH64", "plain XXH64", "xxhash", "floor-xxhash"))
    t_plain = {key: runs_of(n, lambda short=short, key=key: ours(short, xvas[key])) for _l, short, key, _k in plain}
    t_anchor = runs_of(n, lambda: anchor(xvas["sha1"], work))
    t_floor = runs_of(n, lambda: floor(dest / "bench-disk0.raw", work))
    t_floor_sync = runs_of(n, lambda: floor(dest / "bench-disk0.raw", work, durable=True))
    rows.append(("plain XVA, SHA-1", t_plain["sha1"], "tar -xf + xva-img disk-export", t_anchor, "anchor", True))
    for label, short, key, kind in plain:
        rows.append((label, t_plain[key], "cp --sparse=always of the image", t_floor, kind, True))
        rows.append((label, t_plain[key], "cp --sparse=always + sync --data of the copy", t_floor_sync, kind, False))
        rows.append(unsynced(label, short, key, "cp --sparse=always of the image", t_floor, kind))
    t_zours = runs_of(n, lambda: ours("zstd XXH64", xvas["zstd"]))
    # auto decodes zstd with the library (gzip with a decoder process): the other way, to compare.
    t_zext = runs_of(n, lambda: ours("zstd XXH64, XEN2KVM_DECODER=external", xvas["zstd"], decoder="external"))
    t_zstd = runs_of(n, lambda: shell_run("zstd -dc %s > /dev/null" % xvas["zstd"]))
    rows.append(("zstd XVA, XXH64", t_zours, "zstd -dc > /dev/null", t_zstd, "zstd", True))
    rows.append(("zstd XVA, XXH64, zstd -dc as a decoder process (XEN2KVM_DECODER=external)", t_zext,
                 "zstd -dc > /dev/null", t_zstd, None, False))
    rows.append(unsynced("zstd XVA, XXH64", "zstd XXH64", "zstd", "zstd -dc > /dev/null", t_zstd, "zstd"))
    t_gours = runs_of(n, lambda: ours("gzip SHA-1", xvas["gzip"]))
    t_glib = runs_of(n, lambda: ours("gzip SHA-1, XEN2KVM_DECODER=library", xvas["gzip"], decoder="library"))
    decoders = {d: runs_of(n, lambda d=d: shell_run("%s -dc %s > /dev/null" % (d, xvas["gzip"])))
                for d in GZIP_DECODERS if shutil.which(d)}
    fastest = min(decoders, key=lambda d: decoders[d].best)
    rows.append(("gzip XVA, SHA-1", t_gours, "%s -dc > /dev/null (fastest of %s: %s s)" % (
        fastest, "/".join(decoders), ", ".join("%.2f" % decoders[d].best for d in decoders)),
        decoders[fastest], "gzip", True))
    rows.append(("gzip XVA, SHA-1, in process (XEN2KVM_DECODER=library)", t_glib, "the same", decoders[fastest],
                 None, False))
    rows.append(unsynced("gzip XVA, SHA-1", "gzip SHA-1", "gzip", "the same", decoders[fastest], "gzip"))
    server = HttpServer(work)
    try:
        for label, key, short in (("plain XVA, XXH64", "xxhash", "plain XXH64"), ("zstd XVA, XXH64", "zstd", "zstd XXH64")):
            url = server.url(xvas[key])
            t_file = runs_of(n, lambda key=key, short=short: ours(
                "%s, file (ansible imported)" % short, xvas[key], with_urls=True))
            t_http = runs_of(n, lambda url=url, short=short: ours("%s over HTTP" % short, url, with_urls=True))
            rows.append(("%s over HTTP, chunked" % label, t_http, "the same from the file", t_file, "http", True))
    finally:
        server.stop()
    rss = {"%d GiB" % args.size_gib: peak_rss_mib(xvas["sha1"], dest)}
    for xva in xvas.values():
        xva.unlink()
    big = work / "big.raw"
    make_disk(big, args.big_gib * GiB, args.data_mib * MiB, seed=11)
    big_xva = work / "big.xva"
    write_xva(str(big_xva), VM(name="bench", disks=[Disk(image=str(big), userdevice=0)]), checksum="xxhash")
    big.unlink()
    rss["%d GiB" % args.big_gib] = peak_rss_mib(big_xva, dest)
    shutil.rmtree(dest, ignore_errors=True)
    print("data in the disk: %d MiB of %d GiB" % (data // MiB, args.size_gib))
    return rows, rss, ours.profiles


def decompressing(case, phases):
    """A decoder process (decoders.py) times the waits for its output itself; in-process
    decompression is the tar layer's waits for its bytes minus the source's reads inside them.
    A plain stream has none: its tar reads are the reading plus a copy."""
    if "decompressing" in phases:
        return phases["decompressing"]
    if case.split()[0] not in ("zstd", "gzip"):
        return 0.0
    return max(phases.get("tar stream reads", 0.0) - phases.get("reading", 0.0), 0.0)


def profile_row(case, phases):
    """Seconds per phase; parsing = the reading thread's time minus its tar reads, its hashing
    and its waits for the writer."""
    get = phases.get
    stream = get("tar stream reads", 0.0)
    derived = {
        "decompressing": decompressing(case, phases),
        "parsing": max(get("reading thread", 0.0) - stream - get("reading thread hashing", 0.0)
                       - get("reading thread waiting for the writer", 0.0), 0.0),
    }
    cells = [get(p, 0.0) if p not in derived else derived[p] for p in PROFILE_PHASES]
    return "| %s | %.2f | %.2f | %.2f | %s | %.2f | %.2f |" % (
        case, get("wall", 0.0), get("cpu", 0.0), get("conversion", 0.0), " | ".join("%.2f" % c for c in cells),
        get("final fsync", 0.0), get("reading thread waiting for the writer", 0.0))


def profile_table(profiles):
    lines = ["| case | wall (s) | CPU (s) | in convert_xva | %s | of syncing: the final fsync "
             "| reading thread waiting for the writer |" % " | ".join(PROFILE_PHASES),
             "| --- |%s" % (" ---: |" * (len(PROFILE_PHASES) + 5))]
    lines += [profile_row(case, phases) for case, phases in profiles.items()]
    return "\n".join(lines)


def report(args, rows, rss, profiles):
    lines = ["| case | ours (s) | ours: best / median / worst | reference | reference (s) "
             "| reference: best / median / worst | ratio | target | met | CPU s, ours / reference | CPU ratio |",
             "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for case, t_ours, ref, t_ref, kind, judged in rows:
        ratio = t_ours.best / t_ref.best
        target, met = ("≤ %.1f×" % TARGETS[kind], "yes" if ratio <= TARGETS[kind] else "NO") if kind else ("—", "—")
        if kind and not judged:
            target, met = "(%s)" % target, "(%s)" % met.lower()
        lines.append("| %s | %.2f | %s | %s | %.2f | %s | %.2f× | %s | %s | %.2f / %.2f | %.2f× |"
                     % (case, t_ours.best, t_ours.spread(), ref, t_ref.best, t_ref.spread(), ratio, target, met,
                        t_ours.cpu, t_ref.cpu, t_ours.cpu / max(t_ref.cpu, 1e-3)))
    lines.append("")
    lines.append("| peak RSS of a conversion | MiB | target | met |")
    lines.append("| --- | ---: | --- | --- |")
    for size, mib in rss.items():
        lines.append("| %s sparse disk | %.1f | < 100 MiB | %s |" % (size, mib, "yes" if mib < 100 else "NO"))
    table = "\n".join(lines)
    print(table)
    when = "Measured %s on %s (%d cores, load average %.1f at the end)" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.uname().nodename, os.cpu_count(), os.getloadavg()[0])
    blocks = [("<!-- bench:start -->", "<!-- bench:end -->",
               "%s, `make bench BENCH=xva%s`, best of %d runs, warm page cache%s:\n\n%s" % (
                   when, " PROFILE=1" if profiles else "", args.runs,
                   " (profiling on)" if profiles else "", table))]
    if profiles:
        ptable = profile_table(profiles)
        print()
        print("Seconds per phase, last run of each case (phases summed over threads: they overlap, so")
        print("their sum can exceed the wall time):")
        print(ptable)
        blocks.append(("<!-- bench-profile:start -->", "<!-- bench-profile:end -->",
                       "%s, `make bench BENCH=xva PROFILE=1`, the last of %d runs of each case; seconds, "
                       "summed over threads:\n\n%s" % (when, args.runs, ptable)))
    if args.write_doc:
        write_blocks(Path(args.write_doc), blocks)


def write_blocks(doc, blocks):
    text = doc.read_text() if doc.exists() else "# Performance\n\n"
    for start, end, body in blocks:
        block = "%s\n%s\n%s" % (start, body, end)
        if start in text and end in text:
            text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
