"""HostTree, guest_glob, read_text and GuestEditor over a HostTree, on small trees in tmp_path.

The trees hold what a hostile or just unusual guest has: absolute links that only make sense
inside the guest (``/etc -> /``), relative links climbing above the root, link chains
(``/sbin/init`` under usrmerge), dotfiles beside configuration.  The same methods over the
libguestfs appliance (GuestfsTree) are compared with these answers in
tests/integration/guestfs/test_appliance.py.  What test_fixups.py and test_guest_inspect.py
already prove (the fixups' own backups, resolve_guest_path alone) is not repeated here.
"""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import (
    HostTree,
    as_tree,
    guest_glob,
    read_text,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import (
    BACKUP_DIR,
    GUEST_LOG,
    GuestEditor,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError

TEMP_SUFFIX = ".xen2kvm-tmp"


def make_guest(tmp_path, files=None, links=None, log_dir=True):
    """A guest root at tmp_path/guest with ``files`` (path -> text) and ``links`` (path -> target)."""
    root = tmp_path / "guest"
    root.mkdir()
    for path, text in (files or {}).items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
    for path, target in (links or {}).items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, str(host))
    if log_dir:
        (root / "var/log").mkdir(parents=True, exist_ok=True)
    return root


def snapshot(root):
    """Everything observable of a tree: type, mode, content or link target of every entry."""
    seen = {}
    for directory, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            host = os.path.join(directory, name)
            st = os.lstat(host)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(host))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(host, "rb") as handle:
                    what = ("file", stat.S_IMODE(st.st_mode), handle.read())
            seen[os.path.relpath(host, str(root))] = what
    return seen


def temp_files(root):
    return [os.path.join(d, f) for d, _dirs, files in os.walk(str(root)) for f in files if f.endswith(TEMP_SUFFIX)]


# --------------------------------------------------------------------------- links stay inside

USRMERGE_LINKS = {
    "/bin": "usr/bin",
    "/sbin": "usr/sbin",
    "/lib": "usr/lib",
    "/usr/sbin/init": "../lib/systemd/systemd",
}


def test_link_chains_resolve_as_in_the_guest(tmp_path):
    root = make_guest(tmp_path, {"/usr/lib/systemd/systemd": "ELF\n", "/usr/bin/dash": "sh\n"},
                      dict(USRMERGE_LINKS, **{"/usr/bin/sh": "/usr/bin/dash"}))
    tree = HostTree(str(root))
    assert tree.realpath("/sbin/init") == "/usr/lib/systemd/systemd"
    assert tree.realpath("/bin/sh") == "/usr/bin/dash"
    assert tree.realpath("/") == "/" and tree.realpath("/../..") == "/"
    assert tree.is_link("/sbin/init") and tree.readlink("/sbin/init") == "../lib/systemd/systemd"
    assert tree.is_file("/sbin/init") and tree.read_bytes("/sbin/init") == b"ELF\n"
    assert tree.size("/sbin/init") == 4
    assert stat.S_ISLNK(tree.mode("/sbin/init")) and stat.S_ISREG(tree.mode("/usr/lib/systemd/systemd"))
    assert tree.is_dir("/lib/systemd") and not tree.is_dir("/sbin/init")


def test_hostile_absolute_links_never_reach_the_host(tmp_path):
    """/etc -> / and a link naming a real host file: both end inside the guest."""
    host_secret = tmp_path / "host-secret"
    host_secret.write_text("the host's\n")
    root = make_guest(tmp_path, {"/passwd": "guest passwd\n"},
                      {"/etc": "/", "/escape": "../../../../" + str(host_secret),
                       "/absolute": str(host_secret)})
    tree = HostTree(str(root))
    assert tree.read_bytes("/etc/passwd") == b"guest passwd\n"
    assert tree.realpath("/etc/etc/etc/passwd") == "/passwd"
    for link in ("/escape", "/absolute"):
        assert tree.lexists(link) and not tree.exists(link), link  # dangling inside the guest
        assert tree.realpath(link) == str(host_secret)  # the same path, but the guest's
        with pytest.raises(FileNotFoundError):
            tree.read_bytes(link)
    tree.write_bytes("/etc/x2k-probe", b"inside\n")
    tree.append("/etc/x2k-probe", b"more\n")
    tree.makedirs("/etc/x2k-dir")
    tree.symlink("/etc/x2k-probe", "/etc/x2k-link")
    assert (root / "x2k-probe").read_bytes() == b"inside\nmore\n"
    assert (root / "x2k-dir").is_dir() and os.readlink(str(root / "x2k-link")) == "/etc/x2k-probe"
    tree.remove("/etc/x2k-dir")
    tree.remove("/etc/x2k-probe")
    assert not (root / "x2k-probe").exists() and not (root / "x2k-dir").exists()
    assert host_secret.read_text() == "the host's\n"
    assert not os.path.lexists("/x2k-probe") and not os.path.lexists("/x2k-dir")


def test_link_loop_is_an_error_not_a_hang(tmp_path):
    root = make_guest(tmp_path, links={"/a": "/b", "/b": "/a"})
    tree = HostTree(str(root))
    with pytest.raises(GuestError, match="too many levels of symbolic links"):
        tree.exists("/a/x")
    assert tree.is_link("/a")  # the link itself is still readable


# --------------------------------------------------------------------------- glob and read_text

def test_glob_skips_dotfiles_unless_asked_for(tmp_path):
    root = make_guest(tmp_path, {
        "/etc/network/interfaces.d/eth0": "a\n",
        "/etc/network/interfaces.d/eth1": "b\n",
        "/etc/network/interfaces.d/.eth0.xen2kvm-tmp": "half\n",
        "/etc/network/interfaces.d/.hidden": "c\n",
    })
    tree = HostTree(str(root))
    directory = "/etc/network/interfaces.d"
    assert guest_glob(tree, directory + "/*") == [directory + "/eth0", directory + "/eth1"]
    assert guest_glob(tree, directory + "/eth[1-9]") == [directory + "/eth1"]
    assert guest_glob(tree, directory + "/?eth0*") == []  # the ? does not match a leading dot
    assert guest_glob(tree, directory + "/.*") == [directory + "/.eth0.xen2kvm-tmp", directory + "/.hidden"]
    assert guest_glob(tree, directory + "/") == []
    assert guest_glob(tree, "/etc/absent/*") == [] and guest_glob(tree, directory + "/eth0/*") == []


def test_glob_follows_directory_links_inside_the_guest(tmp_path):
    root = make_guest(tmp_path, {"/srv/netplan/01.yaml": "x\n", "/srv/netplan/02.yml": "y\n"},
                      {"/etc/netplan": "/srv/netplan", "/etc/hostile": "/"})
    tree = HostTree(str(root))
    # the guest path as asked for, not the link's target
    assert guest_glob(tree, "/etc/netplan/*.yaml") == ["/etc/netplan/01.yaml"]
    assert "/etc/hostile/srv" in guest_glob(tree, "/etc/hostile/*")
    assert "/etc/hostile/home" not in guest_glob(tree, "/etc/hostile/*")  # the host's /home
    assert guest_glob(tree, "/*") == ["/etc", "/srv", "/var"]


def test_read_text_only_reads_regular_files(tmp_path):
    root = make_guest(tmp_path, {"/etc/os-release": "ID=debian\n", "/etc/bad": "caf\xe9\n"},
                      {"/etc/dangling": "/nowhere", "/etc/os": "os-release"})
    (root / "etc/bad").write_bytes(b"caf\xe9\n")
    tree = HostTree(str(root))
    assert read_text(tree, "/etc/os") == "ID=debian\n"
    assert read_text(tree, "/etc/os-release", limit=3) == "ID="
    assert read_text(tree, "/etc/bad") == "caf\ufffd\n"
    assert read_text(tree, "/etc/dangling") is None and read_text(tree, "/etc") is None
    assert read_text(tree, "/etc/absent") is None


def test_as_tree_takes_a_directory_or_a_tree(tmp_path):
    root = make_guest(tmp_path)
    tree = HostTree(str(root))
    assert as_tree(tree) is tree
    assert isinstance(as_tree(str(root)), HostTree) and as_tree(str(root)).root == str(root)
    for bad in (str(tmp_path / "absent"), None):
        with pytest.raises(GuestError, match="is not a directory"):
            as_tree(bad)


# --------------------------------------------------------------------------- changing files

def test_write_replaces_through_a_hidden_temp_and_a_rename(tmp_path):
    root = make_guest(tmp_path, {"/etc/fstab": "old\n"})
    (root / "etc/fstab").chmod(0o600)
    tree = HostTree(str(root))
    with open(str(root / "etc/fstab"), "rb") as reader:  # a program holding the old file open
        tree.write_bytes("/etc/fstab", b"new\n", durable=True)
        assert reader.read() == b"old\n"  # renamed over, never truncated in place
    assert (root / "etc/fstab").read_bytes() == b"new\n"
    assert os.listdir(str(root / "etc")) == ["fstab"] and temp_files(root) == []
    # a rename gives the new file the temp's mode: the caller (the editor) keeps the old one
    assert stat.S_IMODE(tree.mode("/etc/fstab")) == 0o666 & ~current_umask()
    tree.write_bytes("/etc/fstab", b"newer\n", mode=0o640)
    assert stat.S_IMODE(tree.mode("/etc/fstab")) == 0o640
    tree.chmod("/etc/fstab", 0o600)
    assert stat.S_IMODE(tree.mode("/etc/fstab")) == 0o600


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_replaces_a_final_link_itself(tmp_path):
    """follow_last=False: the tree replaces the link (the editor resolves it first when it wants
    the target changed; see test_editor_writes_through_a_link)."""
    root = make_guest(tmp_path, {"/etc/real": "target\n"}, {"/etc/link": "real"})
    HostTree(str(root)).write_bytes("/etc/link", b"file now\n")
    assert not (root / "etc/link").is_symlink() and (root / "etc/real").read_text() == "target\n"


FAILING_WRITE = textwrap.dedent("""
    import resource, signal, sys
    sys.path[:0] = sys.argv[2].split(":")
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import HostTree
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # as a full disk would
    try:
        HostTree(sys.argv[1]).write_bytes("/etc/fstab", b"x" * (1024 * 1024))
    except OSError as exc:
        print("failed:", exc.strerror)
""")


def test_failed_write_leaves_the_file_and_no_temp(tmp_path):
    root = make_guest(tmp_path, {"/etc/fstab": "old\n"})
    proc = subprocess.run([sys.executable, "-c", FAILING_WRITE, str(root), ":".join(sys.path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("failed:"), proc.stdout + proc.stderr
    assert (root / "etc/fstab").read_text() == "old\n"
    assert temp_files(root) == []


def test_remove_takes_files_links_and_trees(tmp_path):
    root = make_guest(tmp_path, {"/srv/keep/data": "keep\n", "/etc/x/y/z": "z\n", "/etc/file": "f\n"},
                      {"/etc/dirlink": "/srv/keep", "/etc/dangling": "/nowhere"})
    tree = HostTree(str(root))
    for path in ("/etc/dirlink", "/etc/dangling", "/etc/file", "/etc/x", "/etc/absent"):
        tree.remove(path)
        assert not tree.lexists(path), path
    assert (root / "srv/keep/data").read_text() == "keep\n"  # a link to a directory goes, not its files
    assert os.listdir(str(root / "etc")) == []


def test_copy_keeps_links_mode_and_times_rename_moves(tmp_path):
    root = make_guest(tmp_path, {"/etc/secret": "s\n"}, {"/etc/link": "/etc/secret"})
    (root / "etc/secret").chmod(0o600)
    os.utime(str(root / "etc/secret"), (1000000000, 1000000000))
    tree = HostTree(str(root))
    tree.copy("/etc/secret", "/etc/secret.copy")
    tree.copy("/etc/link", "/etc/link.copy")
    st = os.stat(str(root / "etc/secret.copy"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1000000000
    assert tree.is_link("/etc/link.copy") and tree.readlink("/etc/link.copy") == "/etc/secret"
    tree.rename("/etc/secret.copy", "/etc/moved")
    assert tree.read_bytes("/etc/moved") == b"s\n" and not tree.lexists("/etc/secret.copy")
    upload = tmp_path / "upload"
    upload.write_bytes(b"from the host\n")
    tree.upload(str(upload), "/etc/uploaded")
    assert tree.read_bytes("/etc/uploaded") == b"from the host\n"


def test_listdir_and_files_under(tmp_path):
    root = make_guest(tmp_path, {
        "/usr/lib/modules/6.1.0-x/kernel/drivers/block/virtio_blk.ko.xz": "",
        "/usr/lib/modules/6.1.0-x/kernel/drivers/net/virtio_net.ko.xz": "",
        "/usr/lib/modules/6.1.0-x/modules.dep": "",
        "/usr/src/linux-headers-6.1.0-x/Makefile": "",
    }, dict(USRMERGE_LINKS, **{"/usr/lib/modules/6.1.0-x/build": "../../../src/linux-headers-6.1.0-x",
                               "/usr/lib/modules/6.1.0-x/dangling": "/nowhere"}))
    tree = HostTree(str(root))
    assert tree.listdir("/lib/modules") == ["6.1.0-x"]
    assert tree.listdir("/lib/modules/6.1.0-x/modules.dep") == [] and tree.listdir("/absent") == []
    # files (and dangling links) only, by name; a link to a directory is not descended into
    expected = ["dangling", "modules.dep", "virtio_blk.ko.xz", "virtio_net.ko.xz"]
    assert sorted(tree.files_under("/lib/modules")) == expected
    assert tree.files_under("/absent") == []


# --------------------------------------------------------------------------- the editor over a HostTree

def test_editor_backs_up_the_original_once_and_logs_every_change(tmp_path):
    root = make_guest(tmp_path, {"/etc/default/grub": "GRUB_CMDLINE_LINUX=console=hvc0\n",
                                 GUEST_LOG: "2020-01-01T00:00:00Z [earlier] kept\n"})
    (root / "etc/default/grub").chmod(0o600)
    guest = GuestEditor(HostTree(str(root)))
    guest.fixup = "console"
    assert guest.write("/etc/default/grub", "GRUB_CMDLINE_LINUX=console=ttyS0\n", "serial console")
    assert guest.write("/etc/default/grub", "GRUB_CMDLINE_LINUX=console=tty0\n", "again")
    assert not guest.write("/etc/default/grub", "GRUB_CMDLINE_LINUX=console=tty0\n", "unchanged")
    backup = root / BACKUP_DIR.lstrip("/") / "etc/default/grub"
    assert backup.read_text() == "GRUB_CMDLINE_LINUX=console=hvc0\n"  # the original, not the first edit
    assert stat.S_IMODE(os.stat(str(backup.parent)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(root / "etc/default/grub")).st_mode) == 0o600  # mode kept
    log = (root / GUEST_LOG.lstrip("/")).read_text().splitlines()
    assert log[0] == "2020-01-01T00:00:00Z [earlier] kept" and len(log) == 3
    assert all(line.endswith(end) for line, end in zip(log[1:], (
        "[console] edited /etc/default/grub: serial console", "[console] edited /etc/default/grub: again")))
    assert [c["action"] for c in guest.changes] == ["edit", "edit"]
    assert temp_files(root) == []


def test_editor_creates_files_and_the_log_with_their_modes(tmp_path):
    root = make_guest(tmp_path)
    guest = GuestEditor(str(root))
    guest.fixup = "firstboot"
    assert guest.write("/etc/new/dir/job", "run\n", "first boot job", mode=0o755)
    assert stat.S_IMODE(os.stat(str(root / "etc/new/dir/job")).st_mode) == 0o755
    assert not (root / BACKUP_DIR.lstrip("/")).exists()  # nothing to back up
    assert stat.S_IMODE(os.stat(str(root / GUEST_LOG.lstrip("/"))).st_mode) == 0o640
    assert "[firstboot] created /etc/new/dir/job: first boot job" in (root / GUEST_LOG.lstrip("/")).read_text()


def test_editor_without_var_log_changes_but_writes_no_log(tmp_path):
    root = make_guest(tmp_path, {"/etc/hosts": "a\n"}, log_dir=False)
    guest = GuestEditor(str(root))
    assert guest.write("/etc/hosts", "b\n", "test")
    assert (root / "etc/hosts").read_text() == "b\n" and not (root / "var/log").exists()


def test_editor_writes_through_a_link(tmp_path):
    root = make_guest(tmp_path, {"/run/systemd/resolve/stub-resolv.conf": "nameserver 127.0.0.53\n"},
                      {"/etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf",
                       "/etc/dangling.conf": "/nowhere/x"})
    guest = GuestEditor(str(root))
    assert guest.write("/etc/resolv.conf", "nameserver 192.0.2.53\n", "test")
    assert os.readlink(str(root / "etc/resolv.conf")) == "../run/systemd/resolve/stub-resolv.conf"
    assert (root / "run/systemd/resolve/stub-resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert (root / BACKUP_DIR.lstrip("/") / "run/systemd/resolve/stub-resolv.conf").is_file()
    assert guest.write("/etc/dangling.conf", "now a file\n", "test")  # a dangling link is replaced
    assert (root / "etc/dangling.conf").read_text() == "now a file\n"
    assert not (root / "etc/dangling.conf").is_symlink() and not (root / "nowhere").exists()


def test_editor_remove_backs_up_files_not_links(tmp_path):
    root = make_guest(tmp_path, {"/etc/udev/rules.d/70-persistent-net.rules": "eth0\n"},
                      {"/etc/systemd/system/getty.target.wants/getty@hvc0.service": "/lib/systemd/x"})
    guest = GuestEditor(str(root))
    assert guest.remove("/etc/udev/rules.d/70-persistent-net.rules", "test")
    assert guest.remove("/etc/systemd/system/getty.target.wants/getty@hvc0.service", "test")
    assert not guest.remove("/etc/absent", "test")
    backups = root / BACKUP_DIR.lstrip("/")
    assert (backups / "etc/udev/rules.d/70-persistent-net.rules").read_text() == "eth0\n"
    assert not (backups / "etc/systemd").exists()
    assert [c["action"] for c in guest.changes] == ["remove", "remove"]


def test_check_mode_changes_nothing_at_all(tmp_path):
    root = make_guest(tmp_path, {"/etc/fstab": "/dev/xvda1 / ext4 defaults 0 1\n", "/etc/inittab": "hvc0\n",
                                 GUEST_LOG: "earlier\n", "/etc/network/interfaces.d/eth0.xen2kvm": "old\n"},
                      {"/etc/hvc0": "/dev/null"})
    before = snapshot(root)
    calls = []
    guest = GuestEditor(HostTree(str(root)), check_mode=True, run=lambda *a, **k: calls.append(a))
    guest.fixup = "devices"
    assert guest.write("/etc/fstab", "/dev/vda1 / ext4 defaults 0 1\n", "rename")
    assert guest.write("/etc/new", "x\n", "create")
    assert guest.remove("/etc/inittab", "remove")
    assert guest.symlink("/dev/ttyS0", "/etc/hvc0", "relink")
    assert guest.run(["update-initramfs", "-u"], "rebuild") is None
    assert guest.relocate_legacy_backups() == ["/etc/network/interfaces.d/eth0.xen2kvm"]
    assert not guest.restore_backup("/etc/fstab", "restore")
    assert snapshot(root) == before and calls == []
    assert [c["action"] for c in guest.changes] == ["edit", "create", "remove", "symlink", "run", "move"]
    assert guest.diffs[0]["before"].startswith("/dev/xvda1") and guest.diffs[1]["before"] == ""


def test_paths_under_lists_files_links_and_directories_without_following_links(tmp_path):
    root = tmp_path / "root"
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "etc/default/grub.xen2kvm").write_text("old\n")
    (root / "etc/default/grub.d/serial.cfg").write_text("x\n")
    (root / "elsewhere").mkdir()
    (root / "elsewhere/hidden").write_text("x\n")
    os.symlink("../elsewhere", str(root / "etc/linked"))
    assert HostTree(str(root)).paths_under("/etc") == [
        "/etc/default", "/etc/default/grub.d", "/etc/default/grub.d/serial.cfg", "/etc/default/grub.xen2kvm",
        "/etc/linked"]
