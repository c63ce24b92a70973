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
import shutil
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import resolve_guest_path

BACKUP_DIR = "/var/backups/xen2kvm"
LEGACY_BACKUP_SUFFIX = ".xen2kvm"  # beside the file: what earlier versions did
TEMP_SUFFIX = ".xen2kvm-tmp"
GUEST_LOG = "/var/log/xen2kvm-fixup.log"
# Where earlier versions' backups beside the file could be read as configuration.
LEGACY_BACKUP_TREES = ("/etc",)


def backup_path(path):
    """The guest path of the backup of guest file ``path``."""
    return BACKUP_DIR + "/" + path.lstrip("/")


def temp_path(host):
    """A hidden sibling: ``dir/*`` globs (ifupdown's ``source``, initramfs-tools' conf.d) skip it."""
    directory, name = os.path.split(host)
    return os.path.join(directory, "." + name + TEMP_SUFFIX)


class GuestEditor:
    """Reads and changes files of the guest mounted at ``root``."""

    def __init__(self, root, check_mode=False, run=None):
        self.root = root
        self.check_mode = check_mode
        self.changes = []     # [{"fixup", "action", "path", "why"}]
        self.warnings = []
        self.diffs = []       # Ansible diff dicts
        self.fixup = None     # the fixup now running, for the record
        self._run = run       # chroot runner: run(argv, env=None, input=None, check=True)

    # -- reading
    def host_path(self, path, follow_last=True):
        return resolve_guest_path(self.root, path, follow_last)

    def exists(self, path):
        return os.path.lexists(self.host_path(path, follow_last=False))

    def read(self, path, default=None):
        host = self.host_path(path)
        if not os.path.isfile(host):
            return default
        with open(host, "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")

    def listdir(self, path):
        host = self.host_path(path)
        return sorted(os.listdir(host)) if os.path.isdir(host) else []

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
        host = self.host_path(path)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if old is not None:
            self._backup(path, host)
        tmp = temp_path(host)
        with open(tmp, "wb") as handle:
            handle.write(text.encode("utf-8", "surrogateescape"))
        if mode is not None:
            os.chmod(tmp, mode)
        elif old is not None:
            shutil.copymode(host, tmp)
        os.rename(tmp, host)
        self._log("%s %s: %s" % ("edited" if old is not None else "created", path, why))
        return True

    def remove(self, path, why):
        host = self.host_path(path, follow_last=False)
        if not os.path.lexists(host):
            return False
        self._record("remove", path, why)
        if self.check_mode:
            return True
        if os.path.isfile(host) and not os.path.islink(host):
            self._backup(path, host)
        if os.path.isdir(host) and not os.path.islink(host):
            shutil.rmtree(host)
        else:
            os.unlink(host)
        self._log("removed %s: %s" % (path, why))
        return True

    def symlink(self, target, path, why):
        host = self.host_path(path, follow_last=False)
        if os.path.islink(host) and os.readlink(host) == target:
            return False
        self._record("symlink", path, why)
        if self.check_mode:
            return True
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if os.path.lexists(host):
            os.unlink(host)
        os.symlink(target, host)
        self._log("linked %s -> %s: %s" % (path, target, why))
        return True

    def run(self, argv, why, env=None, input=None, check=True):
        """Run a command in the guest (chroot); in check mode only record it."""
        self._record("run", " ".join(argv), why)
        if self.check_mode:
            return None
        if self._run is None:
            raise RuntimeError("no chroot runner for %s" % argv[0])
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

    def _backup(self, path, host):
        backup = self.host_path(backup_path(path), follow_last=False)
        if not os.path.lexists(backup):
            os.makedirs(os.path.dirname(backup), mode=0o700, exist_ok=True)
            shutil.copy2(host, backup, follow_symlinks=False)

    def restore_backup(self, path, why):
        """Put the backed-up original of ``path`` back (after a step that could not finish);
        True when there was one."""
        backup = self.host_path(backup_path(path), follow_last=False)
        if self.check_mode or not os.path.isfile(backup):
            return False
        host = self.host_path(path, follow_last=False)
        tmp = temp_path(host)
        shutil.copy2(backup, tmp)
        os.rename(tmp, host)
        self._record("restore", path, why)
        self._log("restored %s: %s" % (path, why))
        return True

    def relocate_legacy_backups(self):
        """Move ``<file>.xen2kvm`` backups left beside files by earlier versions into the
        backup tree, where no directory-reading program sees them."""
        moved = []
        for tree in LEGACY_BACKUP_TREES:
            top = self.host_path(tree)
            for directory, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(LEGACY_BACKUP_SUFFIX) and name != LEGACY_BACKUP_SUFFIX:
                        guest_dir = tree + directory[len(top):]
                        moved.append(self._relocate(guest_dir + "/" + name))
        return [path for path in moved if path]

    def _relocate(self, legacy):
        original = legacy[:-len(LEGACY_BACKUP_SUFFIX)]
        host = self.host_path(legacy, follow_last=False)
        if os.path.islink(host) or not os.path.isfile(host):
            return None
        self._record("move", legacy, "an old backup beside the file is read as configuration; now under %s"
                     % BACKUP_DIR)
        if self.check_mode:
            return legacy
        target = self.host_path(backup_path(original), follow_last=False)
        if os.path.lexists(target):
            # The store already holds the original: keep this one too, under its own name.
            target = self.host_path(backup_path(legacy), follow_last=False)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        shutil.copy2(host, target)
        os.unlink(host)
        self._log("moved %s to %s" % (legacy, target[len(self.root.rstrip("/")):]))
        return legacy

    def _log(self, line):
        host = self.host_path(GUEST_LOG)
        if not os.path.isdir(os.path.dirname(host)):
            return
        with open(host, "a") as handle:
            handle.write("%s [%s] %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self.fixup, line))
