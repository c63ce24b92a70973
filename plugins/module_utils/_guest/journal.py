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

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import as_tree

STATE_DIR = "/var/lib/xen2kvm"
JOURNAL = STATE_DIR + "/journal.json"
SAVED_DIR = STATE_DIR + "/saved"
POLICY_MARK = "# xen2kvm: no daemons start inside the chroot"
# What versions without a journal left when they were killed.
LEGACY_SAVED_SUFFIX = ".xen2kvm-saved"
LEGACY_TEMPORARY = ("/etc/resolv.conf", "/usr/sbin/policy-rc.d", "/etc/apt/sources.list.d/xen2kvm-mirror.list")


class Journal:
    """Temporary changes of guest files and directories, undone in reverse order.  ``root`` is
    a tree (``_guest.access``) or a host directory holding the guest."""

    def __init__(self, root):
        self.tree = as_tree(root)
        self.entries = []  # {"path": guest path, "saved": guest path of the original or None}

    # -- the file itself
    def _load(self):
        try:
            return list(json.loads(self.tree.read_bytes(JOURNAL).decode("utf-8")).get("entries", []))
        except (OSError, RuntimeError, ValueError, AttributeError):
            return []

    def _save(self):
        if not self.entries:
            self.tree.remove(JOURNAL)
            return
        self.tree.makedirs(os.path.dirname(JOURNAL))
        self.tree.write_bytes(JOURNAL, json.dumps({"entries": self.entries}, indent=1).encode("utf-8"),
                              durable=True)

    def pending(self):
        """What an earlier, killed run left to undo (guest paths)."""
        legacy = [path for path in LEGACY_TEMPORARY if self._legacy_leftover(path)]
        return [entry["path"] for entry in self._load()] + legacy

    # -- making a temporary change
    def replace(self, path, text, mode):
        """Give ``path`` the content ``text`` until undo(); the original (or its absence) comes back."""
        saved = None
        if self.tree.lexists(path):
            saved = SAVED_DIR + "/" + path.lstrip("/")
            self.tree.makedirs(os.path.dirname(saved), mode=0o700)
            self.tree.remove(saved)
            self.tree.copy(path, saved)
        self.entries.append({"path": path, "saved": saved})
        self._save()
        self.tree.remove(path)
        self.tree.makedirs(os.path.dirname(path))
        self.tree.write_bytes(path, text.encode("utf-8"), mode=mode)

    def add_directory(self, path):
        """``path`` (which must not exist) is ours until undo()."""
        self.tree.remove(path)
        self.entries.append({"path": path, "saved": None})
        self._save()
        self.tree.makedirs(path)

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
        path = entry["path"]
        self.tree.remove(path)
        saved = entry.get("saved")
        if saved and self.tree.lexists(saved):
            tmp = os.path.dirname(path).rstrip("/") + "/." + os.path.basename(path) + ".xen2kvm-tmp"
            self.tree.remove(tmp)
            self.tree.copy(saved, tmp)
            self.tree.rename(tmp, path)
            self.tree.remove(saved)

    def _legacy_leftover(self, path):
        if self.tree.lexists(path + LEGACY_SAVED_SUFFIX):
            return True
        if path.endswith("xen2kvm-mirror.list"):
            return self.tree.lexists(path)
        if path.endswith("policy-rc.d") and self.tree.is_file(path) and not self.tree.is_link(path):
            return POLICY_MARK in self.tree.read_bytes(path).decode("utf-8", "replace")
        return False

    def _undo_legacy(self, path):
        if self.tree.lexists(path + LEGACY_SAVED_SUFFIX):
            self.tree.remove(path)
            self.tree.rename(path + LEGACY_SAVED_SUFFIX, path)
        else:
            self.tree.remove(path)
