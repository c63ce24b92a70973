# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A forward-only tar reader for XVA streams.

``tarfile`` keeps a member list that grows with every 1 MiB chunk and wants to seek; an XVA of a
2 TB disk has two million members and often arrives through a pipe.  This reader keeps nothing
but the current header: V7 (what xapi writes), ustar/GNU headers (an XVA re-packed with GNU tar),
GNU long names and pax ``path``/``size`` records.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import profile

BLOCK = 512
REGULAR_TYPES = (b"0", b"\0", b"7")
DIRECTORY_TYPE = b"5"
MAX_LONG_NAME = 64 * 1024


class TarFormatError(ValueError):
    """The stream is not a tar archive or is damaged; the message names the offset."""


class TarMember:
    __slots__ = ("name", "size", "offset")

    def __init__(self, name, size, offset):
        self.name = name
        self.size = size
        self.offset = offset  # stream offset of the member's data

    def __repr__(self):
        return "TarMember(%r, size=%d, offset=%d)" % (self.name, self.size, self.offset)


def _octal_or_base256(field, what, where):
    if field[:1] and field[0] & 0x80:
        # GNU base-256 for sizes of 8 GiB and more: the high bit marks it, the rest is big-endian.
        return int.from_bytes(bytes([field[0] & 0x7F]) + bytes(field[1:]), "big")
    text = field.replace(b"\0", b" ").strip()
    if not text:
        return 0
    if not all(0x30 <= char <= 0x37 for char in text):  # int() would also take "+7", "0o7", "1_0"
        raise TarFormatError("invalid %s field %r in %s: not a tar stream or a damaged one"
                             % (what, bytes(field), where))
    return int(text, 8)


def _header_checksum_ok(block):
    stored = block[148:156].replace(b"\0", b" ").strip()
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if expected == unsigned:
        return True
    # Some old tars summed the bytes as signed chars.
    high = sum(1 for b in block[:148] + block[156:] if b > 127)
    return expected == unsigned - 256 * high


def _c_string(field):
    return field.split(b"\0", 1)[0]


def _decode_name(raw, where):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TarFormatError("member name %r in %s is not UTF-8" % (bytes(raw[:100]), where))


def _pax_records(data, where):
    """``LENGTH key=value\n`` records; LENGTH counts the whole record, its own digits included."""
    records = {}
    pos = 0
    while pos < len(data):
        if not data[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise TarFormatError("malformed pax header in %s: record at byte %d has no length" % (where, pos))
        length = int(digits)
        if space >= pos + length or pos + length > len(data) or data[pos + length - 1:pos + length] != b"\n":
            raise TarFormatError("malformed pax header in %s: record at byte %d claims %d bytes" % (where, pos, length))
        key, _sep, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value
        pos += length
    return records


def _pax_size(value, where):
    text = value.strip()
    if not text.isdigit():
        raise TarFormatError("pax size %r in %s is not a non-negative number" % (bytes(value[:40]), where))
    return int(text)


class _TimedReads:
    """The time the tar layer waits for its (decompressed) bytes, as "tar stream reads": with the
    source's own reads taken out, what is left is decompression (make bench PROFILE=1)."""

    def __init__(self, fileobj):
        self._file = fileobj

    def read(self, size=-1):
        with profile.timed("tar stream reads"):
            return self._file.read(size)

    def readinto(self, buffer):
        with profile.timed("tar stream reads"):
            return self._file.readinto(buffer)


class TarStream:
    """Read members one after the other from a binary file object (never seeks)."""

    def __init__(self, fileobj):
        # Profiling wraps the stream once here, so the reads cost nothing extra when it is off.
        self._file = _TimedReads(fileobj) if profile.enabled() else fileobj
        self.position = 0          # bytes consumed from the (decompressed) stream
        self._pending_skip = 0     # unread data + padding of the current member
        self.ended = False
        self.last_name = None      # the member before the next header, for error messages

    def where(self, offset):
        """Where a header is, in words: its offset and the member it follows."""
        if self.last_name is None:
            return "the first tar header, at offset %d" % offset
        return "the tar header at offset %d (after member %r)" % (offset, self.last_name)

    def read_exact(self, size, what):
        data = self._file.read(size)
        if len(data) != size:
            parts = [data]
            have = len(data)
            while have < size:
                more = self._file.read(size - have)
                if not more:
                    raise TarFormatError("stream truncated: %s needs %d bytes at offset %d, only %d left"
                                         % (what, size, self.position, have))
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        self.position += size
        return data

    def _skip_pending(self):
        while self._pending_skip:
            step = min(self._pending_skip, 1 << 20)
            self.read_exact(step, "skipping member data")
            self._pending_skip -= step

    def next_member(self):
        """The next regular-file member, or None at the end-of-archive marker."""
        self._skip_pending()
        long_name = None
        pax = {}
        first = None               # offset of the first header of this member (extended headers come first)
        while True:
            offset = self.position
            block = self._file.read(BLOCK)
            if len(block) < BLOCK:
                while block and len(block) < BLOCK:
                    more = self._file.read(BLOCK - len(block))
                    if not more:
                        break
                    block += more
                if not block:
                    raise TarFormatError("stream truncated at %s: the tar end-of-archive marker is missing"
                                         % self.where(offset))
                if len(block) < BLOCK:
                    raise TarFormatError("stream truncated inside %s" % self.where(offset))
            self.position += BLOCK
            if block == bytes(BLOCK):
                self.ended = True
                return None
            first = offset if first is None else first
            where = self.where(first)
            if not _header_checksum_ok(block):
                raise TarFormatError("bad tar header checksum in %s: not a tar stream, or a damaged one" % where)
            size = _octal_or_base256(block[124:136], "size", where)
            typeflag = block[156:157]
            if typeflag in (b"L", b"x", b"g"):
                if size > MAX_LONG_NAME:
                    raise TarFormatError("extended header of %d bytes in %s is too large" % (size, where))
                data = self.read_exact(size + (-size % BLOCK), "extended header")[:size]
                if typeflag == b"L":
                    long_name = _c_string(data)
                elif typeflag == b"x":
                    pax.update(_pax_records(data, where))
                continue
            name = long_name if long_name is not None else _c_string(block[0:100])
            if long_name is None and block[257:262] == b"ustar":
                prefix = _c_string(block[345:500])
                if prefix:
                    name = prefix + b"/" + name
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                size = _pax_size(pax["size"], where)
            self._pending_skip = size + (-size % BLOCK)
            if typeflag == DIRECTORY_TYPE:
                long_name, pax, first = None, {}, None
                self._skip_pending()
                continue
            name = _decode_name(name, where)
            if typeflag not in REGULAR_TYPES:
                raise TarFormatError("member %r at offset %d has tar type %r; an XVA holds only regular files"
                                     % (name, offset, typeflag.decode("latin-1")))
            self.last_name = name
            return TarMember(name, size, self.position)

    def read_member_into(self, member, buffer):
        """Read the data of ``member`` into ``buffer`` (reused by the caller: no allocation per
        chunk); returns a memoryview of the filled part."""
        view = memoryview(buffer)[:member.size]
        have = 0
        while have < member.size:
            got = self._file.readinto(view[have:])
            if not got:
                raise TarFormatError("stream truncated: member %r needs %d bytes at offset %d, only %d left"
                                     % (member.name, member.size, self.position, have))
            have += got
        self.position += member.size
        self._pending_skip = -member.size % BLOCK
        return view

    def read_member(self, member):
        """The whole data of ``member`` (which must be the current one)."""
        padded = member.size + (-member.size % BLOCK)
        data = self.read_exact(padded, "member %r" % member.name)
        self._pending_skip = 0
        return data if padded == member.size else data[:member.size]
