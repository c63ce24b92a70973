# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest's files, seen the same way whichever engine opened the guest.

Inspection, the editor, the package journal and the fixups only ever use a *tree*: guest
paths in, bytes out.  Two trees exist:

* ``GuestfsTree``: every call goes to the libguestfs appliance (its own kernel, the guest's
  filesystems mounted there), so the host kernel never parses a guest filesystem and the
  guest's symlinks (``/etc -> /``) can only ever point into the appliance;
* ``HostTree``: a directory on this host (the opt-in chroot engine, and the small fake trees
  of the unit tests), symlinks resolved with chroot semantics by ``resolve_guest_path``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import os
import posixpath
import shutil
import tempfile

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError

MAX_SYMLINK_HOPS = 40  # same limit as the kernel's ELOOP
# Larger files go through a download: libguestfs messages stop at 4 MiB.
GUESTFS_READ_INLINE = 1024 * 1024


def resolve_guest_path(root, path, follow_last=True):
    """Host path of the guest's ``path``, following symlinks as the guest would see them.

    Absolute symlink targets restart at the guest root and ``..`` stops at the guest root
    (chroot semantics), so the result always lies inside ``root``. With follow_last=False a
    final symlink is returned itself (to replace or remove the link, not its target).
    Missing components are fine: the result is where the file would be.
    """
    root = os.path.realpath(root)
    pending = [part for part in path.split("/") if part]
    pending.reverse()
    resolved = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate) and (pending or follow_last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise GuestError("too many levels of symbolic links resolving %s in the guest" % path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed([p for p in target.split("/") if p]))
            continue
        resolved.append(part)
    result = os.path.join(root, *resolved)
    # Belt and braces: nothing above can leave root, but a bug here would be a host write.
    if result != root and not result.startswith(root + os.sep):
        raise GuestError("guest path %s resolves outside the guest root" % path)
    return result


class HostTree:
    """The guest's files under a host directory."""

    def __init__(self, root):
        self.root = root

    def host(self, path, follow_last=True):
        return resolve_guest_path(self.root, path, follow_last)

    def describe(self):
        return self.root

    # -- reading
    def lexists(self, path):
        return os.path.lexists(self.host(path, follow_last=False))

    def exists(self, path):
        return os.path.exists(self.host(path))

    def is_file(self, path):
        return os.path.isfile(self.host(path))

    def is_dir(self, path):
        return os.path.isdir(self.host(path))

    def is_link(self, path):
        return os.path.islink(self.host(path, follow_last=False))

    def readlink(self, path):
        return os.readlink(self.host(path, follow_last=False))

    def realpath(self, path):
        relative = os.path.relpath(self.host(path), os.path.realpath(self.root))
        return "/" if relative == "." else "/" + relative.replace(os.sep, "/")

    def size(self, path):
        return os.path.getsize(self.host(path))

    def mode(self, path):
        return os.lstat(self.host(path, follow_last=False)).st_mode

    def read_bytes(self, path, limit=None):
        with open(self.host(path), "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)

    def listdir(self, path):
        host = self.host(path)
        return sorted(os.listdir(host)) if os.path.isdir(host) else []

    def files_under(self, path):
        """Names (not paths) of the files below ``path``, recursively."""
        names = []
        for _directory, _dirnames, filenames in os.walk(self.host(path)):
            names.extend(filenames)
        return names

    def paths_under(self, path):
        """Guest paths of everything below directory ``path`` (links are listed, not followed)."""
        top = self.host(path)
        found = []
        for directory, dirnames, filenames in os.walk(top):
            relative = os.path.relpath(directory, top)
            found.extend(posixpath.normpath(posixpath.join(path, relative, name)) for name in dirnames + filenames)
        return sorted(found)

    # -- changing
    def makedirs(self, path, mode=0o755):
        os.makedirs(self.host(path), mode=mode, exist_ok=True)

    def write_bytes(self, path, data, mode=None, durable=False):
        """Replace ``path`` through a hidden temporary sibling and a rename."""
        host = self.host(path, follow_last=False)
        directory, name = os.path.split(host)
        tmp = os.path.join(directory, "." + name + ".xen2kvm-tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.rename(tmp, host)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise

    def append(self, path, data):
        with open(self.host(path), "ab") as handle:
            handle.write(data)

    def chmod(self, path, mode):
        os.chmod(self.host(path), mode)

    def copy(self, source, target):
        """Copy a file (or a link as a link) keeping its mode and times."""
        shutil.copy2(self.host(source, follow_last=False), self.host(target, follow_last=False),
                     follow_symlinks=False)

    def upload(self, host_file, path):
        shutil.copyfile(host_file, self.host(path, follow_last=False))

    def rename(self, source, target):
        os.rename(self.host(source, follow_last=False), self.host(target, follow_last=False))

    def symlink(self, target, path):
        os.symlink(target, self.host(path, follow_last=False))

    def remove(self, path):
        """Remove a file, a link or a whole directory; absent is fine."""
        host = self.host(path, follow_last=False)
        if os.path.isdir(host) and not os.path.islink(host):
            shutil.rmtree(host)
        elif os.path.lexists(host):
            os.unlink(host)


class GuestfsTree:
    """The guest's files, mounted inside a launched libguestfs handle.

    libguestfs follows a symlink in the middle of a path in the appliance's namespace for some
    calls (``cp_a``, ``rm_rf``, ``find``), so every path's directory is first resolved inside the
    guest (``realpath`` is chrooted); only the last component is left as it is."""

    def __init__(self, handle):
        self.g = handle

    def describe(self):
        return "the libguestfs appliance"

    def _inside(self, path):
        directory, name = posixpath.split(posixpath.normpath("/" + path))
        if not name:
            return "/"
        try:
            real = self.g.realpath(directory)
        except RuntimeError:  # a missing directory has no link to follow
            return posixpath.join(directory, name)
        return posixpath.join(real, name)

    # -- reading
    def lexists(self, path):
        path = self._inside(path)
        return bool(self.g.is_symlink(path) or self.g.exists(path))

    def exists(self, path):
        try:
            self.g.realpath(path)
        except RuntimeError:  # a dangling link (/etc/mtab -> ../proc/self/mounts) leads nowhere
            return False
        return bool(self.g.exists(self._inside(path)))

    def is_file(self, path):
        return bool(self.g.is_file(self._inside(path), followsymlinks=True))

    def is_dir(self, path):
        return bool(self.g.is_dir(self._inside(path), followsymlinks=True))

    def is_link(self, path):
        return bool(self.g.is_symlink(self._inside(path)))

    def readlink(self, path):
        return self.g.readlink(self._inside(path))

    def realpath(self, path):
        try:
            return self.g.realpath(path)
        except RuntimeError as exc:
            raise GuestError("%s cannot be resolved in the guest: %s" % (path, exc))

    def size(self, path):
        return self.g.filesize(self._inside(path))

    def mode(self, path):
        return self.g.lstatns(self._inside(path))["st_mode"]

    def read_bytes(self, path, limit=None):
        path = self._inside(path)
        size = self.g.filesize(path)
        if limit is not None and size > limit:
            return self.g.pread(path, limit, 0) if limit <= GUESTFS_READ_INLINE else self._download(path)[:limit]
        if size <= GUESTFS_READ_INLINE:
            return self.g.read_file(path)
        return self._download(path)

    def _download(self, path):
        with tempfile.NamedTemporaryFile(prefix="xen2kvm-guest-") as handle:
            self.g.download(path, handle.name)
            return handle.read()

    def listdir(self, path):
        return sorted(self.g.ls(self.realpath(path))) if self.is_dir(path) else []

    def files_under(self, path):
        if not self.is_dir(path):
            return []
        # directories too: one call instead of a stat per entry (callers match file names)
        return [posixpath.basename(p) for p in self.g.find(self.realpath(path))]

    def paths_under(self, path):
        """Guest paths of everything below directory ``path`` (links are listed, not followed):
        one ``find`` in the appliance, where a walk costs round trips per entry."""
        if not self.is_dir(path):
            return []
        return sorted(posixpath.normpath(path.rstrip("/") + "/" + p) for p in self.g.find(self.realpath(path)))

    # -- changing
    def makedirs(self, path, mode=0o755):
        current = "/"
        for part in [p for p in path.split("/") if p]:
            current = self._inside(posixpath.join(current, part))
            if self.g.is_dir(current, followsymlinks=True):
                current = self.g.realpath(current)
                continue
            self.g.mkdir(current)
            self.g.chmod(mode, current)

    def write_bytes(self, path, data, mode=None, durable=False):
        path = self._inside(path)
        directory, name = posixpath.split(path)
        tmp = posixpath.join(directory, "." + name + ".xen2kvm-tmp")
        try:
            self.g.write(tmp, data)
            if mode is not None:
                self.g.chmod(mode, tmp)
            self.g.rename(tmp, path)
        except BaseException:
            self.g.rm_f(tmp)
            raise
        if durable:
            self.g.sync()

    def append(self, path, data):
        self.g.write_append(self._inside(path), data)

    def chmod(self, path, mode):
        self.g.chmod(mode, self._inside(path))

    def copy(self, source, target):
        self.g.cp_a(self._inside(source), self._inside(target))

    def upload(self, host_file, path):
        self.g.upload(host_file, self._inside(path))

    def rename(self, source, target):
        self.g.rename(self._inside(source), self._inside(target))

    def symlink(self, target, path):
        self.g.ln_s(target, self._inside(path))

    def remove(self, path):
        path = self._inside(path)
        if self.g.is_dir(path, followsymlinks=False):
            self.g.rm_rf(path)
        elif self.g.is_symlink(path) or self.g.exists(path):
            self.g.rm_f(path)


def as_tree(root):
    """A tree for ``root``: a host directory path or a tree already."""
    if isinstance(root, (HostTree, GuestfsTree)):
        return root
    if not isinstance(root, str) or not os.path.isdir(root):
        raise GuestError("guest root %s is not a directory" % root)
    return HostTree(root)


def guest_glob(tree, pattern):
    """Guest paths matching ``pattern`` (wildcards in the last component only)."""
    directory, name_pattern = os.path.split(pattern)
    # as glob(): a leading dot is matched only by a pattern that starts with one
    return sorted(directory.rstrip("/") + "/" + name for name in tree.listdir(directory)
                  if fnmatch.fnmatchcase(name, name_pattern)
                  and (not name.startswith(".") or name_pattern.startswith(".")))


def read_text(tree, path, limit=4 * 1024 * 1024):
    """Content of the guest file ``path`` or None when it is absent or not a regular file."""
    if not tree.is_file(path):
        return None
    return tree.read_bytes(path, limit).decode("utf-8", "replace")
