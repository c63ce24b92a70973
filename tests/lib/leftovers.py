"""What killed test runs leave behind, swept at the start of the next integration session."""
import getpass
import glob
import os
import shutil
import tempfile
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import process_alive

# The directories qemu must reach live in /var/tmp (pytest's are 0700), the playbook runs' and the
# XAPI double's in the temp dir; their fixtures remove them, but a killed run cannot.  Only old
# ones go: both lanes of make test run at once.
STALE_TEST_DIRS = ("/var/tmp/x2k-it-*", "/var/tmp/x2k-bootkit-*", "/var/tmp/x2k-layouts-*",
                   os.path.join(tempfile.gettempdir(), "x2k-ansible-*"),
                   os.path.join(tempfile.gettempdir(), "xapi-double-*"))
STALE_AFTER = 12 * 3600


def sweep_stale_test_dirs(patterns=STALE_TEST_DIRS, older_than=STALE_AFTER, now=None):
    """Remove what killed runs left: directories matching ``patterns`` untouched for ``older_than`` s."""
    now = time.time() if now is None else now
    swept = []
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                stale = os.path.isdir(path) and not os.path.islink(path) and now - os.lstat(path).st_mtime > older_than
            except OSError:
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                swept.append(path)
    return swept


# Test domains are all named x2k-...; a killed run leaves them defined (and its images gone).
STALE_DOMAIN_PREFIX = "x2k-"
LIBVIRT_QEMU_CONFIG = "/etc/libvirt/qemu"


def sweep_stale_test_domains(uri="qemu:///system", older_than=STALE_AFTER, now=None):
    """Undefine the shut-off test domains whose definition is older than ``older_than`` s: the
    other lane's domains are younger, and a running domain is never touched."""
    try:
        import libvirt
    except ImportError:
        return []
    now = time.time() if now is None else now
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return []                          # no libvirtd yet: the libvirt tests start it
    swept = []
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
                                       | libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
            name = dom.name()
            config = os.path.join(LIBVIRT_QEMU_CONFIG, name + ".xml")
            try:
                stale = name.startswith(STALE_DOMAIN_PREFIX) and now - os.stat(config).st_mtime > older_than
            except OSError:
                continue
            if stale:
                try:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                    swept.append(name)
                except libvirt.libvirtError:
                    pass
    finally:
        conn.close()
    return swept


def pytest_basetemp_root():
    """Where pytest makes its numbered session directories (its own rule: $PYTEST_DEBUG_TEMPROOT
    or the temp dir, then pytest-of-<user>)."""
    temproot = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return os.path.join(temproot, "pytest-of-%s" % getpass.getuser())


def sweep_dead_pytest_basetemps(root=None):
    """Remove the session directories of killed pytest runs: each holds a ``.lock`` with its
    session's pid, which a killed run leaves behind and pytest then keeps for 3 days, guest images
    and all.  A reused pid only keeps a directory longer; a live session is never touched."""
    swept = []
    for path in glob.glob(os.path.join(root or pytest_basetemp_root(), "pytest-[0-9]*")):
        try:
            with open(os.path.join(path, ".lock")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue                     # no lock: an ended session, pytest's retention decides
        if pid == os.getpid() or process_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        swept.append(path)
    return swept
