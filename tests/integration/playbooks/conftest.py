"""The libvirtd fixtures of tests/integration/libvirt (libvirt_uri, conn, qemu_tmp) and its
cleanup_domain (as the fixture remove_domain), for tests that run whole playbooks against the real libvirtd."""
import importlib.util
import pathlib

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "x2k_libvirt_fixtures", pathlib.Path(__file__).resolve().parent.parent / "libvirt" / "conftest.py")
_FIXTURES = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_FIXTURES)

libvirt_uri = _FIXTURES.libvirt_uri
conn = _FIXTURES.conn
qemu_tmp = _FIXTURES.qemu_tmp


@pytest.fixture(name="remove_domain")
def remove_domain_fixture():
    """cleanup_domain(conn, name): destroy and undefine a domain if it exists."""
    return _FIXTURES.cleanup_domain
