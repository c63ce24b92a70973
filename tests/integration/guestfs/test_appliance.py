"""ApplianceSession and GuestfsTree against the real libguestfs appliance (root; slow).

Appliance launches are few (30-80 s each under TCG): one session, opened writable on a private
copy of the factory's deb12-pv disk, serves every test of the first part, in file order:

* the reads through GuestfsTree give the answers HostTree gives on the same disk (mounted
  read-only on the host before the appliance starts): link chains, os-release, big files,
  listings, globs, files_under;
* until make_writable() nothing can be written, by the tree or by a command; afterwards
  write/rename/copy/remove work, and the editor leaves its backup and log;
* run(): environment, stdin, separate stdout/stderr, exit codes, GuestCommandFailed; the command
  sees the appliance, not the host (init, hostname, /work, the host's disk);
* while the session is open no host mount or loop device serves the image (qemu holds it);
* after close nothing is left running, and the guest's /tmp on disk (read with debugfs) never
  saw the scratch space of run().

Then one launch each: a LUKS-encrypted guest is refused by guest_fixup naming LUKS, its bytes
unchanged; a session whose process gets SIGTERM shuts its appliance down (GuestInterrupted);
one whose process is SIGKILLed has its qemu killed by libguestfs' recovery process.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import ansible_run
import guest_factory
from processes import alive

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import (
    HostTree,
    guest_glob,
    read_text,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.appliance import (
    HAS_GUESTFS,
    SCRATCH,
    ApplianceSession,
    GuestCommandFailed,
    appliance_settings,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import (
    BACKUP_DIR,
    GUEST_LOG,
    GuestEditor,
)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import GuestError

pytestmark = [pytest.mark.slow, pytest.mark.root]

if os.geteuid() != 0:
    pytest.skip("needs root (the host view mounts the test guest over loop devices)", allow_module_level=True)
if not HAS_GUESTFS:
    pytest.skip("needs python3-guestfs", allow_module_level=True)
if not shutil.which("debugfs"):
    pytest.skip("needs debugfs (e2fsprogs)", allow_module_level=True)

MiB = 1024 * 1024
# Guest paths whose answers must match between the engines (links, chains, absent, big, dirs).
PATHS = ("/etc/os-release", "/usr/lib/os-release", "/sbin/init", "/bin/sh", "/lib", "/var/run",
         "/etc/fstab", "/etc/hostname", "/etc/absent", "/boot", "/vmlinuz", "/etc/resolv.conf",
         "/", "/etc/../etc/os-release", "/lib/../../etc/os-release")
LISTED = ("/", "/etc/apt", "/lib/modules", "/boot", "/var/run", "/etc/absent")
GLOBS = ("/etc/*.conf", "/etc/.*", "/boot/vmlinuz-*", "/boot/*", "/lib/modules/*", "/var/run/*", "/*")
UNDER = ("/lib/modules", "/etc/apt", "/var/run")
# A link into /proc: dangling on a tree that is not running.
LINK_PATHS = ("/etc/mtab",)


# --------------------------------------------------------------------------- the host's side

def loops_of(image):
    """Loop devices backed by ``image`` (by inode: a path can be renamed or deleted)."""
    st = os.stat(image)
    found = []
    for name in os.listdir("/sys/block"):
        backing = "/sys/block/%s/loop/backing_file" % name
        if not os.path.exists(backing):
            continue
        with open(backing) as handle:
            path = handle.read().strip()
        try:
            back = os.stat(path.replace(" (deleted)", ""))
        except OSError:
            continue
        if (back.st_dev, back.st_ino) == (st.st_dev, st.st_ino):
            found.append("/dev/" + name)
    return found


def host_state():
    mounts = set()
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields, tail = line.split(" - ", 1)
            fstype, source = tail.split()[:2]
            mounts.add((fields.split()[4], fstype, source))  # mount point, type, source
    out = subprocess.run(["losetup", "-J"], stdout=subprocess.PIPE, text=True, check=True).stdout
    loops = {(d["name"], d.get("back-file") or "") for d in json.loads(out)["loopdevices"]} if out.strip() else set()
    return mounts, loops


def processes_naming(text):
    """PIDs whose command line mentions ``text`` (a disk image: the appliance's qemu)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().decode("utf-8", "replace")
            with open("/proc/%s/stat" % pid) as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(pid))
    return found


def qemu_naming(image):
    """The appliance's qemu processes for ``image`` (not the Python processes naming it)."""
    found = []
    for pid in processes_naming(image):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                program = handle.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        except OSError:
            continue
        if "qemu" in os.path.basename(program):
            found.append(pid)
    return found


def debugfs(image, offset, request):
    proc = subprocess.run(["debugfs", "-R", request, "%s?offset=%d" % (image, offset)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return proc.stdout


def disk_names(image, offset, directory):
    """Names in a directory of the filesystem, read from disk without mounting it."""
    # ls -p: /inode/mode/uid/gid/name/size/
    return sorted(line.split("/")[5] for line in debugfs(image, offset, "ls -p " + directory).splitlines()
                  if line.startswith("/") and line.split("/")[5] not in (".", ".."))


def answers(tree, paths=PATHS, listed=LISTED, globs=GLOBS):
    """Everything the tree says about ``paths``, ``listed`` and ``globs``, comparable across engines."""
    seen = {}
    for path in paths:
        facts = {"lexists": tree.lexists(path), "exists": tree.exists(path), "is_file": tree.is_file(path),
                 "is_dir": tree.is_dir(path), "is_link": tree.is_link(path)}
        if facts["lexists"]:
            facts["mode"] = tree.mode(path)
        if facts["is_link"]:
            facts["readlink"] = tree.readlink(path)
        if facts["exists"]:
            try:
                facts["realpath"] = tree.realpath(path)
            except RuntimeError as exc:
                facts["realpath"] = "error: %s" % exc
        if facts["is_file"]:
            facts["size"] = tree.size(path)
            data = tree.read_bytes(path)
            facts["sha256"] = hashlib.sha256(data).hexdigest()
            facts["head"] = tree.read_bytes(path, limit=100)
            facts["text"] = read_text(tree, path, limit=2 * MiB)[:200]
        seen[path] = facts
    for path in listed:
        seen["listdir " + path] = tree.listdir(path)
    for pattern in globs:
        seen["glob " + pattern] = guest_glob(tree, pattern)
    return seen


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    try:
        return guest_factory.build_variant("deb12-pv", tmp_path_factory.mktemp("appliance"))
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def host_view(guest):
    """What HostTree answers on the disk mounted read-only on the host, before the appliance."""
    image = str(guest.disks[0])
    offset = guest.root_fs.offset
    with GuestMount([image], readonly=True, bind_host=False) as mount:
        tree = HostTree(mount.root)
        seen = answers(tree)
        links = answers(tree, LINK_PATHS, (), ())
        walked = {}
        for path in UNDER:
            names = []
            for _directory, dirnames, filenames in os.walk(tree.host(path)):
                names.extend(dirnames + filenames)
            walked[path] = {"files": sorted(tree.files_under(path)), "entries": sorted(names),
                            "paths": tree.paths_under(path)}
        kernel = sorted(guest_glob(tree, "/boot/vmlinuz-*"))[-1]
        hostname = tree.read_bytes("/etc/hostname")
    return {"answers": seen, "links": links, "under": walked, "kernel": kernel, "hostname": hostname,
            "tmp_on_disk": disk_names(image, offset, "/tmp"), "image": image, "offset": offset}


@pytest.fixture(scope="module")
def session(guest, host_view):
    """One appliance for the tests below, in file order; the last one closes it."""
    image = host_view["image"]
    before = host_state()
    started = time.monotonic()
    opened = ApplianceSession([image], readonly=False)
    opened.__enter__()
    opened.launch_seconds = round(time.monotonic() - started, 1)
    opened.host_before = before
    print("appliance launched in %.1f s (%s)" % (opened.launch_seconds, ",".join(appliance_settings()[1])))
    try:
        yield opened
    finally:
        opened.close(failing=True)


# --------------------------------------------------------------------------- reading

def test_make_writable_is_refused_on_a_read_only_session(tmp_path):
    with pytest.raises(GuestError, match="opened read-only"):
        ApplianceSession([str(tmp_path / "never-launched.raw")], readonly=True).make_writable()


def test_reads_match_the_host_view(session, host_view):
    assert session.root_partition == "xvda1" and session.root_volume.fs.type == "ext4"
    assert not session.writable
    seen = answers(session.tree)
    for key, expected in host_view["answers"].items():
        assert seen[key] == expected, key
    os_release = host_view["answers"]["/etc/os-release"]
    assert os_release["realpath"] == "/usr/lib/os-release" and "bookworm" in os_release["text"]
    assert host_view["answers"]["/sbin/init"]["realpath"] == "/usr/lib/systemd/systemd"
    assert host_view["answers"]["/var/run"]["readlink"] == "/run"  # an absolute link


def test_big_files_come_through_a_download(session, host_view):
    kernel = host_view["kernel"]
    size = session.tree.size(kernel)
    assert size > 2 * MiB  # past GUESTFS_READ_INLINE: read_bytes downloads it
    whole = session.tree.read_bytes(kernel)
    assert whole == host_view_bytes(host_view, kernel) and len(whole) == size
    assert session.tree.read_bytes(kernel, limit=3 * MiB) == whole[:3 * MiB]
    assert session.tree.read_bytes(kernel, limit=10) == whole[:10]


def host_view_bytes(host_view, path):
    """The file as on disk, read with debugfs (the host view's mount is gone by now)."""
    with_tmp = os.path.join(os.path.dirname(host_view["image"]), "debugfs-dump")
    try:
        debugfs(host_view["image"], host_view["offset"], "dump %s %s" % (path, with_tmp))
        with open(with_tmp, "rb") as handle:
            return handle.read()
    finally:
        if os.path.exists(with_tmp):
            os.unlink(with_tmp)


def test_files_under_lists_what_the_host_walk_finds(session, host_view):
    for path, walked in host_view["under"].items():
        if path == "/var/run":
            continue  # a link itself: test_files_under_follows_links_as_the_guest_does
        names = sorted(session.tree.files_under(path))
        # GuestfsTree names directories too (one find instead of a stat per entry)
        assert names == walked["entries"], path
        assert set(walked["files"]) <= set(names), path
    assert any(name.startswith("virtio_blk.ko") for name in session.tree.files_under("/lib/modules"))


def test_paths_under_lists_the_same_paths_as_the_host_walk(session, host_view):
    for path, walked in host_view["under"].items():
        if path == "/var/run":
            continue  # a link itself
        assert session.tree.paths_under(path) == walked["paths"], path
        assert all(p.startswith(path.rstrip("/") + "/") for p in walked["paths"]), path


def test_a_link_into_proc_reads_as_on_the_host(session, host_view):
    assert answers(session.tree, LINK_PATHS, (), ()) == host_view["links"]


def test_files_under_follows_links_as_the_guest_does(session, host_view):
    assert sorted(session.tree.files_under("/var/run")) == host_view["under"]["/var/run"]["entries"]


# --------------------------------------------------------------------------- read-only first

def test_nothing_can_be_written_before_make_writable(session):
    with pytest.raises(RuntimeError, match="Read-only file system"):
        session.tree.write_bytes("/etc/x2k-ro-probe", b"x\n")
    with pytest.raises(RuntimeError, match="Read-only file system"):
        session.tree.makedirs("/x2k-ro-dir")
    touched = session.run(["touch", "/etc/x2k-ro-probe"], check=False)
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr
    assert not session.tree.lexists("/etc/x2k-ro-probe")
    # the scratch tmpfs over /tmp is writable for commands, read-only guest or not
    wrote = session.run(["sh", "-c", "echo scratch > /tmp/x2k-scratch-probe && cat /tmp/x2k-scratch-probe"])
    assert wrote.stdout == "scratch\n"


# --------------------------------------------------------------------------- commands

def test_run_passes_env_stdin_and_separates_the_streams(session):
    value = "a b 'c' $HOME \"d\""
    assert session.run(["sh", "-c", 'printf %s "$X2K_VALUE"'], env={"X2K_VALUE": value}).stdout == value
    assert session.run(["sh", "-c", "echo $DEBIAN_FRONTEND $LC_ALL"]).stdout == "noninteractive C.UTF-8\n"
    assert session.run(["cat"], input="first\nsecond\n").stdout == "first\nsecond\n"
    assert session.run(["wc", "-c"], input=b"\x00\xff\n").stdout.strip() == "3"
    assert session.run(["cat"]).stdout == ""  # stdin is /dev/null, not a wait
    result = session.run(["sh", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert session.run(["grep", "-c", "bookworm", "/etc/os-release"]).stdout.strip() != "0"  # the guest's
    assert session.tree.listdir(SCRATCH) == []  # every run's files are gone


def test_run_check_raises_naming_the_command(session):
    with pytest.raises(GuestCommandFailed) as failed:
        session.run(["sh", "-c", "echo why >&2; exit 3"])
    assert failed.value.returncode == 3 and failed.value.stderr == "why\n"
    assert "sh -c echo why >&2; exit 3 failed in the guest (exit 3): why" in str(failed.value)
    with pytest.raises(GuestCommandFailed) as missing:
        session.run(["x2k-no-such-command", "--flag"])
    assert missing.value.returncode == 127 and "x2k-no-such-command --flag" in str(missing.value)


def test_run_honours_its_timeout(session):
    started = time.monotonic()
    with pytest.raises(GuestError):
        session.run(["sleep", "15"], timeout=2)
    assert time.monotonic() - started < 12


def test_commands_reach_the_first_disk_through_boot_disk(session):
    """grub-install gets boot_disk.  The appliance's kernel may enumerate its own disk before the
    guest's, and libguestfs translates the API's /dev/sda but not a command's arguments: the
    CI run of stop 17 installed to the appliance's disk that way ("cross-disk install")."""
    def head_through_a_command(device):
        return session.run(["sh", "-c", 'head -c 65536 "$1" | sha256sum', "sh", device]).stdout.split()[0]

    session.g.sync()
    kernel_name = session.run(["readlink", "-f", session.boot_disk]).stdout.strip()
    guest_head = hashlib.sha256(session.g.pread_device(session.g.list_devices()[0], 65536, 0)).hexdigest()
    assert head_through_a_command(session.boot_disk) == guest_head  # the API's name is translated
    others = session.run(["sh", "-c", "ls /sys/block | grep '^sd'"]).stdout.split()
    assert os.path.basename(kernel_name) in others, (kernel_name, others)
    appliance_disks = [name for name in others if "/dev/" + name != kernel_name]
    assert appliance_disks, others  # the appliance's own disk is there too, under another name
    for name in appliance_disks:
        assert head_through_a_command("/dev/" + name) != guest_head
    print("boot disk: %s -> %s; kernel disks: %s" % (session.boot_disk, kernel_name, " ".join(others)))


def test_commands_cannot_see_the_host(session, tmp_path):
    marker = tmp_path / ("x2k-host-marker-" + uuid.uuid4().hex)
    marker.write_text("host\n")
    with open("/proc/1/cmdline", "rb") as handle:
        host_init = handle.read().decode().replace("\0", " ").strip()
    inside_init = session.run(["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"]).stdout.strip()
    assert inside_init and inside_init != host_init, (inside_init, host_init)
    inside_name = session.run(["cat", "/proc/sys/kernel/hostname"]).stdout.strip()
    assert inside_name != socket.gethostname()
    for path in ("/work/main/galaxy.yml", str(marker)):
        assert os.path.exists(path), path  # the probe is meaningful: the host has it
        assert session.run(["test", "-e", path], check=False).returncode == 1, path
    print("init inside: %r, hostname inside: %r" % (inside_init, inside_name))


def test_no_host_mount_or_loop_device_while_open(session, host_view):
    image = host_view["image"]
    mounts, loops = host_state()
    before_mounts, before_loops = session.host_before
    assert loops_of(image) == []
    new_loops = loops - before_loops
    assert not [loop for loop in new_loops if loop[1] and os.path.basename(image) in loop[1]], new_loops
    new_mounts = mounts - before_mounts
    ours = [m for m in new_mounts if os.path.dirname(image) in m[0] or m[2] == image]
    assert ours == [], new_mounts
    assert qemu_naming(image), "the appliance's qemu holds the image"
    print("mounts new since the launch (other helpers included): %s; loops: %s" % (sorted(new_mounts),
                                                                                   sorted(new_loops)))


# --------------------------------------------------------------------------- writing

def test_changes_after_make_writable(session, host_view):
    session.make_writable()
    session.make_writable()  # twice is fine
    assert session.writable
    tree = session.tree
    tree.makedirs("/srv/x2k/deep/dir", mode=0o750)
    assert tree.is_dir("/srv/x2k/deep/dir") and stat.S_IMODE(tree.mode("/srv/x2k/deep/dir")) == 0o750
    tree.write_bytes("/srv/x2k/file", b"one\n", mode=0o600, durable=True)
    tree.write_bytes("/srv/x2k/file", b"two\n")  # replaced through the hidden temp
    tree.append("/srv/x2k/file", b"three\n")
    assert tree.read_bytes("/srv/x2k/file") == b"two\nthree\n"
    assert tree.listdir("/srv/x2k") == ["deep", "file"]  # no temp left
    tree.chmod("/srv/x2k/file", 0o640)
    tree.copy("/srv/x2k/file", "/srv/x2k/copy")
    assert tree.read_bytes("/srv/x2k/copy") == b"two\nthree\n" and stat.S_IMODE(tree.mode("/srv/x2k/copy")) == 0o640
    tree.rename("/srv/x2k/copy", "/srv/x2k/moved")
    assert not tree.lexists("/srv/x2k/copy") and tree.is_file("/srv/x2k/moved")
    tree.symlink("moved", "/srv/x2k/link")
    tree.copy("/srv/x2k/link", "/srv/x2k/link-copy")
    assert tree.readlink("/srv/x2k/link-copy") == "moved"  # a link is copied as a link
    upload = os.path.join(os.path.dirname(host_view["image"]), "upload")
    with open(upload, "wb") as handle:
        handle.write(b"uploaded\n")
    tree.upload(upload, "/srv/x2k/uploaded")
    os.unlink(upload)
    assert tree.read_bytes("/srv/x2k/uploaded") == b"uploaded\n"
    for path in ("/srv/x2k/link", "/srv/x2k/moved", "/srv/x2k/deep", "/srv/x2k/absent"):
        tree.remove(path)
        assert not tree.lexists(path), path
    assert tree.listdir("/srv/x2k") == ["file", "link-copy", "uploaded"]
    created = session.run(["sh", "-c", "echo from-a-command > /srv/x2k/by-command; cat /srv/x2k/file"])
    assert created.stdout == "two\nthree\n" and tree.read_bytes("/srv/x2k/by-command") == b"from-a-command\n"


def test_editor_over_the_appliance(session, host_view):
    original = host_view["hostname"]
    guest = GuestEditor(session.tree, run=session.run)
    guest.fixup = "engine-test"
    assert guest.write("/etc/hostname", "x2k-first\n", "test")
    assert guest.write("/etc/hostname", "x2k-second\n", "test")
    assert session.tree.read_bytes(BACKUP_DIR + "/etc/hostname") == original  # first edit only
    assert stat.S_IMODE(session.tree.mode("/etc/hostname")) == 0o644
    assert guest.run(["true"], "test") is not None
    log = session.tree.read_bytes(GUEST_LOG).decode().splitlines()
    assert [line.split(" ", 1)[1] for line in log[-3:]] == [
        "[engine-test] edited /etc/hostname: test", "[engine-test] edited /etc/hostname: test",
        "[engine-test] ran true: test"]
    assert [p for p in guest_glob(session.tree, "/etc/.*") if "xen2kvm" in p] == []
    assert guest.remove("/etc/hostname", "test") and guest.restore_backup("/etc/hostname", "test")
    assert session.tree.read_bytes("/etc/hostname") == original


def make_links(tree):
    if not tree.lexists("/srv/x2k/hostile"):
        tree.symlink("/", "/srv/x2k/hostile")
        tree.symlink("/usr/lib", "/srv/x2k/abs-lib")


def test_absolute_links_resolve_inside_the_guest_for_reads_writes_and_renames(session):
    """A guest's own absolute links (/var/run -> /run) and hostile ones (-> /) mean guest paths,
    as in HostTree; in the appliance they could otherwise only reach the appliance's files."""
    tree = session.tree
    make_links(tree)
    tree.write_bytes("/srv/x2k/hostile/srv/x2k/through", b"through\n")
    assert tree.read_bytes("/srv/x2k/through") == b"through\n"
    assert tree.read_bytes("/srv/x2k/hostile/srv/x2k/through") == b"through\n"
    assert tree.listdir("/srv/x2k/hostile/srv/x2k") == tree.listdir("/srv/x2k")
    assert tree.realpath("/srv/x2k/abs-lib/os-release") == "/usr/lib/os-release"
    assert tree.is_file("/srv/x2k/abs-lib/os-release") and tree.is_dir("/srv/x2k/hostile/etc")
    tree.rename("/srv/x2k/hostile/srv/x2k/through", "/srv/x2k/hostile/srv/x2k/renamed")
    assert tree.read_bytes("/srv/x2k/renamed") == b"through\n"
    tree.remove("/srv/x2k/renamed")


def test_absolute_links_resolve_inside_the_guest_for_copy_remove_and_find(session):
    tree = session.tree
    make_links(tree)
    wrong = []
    try:
        tree.copy("/srv/x2k/hostile/etc/os-release", "/srv/x2k/hostile/srv/x2k/copied")
    except RuntimeError as exc:
        wrong.append("copy raised %s" % exc)
    if not tree.lexists("/srv/x2k/copied"):
        wrong.append("copy through /srv/x2k/hostile made no /srv/x2k/copied")
    tree.makedirs("/srv/x2k/doomed/sub")
    try:
        tree.remove("/srv/x2k/hostile/srv/x2k/doomed")
    except RuntimeError as exc:
        wrong.append("remove raised %s" % exc)
    if tree.lexists("/srv/x2k/doomed"):
        wrong.append("remove through /srv/x2k/hostile left /srv/x2k/doomed")
    if sorted(tree.files_under("/srv/x2k/abs-lib/modules")) != sorted(tree.files_under("/usr/lib/modules")):
        wrong.append("files_under(/srv/x2k/abs-lib/modules) is not the guest's /usr/lib/modules")
    for path in ("/srv/x2k/copied", "/srv/x2k/doomed"):
        tree.remove(path)
    assert wrong == []


def test_links_are_removed_again(session):
    for path in ("/srv/x2k/hostile", "/srv/x2k/abs-lib"):
        session.tree.remove(path)
        assert not session.tree.lexists(path)


def test_closing_leaves_nothing_and_scratch_never_reached_the_disk(session, host_view):
    image, offset = host_view["image"], host_view["offset"]
    before_mounts, before_loops = session.host_before
    started = time.monotonic()
    session.close()
    closed_in = time.monotonic() - started
    deadline = time.monotonic() + 30
    while processes_naming(image) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_naming(image) == []
    assert loops_of(image) == []
    assert disk_names(image, offset, "/tmp") == host_view["tmp_on_disk"]
    assert ".xen2kvm-run" not in disk_names(image, offset, "/tmp")
    # what was written went to the disk, so the /tmp listing above reads the right filesystem
    assert debugfs(image, offset, "cat /srv/x2k/file") == "two\nthree\n"
    assert debugfs(image, offset, "cat /etc/hostname").encode() == host_view["hostname"]
    assert "by-command" in disk_names(image, offset, "/srv/x2k")
    print("closed in %.1f s" % closed_in)


# --------------------------------------------------------------------------- LUKS

DEBIAN_OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                     "VERSION_CODENAME=bookworm\nID=debian\n")


def build_luks_guest(path):
    """A raw disk: one partition, LUKS, ext4 inside with a Debian fstab and os-release."""
    import guestfs
    with open(path, "wb") as handle:
        handle.truncate(64 * MiB)
    g = guestfs.GuestFS(python_return_dict=True)
    backend, settings = appliance_settings()
    g.set_backend(backend)
    if settings:
        g.set_backend_settings(settings)
    try:
        g.add_drive_opts(path, format="raw")
        g.launch()
        g.part_disk("/dev/sda", "mbr")
        g.luks_format("/dev/sda1", "x2k-secret", 0)
        g.cryptsetup_open("/dev/sda1", "x2k-secret", "x2kroot")
        g.mkfs("ext4", "/dev/mapper/x2kroot")
        g.mount("/dev/mapper/x2kroot", "/")
        for directory in ("/etc", "/bin", "/usr/bin", "/tmp"):
            g.mkdir_p(directory)
        g.write("/etc/fstab", "/dev/mapper/xvda1_crypt / ext4 errors=remount-ro 0 1\n")
        g.write("/etc/os-release", DEBIAN_OS_RELEASE)
        g.write("/etc/debian_version", "12.5\n")
        g.umount_all()
        g.cryptsetup_close("/dev/mapper/x2kroot")
        seen = {"list_filesystems": g.list_filesystems(), "vfs_type": g.vfs_type("/dev/sda1")}
        g.shutdown()
        return seen
    finally:
        g.close()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def test_luks_encrypted_guest_is_refused_unchanged(tmp_path):
    image = str(tmp_path / "luks.raw")
    started = time.monotonic()
    seen = build_luks_guest(image)
    built = time.monotonic() - started
    print("the appliance sees the LUKS disk as %s" % seen)
    digest = sha256_of(image)
    listing = sorted(os.listdir(str(tmp_path)))
    started = time.monotonic()
    result = ansible_run.run_module("guest_fixup", {"disks": [image], "engine": "guestfs"}, expect_fail=True)
    refused = time.monotonic() - started
    print("LUKS guest built in %.1f s, refused in %.1f s: %s" % (built, refused, result["msg"]))
    assert "Traceback" not in json.dumps(result)
    assert sha256_of(image) == digest
    assert sorted(os.listdir(str(tmp_path))) == listing  # no marker, nothing beside the image
    assert processes_naming(image) == []
    assert "LUKS" in result["msg"] and "/dev/sda1" in result["msg"], result["msg"]


# --------------------------------------------------------------------------- signals

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = sys.argv[2].split(":")
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.appliance import (
        ApplianceSession, GuestInterrupted)
    try:
        with ApplianceSession([sys.argv[1]], readonly=False):
            print("open", flush=True)
            while True:
                time.sleep(1)
    except GuestInterrupted as exc:
        print("interrupted: %s" % exc, flush=True)
        sys.exit(3)
""")


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def holder(tmp_path):
    """Start a process holding an ApplianceSession open on its own copy of deb12-pv."""
    started = []
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # libguestfs' sockets and temp files go where a killed run may leave them: into tmp_path
    env = dict(os.environ, TMPDIR=str(scratch), XDG_RUNTIME_DIR=str(scratch),
               LIBGUESTFS_CACHEDIR=os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp"))

    def start():
        try:
            image = str(guest_factory.build_variant("deb12-pv", tmp_path / "guest").disks[0])
        except guest_factory.SuiteUnavailable as exc:
            pytest.skip(str(exc))
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, image, ":".join(sys.path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append((proc, image))
        launched = time.monotonic()
        line = proc.stdout.readline()
        assert line == "open\n", line + proc.stderr.read()
        qemu = [pid for pid in qemu_naming(image) if pid in descendants(proc.pid)]
        assert qemu, "no qemu below the session's process"
        return proc, image, qemu, time.monotonic() - launched

    yield start
    for proc, image in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_naming(image):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_shuts_the_appliance_down(holder):
    proc, image, qemu, launched = holder()
    below = descendants(proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 3, out + err
    assert out.startswith("interrupted: interrupted by signal %d" % signal.SIGTERM), out + err
    assert wait_until(lambda: not [pid for pid in below if alive(pid)], 10), [p for p in below if alive(p)]
    assert processes_naming(image) == []
    print("launched in %.1f s; SIGTERM to exit %.1f s" % (launched, took))


def test_sigkill_leaves_the_appliance_to_libguestfs_recovery(holder):
    proc, image, qemu, launched = holder()
    started = time.monotonic()
    proc.kill()
    proc.wait()
    gone = wait_until(lambda: not [pid for pid in qemu if alive(pid)], 30)
    took = time.monotonic() - started
    assert gone, "qemu %s still runs %.0f s after its session was SIGKILLed" % (qemu, took)
    # libguestfs' recovery process (a fork of the killed one, so its command line names the image)
    # exits once it has killed qemu
    assert wait_until(lambda: processes_naming(image) == [], 30), processes_naming(image)
    print("launched in %.1f s; qemu gone %.1f s after SIGKILL" % (launched, took))
