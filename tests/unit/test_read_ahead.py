"""ReadAhead: the network stream read in a thread of its own. The bytes come out as they went in
whatever the read sizes, an error comes after the bytes before it, and close() ends a read that
waits for a silent host instead of closing the stream under it."""
import io
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import ReadAhead, SourceError


class Body(io.RawIOBase):
    """A network body: gives ``data`` in pieces of ``piece`` bytes, then fails with ``error``
    (or ends); ``hang`` makes the read after the data wait until interrupt()."""

    def __init__(self, data, piece=1000, error=None, hang=False):
        io.RawIOBase.__init__(self)
        self.data = memoryview(data)
        self.piece = piece
        self.error = error
        self.hang = hang
        self.woken = threading.Event()
        self.closed_while_reading = False
        self.was_closed = False
        self.reading = False
        self.interrupted = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        self.reading = True
        try:
            if not self.data:
                if self.hang:
                    self.woken.wait(30)
                    self.closed_while_reading = self.was_closed
                if self.error is not None:
                    raise self.error
                return 0
            size = min(len(buffer), self.piece, len(self.data))
            buffer[:size] = self.data[:size]
            self.data = self.data[size:]
            return size
        finally:
            self.reading = False

    def interrupt(self):
        self.interrupted += 1
        self.woken.set()

    def close(self):
        self.was_closed = True
        io.RawIOBase.close(self)


def read_all(stream, sizes):
    out = bytearray()
    turn = 0
    while True:
        buffer = bytearray(sizes[turn % len(sizes)])
        turn += 1
        got = stream.readinto(buffer)
        if not got:
            return bytes(out)
        out += buffer[:got]


@settings(max_examples=40, deadline=None)
@given(length=st.integers(0, 200000), piece=st.integers(1, 70000), block=st.integers(1, 65536),
       sizes=st.lists(st.integers(1, 100000), min_size=1, max_size=5))
def test_the_bytes_come_out_as_they_went_in(length, piece, block, sizes):
    data = os.urandom(length)
    with ReadAhead(Body(data, piece), block=block, depth=2) as stream:
        assert read_all(stream, sizes) == data
        assert stream.readinto(bytearray(10)) == 0  # and the end stays the end


def test_an_error_comes_after_the_bytes_before_it():
    data = os.urandom(50000)
    stream = ReadAhead(Body(data, 3000, error=SourceError("the HTTP stream from h broke off after 50000 bytes")),
                       block=8192)
    got = bytearray()
    with pytest.raises(SourceError, match="broke off after 50000 bytes"):
        while True:
            buffer = bytearray(7000)
            size = stream.readinto(buffer)
            got += buffer[:size]
    assert bytes(got) == data
    with pytest.raises(SourceError):  # asked again, it fails again: nothing is made up
        stream.readinto(bytearray(10))
    stream.close()


def test_close_ends_a_read_that_waits_for_a_silent_host():
    body = Body(b"x" * 100, hang=True)
    stream = ReadAhead(body, block=64)
    got = b""
    while len(got) < 100:
        got += stream.read(100 - len(got))
    assert got == b"x" * 100
    deadline = time.monotonic() + 5
    while not body.reading and time.monotonic() < deadline:
        time.sleep(0.01)
    assert body.reading  # the thread waits in the body's read
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 5
    assert body.interrupted == 1 and body.was_closed and not body.closed_while_reading
