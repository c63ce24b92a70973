# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installing and removing Debian packages inside a guest through its chroot.

A guest's own resolver usually points at the old site's DNS (the seed how-to edited
resolv.conf by hand), so by default the host's resolv.conf stands in for it while apt runs,
and the guest's file is put back afterwards.  Daemons must not start inside the chroot, so a
``policy-rc.d`` that forbids it is in place for the same time.  Both are temporary changes
kept in the guest's journal (see journal.py), so a run killed with SIGKILL is undone by the
next one.

Download first: every package a run needs is downloaded (``fetch_first``) before the first
change to the guest, so an unreachable mirror fails while the guest is still as it was.

Where packages come from, and so whose errors count:

* the guest's own sources (default);
* ``apt_mirror``: that mirror *instead of* the guest's sources, through a sources list and
  package lists of our own (``Dir::Etc::SourceList``, ``Dir::State::Lists``), so a dead
  entry in the guest's sources.list neither fails the run nor hides a dead mirror;
* ``package_dir``: a directory of ``.deb`` files on the host (air-gapped KVM hosts), copied
  into the guest as a local flat repository with an index of our own; apt never goes to the
  network then, and a package or dependency missing from the directory fails before any change.

Old releases: a guest without ``VERSION_CODENAME`` (Debian 8) gets its codename from
``VERSION`` or /etc/debian_version; sources on an archive mirror (archive.debian.org) get
``Acquire::Check-Valid-Until=false``, as their Release files expired long ago.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.journal import POLICY_MARK, STATE_DIR, Journal

POLICY_RC_D = "/usr/sbin/policy-rc.d"
APT_OPTIONS = ["-o", "Acquire::Retries=1", "-o", "Acquire::http::Timeout=30", "-o", "Acquire::https::Timeout=30",
               "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef",
               # no fsync per unpacked file: the guest is offline and its filesystems are synced when
               # they are unmounted; under emulation each fsync costs seconds
               "-o", "Dpkg::Options::=--force-unsafe-io", "-q", "-y"]
PRIVATE_APT = STATE_DIR + "/apt"
LOCAL_REPO = PRIVATE_APT + "/repo"
DEBIAN_CODENAMES = {"6": "squeeze", "7": "wheezy", "8": "jessie", "9": "stretch", "10": "buster",
                    "11": "bullseye", "12": "bookworm", "13": "trixie", "14": "forky"}
# archive.debian.org, snapshot.debian.org, a local ".../debian-archive/": Release files long expired.
# archive.ubuntu.com is Ubuntu's current main mirror, not an archive.
_ARCHIVE_MIRROR = re.compile(r"^[a-z+]+://(?![^/]*archive\.ubuntu\.com)\S*(archive|snapshot)", re.IGNORECASE)
_APT_PROBLEM = re.compile(r"^(Err|E:|W: Failed|W: GPG|W: Some index|W: The repository)")


class PackageError(RuntimeError):
    pass


def guest_codename(read):
    """The guest's release codename; ``read(path)`` gives a guest file's text or None."""
    fields = {}
    for line in (read("/etc/os-release") or read("/usr/lib/os-release") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').strip("'")
    for key in ("VERSION_CODENAME", "UBUNTU_CODENAME"):
        if fields.get(key):
            return fields[key]
    version = fields.get("VERSION", "")
    match = re.search(r"\(([a-z]+)\)", version)  # Debian 8: VERSION="8 (jessie)"
    if match:
        return match.group(1)
    match = re.search(r",\s*([A-Za-z]+)", version)  # Ubuntu 14.04: VERSION="14.04.6 LTS, Trusty Tahr"
    if match:
        return match.group(1).lower()
    debian_version = (read("/etc/debian_version") or "").strip()
    major = debian_version.split(".", 1)[0]
    if major in DEBIAN_CODENAMES:
        return DEBIAN_CODENAMES[major]
    match = re.match(r"^([a-z]+)/sid$", debian_version)  # testing: "jessie/sid"
    if match:
        return match.group(1)
    if fields.get("VERSION_ID", "").split(".", 1)[0] in DEBIAN_CODENAMES and fields.get("ID") == "debian":
        return DEBIAN_CODENAMES[fields["VERSION_ID"].split(".", 1)[0]]
    raise PackageError("cannot tell the guest's release codename (no VERSION_CODENAME in /etc/os-release, "
                       "none in VERSION, /etc/debian_version says %r); cannot use apt_mirror"
                       % (debian_version or "nothing"))


def source_uris(text):
    """The URIs of a sources.list (one-line style) or .sources (deb822) text."""
    uris = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        words = re.sub(r"\[[^\]]*\]", " ", line).split()
        if words[:1] in (["deb"], ["deb-src"]) and len(words) > 1:
            uris.append(words[1])
        elif line.lower().startswith("uris:"):
            uris.extend(line.split(":", 1)[1].split())
    return uris


def on_archive_mirror(uris):
    return any(_ARCHIVE_MIRROR.match(uri) for uri in uris)


def packages_needed(facts, enabled, firmware="bios"):
    """(required, optional) packages a fixup run installs: fetched before anything changes."""
    required, optional = [], []
    bootloader = facts.get("bootloader") or {}
    if "bootloader" in enabled and firmware == "uefi" and "grub-efi-amd64" not in (bootloader.get("grub_packages") or []):
        required.append("grub-efi-amd64")
    elif "bootloader" in enabled and firmware != "uefi" and not bootloader.get("grub2_installed"):
        required.append("grub-pc")
    if "guest_agent" in enabled and not facts.get("qemu_guest_agent"):
        optional.append("qemu-guest-agent")
    return required, optional


def unfinished_packages(status):
    """Packages dpkg left half-way (unpacked, half-configured, ...) in a dpkg status file."""
    unfinished = []
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        state = fields.get("Status", "").split()
        if len(state) == 3 and state[2] not in ("installed", "config-files", "not-installed"):
            unfinished.append(fields.get("Package", "?"))
    return unfinished


def packages_index(stanzas):
    """A flat repository's Packages file from (control text, file name, data) triples."""
    out = []
    for control, name, size, sha256, md5 in stanzas:
        out.append("%s\nFilename: ./%s\nSize: %d\nMD5sum: %s\nSHA256: %s\n"
                   % (control.strip("\n"), name, size, md5, sha256))
    return "\n".join(out)


def _digests(path):
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
            size += len(block)
    return size, sha256.hexdigest(), md5.hexdigest()


class GuestApt:
    """``with GuestApt(editor, run, ...) as apt: apt.install([...])``"""

    def __init__(self, guest, run, resolv_conf="host", apt_proxy=None, apt_mirror=None, package_dir=None):
        self.guest = guest
        self._run = run
        self.resolv_conf = resolv_conf
        self.apt_proxy = apt_proxy
        self.apt_mirror = apt_mirror
        self.package_dir = package_dir
        self.journal = None
        self._updated = None
        self._update_output = ""
        self._downloads = {}  # tuple of packages -> (ok, apt's complaint)
        self._private = False  # apt uses our sources list and lists only
        self._sources_text = ""
        self._extra_options = []

    # -- the temporary setup, always undone
    def __enter__(self):
        self._check_package_dir()
        if self.guest.check_mode:
            pending = Journal(self.guest.tree).pending()
            if pending:
                self.guest.warn("an earlier run was killed before it could undo its temporary changes (%s); "
                                "a real run puts them back first" % ", ".join(pending))
            return self
        self.journal = Journal(self.guest.tree)
        for path in self.journal.replay():
            self.guest.record("restore", path, "a temporary change left by an earlier run that was killed")
        try:
            self.journal.replace(POLICY_RC_D, "#!/bin/sh\n%s\nexit 101\n" % POLICY_MARK, 0o755)
            resolver = self._resolver_text()
            if resolver is not None:
                self.journal.replace("/etc/resolv.conf", resolver, 0o644)
            if self.package_dir:
                self._local_repository()
            elif self.apt_mirror:
                self._private_sources("deb %s %s main\n" % (self.apt_mirror.rstrip("/"), guest_codename(self.guest.read)))
            self._extra_options += self._valid_until_options()
            self._finish_interrupted_dpkg()
        except BaseException:
            self.journal.undo()
            raise
        return self

    def __exit__(self, *exc):
        if self.journal is not None:
            self.journal.undo()
        return False

    def _check_package_dir(self):
        if self.package_dir and not os.path.isdir(self.package_dir):
            raise PackageError("package_dir %s is not a directory" % self.package_dir)
        if self.package_dir and not self._debs():
            raise PackageError("package_dir %s holds no .deb files" % self.package_dir)

    def _debs(self):
        return sorted(name for name in os.listdir(self.package_dir)
                      if name.endswith(".deb") and os.path.isfile(os.path.join(self.package_dir, name)))

    def _resolver_text(self):
        if self.resolv_conf in (None, "", "guest"):
            return None
        source = "/etc/resolv.conf" if self.resolv_conf == "host" else self.resolv_conf
        try:
            with open(source) as handle:
                return handle.read()
        except OSError as exc:
            raise PackageError("resolv_conf %s cannot be read: %s" % (source, exc.strerror))

    def _private_sources(self, sources_list):
        """apt reads this list and keeps its package lists apart; the guest's are not used."""
        self.journal.add_directory(PRIVATE_APT)
        for sub in ("sources.list.d", "lists/partial"):
            self.guest.tree.makedirs(PRIVATE_APT + "/" + sub)
        self.guest.tree.write_bytes(PRIVATE_APT + "/sources.list", sources_list.encode("utf-8"), mode=0o644)
        self._private = True
        self._sources_text = sources_list

    def _local_repository(self):
        """Copy package_dir into the guest as a flat repository with a Packages index."""
        self._private_sources("deb [trusted=yes] file:%s ./\n" % LOCAL_REPO)
        tree = self.guest.tree
        tree.makedirs(LOCAL_REPO)
        stanzas = []
        for name in self._debs():
            source = os.path.join(self.package_dir, name)
            tree.upload(source, LOCAL_REPO + "/" + name)
            tree.chmod(LOCAL_REPO + "/" + name, 0o644)
            control = self._run(["dpkg-deb", "-f", LOCAL_REPO + "/" + name], check=False)
            if control.returncode != 0 or not control.stdout.strip():
                raise PackageError("%s in package_dir is not a Debian package: %s"
                                   % (name, (control.stderr or "").strip()))
            stanzas.append((control.stdout,) + (name,) + _digests(source))
        tree.write_bytes(LOCAL_REPO + "/Packages", packages_index(stanzas).encode("utf-8"), mode=0o644)

    def _guest_source_uris(self):
        uris = source_uris(self.guest.read("/etc/apt/sources.list") or "")
        for name in self.guest.listdir("/etc/apt/sources.list.d"):
            if name.endswith((".list", ".sources")):
                uris += source_uris(self.guest.read("/etc/apt/sources.list.d/" + name) or "")
        return uris

    def _valid_until_options(self):
        uris = source_uris(self._sources_text) if self._private else self._guest_source_uris()
        return ["-o", "Acquire::Check-Valid-Until=false"] if on_archive_mirror(uris) else []

    def _finish_interrupted_dpkg(self):
        """A run killed while dpkg worked leaves it interrupted; apt refuses until it is finished.
        Configured what was unpacked, reinstalled what was cut off half-way."""
        if not self._dpkg_unfinished():
            return
        self.guest.run(["dpkg", "--configure", "-a"], "finish what an interrupted dpkg left", env=self._env(),
                       check=False)
        broken = unfinished_packages(self.guest.read("/var/lib/dpkg/status") or "")
        if broken and not self.guest.listdir("/var/lib/dpkg/updates"):
            self.update()
            self.guest.run(["apt-get"] + self.apt_options() + ["install", "--reinstall", "--no-install-recommends"]
                           + broken, "reinstall what an interrupted dpkg left half-installed", env=self._env(),
                           check=False)
        if self._dpkg_unfinished():
            raise PackageError("dpkg in the guest was interrupted and could not be finished (%s); repair the guest's "
                               "packages (chroot into it, run dpkg --configure -a and apt-get -f install) and run "
                               "again" % (", ".join(unfinished_packages(self.guest.read("/var/lib/dpkg/status") or ""))
                                          or "its journal in /var/lib/dpkg/updates"))

    def _dpkg_unfinished(self):
        return bool(self.guest.listdir("/var/lib/dpkg/updates")
                    or unfinished_packages(self.guest.read("/var/lib/dpkg/status") or ""))

    # -- apt
    def _env(self):
        env = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
        if self.apt_proxy and not self.package_dir:
            env.update(http_proxy=self.apt_proxy, https_proxy=self.apt_proxy)
        return env

    def apt_options(self):
        options = list(APT_OPTIONS) + self._extra_options
        if self._private:
            options += ["-o", "Dir::Etc::SourceList=%s/sources.list" % PRIVATE_APT,
                        "-o", "Dir::Etc::SourceParts=%s/sources.list.d" % PRIVATE_APT,
                        "-o", "Dir::State::Lists=%s/lists" % PRIVATE_APT,
                        "-o", "APT::Get::List-Cleanup=false",
                        # the guest's own package cache stays as it is
                        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]
        return options

    def _apt(self, args):
        return self._run(["apt-get"] + self.apt_options() + args, env=self._env(), check=False)

    def update(self):
        """apt-get update once, of the sources in use; True when every index could be fetched."""
        if self._updated is None:
            result = self._apt(["update"])
            self._update_output = (result.stdout or "") + (result.stderr or "")
            self._updated = result.returncode == 0 and not any(
                _APT_PROBLEM.match(line) for line in self._update_output.splitlines())
        return self._updated

    def _download(self, packages):
        """Download (only) ``packages`` with what they depend on; nothing is unpacked."""
        key = tuple(sorted(packages))
        if key not in self._downloads:
            self.update()  # a source that failed matters only if the packages cannot be had
            result = self._apt(["install", "--download-only", "--no-install-recommends"] + list(key))
            output = (result.stdout or "") + (result.stderr or "")
            self._downloads[key] = (result.returncode == 0, output)
        return self._downloads[key][0]

    def fetch_first(self, required, optional=()):
        """Before the first change: every required package is at hand, or PackageError."""
        if self.guest.check_mode:
            return
        if required and not self._download(required):
            raise PackageError(self._cannot_download(required) + "; nothing was changed")
        for package in optional:
            self._download([package])

    def can_install(self, packages):
        """True when all of ``packages`` are at hand (downloaded), nothing unpacked.
        Check mode assumes yes without going to the network."""
        if self.guest.check_mode:
            return True
        return self._download(packages)

    def install(self, packages, why):
        if not self.can_install(packages):
            raise PackageError(self._cannot_download(packages) + "; nothing was installed")
        result = self.guest.run(["apt-get"] + self.apt_options() + ["install", "--no-install-recommends"]
                                + list(packages), why, env=self._env(), check=False)
        if result is not None and result.returncode != 0:
            raise PackageError("installing %s in the guest failed: %s" % (", ".join(packages),
                                                                          (result.stderr or result.stdout)[-2000:]))

    def purge(self, packages, why):
        result = self.guest.run(["dpkg", "--purge"] + list(packages), why, check=False)
        if result is not None and result.returncode != 0:
            raise PackageError("removing %s from the guest failed: %s" % (", ".join(packages),
                                                                          (result.stderr or result.stdout)[-2000:]))

    def _cannot_download(self, packages):
        names = ", ".join(packages)
        complaint = self._apt_complaint(packages)
        if self.package_dir:
            return ("package_dir %s does not hold %s with everything it depends on (%s); add the missing .deb "
                    "files" % (self.package_dir, names, complaint))
        where = "apt_mirror %s" % self.apt_mirror if self.apt_mirror else "the guest's package sources"
        return ("cannot download %s from %s, unreachable or incomplete (%s). Set apt_mirror, apt_proxy, "
                "resolv_conf or package_dir and run again" % (names, where, complaint))

    def _apt_complaint(self, packages):
        lines = [line.strip() for line in self._update_output.splitlines() if _APT_PROBLEM.match(line)]
        output = self._downloads.get(tuple(sorted(packages)), (True, ""))[1]
        lines += [line.strip() for line in output.splitlines()
                  if line.startswith("E:") or "but it is not installable" in line or "has no installation" in line]
        return "; ".join(lines[-6:]) or "apt-get failed"
