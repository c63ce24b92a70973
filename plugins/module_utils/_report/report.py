# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration report: per-VM records merged into the last report, rendered as JSON and
Markdown, written atomically."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile

from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import redacted_source

JSON_NAME = "migration-report.json"
MARKDOWN_NAME = "migration-report.md"
STAGES = ("xen_source", "transfer", "kvm_preflight", "export", "convert", "fixup", "kvm_import")
STATUSES = ("migrated", "unchanged", "failed")
MIB = 1024 * 1024


class ReportError(Exception):
    pass


def _number(value):
    """A float from what a playbook hands over (numbers may arrive as strings), None if none."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _disk_entry(disk):
    entry = {"path": disk.get("path"), "format": disk.get("format"),
             "virtual_bytes": int(disk.get("virtual_size") or 0)}
    if disk.get("allocated_bytes") is not None:
        entry["allocated_bytes"] = int(disk["allocated_bytes"])
    return entry


def conversion_mb_per_s(record):
    """Virtual MiB per second of the conversion this run did; None when it converted nothing."""
    if not record.get("converted"):
        return None
    disks = record.get("disks") or []
    seconds = sum(_number(disk.get("seconds")) or 0.0 for disk in disks)
    if seconds <= 0:
        return None
    return round(sum(int(disk.get("virtual_size") or 0) for disk in disks) / MIB / seconds, 1)


def export_mb_per_s(record, seconds):
    """Disk MiB per second pulled from the pool, for a live export this run converted: the export
    and the conversion are one stream, so it is the VM's disk size over the convert stage's
    seconds (connection and ova.xml included). None for an XVA source or when nothing was converted."""
    convert_seconds = seconds.get("convert")
    if not record.get("export_mode") or not record.get("converted") or not convert_seconds:
        return None
    disk_bytes = sum(int(disk.get("virtual_size") or 0) for disk in record.get("disks") or [])
    return round(disk_bytes / MIB / convert_seconds, 1)


def normalize_record(record, now):
    """One VM's entry from the playbook's record; raises ReportError on a record without a name
    or with an unknown status."""
    if not isinstance(record, dict) or not record.get("vm"):
        raise ReportError("a record without a VM name: %r" % (record,))
    status = record.get("status")
    if status not in STATUSES:
        raise ReportError("VM %s: status %r is not one of %s" % (record["vm"], status, ", ".join(STATUSES)))
    seconds = {}
    for stage, value in (record.get("stage_seconds") or {}).items():
        number = _number(value)
        if number is not None:
            seconds[stage] = round(number, 1)
    disks = [_disk_entry(disk) for disk in record.get("disks") or []]
    login = _number(record.get("login_seconds"))
    return {
        "vm": str(record["vm"]),
        "status": status,
        # A report is shared and kept: an export URL's credentials never reach it.
        "source": redacted_source(record.get("source") or ""),
        "kvm_host": record.get("kvm_host") or "",
        "domain": record.get("domain") or "",
        "domain_type": record.get("domain_type") or "",
        "disks": disks,
        "disk_bytes": sum(disk["virtual_bytes"] for disk in disks),
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "conversion_mb_per_s": conversion_mb_per_s(record),
        # Live source (a pool's XAPI): the pool (its xen_hosts name), the export mode, the export
        # speed and, for a source shutdown mode stopped, what the rollback after a failure did.
        "source_pool": record.get("source_pool") or None,
        "export_mode": record.get("export_mode") or None,
        "export_mb_per_s": export_mb_per_s(record, seconds),
        "rollback": record.get("rollback") or None,
        "fixups": sorted(set(record.get("fixups") or [])),
        "login_seconds": None if login is None else round(login, 1),
        "boot_method": record.get("boot_method") or None,
        "failed_stage": (record.get("failed_stage") or None) if status == "failed" else None,
        "error": (record.get("error") or None) if status == "failed" else None,
        "updated": now,
    }


def read_report(path):
    """The VMs of an earlier JSON report by name; empty when there is none. A report that is not
    ours is refused rather than overwritten."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ReportError("cannot read the earlier report %s: %s (move it away to start a new one)" % (path, exc))
    if not isinstance(data, dict) or not isinstance(data.get("vms"), list):
        raise ReportError("%s is not a migration report (no list 'vms'); move it away to start a new one" % path)
    return {entry["vm"]: entry for entry in data["vms"] if isinstance(entry, dict) and entry.get("vm")}


def merge(previous, entries):
    """Entries of this run replace the earlier ones of the same VMs; the others stay."""
    merged = dict(previous)
    for entry in entries:
        merged[entry["vm"]] = entry
    return [merged[name] for name in sorted(merged)]


def summary(entries):
    counts = dict((status, 0) for status in STATUSES)
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return ", ".join("%d %s" % (counts[status], status) for status in STATUSES)


def _cell(value):
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _gib(count):
    return "%.1f" % (count / 1024.0 ** 3)


def _stages_text(seconds):
    return " ".join("%s %s" % (stage, seconds[stage]) for stage in STAGES if stage in seconds)


def render_markdown(entries, generated):
    lines = [
        "# Migration report",
        "",
        "Updated %s. VMs: %s." % (generated, summary(entries)),
        "",
        "| VM | status | KVM host | source | pool | export | disks (GiB) | seconds per stage | total s | MB/s"
        " | export MB/s | login s | fixups | error | rollback |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in entries:
        error = "" if entry["status"] != "failed" else "%s: %s" % (entry.get("failed_stage"), entry.get("error"))
        lines.append("| " + " | ".join(_cell(value) for value in (
            entry["vm"], entry["status"], entry["kvm_host"], entry["source"], entry.get("source_pool"),
            entry.get("export_mode"), "%d (%s)" % (len(entry["disks"]), _gib(entry["disk_bytes"])),
            _stages_text(entry["stage_seconds"]), entry["total_seconds"], entry["conversion_mb_per_s"],
            entry.get("export_mb_per_s"), entry["login_seconds"], ", ".join(entry["fixups"]), error,
            entry.get("rollback"))) + " |")
    lines += ["", "## Disks", ""]
    for entry in entries:
        for disk in entry["disks"]:
            lines.append("- %s: `%s` (%s, %d bytes)" % (
                _cell(entry["vm"]), _cell(disk["path"]), _cell(disk["format"]), disk["virtual_bytes"]))
    return "\n".join(lines) + "\n"


def render_json(entries, generated):
    return json.dumps({"generated": generated, "summary": summary(entries), "vms": entries}, indent=2,
                      sort_keys=True) + "\n"


def write_atomically(path, text):
    """Write to a temporary file beside ``path``, sync, rename over it, sync the directory: a
    reader sees the old report or the new one, never half of one. Returns whether it changed."""
    try:
        with open(path) as handle:
            if handle.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    fsync_path(directory)
    return True


def write_report(directory, records, now):
    """Merge ``records`` into the report in ``directory``; returns paths, entries of this run,
    all entries and whether a file changed."""
    entries = [normalize_record(record, now) for record in records]
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ReportError("cannot make the report directory %s: %s" % (directory, exc))
    json_path = os.path.join(directory, JSON_NAME)
    markdown_path = os.path.join(directory, MARKDOWN_NAME)
    merged = merge(read_report(json_path), entries)
    changed = write_atomically(json_path, render_json(merged, now))
    changed = write_atomically(markdown_path, render_markdown(merged, now)) or changed
    return {"json": json_path, "markdown": markdown_path, "records": entries, "vms": merged,
            "summary": summary(entries), "changed": changed}
