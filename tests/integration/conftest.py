"""Fixtures shared by the integration tests of several folders."""
import pytest

from sshd import LoopbackSshd


@pytest.fixture(scope="module", name="sshd")
def sshd_fixture(tmp_path_factory):
    """A real sshd on 127.0.0.1 for the tests of one module (tests/lib/sshd.py)."""
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()
