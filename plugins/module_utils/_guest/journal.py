# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A journal of the temporary changes made to a guest, so a killed run can be undone.

While packages are installed the guest gets a ``policy-rc.d`` and the host's resolver, and
apt works from files of ours; all of that must go again.  ``finally`` covers errors and
SIGTERM, not SIGKILL: so every temporary change is written to /var/lib/xen2kvm/journal.json in
the guest *before* it is made (with a copy of the original under /var/lib/xen2kvm/saved/), and
taken out of the journal once undone.  The next run replays the journal first.

Copies, not renames: /etc and /var may be different filesystems in the guest.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import resolve_guest_path

STATE_DIR = "/var/lib/xen2kvm"
JOURNAL = STATE_DIR + "/journal.json"
SAVED_DIR = STATE_DIR + "/saved"
POLICY_MARK = "# xen2kvm: no daemons start inside the chroot"
# What versions without a journal left when they were killed.
LEGACY_SAVED_SUFFIX = ".xen2kvm-saved"
LEGACY_TEMPORARY = ("/etc/resolv.conf", "/usr/sbin/policy-rc.d", "/etc/apt/sources.list.d/xen2kvm-mirror.list")


def _remove(host):
    if os.path.isdir(host) and not os.path.islink(host):
        shutil.rmtree(host)
    elif os.path.lexists(host):
        os.unlink(host)


def _fsync_write(host, data):
    tmp = host + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, host)


class Journal:
    """Temporary changes of guest files and directories, undone in reverse order."""

    def __init__(self, root):
        self.root = root
        self.entries = []  # {"path": guest path, "saved": guest path of the original or None}

    def _host(self, path):
        return resolve_guest_path(self.root, path, follow_last=False)

    # -- the file itself
    def _load(self):
        try:
            with open(self._host(JOURNAL)) as handle:
                return list(json.load(handle).get("entries", []))
        except (OSError, ValueError, AttributeError):
            return []

    def _save(self):
        host = self._host(JOURNAL)
        if not self.entries:
            if os.path.lexists(host):
                os.unlink(host)
            return
        os.makedirs(os.path.dirname(host), mode=0o755, exist_ok=True)
        _fsync_write(host, json.dumps({"entries": self.entries}, indent=1))

    def pending(self):
        """What an earlier, killed run left to undo (guest paths)."""
        legacy = [path for path in LEGACY_TEMPORARY if self._legacy_leftover(path)]
        return [entry["path"] for entry in self._load()] + legacy

    # -- making a temporary change
    def replace(self, path, text, mode):
        """Give ``path`` the content ``text`` until undo(); the original (or its absence) comes back."""
        host = self._host(path)
        saved = None
        if os.path.lexists(host):
            saved = SAVED_DIR + "/" + path.lstrip("/")
            saved_host = self._host(saved)
            os.makedirs(os.path.dirname(saved_host), mode=0o700, exist_ok=True)
            _remove(saved_host)
            shutil.copy2(host, saved_host, follow_symlinks=False)
        self.entries.append({"path": path, "saved": saved})
        self._save()
        _remove(host)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "w") as handle:
            handle.write(text)
        os.chmod(host, mode)

    def add_directory(self, path):
        """``path`` (which must not exist) is ours until undo()."""
        host = self._host(path)
        if os.path.lexists(host):
            _remove(host)
        self.entries.append({"path": path, "saved": None})
        self._save()
        os.makedirs(host, mode=0o755)
        return host

    # -- undoing
    def undo(self):
        """Undo this run's changes, newest first."""
        while self.entries:
            self._undo_entry(self.entries[-1])
            self.entries.pop()
            self._save()

    def replay(self):
        """Undo what a killed run left (its journal, and what journal-less versions left);
        returns the guest paths put back."""
        self.entries = self._load()
        done = [entry["path"] for entry in self.entries]
        self.undo()
        for path in LEGACY_TEMPORARY:
            if self._legacy_leftover(path):
                self._undo_legacy(path)
                done.append(path)
        return done

    def _undo_entry(self, entry):
        host = self._host(entry["path"])
        _remove(host)
        if entry.get("saved"):
            saved_host = self._host(entry["saved"])
            if os.path.lexists(saved_host):
                tmp = os.path.join(os.path.dirname(host), "." + os.path.basename(host) + ".xen2kvm-tmp")
                _remove(tmp)
                shutil.copy2(saved_host, tmp, follow_symlinks=False)
                os.rename(tmp, host)
                os.unlink(saved_host)

    def _legacy_leftover(self, path):
        host = self._host(path)
        if os.path.lexists(host + LEGACY_SAVED_SUFFIX):
            return True
        if path.endswith("xen2kvm-mirror.list"):
            return os.path.lexists(host)
        if path.endswith("policy-rc.d") and os.path.isfile(host) and not os.path.islink(host):
            with open(host, errors="replace") as handle:
                return POLICY_MARK in handle.read()
        return False

    def _undo_legacy(self, path):
        host = self._host(path)
        if os.path.lexists(host + LEGACY_SAVED_SUFFIX):
            _remove(host)
            os.rename(host + LEGACY_SAVED_SUFFIX, host)
        else:
            _remove(host)
