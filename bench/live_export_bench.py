"""Benchmark of the live source (issue 10): a VM export pulled from the XAPI double over HTTPS
and converted in one stream, against converting the same XVA from a file. A script, not a test:
it prints a table of times and ratios (goal: file time / live time >= 0.9) and writes it to
docs/performance.md.

  file    convert_xva of the XVA file (warm page cache)
  live    convert_xva of https://127.0.0.1:PORT/export?uuid=...[&use_compression=zstd] served by
          tests/lib/xapi_double_server.py (another process, TLS, chunked, no Content-Length,
          after a 302 as XAPI sends it), with the credentials and ca_path xva_convert passes
  curl    curl of the same export to /dev/null: what the double itself can send on this machine

The zstd file is the very stream the double sends (pulled once with curl), so both sides decode
the same bytes. The double compresses an export once and keeps the result for the next ones:
on a pool the dom0 compresses on its own CPU, not on the KVM host's.

Run: make bench BENCH=live, or .venv/bin/python bench/live_export_bench.py [--runs N]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lib"))
sys.path.insert(0, str(REPO / "bench"))

from xva_bench import GiB, MiB, best, link_collection, make_disk, timed, warm, write_blocks  # noqa: E402
from xva_writer import VM, Disk, write_xva  # noqa: E402

GOAL = 0.9
USER, PASSWORD = "root", "bench-secret"
DOUBLE = REPO / "tests" / "lib" / "xapi_double_server.py"


def convert_cmd(src, dest, ca_path=None):
    """convert_xva in a fresh interpreter, with the URL options xva_convert passes."""
    options = {"url_username": USER, "url_password": PASSWORD, "ca_path": ca_path, "validate_certs": True,
               "timeout": 60} if ca_path else {}
    code = ("import sys; sys.path.insert(0, %r);"
            "from ansible.module_utils.urls import open_url;"
            "from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva;"
            "convert_xva(%r, %r, force=True, open_url_func=open_url, url_options=%r)"
            ) % (str(REPO / "build" / "collections"), str(src), str(dest), options)
    return [sys.executable, "-c", code]


def converted(src, dest, ca_path=None):
    shutil.rmtree(dest, ignore_errors=True)
    return timed(convert_cmd(src, dest, ca_path))


def curl_cmd(url, ca_path, out="/dev/null"):
    return ["curl", "--fail", "--silent", "--show-error", "--location", "--cacert", ca_path,
            "--user", "%s:%s" % (USER, PASSWORD), "--output", out, url]


class Double:
    """tests/lib/xapi_double_server.py serving one halted VM, in its own process."""

    def __init__(self, work, xva):
        self.dir = work / "double"
        env = dict(os.environ, XAPI_DOUBLE_PASSWORD=PASSWORD)
        subprocess.run([sys.executable, str(DOUBLE), "start", "--dir", str(self.dir), "--vm", "bench=%s" % xva,
                        "--power", "Halted", "--username", USER], check=True, env=env, stdout=subprocess.DEVNULL)
        self.url = (self.dir / "url").read_text().strip()
        self.ca_path = str(self.dir / "ca.pem")
        state = json.loads((self.dir / "state.json").read_text())
        self.uuid = state["vms"]["bench"]["uuid"]

    def export_url(self, compression=None):
        return "%s/export?uuid=%s%s" % (self.url, self.uuid, "&use_compression=%s" % compression if compression else "")

    def stop(self):
        subprocess.run([sys.executable, str(DOUBLE), "stop", "--dir", str(self.dir)], check=False,
                       stdout=subprocess.DEVNULL)


def run(args, work):
    disk = work / "disk.raw"
    data = make_disk(disk, args.size_gib * GiB, args.data_mib * MiB)
    xva = work / "bench.xva"
    write_xva(str(xva), VM(name="bench", disks=[Disk(image=str(disk), userdevice=0)]), checksum="xxhash")
    disk.unlink()
    warm(xva)
    dest = work / "out"
    double = Double(work, xva)
    rows = []
    try:
        zstd_xva = work / "bench-from-double.xva.zst"
        subprocess.run(curl_cmd(double.export_url("zstd"), double.ca_path, str(zstd_xva)), check=True)
        warm(zstd_xva)
        for label, compression, file_src in (("plain XVA, XXH64", None, xva), ("zstd XVA, XXH64", "zstd", zstd_xva)):
            url = double.export_url(compression)
            t_file = best(args.runs, lambda src=file_src: converted(src, dest))
            t_live = best(args.runs, lambda url=url: converted(url, dest, double.ca_path))
            t_curl = best(args.runs, lambda url=url: timed(curl_cmd(url, double.ca_path)))
            rows.append((label, os.path.getsize(file_src), t_file, t_live, t_curl))
    finally:
        double.stop()
        shutil.rmtree(dest, ignore_errors=True)
    print("data in the disk: %d MiB of %d GiB" % (data // MiB, args.size_gib))
    return rows


def report(args, rows):
    lines = ["| export | bytes sent | from a file (s) | live through the double (s) | ratio | goal | met "
             "| curl of the export (s) | file / curl |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for label, size, t_file, t_live, t_curl in rows:
        ratio = t_file / t_live
        lines.append("| %s | %d MiB | %.2f | %.2f | %.2f | ≥ %.1f | %s | %.2f | %.2f |"
                     % (label, size // MiB, t_file, t_live, ratio, GOAL, "yes" if ratio >= GOAL else "NO",
                        t_curl, t_file / t_curl))
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        body = ("Live export (issue 10), measured %s on %s (%d cores), `make bench BENCH=live`, best of %d "
                "runs; ratio = from a file / live:\n\n%s") % (
            time.strftime("%Y-%m-%d"), os.uname().nodename, os.cpu_count(), args.runs, table)
        write_blocks(Path(args.write_doc), [("<!-- bench-live:start -->", "<!-- bench-live:end -->", body)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=700)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write-doc", default=str(REPO / "docs" / "performance.md"))
    args = parser.parse_args()
    link_collection()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="live-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(args, rows)


if __name__ == "__main__":
    main()
