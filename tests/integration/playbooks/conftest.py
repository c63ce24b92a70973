"""The libvirtd fixtures of tests/integration/libvirt (libvirt_uri, conn, qemu_tmp) and its
cleanup_domain (as the fixture remove_domain), for tests that run whole playbooks against the real libvirtd."""
import importlib.util
import pathlib
import uuid

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "x2k_libvirt_fixtures", pathlib.Path(__file__).resolve().parent.parent / "libvirt" / "conftest.py")
_FIXTURES = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_FIXTURES)

libvirt_uri = _FIXTURES.libvirt_uri
conn = _FIXTURES.conn
qemu_tmp = _FIXTURES.qemu_tmp
remove_domain_fixture = _FIXTURES.remove_domain_fixture


@pytest.fixture(name="vm_names")
def vm_names_fixture(conn):
    """vm_names(prefix): a unique VM name; its domain and serial logs are removed afterwards."""
    made = []

    def new(prefix="x2k-mig"):
        made.append("%s-%s" % (prefix, uuid.uuid4().hex[:8]))
        return made[-1]

    yield new
    for name in made:
        _FIXTURES.cleanup_domain(conn, name, logs=True)
