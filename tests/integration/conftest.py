"""Fixtures shared by the integration tests of several folders."""
import os

import pytest

from leftovers import sweep_dead_pytest_basetemps, sweep_stale_test_dirs, sweep_stale_test_domains
from sshd import LoopbackSshd


@pytest.fixture(scope="module", name="sshd")
def sshd_fixture(tmp_path_factory):
    """A real sshd on 127.0.0.1 for the tests of one module (tests/lib/sshd.py)."""
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


# guest_fixup's default engine is the libguestfs appliance, which takes minutes per guest under
# TCG.  The tests about the engine and the guest layouts pass engine: guestfs themselves
# (guestfs/test_appliance.py, guests/test_hostile_guest.py, libvirt/test_layouts_boot.py); the
# others are about conversion, playbooks and roles and run the chroot engine, so make test stays
# within its time.  An engine set outside (XEN2KVM_FIXUP_ENGINE=guestfs make integration) wins.
os.environ.setdefault("XEN2KVM_FIXUP_ENGINE", "chroot")


def pytest_sessionstart(session):
    for path in sweep_stale_test_dirs():
        print("swept %s, left by a killed test run" % path)
    for name in sweep_stale_test_domains():
        print("undefined domain %s, left by a killed test run" % name)
    for path in sweep_dead_pytest_basetemps():
        print("swept %s, the tmp_path of a killed pytest session" % path)
