"""Fixtures shared by the testinfra checks of the molecule scenarios (pytest-testinfra, connection
local: this machine is the KVM host).

Each scenario works in build/molecule/<scenario>/ of the repository: ``sources/<vm>.json`` is
what xva_info read from each VM's export (written by shared/create.yml), ``reports/`` holds the
migration report of the last converge and ``first-converge.json``, the report of the converge
that migrated (shared/converge.yml).
"""
import contextlib
import json
import pathlib
import re
import xml.etree.ElementTree as ET

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
URI = "qemu:///system"
SERIAL_LOG = "/var/log/libvirt/qemu/%s-serial.log"


@pytest.fixture(name="work_dir", scope="module")
def work_dir_fixture(request):
    scenario = pathlib.Path(str(request.fspath)).resolve().parents[1].name
    return REPO / "build" / "molecule" / scenario


@pytest.fixture(name="sources", scope="module")
def sources_fixture(work_dir):
    """VM name -> its spec as xva_info read it from the export (plus ``xva``, the export's path)."""
    found = {path.stem: json.loads(path.read_text()) for path in (work_dir / "sources").glob("*.json")}
    assert found, "no sources in %s: was the scenario created?" % work_dir
    return found


def _entries(path):
    return {entry["vm"]: entry for entry in json.loads(path.read_text())["vms"]}


@pytest.fixture(name="report", scope="module")
def report_fixture(work_dir):
    """The report as the last converge left it: VM name -> entry."""
    return _entries(work_dir / "reports" / "migration-report.json")


@pytest.fixture(name="first_report", scope="module")
def first_report_fixture(work_dir):
    """The report of the first converge (the one that migrated): VM name -> entry."""
    return _entries(work_dir / "reports" / "first-converge.json")


def virsh(host, *args):
    return host.check_output(" ".join(["virsh --quiet --connect %s"] + ["%s"] * len(args)), URI, *args)


def domain_xml(host, name):
    return ET.fromstring(virsh(host, "dumpxml", name))


def disk_targets(domain):
    """(target dev, bus, source file) of each disk of a domain, in order."""
    return [(disk.find("target").get("dev"), disk.find("target").get("bus"), disk.find("source").get("file"))
            for disk in domain.findall("devices/disk") if disk.get("device") == "disk"]


def serial_log(host, name):
    log = host.file(SERIAL_LOG % name)
    return log.content_string if log.exists else ""


def guest_file(host, image, path, domain=None):
    """Text of ``path`` in the guest filesystem on one of the image's partitions, read with
    debugfs (user space, read-only: no loop device and no mount of a disk the guest is using);
    None when no partition has it.  With ``domain`` (running, with its agent), the guest's
    filesystems are frozen for the read: ext4 writes its journal back on a freeze, and debugfs,
    which does not replay the journal, would otherwise read a live guest's older blocks."""
    table = json.loads(host.check_output("sfdisk --json %s", image))["partitiontable"]
    with frozen(host, domain):
        for part in table["partitions"]:
            if part["type"] not in ("83", "0fc63daf-8483-4772-8e79-3d69d8477de4"):
                continue
            source = "%s?offset=%d" % (image, part["start"] * table.get("sectorsize", 512))
            cmd = host.run("debugfs -R %s %s", "cat %s" % path, source)
            if cmd.rc == 0 and not re.search(r"File not found|not found by ext2_lookup", cmd.stderr):
                return cmd.stdout
    return None


@contextlib.contextmanager
def frozen(host, domain):
    """The guest's filesystems frozen through its agent while the block runs; nothing when
    ``domain`` is None or its agent does not answer (then the read is as good as it gets)."""
    froze = domain is not None and host.run("virsh --connect %s domfsfreeze %s", URI, domain).rc == 0
    try:
        yield
    finally:
        if froze:
            host.run("virsh --connect %s domfsthaw %s", URI, domain)


def fstab_entries(text):
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
