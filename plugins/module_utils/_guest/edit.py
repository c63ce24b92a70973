# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changing files inside a guest, with the record every fixup leaves.

Every edit goes through GuestEditor: it keeps a backup of the original under
/var/backups/xen2kvm/ (the guest path below it, the first time only, so a second run does not
back up our own result), writes through a hidden temporary file and a rename, records a diff for
Ansible's diff mode, appends a line to the guest's own log (/var/log/xen2kvm-fixup.log), and in
check mode only records what it would do.

Why backups never sit beside the file: many directories are read as a whole
(``initramfs-tools/conf.d/*``, ``network/interfaces.d/*``, ``grub.d``, ``modprobe.d``), so a
``resume.xen2kvm`` beside ``resume`` kept the Xen-era ``RESUME=/dev/xvda2`` alive.  Backups that
earlier versions left there (``<file>.xen2kvm``) are moved into the backup tree.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import as_tree

BACKUP_DIR = "/var/backups/xen2kvm"
LEGACY_BACKUP_SUFFIX = ".xen2kvm"  # beside the file: what earlier versions did
TEMP_SUFFIX = ".xen2kvm-tmp"
GUEST_LOG = "/var/log/xen2kvm-fixup.log"
# Where earlier versions' backups beside the file could be read as configuration.
LEGACY_BACKUP_TREES = ("/etc",)


def backup_path(path):
    """The guest path of the backup of guest file ``path``."""
    return BACKUP_DIR + "/" + path.lstrip("/")


def temp_path(path):
    """A hidden sibling: ``dir/*`` globs (ifupdown's ``source``, initramfs-tools' conf.d) skip it."""
    directory, name = os.path.split(path)
    return directory.rstrip("/") + "/." + name + TEMP_SUFFIX


class GuestEditor:
    """Reads and changes the guest's files: ``root`` is a tree (``_guest.access``) or a host
    directory holding the guest."""

    def __init__(self, root, check_mode=False, run=None):
        self.tree = as_tree(root)
        self.check_mode = check_mode
        self.changes = []     # [{"fixup", "action", "path", "why"}]
        self.warnings = []
        self.diffs = []       # Ansible diff dicts
        self.fixup = None     # the fixup now running, for the record
        self._run = run       # runner in the guest: run(argv, env=None, input=None, check=True)

    # -- reading
    def exists(self, path):
        return self.tree.lexists(path)

    def is_dir(self, path):
        return self.tree.is_dir(path)

    def read(self, path, default=None):
        if not self.tree.is_file(path):
            return default
        return self.tree.read_bytes(path).decode("utf-8", "surrogateescape")

    def listdir(self, path):
        return self.tree.listdir(path)

    def warn(self, message):
        self.warnings.append(message)

    # -- changing
    def record(self, action, path, why):
        """Note a change made outside the editing methods (a repair, a package step)."""
        self._record(action, path, why)

    def _record(self, action, path, why):
        self.changes.append({"fixup": self.fixup, "action": action, "path": path, "why": why})

    def write(self, path, text, why, mode=None):
        """Give the guest file ``path`` the content ``text``; True when that is a change."""
        old = self.read(path)
        if old == text:
            return False
        self.diffs.append({"before_header": path, "after_header": path, "before": old or "", "after": text})
        self._record("create" if old is None else "edit", path, why)
        if self.check_mode:
            return True
        # a link is followed, as writing through it in the guest would (a dangling one is replaced)
        target = path
        if self.tree.is_link(path) and self.tree.exists(path):
            target = self.tree.realpath(path)
        self.tree.makedirs(os.path.dirname(target) or "/")
        if old is not None:
            self._backup(target)
            mode = stat.S_IMODE(self.tree.mode(target)) if mode is None else mode
        self.tree.write_bytes(target, text.encode("utf-8", "surrogateescape"), mode=mode)
        self._log("%s %s: %s" % ("edited" if old is not None else "created", path, why))
        return True

    def remove(self, path, why):
        if not self.tree.lexists(path):
            return False
        self._record("remove", path, why)
        if self.check_mode:
            return True
        if stat.S_ISREG(self.tree.mode(path)):
            self._backup(path)
        self.tree.remove(path)
        self._log("removed %s: %s" % (path, why))
        return True

    def symlink(self, target, path, why):
        if self.tree.is_link(path) and self.tree.readlink(path) == target:
            return False
        self._record("symlink", path, why)
        if self.check_mode:
            return True
        self.tree.makedirs(os.path.dirname(path) or "/")
        if self.tree.lexists(path):
            self.tree.remove(path)
        self.tree.symlink(target, path)
        self._log("linked %s -> %s: %s" % (path, target, why))
        return True

    def run(self, argv, why, env=None, input=None, check=True):
        """Run a command in the guest; in check mode only record it."""
        self._record("run", " ".join(argv), why)
        if self.check_mode:
            return None
        if self._run is None:
            raise RuntimeError("no runner in the guest for %s" % argv[0])
        result = self._run(argv, env=env, input=input, check=check)
        self._log("ran %s: %s" % (" ".join(argv), why))
        return result

    def inspect_run(self, argv):
        """Run a read-only command in the guest (also in check mode); its stdout, or None when
        it fails.  Not recorded: it changes nothing."""
        if self._run is None:
            return None
        try:
            result = self._run(argv, check=False)
        except Exception:  # a missing binary, a read-only mount: the answer is just "unknown"
            return None
        return result.stdout if result.returncode == 0 else None

    def changed_path(self, *paths):
        """Whether this run changed any of ``paths``."""
        return any(change["path"] in paths for change in self.changes if change["action"] != "run")

    def _backup(self, path):
        backup = backup_path(path)
        if not self.tree.lexists(backup):
            self.tree.makedirs(os.path.dirname(backup), mode=0o700)
            self.tree.copy(path, backup)

    def restore_backup(self, path, why):
        """Put the backed-up original of ``path`` back (after a step that could not finish);
        True when there was one."""
        backup = backup_path(path)
        if self.check_mode or not self.tree.is_file(backup):
            return False
        tmp = temp_path(path)
        self.tree.copy(backup, tmp)
        self.tree.rename(tmp, path)
        self._record("restore", path, why)
        self._log("restored %s: %s" % (path, why))
        return True

    def relocate_legacy_backups(self):
        """Move ``<file>.xen2kvm`` backups left beside files by earlier versions into the
        backup tree, where no directory-reading program sees them."""
        moved = []
        for tree in LEGACY_BACKUP_TREES:
            for path in self.tree.paths_under(tree):
                name = os.path.basename(path)
                if name.endswith(LEGACY_BACKUP_SUFFIX) and name != LEGACY_BACKUP_SUFFIX:
                    moved.append(self._relocate(path))  # links and directories are left alone there
        return [path for path in moved if path]

    def _relocate(self, legacy):
        original = legacy[:-len(LEGACY_BACKUP_SUFFIX)]
        if self.tree.is_link(legacy) or not self.tree.is_file(legacy):
            return None
        self._record("move", legacy, "an old backup beside the file is read as configuration; now under %s"
                     % BACKUP_DIR)
        if self.check_mode:
            return legacy
        target = backup_path(original)
        if self.tree.lexists(target):
            # The store already holds the original: keep this one too, under its own name.
            target = backup_path(legacy)
        self.tree.makedirs(os.path.dirname(target), mode=0o700)
        self.tree.copy(legacy, target)
        self.tree.remove(legacy)
        self._log("moved %s to %s" % (legacy, target))
        return legacy

    def _log(self, line):
        if not self.tree.is_dir(os.path.dirname(GUEST_LOG)):
            return
        entry = "%s [%s] %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self.fixup, line)
        if self.tree.lexists(GUEST_LOG):
            self.tree.append(GUEST_LOG, entry.encode("utf-8", "surrogateescape"))
        else:
            self.tree.write_bytes(GUEST_LOG, entry.encode("utf-8", "surrogateescape"), mode=0o640)
