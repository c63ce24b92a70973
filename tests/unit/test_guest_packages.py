"""GuestApt and the journal of temporary guest changes over a fake guest root (issue 7 items 11-13).

Debian 8 guests cannot be built here (no jessie mirror is reachable), so old releases are
guest trees with the files such a guest has."""

import os
import shutil
import subprocess

import pytest

from fake_tree import fake_guest_root

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest import journal as journal_mod
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest import packages
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.journal import Journal
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt, PackageError

JESSIE_OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 8 (jessie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="8"\n'
                     'VERSION="8 (jessie)"\nID=debian\nHOME_URL="http://www.debian.org/"\n')
GUEST_SOURCES = "deb http://192.0.2.80/debian jessie main\n"


def guest_root(tmp_path, files):
    return fake_guest_root(tmp_path, files, ("var/lib/dpkg", "usr/sbin", "var/log"))


def snapshot(root):
    """Every file and symlink of the tree, with content or target."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as handle:
                    found[rel] = handle.read()
    return found


def reader(files):
    return files.get


def test_codename_of_old_and_new_releases():
    assert packages.guest_codename(reader({"/etc/os-release": JESSIE_OS_RELEASE})) == "jessie"
    assert packages.guest_codename(reader({"/etc/os-release": "ID=debian\nVERSION_CODENAME=bookworm\n"})) == "bookworm"
    assert packages.guest_codename(reader({"/etc/debian_version": "8.11\n"})) == "jessie"
    assert packages.guest_codename(reader({"/etc/debian_version": "7.11\n"})) == "wheezy"
    assert packages.guest_codename(reader({"/etc/debian_version": "stretch/sid\n"})) == "stretch"
    assert packages.guest_codename(reader({"/etc/os-release": 'NAME="Ubuntu"\nVERSION="14.04.6 LTS, Trusty Tahr"\n'
                                                              "ID=ubuntu\n"})) == "trusty"
    with pytest.raises(PackageError, match="codename"):
        packages.guest_codename(reader({"/etc/os-release": "ID=debian\n"}))


def test_archive_mirrors_and_source_uris():
    text = ("# old site\ndeb [arch=amd64] http://archive.debian.org/debian jessie main\n"
            "deb-src http://deb.debian.org/debian bookworm main\n")
    assert packages.source_uris(text) == ["http://archive.debian.org/debian", "http://deb.debian.org/debian"]
    assert packages.source_uris("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n") == \
        ["http://deb.debian.org/debian"]
    assert packages.on_archive_mirror(["http://archive.debian.org/debian"])
    assert packages.on_archive_mirror(["http://mirror.example/debian-archive/debian"])
    assert not packages.on_archive_mirror(["http://deb.debian.org/debian"])
    assert not packages.on_archive_mirror(["http://de.archive.ubuntu.com/ubuntu"])


def test_packages_needed_before_any_change():
    facts = {"bootloader": {"grub2_installed": False}, "qemu_guest_agent": False}
    everything = {"bootloader", "guest_agent"}
    assert packages.packages_needed(facts, everything) == (["grub-pc"], ["qemu-guest-agent"])
    # a UEFI guest needs grub-efi-amd64 (the efi fixup installs it) unless it has it already
    assert packages.packages_needed(facts, everything, firmware="uefi") == (["grub-efi-amd64"], ["qemu-guest-agent"])
    efi_facts = {"bootloader": {"grub_packages": ["grub-efi-amd64", "grub-efi-amd64-bin"]}, "qemu_guest_agent": True}
    assert packages.packages_needed(efi_facts, everything, firmware="uefi") == ([], [])
    assert packages.packages_needed({"bootloader": {"grub2_installed": True}, "qemu_guest_agent": True},
                                    everything) == ([], [])
    assert packages.packages_needed(facts, set()) == ([], [])


def test_unfinished_packages_in_dpkg_status():
    status = ("Package: grub-pc\nStatus: install ok unpacked\nVersion: 2.06\n\n"
              "Package: bash\nStatus: install ok installed\n\nPackage: old\nStatus: deinstall ok config-files\n")
    assert packages.unfinished_packages(status) == ["grub-pc"]


def test_apt_mirror_replaces_the_guest_sources_of_an_old_release(tmp_path):
    """Debian 8: no VERSION_CODENAME, an archive mirror with an expired Release file."""
    resolver = tmp_path / "resolv.conf"
    resolver.write_text("nameserver 127.0.0.1\n")
    root = guest_root(tmp_path / "guest", {"/etc/os-release": JESSIE_OS_RELEASE,
                                           "/etc/apt/sources.list": GUEST_SOURCES,
                                           "/etc/resolv.conf": "nameserver 192.0.2.1\n"})
    before = snapshot(root)
    guest = GuestEditor(root)
    with GuestApt(guest, None, resolv_conf=str(resolver), apt_mirror="http://archive.debian.org/debian/") as apt:
        private = os.path.join(root, "var/lib/xen2kvm/apt")
        with open(os.path.join(private, "sources.list")) as handle:
            assert handle.read() == "deb http://archive.debian.org/debian jessie main\n"
        options = apt.apt_options()
        assert "Acquire::Check-Valid-Until=false" in options
        assert "Dir::Etc::SourceList=/var/lib/xen2kvm/apt/sources.list" in options
        assert "Dir::State::Lists=/var/lib/xen2kvm/apt/lists" in options
        assert os.path.isdir(os.path.join(private, "lists/partial"))
        assert open(os.path.join(root, "etc/resolv.conf")).read() == "nameserver 127.0.0.1\n"
        assert open(os.path.join(root, "etc/apt/sources.list")).read() == GUEST_SOURCES  # not used, not changed
    assert snapshot(root) == before


def test_guest_sources_on_an_archive_mirror_accept_expired_release_files(tmp_path):
    root = guest_root(tmp_path, {"/etc/os-release": JESSIE_OS_RELEASE,
                                 "/etc/apt/sources.list": "deb http://archive.debian.org/debian jessie main\n"})
    with GuestApt(GuestEditor(root), None, resolv_conf="guest") as apt:
        assert "Acquire::Check-Valid-Until=false" in apt.apt_options()
        assert not [o for o in apt.apt_options() if o.startswith("Dir::")]


def test_a_killed_run_is_undone_by_the_next(tmp_path):
    """SIGKILL skips __exit__: the next GuestApt puts resolv.conf back and removes policy-rc.d."""
    resolver = tmp_path / "resolv.conf"
    resolver.write_text("nameserver 127.0.0.1\n")
    root = guest_root(tmp_path / "guest", {"/etc/os-release": JESSIE_OS_RELEASE,
                                           "/run/resolvconf/resolv.conf": "nameserver 192.0.2.1\n"})
    os.symlink("../run/resolvconf/resolv.conf", os.path.join(root, "etc/resolv.conf"))
    before = snapshot(root)
    killed = GuestApt(GuestEditor(root), None, resolv_conf=str(resolver), apt_mirror="http://127.0.0.1:9/debian")
    killed.__enter__()  # ... and never __exit__
    assert os.path.isfile(os.path.join(root, "usr/sbin/policy-rc.d"))
    assert not os.path.islink(os.path.join(root, "etc/resolv.conf"))
    assert Journal(root).pending() == ["/usr/sbin/policy-rc.d", "/etc/resolv.conf", "/var/lib/xen2kvm/apt",
                                       "/usr/sbin/policy-rc.d"]

    checking = GuestEditor(root, check_mode=True)
    with GuestApt(checking, None, resolv_conf=str(resolver)):
        pass
    assert "killed" in checking.warnings[0] and snapshot(root) != before

    guest = GuestEditor(root)
    with GuestApt(guest, None, resolv_conf="guest"):
        assert not os.path.exists(os.path.join(root, "var/lib/xen2kvm/apt"))
        assert os.readlink(os.path.join(root, "etc/resolv.conf")) == "../run/resolvconf/resolv.conf"
    assert [(c["action"], c["path"]) for c in guest.changes] == [
        ("restore", "/usr/sbin/policy-rc.d"), ("restore", "/etc/resolv.conf"), ("restore", "/var/lib/xen2kvm/apt")]
    assert snapshot(root) == before


def test_what_versions_without_a_journal_left_is_undone(tmp_path):
    root = guest_root(tmp_path, {"/etc/resolv.conf": "nameserver 127.0.0.1\n",
                                 "/etc/resolv.conf.xen2kvm-saved": "nameserver 192.0.2.1\n",
                                 "/usr/sbin/policy-rc.d": "#!/bin/sh\n%s\nexit 101\n" % journal_mod.POLICY_MARK,
                                 "/etc/apt/sources.list.d/xen2kvm-mirror.list": "deb http://127.0.0.1:9/ x main\n"})
    assert sorted(Journal(root).replay()) == sorted(journal_mod.LEGACY_TEMPORARY)
    assert snapshot(root) == {"etc/resolv.conf": b"nameserver 192.0.2.1\n"}


def test_package_dir_must_hold_debs(tmp_path):
    root = guest_root(tmp_path / "guest", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="holds no .deb files"):
        GuestApt(GuestEditor(root), None, package_dir=str(tmp_path / "empty")).__enter__()
    with pytest.raises(PackageError, match="not a directory"):
        GuestApt(GuestEditor(root), None, package_dir=str(tmp_path / "missing")).__enter__()
    assert not os.path.exists(os.path.join(root, "var/lib/xen2kvm"))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_local_repository_index_of_a_real_deb(tmp_path):
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text("Package: x2k-probe\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDepends: grub-common\nDescription: t\n")
    deb = tmp_path / "x2k-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, stdout=subprocess.PIPE, text=True).stdout
    size, sha256, md5 = packages._digests(str(deb))
    index = packages.packages_index([(control, deb.name, size, sha256, md5)])
    assert index.startswith("Package: x2k-probe\n") and "Depends: grub-common\n" in index
    assert "Filename: ./x2k-probe_1.0_all.deb\nSize: %d\n" % deb.stat().st_size in index
    assert "SHA256: %s\n" % sha256 in index
