# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One sequential pass over an XVA stream, straight into the disks' image files.

The rules that decide where a chunk lands (docs/xva-format.md): a member's name is a counter,
not an offset; omitted all-zero chunks advance the counter by one chunk each; zero-length
keep-alive members advance the counter but not the disk offset.  So the offset is computed
sequentially: ``offset += gap * chunk_size + len(member)``.

Reading (and decompressing) runs in the calling thread while a worker thread hashes and
writes, so both cores are busy; the queue between them is short, keeping memory constant.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import http.client
import os
import re
import threading
import time
import zlib

try:
    import queue
except ImportError:  # pragma: no cover
    import Queue as queue

try:
    import xxhash
    HAS_XXHASH = True
except ImportError:
    xxhash = None
    HAS_XXHASH = False

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import profile
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.ova_xml import (
    MAX_OVA_XML_BYTES, OvaXmlError, parse_ova_xml, vm_spec)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.tar import TarFormatError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import (
    MissingLibraryError, SourceError)

DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
QUEUE_DEPTH = 8
_MEMBER_RE = re.compile(r"^(Ref:[^/]+)/(\d+)(\.checksum|\.xxhash)?$")
_CHECKSUM_FORMATS = {".checksum": re.compile(r"^[0-9a-fA-F]{40}$"), ".xxhash": re.compile(r"^[0-9a-fA-F]{16}$")}
_ZERO_CHUNK = bytes(DEFAULT_CHUNK)


class XvaError(ValueError):
    """The XVA is invalid or could not be converted; the message names member and offset."""


def read_ova_xml(tar):
    """Read the first member, which must be ova.xml, and return ``(spec, vdi_ids, raw_bytes)``."""
    try:
        member = tar.next_member()
    except TarFormatError as exc:
        raise XvaError("not an XVA: %s" % exc)
    if member is None:
        raise XvaError("not an XVA: the tar stream is empty")
    if member.name != "ova.xml":
        raise XvaError("not an XVA: the first member is %r (data at offset %d), xapi always writes ova.xml first"
                       % (member.name[:100], member.offset))
    if member.size > MAX_OVA_XML_BYTES:
        raise XvaError("ova.xml (data at offset %d) is %d bytes, more than the %d allowed"
                       % (member.offset, member.size, MAX_OVA_XML_BYTES))
    data = tar.read_member(member)
    try:
        spec, vdi_ids = vm_spec(parse_ova_xml(data))
    except (OvaXmlError, UnicodeDecodeError) as exc:
        raise XvaError("invalid ova.xml: %s" % exc)
    return spec, vdi_ids, data


def check_member_name(name, offset):
    """Split a disk member name into (folder, counter, suffix), refusing anything unsafe."""
    if name.startswith("/") or "\\" in name:
        raise XvaError("member %r at offset %d has an absolute path" % (name, offset))
    if ".." in name.split("/"):
        raise XvaError("member %r at offset %d contains '..'" % (name, offset))
    match = _MEMBER_RE.match(name)
    if not match:
        raise XvaError("member %r at offset %d is outside any disk folder" % (name, offset))
    return match.group(1), int(match.group(2)), match.group(3)


def chunk_is_zero(data):
    """``data`` is a memoryview of a reused buffer; bytes comparison stops at the first
    non-zero byte, so data chunks are rejected at once."""
    if len(data) == DEFAULT_CHUNK and len(data.obj) == DEFAULT_CHUNK:
        return data.obj == _ZERO_CHUNK
    return not data.tobytes().strip(b"\0")


def checksum_of(data, suffix):
    if suffix == ".checksum":
        return hashlib.sha1(data).hexdigest()
    return xxhash.xxh64_hexdigest(data).upper() if hasattr(xxhash, "xxh64_hexdigest") else \
        xxhash.xxh64(data, seed=0).hexdigest().upper()


class DiskTarget:
    """Where one disk's bytes go, and what is known about them while they arrive."""

    def __init__(self, disk, fd, path):
        self.ref = disk["ref"]
        self.virtual_size = disk["virtual_size"]
        self.fd = fd
        self.path = path
        self.last_counter = -1
        self.offset = 0
        self.chunk_size = None
        self.chunks = 0
        self.verified = 0
        self.unverified = 0
        self.first_unverified = None  # (member name, stream offset) of the first chunk without a checksum
        self.written = 0          # bytes of the disk already covered (written or skipped)
        self.padding = 0          # bytes of the current chunk past virtual_size (a padded last chunk)
        self.started = None
        self.finished = None

    def place(self, counter, length, name, stream_offset):
        """The disk offset of a chunk: checks order and bounds, advances the position."""
        if counter <= self.last_counter:
            raise XvaError("member %r at offset %d: chunk counter %d does not increase (previous %d)"
                           % (name, stream_offset, counter, self.last_counter))
        if length and self.chunk_size is None:
            self.chunk_size = length
        elif self.chunk_size is not None and length > self.chunk_size:
            raise XvaError("member %r at offset %d: chunk of %d bytes is larger than the first chunk (%d)"
                           % (name, stream_offset, length, self.chunk_size))
        gap = counter - self.last_counter - 1
        offset = self.offset + gap * (self.chunk_size or DEFAULT_CHUNK)
        self.padding = 0
        if offset + length > self.virtual_size:
            if not (offset < self.virtual_size and length == self.chunk_size):
                raise XvaError("member %r at offset %d: data reaches byte %d of the disk, past its virtual_size %d"
                               % (name, stream_offset, offset + length, self.virtual_size))
            # A last chunk padded to a whole chunk (Xen Orchestra writes these, xapi's importer
            # takes them): accepted when the padding is zeros, which the caller checks.
            self.padding = offset + length - self.virtual_size
        self.last_counter = counter
        self.offset = offset + length - self.padding
        self.chunks += 1
        if self.started is None:
            self.started = time.time()
        return offset


def verify_chunk(data, suffix, expected, name, stream_offset):
    with profile.timed("hashing"):
        actual = checksum_of(data, suffix)
    if actual.lower() != expected.lower():
        raise XvaError("checksum mismatch in member %r at offset %d: expected %s, got %s"
                       % (name, stream_offset, expected, actual))


class _Flusher(threading.Thread):
    """Starts writeback of what was written so far while later chunks are still arriving, so
    the final fsync only waits for the tail instead of the whole image."""

    def __init__(self):
        threading.Thread.__init__(self, name="xva-flusher")
        self.daemon = True
        self.wanted = queue.Queue()

    def run(self):
        while True:
            fd = self.wanted.get()
            if fd is None:
                return
            try:
                with profile.timed("syncing"):
                    os.fdatasync(fd)
            except OSError:
                pass  # the final fsync reports real errors

    def stop(self):
        self.wanted.put(None)
        self.join()


class _Writer(threading.Thread):
    """Writes (and, for compressed streams, verifies) chunks handed over by the reading thread.
    Buffers go back to ``free`` once written, so memory stays constant.  Every ``flush_every``
    bytes the flusher starts writeback; None: never (an intermediate file nobody fsyncs)."""

    FLUSH_EVERY = 128 << 20

    def __init__(self, free, flush_every=FLUSH_EVERY):
        threading.Thread.__init__(self, name="xva-writer")
        self.daemon = True
        self.items = queue.Queue(QUEUE_DEPTH)
        self.free = free
        self.error = None
        self.flusher = _Flusher()
        self.flush_every = flush_every
        self._unflushed = 0

    def run(self):
        self.flusher.start()
        try:
            while True:
                item = self.items.get()
                if item is None:
                    return
                if self.error is None:
                    try:
                        self._handle(*item)
                    except Exception as exc:  # handed to the reading thread, which raises it
                        self.error = exc
                if item[2] is not None:
                    self.free.put(item[2])
        finally:
            self.flusher.stop()

    def _handle(self, target, offset, buffer, data, check, keep):
        if check is not None:
            verify_chunk(data, *check)  # over the whole member, padding included
        if keep < len(data):
            data = data[:keep]
        if len(data) and not chunk_is_zero(data):
            self._write(target, data, offset)
        target.written = offset + len(data)

    def _write(self, target, data, offset):
        try:
            with profile.timed("writing"):
                written = os.pwrite(target.fd, data, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise XvaError("disk full writing %s at offset %d" % (target.path, offset))
            raise XvaError("cannot write %s at offset %d: %s" % (target.path, offset, exc.strerror))
        if written != len(data):
            raise XvaError("short write to %s at offset %d (disk full?)" % (target.path, offset))
        self._unflushed += written
        if self.flush_every is not None and self._unflushed >= self.flush_every:
            self._unflushed = 0
            self.flusher.wanted.put(target.fd)

    def put(self, item):
        if self.error is not None:
            raise self.error
        self.items.put(item)

    def finish(self):
        self.items.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class XvaReader:
    """Read the disk members that follow ova.xml into ``targets`` (ref -> DiskTarget).

    ``hash_in_reader``: on a plain stream reading is cheap, so the reading thread hashes every
    other chunk and the writer the rest besides writing; on a compressed stream decompression
    keeps the reading thread busy, so the writer hashes everything.  Either way both cores work.

    ``durable``: the images are the result, so writeback starts while they are written and the
    caller's final fsync waits only for the tail; False for an intermediate (the raw file a
    qcow2 image is made from), which need never reach the disk.
    """

    def __init__(self, tar, targets, known_vdis, verify_checksums=True, hash_in_reader=True, durable=True):
        self.tar = tar
        self.targets = targets
        self.known_vdis = known_vdis
        self.verify = verify_checksums
        self.hash_in_reader = hash_in_reader
        self.durable = durable
        self._pending = None
        self.current = None
        self._hash_turn = False
        self.free = queue.Queue()
        for _slot in range(QUEUE_DEPTH + 2):
            self.free.put(bytearray(DEFAULT_CHUNK))

    def _next(self):
        if self._pending is not None:
            member, self._pending = self._pending, None
            return member
        return self.tar.next_member()

    def _checksum_for(self, member):
        """Read the checksum member that follows ``member``; (None, None) when there is none."""
        follower = self.tar.next_member()
        if follower is None or not follower.name.startswith(member.name + "."):
            self._pending = follower if follower is not None else _END
            return None, None
        suffix = follower.name[len(member.name):]
        if suffix not in _CHECKSUM_FORMATS:
            raise XvaError("member %r at offset %d is outside any disk folder" % (follower.name, follower.offset))
        if follower.size > 64:
            raise XvaError("checksum member %r at offset %d is %d bytes; expected a hex digest"
                           % (follower.name, follower.offset, follower.size))
        text = self.tar.read_member(follower).decode("ascii", "replace").strip()
        if not _CHECKSUM_FORMATS[suffix].match(text):
            raise XvaError("checksum member %r at offset %d holds %r, not a %s digest"
                           % (follower.name, follower.offset, text, "SHA-1" if suffix == ".checksum" else "XXH64"))
        if suffix == ".xxhash" and self.verify and not HAS_XXHASH:
            raise MissingLibraryError("xxhash (Debian: python3-xxhash)",
                                      "to verify the .xxhash checksums of this XVA (or set verify_checksums: false)")
        return suffix, text

    def run(self):
        writer = _Writer(self.free, _Writer.FLUSH_EVERY if self.durable else None)
        writer.start()
        try:
            # The reading thread's own wall time: with the tar stream's reads, its hashing and
            # its waits for the writer taken out, what is left is parsing (make bench PROFILE=1).
            with profile.timed("reading thread"):
                self._read_all(writer)
        except BaseException:
            writer.items.put(None)
            writer.join()
            raise
        writer.finish()
        self._check_complete()

    def _buffer_for(self, member):
        if member.size > MAX_CHUNK:
            raise XvaError("member %r at offset %d: chunk of %d bytes is larger than the %d allowed"
                           % (member.name, member.offset, member.size, MAX_CHUNK))
        with profile.timed("reading thread waiting for the writer"):
            buffer = self.free.get()
        return buffer if len(buffer) >= member.size else bytearray(member.size)

    def _read_all(self, writer):
        while True:
            member = self._next()
            if member is None or member is _END:
                return
            folder, counter, suffix = check_member_name(member.name, member.offset)
            if folder not in self.known_vdis:
                raise XvaError("member %r at offset %d is outside any disk folder: ova.xml has no VDI %s"
                               % (member.name, member.offset, folder))
            target = self.targets.get(folder)
            if target is None:
                # A VDI we do not convert (the suspend image of a suspended VM's export): its
                # chunks and their checksum members are skipped unread.
                continue
            if suffix is not None:
                raise XvaError("checksum member %r at offset %d does not follow its chunk"
                               % (member.name, member.offset))
            if target is not self.current:
                self._switch_to(target)
            offset = target.place(counter, member.size, member.name, member.offset)
            buffer = self._buffer_for(member)
            try:
                data = self.tar.read_member_into(member, buffer)
                keep = len(data) - target.padding
                if target.padding and data[keep:].tobytes().strip(b"\0"):
                    raise XvaError("member %r at offset %d: the %d bytes past its virtual_size %d are not zeros"
                                   % (member.name, member.offset, target.padding, target.virtual_size))
                csum_suffix, expected = self._checksum_for(member)
            except BaseException:
                self.free.put(buffer)
                raise
            check = None
            if expected is None:
                target.unverified += 1
                if target.first_unverified is None:
                    target.first_unverified = (member.name, member.offset)
            else:
                target.verified += 1
                if self.verify:
                    check = (csum_suffix, expected, member.name, member.offset)
            # On a plain stream the two threads share the hashing: every other chunk here.
            self._hash_turn = not self._hash_turn
            if check is not None and self.hash_in_reader and self._hash_turn:
                try:
                    with profile.timed("reading thread hashing"):
                        verify_chunk(data, *check)
                except BaseException:
                    self.free.put(buffer)
                    raise
                check = None
            with profile.timed("reading thread waiting for the writer"):
                writer.put((target, offset, buffer, data, check, keep))

    def _switch_to(self, target):
        now = time.time()
        if self.current is not None and self.current.finished is None:
            self.current.finished = now
        self.current = target

    def _check_complete(self):
        for target in self.targets.values():
            if target.chunks == 0 and target.virtual_size > 0:
                # xapi writes no chunk at all for an empty VDI, so only a non-empty one needs a folder.
                raise XvaError("disk folder %s is missing from the XVA" % target.ref)
            if self.verify and target.verified and target.unverified:
                raise XvaError("disk folder %s: %d chunks have no checksum member while %d do (the first: "
                               "member %r at offset %d)" % ((target.ref, target.unverified, target.verified)
                                                            + target.first_unverified))
            target.written = target.virtual_size
            if target.finished is None:
                target.finished = time.time()


class _EndMarker:
    pass


_END = _EndMarker()


def translate_stream_errors(func, *args, **kwargs):
    """Run ``func``, turning low-level stream errors into XvaError with a clear message."""
    try:
        return func(*args, **kwargs)
    except (XvaError, MissingLibraryError):
        raise
    except (TarFormatError, SourceError) as exc:
        raise XvaError(str(exc))
    except EOFError as exc:
        raise XvaError("stream truncated: %s" % exc)
    except http.client.HTTPException as exc:
        raise XvaError("HTTP stream broken off (truncated): %r" % exc)
    except zlib.error as exc:
        raise XvaError("gzip stream is corrupt: %s" % exc)
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends
            raise XvaError("compressed stream is corrupt: %s" % exc)
        raise
