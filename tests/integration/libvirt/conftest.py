"""Fixtures for tests against the real libvirtd (qemu:///system, domain type qemu).

``libvirt_uri`` starts virtlogd and libvirtd when they are not running (pidfile + /proc check)
and stops at the end only the daemons it started, and only when no domain is left running.  It
never defines or starts a network.  ``run_module`` runs one of the collection's modules through
ansible-playbook and returns the registered result.  ``boot_kit`` provides a kernel and a tiny
busybox initramfs for disk-less guests that print on the serial port.
"""
import glob
import gzip
import json
import os
import pathlib
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

URI = "qemu:///system"
DAEMONS = (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid"))
DEFAULT_NET_AUTOSTART = "/etc/libvirt/qemu/networks/autostart/default.xml"
KERNEL_CACHE = "/var/tmp/xen2kvm-test-kernel"
KERNEL_PACKAGE = "linux-image-cloud-amd64"

libvirt = pytest.importorskip("libvirt", reason="libvirt-python (Debian: python3-libvirt) missing")


# ------------------------------------------------------------------------------ daemons


def _running_pid(name, pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == name else None


def _connect(timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def libvirt_uri():
    if os.geteuid() != 0:
        pytest.skip("needs root (qemu:///system)")
    for name in (daemon for daemon, _pidfile in DAEMONS):
        if not shutil.which(name):
            pytest.skip("%s not installed (Debian: libvirt-daemon-system)" % name)
    started = []
    for name, pidfile in DAEMONS:
        if _running_pid(name, pidfile):
            continue
        if name == "libvirtd" and os.path.exists(DEFAULT_NET_AUTOSTART):
            pytest.skip("libvirt's default network is marked autostart; starting libvirtd would "
                        "start its NAT network")
        subprocess.run([name, "-d"], check=True)
        deadline = time.monotonic() + 15
        while not _running_pid(name, pidfile):
            if time.monotonic() > deadline:
                pytest.fail("%s -d did not write %s" % (name, pidfile))
            time.sleep(0.1)
        started.append((name, pidfile))
    _connect().close()
    yield URI
    if not started or os.environ.get("X2K_KEEP_LIBVIRTD"):
        return
    conn = _connect()
    busy = conn.numOfDomains() > 0
    conn.close()
    if busy:
        return
    for name, pidfile in reversed(started):
        pid = _running_pid(name, pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _running_pid(name, pidfile) and time.monotonic() < deadline:
                time.sleep(0.1)


@pytest.fixture
def conn(libvirt_uri):
    c = libvirt.open(libvirt_uri)
    yield c
    c.close()


def cleanup_domain(conn, name, logs=False):
    """Destroy and undefine ``name`` if it exists (NVRAM too); with ``logs``, remove its qemu and
    serial logs under /var/log/libvirt/qemu as well."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            pass
    for suffix in (".log", "-serial.log") if logs else ():
        path = "/var/log/libvirt/qemu/%s%s" % (name, suffix)
        if os.path.exists(path):
            os.unlink(path)


@pytest.fixture(scope="session", name="remove_domain")
def remove_domain_fixture():
    """cleanup_domain(conn, name, logs=False): destroy and undefine a domain if it exists."""
    return cleanup_domain


@pytest.fixture
def domain_name(conn, qemu_tmp):
    """A unique domain name, removed (with its serial log) after the test.

    Depends on ``qemu_tmp`` so that the domain is gone before its images are deleted."""
    name = "x2k-it-%s" % uuid.uuid4().hex[:8]
    yield name
    cleanup_domain(conn, name)
    for path in glob.glob("/var/log/libvirt/qemu/%s*.log" % name):
        if not path.endswith("-serial.log"):  # shown by pytest when the test failed
            with open(path, errors="replace") as f:
                print("--- %s (tail)\n%s" % (path, "".join(f.readlines()[-15:])))
        os.unlink(path)


@pytest.fixture(name="pool_name")
def pool_name_fixture(conn):
    """A unique storage pool name; the pool is stopped and undefined after the test."""
    name = "x2k-it-pool-%s" % uuid.uuid4().hex[:8]
    yield name
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.destroy()
    pool.undefine()


# ------------------------------------------------------------------------------ ansible


def _ansible_playbook():
    exe = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return exe if os.path.exists(exe) else shutil.which("ansible-playbook")


@pytest.fixture
def run_module(tmp_path):
    """run_module("kvm_domain", {...}, check=False, diff=False) -> the registered result."""
    exe = _ansible_playbook()
    if not exe:
        pytest.skip("ansible-playbook not found")
    counter = [0]

    def run(module, args, check=False, diff=False):
        counter[0] += 1
        out = tmp_path / ("result-%d.json" % counter[0])
        play = [{
            "hosts": "localhost", "gather_facts": False, "connection": "local",
            "tasks": [
                {"name": "module under test", "xen2kvm.migration.%s" % module: args,
                 "register": "r", "ignore_errors": True},
                {"name": "save the result", "ansible.builtin.copy": {
                    "content": "{{ r | to_json }}", "dest": str(out)},
                 "check_mode": False, "diff": False},
            ],
        }]
        pb = tmp_path / ("play-%d.yml" % counter[0])
        pb.write_text(json.dumps(play, indent=1))
        cmd = [exe, "-i", "localhost,", str(pb), "-e", "ansible_python_interpreter=/usr/bin/python3"]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, env=env, check=False)
        assert proc.returncode == 0 and out.exists(), proc.stdout
        return json.loads(out.read_text())

    return run


# ------------------------------------------------------------------------------ boot kit


def _is_static_elf(path):
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if struct.unpack("<I", f.read(4))[0] == 3:  # PT_INTERP
                return False
    return True


def _find_kernel():
    candidates = [os.environ.get("X2K_TEST_KERNEL")] + sorted(glob.glob("/boot/vmlinuz-*")) + \
        sorted(glob.glob(os.path.join(KERNEL_CACHE, "boot", "vmlinuz-*")))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def _fetch_kernel():
    """Download the Debian cloud kernel package (its ordinary client) and extract vmlinuz."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    os.makedirs(KERNEL_CACHE, exist_ok=True)
    try:
        dep = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout
        pkg = [ln.split(":", 1)[1].strip() for ln in dep.splitlines()
               if ln.strip().startswith("Depends:") and "linux-image-" in ln][0]
        subprocess.run(["apt-get", "download", pkg], cwd=KERNEL_CACHE, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deb = sorted(glob.glob(os.path.join(KERNEL_CACHE, pkg + "_*.deb")))[-1]
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", KERNEL_CACHE, "--wildcards", "./boot/vmlinuz-*"],
                       stdin=tar.stdout, check=True)
        tar.wait()
        os.unlink(deb)
    except (subprocess.CalledProcessError, IndexError, OSError):
        return None
    return _find_kernel()


def _cpio_newc(entries):
    out = bytearray()
    for ino, (name, mode, data) in enumerate(list(entries) + [("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += ("070701" + "".join("%08X" % v for v in fields)).encode() + raw
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def make_initramfs(path, init_script, busybox="/bin/busybox", files=None):
    """A gzip newc initramfs holding a static busybox, ``/init`` and ``files`` ({name: path},
    at the top level: kernel modules for busybox insmod, say)."""
    with open(busybox, "rb") as f:
        bb = f.read()
    d, r, x, lnk = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755, stat.S_IFLNK | 0o777
    entries = [("bin", d, b""), ("dev", d, b""), ("proc", d, b""), ("sys", d, b""),
               ("bin/busybox", x, bb), ("bin/sh", lnk, b"busybox"),
               ("init", x, init_script.encode()), ("etc", d, b""), ("etc/hostname", r, b"x2k\n")]
    for name, source in sorted((files or {}).items()):
        with open(source, "rb") as f:
            entries.append((name, r, f.read()))
    with open(path, "wb") as f:
        f.write(gzip.compress(_cpio_newc(entries), 6))


def _world_readable_dir(prefix):
    """A directory qemu (running as libvirt-qemu) can reach: pytest's tmp dirs are 0700."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(path, 0o755)
    return pathlib.Path(path)


@pytest.fixture
def qemu_tmp():
    """A per-test directory under /var/tmp that qemu can read, removed afterwards."""
    path = _world_readable_dir("x2k-it-")
    yield path
    shutil.rmtree(str(path), ignore_errors=True)


@pytest.fixture(scope="session")
def boot_kit():
    """{"kernel": path, "make_initramfs": fn(name, init, files=None) -> path} or skip."""
    if not os.path.exists("/bin/busybox") or not _is_static_elf("/bin/busybox"):
        pytest.skip("needs a static /bin/busybox (Debian: apt-get install busybox-static)")
    kernel = _find_kernel() or _fetch_kernel()
    if not kernel:
        pytest.skip("no kernel: no /boot/vmlinuz-*, X2K_TEST_KERNEL unset and %s could not be "
                    "downloaded" % KERNEL_PACKAGE)
    base = _world_readable_dir("x2k-bootkit-")
    local = base / "vmlinuz"
    shutil.copyfile(kernel, str(local))
    os.chmod(str(local), 0o644)

    def initramfs(name, init_script, files=None):
        path = base / ("%s.cpio.gz" % name)
        make_initramfs(str(path), init_script, files=files)
        return str(path)

    yield {"kernel": str(local), "make_initramfs": initramfs}
    shutil.rmtree(str(base), ignore_errors=True)


@pytest.fixture(name="kernel_with_modules")
def kernel_with_modules_fixture():
    return kernel_with_modules


def kernel_with_modules(modules, directory):
    """(kernel, {name: path}) for a guest that loads ``modules`` (paths under
    /lib/modules/<release>/, uncompressed) with busybox insmod: an installed /boot kernel that has
    them, copied into ``directory`` for qemu, and for make_initramfs's ``files`` these modules and
    all they depend on, in load order (what modules.dep says a module needs comes before it:
    kernel updates move those needs, as 6.1.0-57 made virtio.ko need virtio_ring.ko); or skip."""
    for kernel in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release_dir = "/lib/modules/%s" % kernel.split("vmlinuz-", 1)[1]
        order = _module_load_order(release_dir, modules)
        if order is not None:
            local = os.path.join(str(directory), "vmlinuz")
            shutil.copyfile(kernel, local)
            os.chmod(local, 0o644)
            return local, {os.path.basename(m): os.path.join(release_dir, m) for m in order}
    pytest.skip("no /boot/vmlinuz-* with these modules (uncompressed) in /lib/modules: %s" % ", ".join(modules))


def _module_load_order(release_dir, modules):
    """``modules`` and what they need (modules.dep of ``release_dir``), each after its needs; None
    when one of them is not there as an uncompressed file."""
    needs = {}
    try:
        with open(os.path.join(release_dir, "modules.dep")) as f:
            for line in f:
                module, _colon, needed = line.partition(":")
                needs[module.strip()] = needed.split()
    except OSError:
        return None
    order = []

    def add(module):
        if module in order:
            return True
        if module not in needs or not os.path.isfile(os.path.join(release_dir, module)):
            return False
        if not all(add(needed) for needed in needs[module]):
            return False
        order.append(module)
        return True

    return order if all(add(m) for m in modules) else None


# Under TCG on a loaded host the kernel may calibrate the TSC badly and stall after switching
# to it; tsc=unstable keeps it on the ACPI PM timer / HPET.
BOOT_CMDLINE = "console=ttyS0 panic=-1 tsc=unstable"


def kernel_domain_xml(name, kernel, initrd, cmdline=BOOT_CMDLINE, memory_mib=128, devices=""):
    """A TCG domain booting ``kernel`` + ``initrd``, its serial port logged; disk-less unless
    ``devices`` (device XML) adds one."""
    return """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{devices}
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/{name}-serial.log' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>""".format(name=name, mem=memory_mib, kernel=kernel, initrd=initrd, cmdline=cmdline, devices=devices)


@pytest.fixture
def kernel_domain(conn, domain_name, boot_kit):
    """kernel_domain(init_script, cmdline=..., kernel=..., files=..., devices=...) defines the
    domain ``domain_name`` (the boot kit's kernel, no disk, unless told otherwise)."""

    def define(init_script, cmdline=BOOT_CMDLINE, kernel=None, files=None, devices=""):
        initrd = boot_kit["make_initramfs"](domain_name, init_script, files=files)
        conn.defineXML(kernel_domain_xml(domain_name, kernel or boot_kit["kernel"], initrd, cmdline,
                                         devices=devices))
        return domain_name

    return define
