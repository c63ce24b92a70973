# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Find the newest finished NAUBackup export of a VM.

NAUBackup writes ``<dir>/<vm>/backup-YYYY-MM-DD-(HH:MM:SS)/<vm>.xva`` (or ``.xva.gz``) and,
once the export is complete, a ``success`` file beside it. A folder without that marker is a
backup that is still running or was interrupted, and its XVA is cut short.
"""

from __future__ import annotations

import datetime
import os
import re

FOLDER_RE = re.compile(r"^backup-(\d{4})-(\d{2})-(\d{2})-\((\d{2}):(\d{2}):(\d{2})\)$")
XVA_SUFFIXES = (".xva", ".xva.gz")
SUCCESS_MARKER = "success"


class NauBackupError(Exception):
    pass


def folder_date(name):
    """The timestamp in a NAUBackup folder name, or None for a name NAUBackup does not write."""
    match = FOLDER_RE.match(name)
    if not match:
        return None
    try:
        return datetime.datetime(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _xva_in(folder, vm):
    for suffix in XVA_SUFFIXES:
        candidate = os.path.join(folder, vm + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def _backups(vm_dir):
    """(date, folder name) of every folder named like a NAUBackup run, oldest first."""
    found = []
    for name in os.listdir(vm_dir):
        date = folder_date(name)
        if date is not None and os.path.isdir(os.path.join(vm_dir, name)):
            found.append((date, name))
    return sorted(found)


def find_newest_finished(path, vm):
    """The newest backup of ``vm`` under ``path`` that has its ``success`` marker and its XVA.

    Returns a dict with ``xva``, ``folder``, ``date`` (ISO 8601) and ``skipped`` (the newer
    folders passed over, each with ``folder`` and ``reason``), or raises NauBackupError naming
    what was found."""
    if not os.path.isdir(path):
        raise NauBackupError("NAUBackup directory %s does not exist or is not a directory" % path)
    vm_dir = os.path.join(path, vm)
    if not os.path.isdir(vm_dir):
        raise NauBackupError("no backups of VM %r: %s does not exist or is not a directory" % (vm, vm_dir))
    skipped = []
    for date, name in reversed(_backups(vm_dir)):
        folder = os.path.join(vm_dir, name)
        xva = _xva_in(folder, vm)
        if not os.path.isfile(os.path.join(folder, SUCCESS_MARKER)):
            skipped.append({"folder": folder, "reason": "no '%s' marker (unfinished or failed backup)" % SUCCESS_MARKER})
        elif xva is None:
            skipped.append({"folder": folder, "reason": "no %s" % " or ".join(vm + s for s in XVA_SUFFIXES)})
        else:
            return {"xva": xva, "folder": folder, "date": date.isoformat(), "skipped": skipped}
    if not skipped:
        raise NauBackupError("no backup folders of VM %r in %s (expected backup-YYYY-MM-DD-(HH:MM:SS))" % (vm, vm_dir))
    raise NauBackupError("no finished backup of VM %r in %s; found only: %s" % (
        vm, vm_dir, "; ".join("%s: %s" % (os.path.basename(s["folder"]), s["reason"]) for s in skipped)))
