# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where an XVA stream comes from: a file, a pipe (``-`` or a FIFO) or XAPI's HTTP ``/export``.

Compression wraps the whole stream and is recognised by its magic bytes, never by the file
name: ``xe vm-export compress=true`` writes gzip, ``compress=zstd`` writes zstd, and both are
often saved as plain ``.xva``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import http.client
import io
import re
import socket
import ssl
import zlib
import os
import sys

try:
    from urllib.parse import urlsplit, urlunsplit, urlencode, parse_qsl, quote, unquote
except ImportError:  # pragma: no cover - Python 2 is not supported, keeps sanity's import test quiet
    urlsplit = urlunsplit = urlencode = parse_qsl = quote = unquote = None

try:
    import zstandard
    HAS_ZSTANDARD = True
except ImportError:
    zstandard = None
    HAS_ZSTANDARD = False

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Compressions XenServer never writes but a user may have applied to a saved export.
FOREIGN_MAGICS = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x04\x22\x4d\x18", "lz4"),
                  (b"\x89LZO", "lzop"), (b"PK\x03\x04", "zip"), (b"7z\xbc\xaf\x27\x1c", "7z"))
READ_SIZE = 4 << 20
# Seconds without a byte from an HTTP export before giving up.  xapi sends a keep-alive member
# after 5 s without data, but gzip and zstd hold those back until they have a block's worth of
# input: a long run of zeros in a compressed export leaves the connection silent for minutes
# (gzip -6: ~65 keep-alives, 5 min) to hours (zstd -3: thousands).  See docs/sources.md.
DEFAULT_TIMEOUT = 1800
# Query parameters whose values are credentials (xapi's session_id, and what other tools put in URLs).
_SECRET_QUERY_KEY = re.compile(r"session|pass|pwd|token|secret|key|auth|sig|cred", re.IGNORECASE)
REDACTED = "********"


class SourceError(ValueError):
    """The source cannot be opened or its compression is not one an XVA uses."""


class MissingLibraryError(SourceError):
    def __init__(self, library, reason):
        SourceError.__init__(self, "%s is required %s" % (library, reason))
        self.library = library
        self.reason = reason


def is_url(src):
    return src.startswith(("http://", "https://"))


class CountingReader(io.RawIOBase):
    """Counts the bytes read from the underlying stream (compressed bytes, for progress) and lets
    the magic bytes be looked at without consuming them from a pipe."""

    def __init__(self, fileobj, total=None):
        io.RawIOBase.__init__(self)
        self._file = fileobj
        self._head = b""
        self.bytes_read = 0
        self.total = total

    def readable(self):
        return True

    def peek_magic(self, size=4):
        while len(self._head) < size:
            more = self._file.read(size - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:size]

    def read(self, size=-1):
        if self._head:
            head, self._head = self._head[:size], self._head[size:] if size >= 0 else b""
            if size < 0:
                head += self._file.read()
            self.bytes_read += len(head)
            return head
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        if self._head or not hasattr(self._file, "readinto"):
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        got = self._file.readinto(buffer) or 0
        self.bytes_read += got
        return got

    def close(self):
        try:
            self._file.close()
        finally:
            io.RawIOBase.close(self)


class _GzipRaw(io.RawIOBase):
    """gzip through zlib directly: zlib checks each member's CRC32 and length itself (wbits=31),
    without GzipFile's second, Python-level CRC pass. Handles multi-member files (pigz)."""

    def __init__(self, raw):
        io.RawIOBase.__init__(self)
        self._raw = raw
        self._inflate = None      # None between members
        self._input = b""

    def readable(self):
        return True

    def _more_input(self):
        self._input = self._raw.read(READ_SIZE)
        return bool(self._input)

    def readinto(self, buffer):
        while True:
            if self._inflate is None:
                if not self._input and not self._more_input():
                    return 0  # a clean end after a complete member
                if not self._input.strip(b"\0"):
                    self._input = b""  # zero padding after the last member, as tape-era tools wrote
                    continue
                self._inflate = zlib.decompressobj(31)
            if not self._input and not self._more_input():
                raise EOFError("gzip stream ends before its end-of-stream marker")
            try:
                data = self._inflate.decompress(self._input, len(buffer))
            except zlib.error as exc:
                raise SourceError("gzip stream is corrupt: %s" % exc)
            if self._inflate.eof:
                self._input = self._inflate.unused_data
                self._inflate = None
            else:
                self._input = self._inflate.unconsumed_tail
            if data:
                buffer[:len(data)] = data
                return len(data)

    def close(self):
        try:
            self._raw.close()
        finally:
            io.RawIOBase.close(self)


def _with_session(url, session_id):
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "session_id"]
    query.append(("session_id", session_id))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def host_of(url):
    """``host[:port]`` of a URL, without the credentials a netloc may carry."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def redacted_source(src):
    """``src`` fit for messages, warnings, status and manifest files: a URL loses its user
    information and the values of credential-like query parameters (``session_id``...)."""
    src = os.fspath(src)
    if not is_url(src):
        return src
    parts = urlsplit(src)
    query = [(k, REDACTED if _SECRET_QUERY_KEY.search(k) else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, host_of(src), parts.path, urlencode(query, safe="*:/"), ""))


_redact = redacted_source


def source_secrets(src):
    """The credentials inside ``src`` (a URL's password and credential-like query values), in
    every spelling they may be printed in, for Ansible's ``no_log_values``."""
    src = os.fspath(src)
    if not is_url(src):
        return set()
    parts = urlsplit(src)
    found = set()
    if parts.password:
        found.add(parts.password)
    for raw in re.findall(r"(?:^|[?&;])([^=&;#]+)=([^&;#]*)", parts.query):
        if _SECRET_QUERY_KEY.search(unquote(raw[0])) and raw[1]:
            found.add(raw[1])
    secrets = set()
    for value in found:
        for spelling in (value, unquote(value), unquote(value.replace("+", " ")), quote(unquote(value), safe="")):
            if len(spelling) >= 4:  # masking very short strings would mangle unrelated output
                secrets.add(spelling)
    return secrets


class _NetworkBody(io.RawIOBase):
    """The body of an HTTP response, with network failures said as what they are.  They must
    not look like damaged data: a timeout or reset surfaces inside the gzip/zstd decoder too."""

    def __init__(self, response, url, timeout):
        io.RawIOBase.__init__(self)
        self._response = response
        self._host = host_of(url)
        self._timeout = timeout
        self.received = 0

    def readable(self):
        return True

    def _failed(self, exc):
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return SourceError("no data from %s for %s s (timeout; after %d bytes): the host or the network "
                               "stalled; raise timeout if the export is compressed and the disk has long "
                               "runs of zeros" % (self._host, self._timeout, self.received))
        if isinstance(exc, http.client.IncompleteRead):
            return SourceError("the HTTP stream from %s broke off after %d bytes (truncated)"
                               % (self._host, self.received + len(exc.partial or b"")))
        if isinstance(exc, ssl.SSLError):
            return SourceError("TLS error reading from %s after %d bytes: %s" % (self._host, self.received, exc))
        return SourceError("connection to %s failed after %d bytes: %s"
                           % (self._host, self.received, exc.strerror or exc))

    def read(self, size=-1):
        try:
            data = self._response.read(size) if size is not None and size >= 0 else self._response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._failed(exc)
        self.received += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        try:
            self._response.close()
        finally:
            io.RawIOBase.close(self)


def open_url(url, open_url_func, validate_certs=True, url_username=None, url_password=None,
             session_id=None, timeout=DEFAULT_TIMEOUT, ca_path=None):
    """Open an HTTP(S) export; redirects are followed and no Content-Length is needed (XAPI
    streams ``/export`` without one)."""
    if session_id:
        url = _with_session(url, session_id)
    try:
        response = open_url_func(url, method="GET", validate_certs=validate_certs,
                                 url_username=url_username, url_password=url_password,
                                 force_basic_auth=bool(url_username), follow_redirects="all",
                                 timeout=timeout, ca_path=ca_path)
    except (socket.timeout, TimeoutError):
        raise SourceError("no answer from %s for %s s (timeout)" % (host_of(url), timeout))
    except Exception as exc:  # urllib raises HTTPError, URLError, SSLError, socket errors...
        if isinstance(getattr(exc, "reason", None), (socket.timeout, TimeoutError)):  # URLError while connecting
            raise SourceError("no answer from %s for %s s (timeout while connecting)" % (host_of(url), timeout))
        raise SourceError("cannot open %s: %s" % (_redact(url), _without_secrets(str(exc), url)))
    length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    final_url = response.geturl() if hasattr(response, "geturl") else url
    return _NetworkBody(response, final_url or url, timeout), int(length) if length and length.isdigit() else None


def _without_secrets(text, url):
    for secret in sorted(source_secrets(url), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def open_raw(src, open_url_func=None, **url_options):
    """A CountingReader over the raw (possibly compressed) bytes of ``src``."""
    if src == "-":
        return CountingReader(sys.stdin.buffer)
    if is_url(src):
        if open_url_func is None:
            raise SourceError("no HTTP client given for %s" % _redact(src))
        response, length = open_url(src, open_url_func, **url_options)
        return CountingReader(response, length)
    try:
        handle = open(src, "rb", buffering=0)
    except OSError as exc:
        raise SourceError("cannot open %s: %s" % (src, exc.strerror or exc))
    st = os.fstat(handle.fileno())
    if os.path.isdir(src):
        handle.close()
        raise SourceError("%s is a directory, not an XVA" % src)
    total = st.st_size if st.st_size and not _is_fifo(st) else None
    return CountingReader(handle, total)


def _is_fifo(st):
    import stat
    return stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)


def describe_source(src):
    """What identifies this source across reruns (for the manifest and messages); a URL is
    redacted (no credentials, no session_id)."""
    if src == "-" or is_url(src):
        return {"src": redacted_source(src)}
    st = os.stat(src)
    return {"src": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def detect_compression(raw):
    magic = raw.peek_magic(6)
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(ZSTD_MAGIC):
        return "zstd"
    for prefix, name in FOREIGN_MAGICS:
        if magic.startswith(prefix):
            raise SourceError("not an XVA: the stream is %s-compressed; XenServer writes plain, gzip or zstd "
                              "exports, so decompress it first (or pipe it through %s -dc)" % (name, name))
    return None


def decompressing_reader(raw, compression):
    """A buffered reader of the tar stream inside ``raw``."""
    if compression == "gzip":
        return io.BufferedReader(_GzipRaw(raw), READ_SIZE)
    if compression == "zstd":
        if not HAS_ZSTANDARD:
            raise MissingLibraryError("zstandard (Debian: python3-zstandard)", "to read a zstd-compressed XVA")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_SIZE, read_across_frames=True)
        return io.BufferedReader(_ZstdRaw(reader), READ_SIZE)
    return io.BufferedReader(raw, READ_SIZE)


class _ZstdRaw(io.RawIOBase):
    """zstandard's reader as a RawIOBase, so BufferedReader can give exact-size reads."""

    def __init__(self, reader):
        io.RawIOBase.__init__(self)
        self._reader = reader

    def readable(self):
        return True

    def readinto(self, buffer):
        try:
            return self._reader.readinto(buffer)
        except zstandard.ZstdError as exc:
            raise SourceError("zstd stream is corrupt: %s" % exc)

    def close(self):
        try:
            self._reader.close()
        finally:
            io.RawIOBase.close(self)


def open_xva_stream(src, open_url_func=None, **url_options):
    """Open ``src`` and return ``(raw_counter, tar_byte_stream, compression)``."""
    raw = open_raw(src, open_url_func, **url_options)
    try:
        compression = detect_compression(raw)
        return raw, decompressing_reader(raw, compression), compression
    except Exception:
        raw.close()
        raise
