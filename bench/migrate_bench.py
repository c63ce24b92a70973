"""End-to-end benchmark of playbooks/migrate.yml (issue 8, speed of the whole). A script, not a
test: it migrates the deb12-pv test guest into the local libvirtd (domain type qemu: TCG, KVM
does not work here) and prints wall times and two ratios against their goals:

  overhead  migrate.yml for one VM  /  the same stages run directly as modules   goal <= 1.2
  fleet     migrate.yml for three VMs with --forks 3  /  migrate.yml for one VM  goal <= 2.0

"Directly as modules" means: each module the playbook runs for a VM, in the playbook's order and
with the playbook's arguments (xva_info, kvm_preflight, xva_convert, guest_fixup, kvm_domain
state=defined, kvm_boot_check which starts the domain and waits for `login:`), each started as
its own fresh Python process, `.venv/bin/python -m
ansible_collections.xen2kvm.migration.plugins.modules.NAME ARGS.json` (AnsibleModule reads
{"ANSIBLE_MODULE_ARGS": ...} from that file), and the results chained by this script. The
direct figure is the sum of those processes' wall times: Python start and imports, the work,
and the JSON result; no ansible controller, templating, AnsiballZ packing, task forks or report.
The playbook figure is the wall time of `ansible-playbook -i INVENTORY playbooks/migrate.yml`,
all three plays included (checks, the VM's stages, the report).

The guest comes from the guest factory cache (/var/cache/xen2kvm-test-guests, as
`tests/lib/guest_factory.py build deb12-pv --out DIR --xva`: XXH64 checksums, no compression);
the script writes three XVAs of it with their own names, uuids and MACs (x2k-bench-0..2) once,
then repeats, --runs times: direct (VM 0), playbook one VM (VM 0), playbook three VMs, and the
direct chains of the three VMs at once (one thread each: what the machine itself allows with
three VMs, the anchor that tells the playbook's share of the fleet figure from TCG's). After
each measurement the domains are destroyed and undefined, their images, serial logs and reports
removed; at the end the XVAs too. Nothing is left running.

Needs root and libvirtd (scripts/libvirtd-up.sh starts it). Boots qemu: on a shared machine run
it under `flock /tmp/xen2kvm-heavy.lock`.

Run: make bench BENCH=migrate, or .venv/bin/python bench/migrate_bench.py [--runs N]
     [--max-parallel N] [--write-doc PATH|''] [--results-json FILE] (no shebang: run it with
     python); --from-json FILE prints (and writes) the tables of saved results again. `make bench`
     runs xva_bench.py and this script. The table goes between the bench-migrate markers of
     docs/performance.md; --max-parallel 0 keeps migrate.yml's default slot limit (2) for the
     three VMs instead of 3.
"""

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "build" / "collections"
sys.path.insert(0, str(REPO / "tests" / "lib"))

import guest_factory  # noqa: E402

PYTHON = Path(sys.executable)
PLAYBOOK = PYTHON.with_name("ansible-playbook")
MIGRATE = REPO / "playbooks" / "migrate.yml"
URI = "qemu:///system"
VARIANT = "deb12-pv"
NAMES = ["x2k-bench-%d" % index for index in range(3)]
GOALS = {"overhead": 1.2, "fleet": 2.0}
MODULE_PREFIX = "ansible_collections.xen2kvm.migration.plugins.modules."
# As the integration tests of migrate.yml: TCG, a user-mode NIC (no host network touched), and a
# boot check that waits for the login prompt.
KVM_HOST = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
QUIET_HOST = {"kvm_domain_type": "qemu", "kvm_import_default_network": "user", "kvm_import_boot_wait_for": "login"}
BOOT_TIMEOUT = 600
STAGES = ["xen_source", "transfer", "kvm_preflight", "convert", "fixup", "kvm_import"]
# The playbook stage each directly run module belongs to.
MODULE_STAGE = {"xva_info": "xen_source", "kvm_preflight": "kvm_preflight", "xva_convert": "convert",
                "guest_fixup": "fixup", "kvm_domain": "kvm_import", "kvm_boot_check": "kvm_import"}


def log(msg):
    print("[migrate_bench] %s" % msg, file=sys.stderr, flush=True)


def world_readable_dir(prefix):
    """qemu runs as libvirt-qemu and must reach the images: tempfile's directories are 0700."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(path, 0o755)
    return Path(path)


def write_xvas(work):
    """Three XVAs of the cached deb12-pv guest, each a VM of its own (name, uuid, MAC)."""
    guest = guest_factory.build_variant(VARIANT, work / "build")
    xvas = {}
    for index, name in enumerate(NAMES):
        guest.vm.name = name
        guest.vm.uuid = str(uuid.uuid4())
        guest.vm.nics[0].mac = "aa:00:00:12:b0:%02x" % index
        xvas[name] = str(guest.xva(work / (name + ".xva")))
    shutil.rmtree(work / "build")  # the XVAs hold the disks now
    return xvas


def warm(paths):
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(8 << 20):
                pass


def cleanup(names, images_dir):
    """Destroy and undefine the domains, remove their images and logs: nothing stays behind."""
    for name in names:
        for command in (["destroy", name], ["undefine", "--nvram", name]):
            subprocess.run(["virsh", "--quiet", "--connect", URI] + command,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        for path in glob.glob("/var/log/libvirt/qemu/%s.log" % name) + glob.glob(
                "/var/log/libvirt/qemu/%s-*.log" % name):
            os.unlink(path)
    shutil.rmtree(images_dir, ignore_errors=True)


def busy_cpu_seconds():
    """CPU seconds the whole machine has been busy (all cores; /proc/stat minus idle and iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """CPU seconds of this script's finished child processes and theirs: ansible-playbook, its
    workers and modules, or the modules run directly (qemu is libvirtd's child, not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def qemu_cpu_seconds(names):
    """CPU seconds the domains' qemu processes have used so far (TCG: the guests' boot work)."""
    total = 0.0
    for name in names:
        try:
            with open("/run/libvirt/qemu/%s.pid" % name) as handle:
                pid = int(handle.read().strip())
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_module(module, args, work):
    """One module as its own process; returns (seconds, result)."""
    args_file = work / ("%s.args.json" % module)
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    start = time.perf_counter()
    proc = subprocess.run([str(PYTHON), "-m", MODULE_PREFIX + module, str(args_file)], cwd=str(work), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - start
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit("%s printed no JSON result (rc %d):\n%s%s" % (module, proc.returncode, proc.stdout,
                                                                       proc.stderr))
    if result.get("failed"):
        raise SystemExit("%s failed: %s" % (module, result.get("msg")))
    return seconds, result


def direct(xva, work):
    """The stages of migrate.yml for one VM, each module run directly, with the playbook's args."""
    images = work / "images"
    seconds = {}

    def step(module, args):
        seconds[module], result = run_module(module, args, work)
        return result

    info = step("xva_info", {"src": xva, "validate_certs": True})
    spec = info["spec"]
    step("kvm_preflight", {"images_dir": str(images), "disk_bytes": [d["virtual_size"] for d in spec["disks"]],
                           "domain_name": spec["name"], "source_uuid": spec["uuid"], "uri": URI})
    converted = step("xva_convert", {"src": xva, "dest": str(images), "format": "raw", "name": "{vm}-disk{index}.{format}",
                                     "verify_checksums": True, "force": False, "validate_certs": True})
    step("guest_fixup", {"disks": [d["path"] for d in converted["disks"]], "spec": converted["spec"],
                         "network": "keep", "fixups": {}, "resolv_conf": "host"})
    domain = step("kvm_domain", {"uri": URI, "spec": converted["spec"], "disks": converted["disks"],
                                 "network_map": {}, "default_network": "user", "domain_type": "qemu",
                                 "vcpus": converted["spec"]["vcpus"], "memory_mib": converted["spec"]["memory_mib"],
                                 "pool_action": "move", "graphics": "none", "force": False, "state": "defined"})
    boot = step("kvm_boot_check", {"uri": URI, "name": domain["domain"]["name"], "timeout": BOOT_TIMEOUT,
                                   "wait_for": "login"})
    return {"wall": sum(seconds.values()), "modules": seconds, "login_seconds": boot.get("seconds")}


def direct_fleet(xvas, work):
    """The direct chain of each VM, all at once (one thread each): what the machine itself does
    with three VMs at a time, without ansible."""
    chains = {}

    def chain(name, xva):
        own = work / name
        own.mkdir(mode=0o755)
        try:
            chains[name] = direct(xva, own)
        except SystemExit as exc:  # reported below: a thread cannot end the script
            chains[name] = {"error": str(exc)}

    start = time.perf_counter()
    threads = [threading.Thread(target=chain, args=item) for item in xvas.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    failed = ["%s: %s" % (name, result["error"]) for name, result in chains.items() if "error" in result]
    if failed:
        raise SystemExit("\n".join(failed))
    return {"wall": wall, "chains": chains}


def playbook(xvas, work, forks, max_parallel):
    """migrate.yml for the VMs of ``xvas`` from an inventory; returns the wall time and the report."""
    images, reports = work / "images", work / "reports"
    vm_vars = dict(QUIET_HOST, ansible_connection="local", kvm_host="localhost")
    host_vars = dict(KVM_HOST, images_dir=str(images))
    if max_parallel:
        host_vars["max_parallel"] = max_parallel
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": host_vars}},
        "xen_vms": {"hosts": {name: dict(vm_vars, xva=xva) for name, xva in xvas.items()}},
    }}}
    inventory_path = work / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
    inventory_path.write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_HOST_KEY_CHECKING="0", PWD=str(work))
    start = time.perf_counter()
    # One VM runs with ansible's default forks, as a user would; a fleet with --forks FORKS.
    forks_args = ["--forks", str(forks)] if forks else []
    proc = subprocess.run([str(PLAYBOOK), "-i", str(inventory_path), str(MIGRATE), "-e", "report_dir=%s" % reports]
                          + forks_args, cwd=str(work), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.perf_counter() - start
    (work / "ansible.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit("migrate.yml failed (rc %d):\n%s" % (proc.returncode, proc.stdout[-6000:]))
    vms = {entry["vm"]: entry for entry in json.loads((reports / "migration-report.json").read_text())["vms"]}
    bad = [name for name in xvas if vms.get(name, {}).get("status") != "migrated"]
    if bad:
        raise SystemExit("migrate.yml did not migrate %s:\n%s" % (", ".join(bad), proc.stdout[-6000:]))
    return {"wall": wall, "vms": vms}


def measure(kind, func, names, index):
    work = world_readable_dir("x2k-bench-%s-" % kind)
    try:
        cleanup(names, work / "images")
        busy, ours = busy_cpu_seconds(), children_cpu_seconds()
        result = func(work)
        result["busy_cores"] = (busy_cpu_seconds() - busy) / result["wall"]
        result["our_cpu"] = children_cpu_seconds() - ours
        result["qemu_cpu"] = qemu_cpu_seconds(names)
        log("run %d %-8s %.1f s, machine busy %.2f cores, qemu %.0f CPU s, ours %.1f CPU s"
            % (index, kind, result["wall"], result["busy_cores"], result["qemu_cpu"], result["our_cpu"]))
        return result
    finally:
        cleanup(names, work / "images")
        shutil.rmtree(work, ignore_errors=True)


def med(values):
    return statistics.median(values)


def fmt_pair(values):
    return "%.1f / %.1f" % (min(values), med(values))


def cpu_cells(runs):
    cells = []
    for key, form in (("busy_cores", "%.2f"), ("qemu_cpu", "%.0f"), ("our_cpu", "%.1f")):
        cells.append(form % med([run[key] for run in runs]) if all(key in run for run in runs) else "—")
    return " | ".join(cells)


def stage_split(runs):
    """Median seconds per stage over runs (and over VMs for a fleet run)."""
    per_stage = {stage: [] for stage in STAGES}
    login = []
    for run in runs:
        for entry in run["vms"].values():
            for stage in STAGES:
                per_stage[stage].append(entry["stage_seconds"].get(stage, 0.0))
            if entry.get("login_seconds") is not None:
                login.append(entry["login_seconds"])
    return {stage: med(values) for stage, values in per_stage.items()}, (med(login) if login else None)


def ratio_pair(top, bottom):
    return min(top) / min(bottom), med(top) / med(bottom)


def ratio_row(label, pair, goal=None):
    if goal is None:
        return "| %s | %.2f× | %.2f× | — | — |" % ((label,) + pair)
    return "| %s | %.2f× | %.2f× | ≤ %.1f× | %s |" % ((label,) + pair + (goal, "PASS" if pair[1] <= goal else "MISS"))


def direct_stages(chain):
    return {stage: sum(s for m, s in chain["modules"].items() if MODULE_STAGE[m] == stage) for stage in STAGES}


def report(args, results):
    walls = {kind: [r["wall"] for r in results.get(kind, [])] for kind in ("direct", "one", "three", "direct3")}
    ratios = {"overhead": ratio_pair(walls["one"], walls["direct"]), "fleet": ratio_pair(walls["three"], walls["one"])}
    # The TCG boot (tens of seconds, varying by several) hides the playbook's own cost; without
    # the wait for login: (kvm_boot_check's seconds) the rest of both runs compares directly.
    direct_rest = [r["wall"] - r["login_seconds"] for r in results["direct"]]
    one_rest = [r["wall"] - r["vms"][NAMES[0]]["login_seconds"] for r in results["one"]]
    rows = [("stages run directly as modules, 1 VM", "direct"), ("migrate.yml, 1 VM", "one"),
            ("migrate.yml, 3 VMs, --forks 3, max_parallel %s" % (results.get("max_parallel") or "default"), "three"),
            ("stages run directly as modules, 3 VMs at once (3 threads)", "direct3")]
    lines = ["| measurement | runs | wall min / median (s) | machine busy (cores, median) | qemu CPU s (median) "
             "| ansible + modules CPU s (median) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += ["| %s | %d | %s | %s |" % (label, len(walls[kind]), fmt_pair(walls[kind]), cpu_cells(results[kind]))
              for label, kind in rows if walls[kind]]
    lines += ["", "| ratio | of mins | of medians | goal | verdict (medians) |", "| --- | ---: | ---: | ---: | --- |",
              ratio_row("migrate.yml 1 VM ÷ modules directly", ratios["overhead"], GOALS["overhead"]),
              ratio_row("migrate.yml 3 VMs (forks 3) ÷ 1 VM", ratios["fleet"], GOALS["fleet"]),
              ratio_row("1 VM ÷ modules, boot to `login:` left out (%s s ÷ %s s)"
                        % (fmt_pair(one_rest), fmt_pair(direct_rest)), ratio_pair(one_rest, direct_rest))]
    if walls["direct3"]:
        lines += [ratio_row("modules directly, 3 VMs at once ÷ 1 VM (what the machine allows)",
                            ratio_pair(walls["direct3"], walls["direct"])),
                  ratio_row("migrate.yml 3 VMs ÷ modules directly 3 VMs at once", ratio_pair(walls["three"], walls["direct3"]))]
    one_split, one_login = stage_split(results["one"])
    three_split, three_login = stage_split(results["three"])
    direct_stage = {stage: med([direct_stages(r)[stage] for r in results["direct"]]) for stage in STAGES}
    direct_login = med([r["login_seconds"] for r in results["direct"]])
    chains3 = [chain for r in results.get("direct3", []) for chain in r["chains"].values()]
    header = "| stage (median s) | modules directly, 1 VM | migrate.yml, 1 VM | migrate.yml, 3 VMs (per VM) |"
    if chains3:
        header += " modules directly, 3 VMs (per VM) |"
    lines += ["", header, "| --- |" + " ---: |" * (header.count("|") - 2)]
    for stage in STAGES:
        cells = [direct_stage[stage], one_split[stage], three_split[stage]]
        if chains3:
            cells.append(med([direct_stages(chain)[stage] for chain in chains3]))
        lines.append("| %s | %s |" % (stage, " | ".join("%.1f" % cell for cell in cells)))
    outside_one = med([r["wall"] - sum(e["stage_seconds"].get(s, 0.0) for s in STAGES)
                       for r in results["one"] for e in r["vms"].values()])
    lines.append("| outside the stages (start, checks, report) | 0.0 | %.1f | — |%s"
                 % (outside_one, " — |" if chains3 else ""))
    cells = [direct_login, one_login or 0.0, three_login or 0.0]
    if chains3:
        cells.append(med([chain["login_seconds"] for chain in chains3]))
    lines.append("| of kvm_import: boot to `login:` (kvm_boot_check) | %s |" % " | ".join("%.1f" % c for c in cells))
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        write_doc(Path(args.write_doc), table, results)
    return ratios


def write_doc(doc, table, results):
    start, end = "<!-- bench-migrate:start -->", "<!-- bench-migrate:end -->"
    block = ("%s\nMeasured %s on %s (%d cores, load average %.1f at the end), `make bench BENCH=migrate`, %d runs "
             "of each, domain type qemu (TCG):\n\n%s\n%s") % (
        start, results["measured_at"], results["host"], results["cores"], results["load"], len(results["direct"]),
        table, end)
    text = doc.read_text() if doc.exists() else "# Performance\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n## End to end: migrate.yml\n\n" + block + "\n"
    doc.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--write-doc", default=str(REPO / "docs" / "performance.md"),
                        help="rewrite the table between the bench-migrate markers of this file ('' for none)")
    parser.add_argument("--max-parallel", type=int, default=3,
                        help="the KVM host's max_parallel (VMs it works on at once); 3 lets --forks 3 run all "
                             "three VMs together, 0 keeps migrate.yml's default")
    parser.add_argument("--results-json", default="", help="also save every run's raw figures to this file")
    parser.add_argument("--from-json", default="", help="print (and write) the tables of a saved --results-json")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        report(args, results)
        return
    if os.geteuid() != 0:
        raise SystemExit("migrate_bench needs root (qemu:///system, the guest cache)")
    subprocess.run([str(REPO / "scripts" / "libvirtd-up.sh")], check=True)
    base = world_readable_dir("x2k-bench-xva-")
    results = {"direct": [], "one": [], "three": [], "direct3": [], "max_parallel": args.max_parallel}
    try:
        xvas = write_xvas(base)
        first = {NAMES[0]: xvas[NAMES[0]]}
        for index in range(1, args.runs + 1):
            warm(first.values())
            results["direct"].append(measure("direct", lambda work: direct(first[NAMES[0]], work),
                                             NAMES[:1], index))
            warm(first.values())
            results["one"].append(measure("one", lambda work: playbook(first, work, None, args.max_parallel),
                                          NAMES[:1], index))
            warm(xvas.values())
            results["three"].append(measure("three", lambda work: playbook(xvas, work, 3, args.max_parallel),
                                            NAMES, index))
            warm(xvas.values())
            results["direct3"].append(measure("direct3", lambda work: direct_fleet(xvas, work), NAMES, index))
    finally:
        cleanup(NAMES, base / "images")
        shutil.rmtree(base, ignore_errors=True)
    results.update(measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), host=os.uname().nodename,
                   cores=os.cpu_count(), load=os.getloadavg()[0])
    if args.results_json:
        Path(args.results_json).write_text(json.dumps(results, indent=1))
    report(args, results)


if __name__ == "__main__":
    main()
