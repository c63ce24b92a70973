# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installing and removing Debian packages inside a guest through its chroot.

A guest's own resolver usually points at the old site's DNS (the seed how-to edited
resolv.conf by hand), so by default the host's resolv.conf stands in for it while apt runs,
and the guest's file is put back afterwards.  Daemons must not start inside the chroot, so a
``policy-rc.d`` that forbids it is in place for the same time.  Downloads happen before any
package is unpacked, so an unreachable mirror fails before the guest is touched.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil

POLICY_RC_D = "/usr/sbin/policy-rc.d"
APT_OPTIONS = ["-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=30", "-o", "Acquire::https::Timeout=30",
               "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef", "-q", "-y"]


class PackageError(RuntimeError):
    pass


class GuestApt:
    """``with GuestApt(editor, run, ...) as apt: apt.install([...])``"""

    def __init__(self, guest, run, resolv_conf="host", apt_proxy=None, apt_mirror=None):
        self.guest = guest
        self._run = run
        self.resolv_conf = resolv_conf
        self.apt_proxy = apt_proxy
        self.apt_mirror = apt_mirror
        self._restore = []
        self._updated = None

    # -- the temporary setup, always undone
    def __enter__(self):
        if self.guest.check_mode:
            return self
        try:
            self._swap_in(POLICY_RC_D, "#!/bin/sh\n# xen2kvm: no daemons start inside the chroot\nexit 101\n", 0o755)
            resolver = self._resolver_text()
            if resolver is not None:
                self._swap_in("/etc/resolv.conf", resolver, 0o644)
            if self.apt_mirror:
                self._swap_in("/etc/apt/sources.list.d/xen2kvm-mirror.list", self._mirror_list(), 0o644)
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, *exc):
        self._undo()
        return False

    def _resolver_text(self):
        if self.resolv_conf in (None, "", "guest"):
            return None
        source = "/etc/resolv.conf" if self.resolv_conf == "host" else self.resolv_conf
        with open(source) as handle:
            return handle.read()

    def _mirror_list(self):
        codename = self._codename()
        return "deb %s %s main\n" % (self.apt_mirror.rstrip("/"), codename)

    def _codename(self):
        for line in (self.guest.read("/etc/os-release") or self.guest.read("/usr/lib/os-release") or "").splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
        raise PackageError("cannot tell the guest's Debian codename for apt_mirror")

    def _swap_in(self, path, text, mode):
        """Put ``text`` at the guest's ``path`` for now; the original (or its absence) comes back."""
        host = self.guest.host_path(path, follow_last=False)
        saved = host + ".xen2kvm-saved"
        if os.path.lexists(host):
            os.rename(host, saved)
            self._restore.append((host, saved))
        else:
            self._restore.append((host, None))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "w") as handle:
            handle.write(text)
        os.chmod(host, mode)

    def _undo(self):
        while self._restore:
            host, saved = self._restore.pop()
            if os.path.lexists(host) or os.path.isdir(host):
                if os.path.isdir(host) and not os.path.islink(host):
                    shutil.rmtree(host)
                else:
                    os.unlink(host)
            if saved is not None:
                os.rename(saved, host)

    # -- apt
    def _env(self):
        env = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
        if self.apt_proxy:
            env.update(http_proxy=self.apt_proxy, https_proxy=self.apt_proxy)
        return env

    def _apt(self, args):
        return self._run(["apt-get"] + APT_OPTIONS + args, env=self._env(), check=False)

    def update(self):
        """apt-get update once; True when every index could be fetched."""
        if self._updated is None:
            result = self._apt(["update"])
            output = (result.stdout or "") + (result.stderr or "")
            self._updated = result.returncode == 0 and "Failed to fetch" not in output and "Err:" not in output
            self._update_output = output
        return self._updated

    def can_install(self, packages):
        """Download (only) ``packages``; True when all of them are at hand, nothing unpacked.
        Check mode assumes yes without going to the network."""
        if self.guest.check_mode:
            return True
        if not self.update():
            return False
        return self._apt(["install", "--download-only", "--no-install-recommends"] + list(packages)).returncode == 0

    def install(self, packages, why):
        if not self.can_install(packages):
            raise PackageError("cannot download %s in the guest: its package mirror is unreachable (%s). Set "
                               "apt_mirror or apt_proxy, or resolv_conf, and run again; nothing was installed."
                               % (", ".join(packages), self._last_error()))
        result = self.guest.run(["apt-get"] + APT_OPTIONS + ["install", "--no-install-recommends"] + list(packages),
                                why, env=self._env(), check=False)
        if result is not None and result.returncode != 0:
            raise PackageError("installing %s in the guest failed: %s" % (", ".join(packages),
                                                                          (result.stderr or result.stdout)[-2000:]))

    def purge(self, packages, why):
        result = self.guest.run(["dpkg", "--purge"] + list(packages), why, check=False)
        if result is not None and result.returncode != 0:
            raise PackageError("removing %s from the guest failed: %s" % (", ".join(packages),
                                                                          (result.stderr or result.stdout)[-2000:]))

    def _last_error(self):
        lines = [line for line in getattr(self, "_update_output", "").splitlines()
                 if line.startswith(("Err", "W:", "E:"))]
        return "; ".join(lines[-3:]) or "apt-get failed"
