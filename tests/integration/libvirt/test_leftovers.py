"""The sweep of what killed test runs left (tests/lib/leftovers.py), against the real libvirtd."""
import os
import time
import uuid

import pytest

from leftovers import LIBVIRT_QEMU_CONFIG, STALE_AFTER, sweep_stale_test_dirs, sweep_stale_test_domains

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]

MINIMAL_DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"""


def _define(conn, name, age):
    dom = conn.defineXML(MINIMAL_DOMAIN.format(name=name))
    then = time.time() - age
    os.utime(os.path.join(LIBVIRT_QEMU_CONFIG, name + ".xml"), (then, then))
    return dom


def _defined(conn, name):
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def test_only_old_shut_off_test_domains_are_undefined(conn, libvirt_uri):
    tag = uuid.uuid4().hex[:8]
    old, young, foreign = "x2k-it-sweep-old-" + tag, "x2k-it-sweep-young-" + tag, "xen2kvm-sweep-" + tag
    try:
        _define(conn, old, STALE_AFTER + 3600)
        _define(conn, young, 60)
        _define(conn, foreign, STALE_AFTER + 3600)

        swept = sweep_stale_test_domains(libvirt_uri)

        assert old in swept and young not in swept and foreign not in swept
        assert not _defined(conn, old)
        assert _defined(conn, young) and _defined(conn, foreign)
    finally:
        for name in (old, young, foreign):
            if _defined(conn, name):
                conn.lookupByName(name).undefine()


def test_only_old_test_directories_are_removed(tmp_path):
    old, young = tmp_path / "x2k-it-old", tmp_path / "x2k-it-young"
    for path in (old, young):
        (path / "images").mkdir(parents=True)
        (path / "images" / "disk.raw").write_bytes(b"\0" * 4096)
    then = time.time() - STALE_AFTER - 60
    os.utime(str(old), (then, then))

    swept = sweep_stale_test_dirs(patterns=(str(tmp_path / "x2k-it-*"),))

    assert swept == [str(old)]
    assert not old.exists() and young.exists()
