# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where an XVA stream comes from: a file, a pipe (``-`` or a FIFO), XAPI's HTTP ``/export``, or a
file on another host read over SSH (``ssh://[user@]host[:port]/path`` or ``[user@]host:/path``).

Compression wraps the whole stream and is recognised by its magic bytes, never by the file
name: ``xe vm-export compress=true`` writes gzip, ``compress=zstd`` writes zstd, and both are
often saved as plain ``.xva``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import http.client
import io
import re
import shlex
import socket
import subprocess
import tempfile
import threading
import ssl
import zlib
import os
import sys

try:
    import queue
except ImportError:  # pragma: no cover - Python 2 is not supported, keeps sanity's import test quiet
    import Queue as queue

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

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import profile

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
INTERRUPT_WAIT = 10  # s for a read-ahead thread to notice its connection was shut down
# Query parameters whose values are credentials (xapi's session_id, and what other tools put in URLs).
_SECRET_QUERY_KEY = re.compile(r"session|pass|pwd|token|secret|key|auth|sig|cred", re.IGNORECASE)
REDACTED = "********"
# ssh is given at most this long to connect; the source's ``timeout`` (long by default, for silent
# HTTP exports) would otherwise leave a dead host hanging for half an hour.
SSH_MAX_CONNECT_TIMEOUT = 30
SSH_KEEPALIVE_INTERVAL = 15
# scp's spelling: ``[user@]host:/absolute/path``; a host is a name, an IPv4 address or a
# bracketed IPv6 address, never anything with a slash (``./a:/b`` is a local path).
_SCP_STYLE = re.compile(r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
                        r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(?P<path>/.*)$")


class SourceError(ValueError):
    """The source cannot be opened or its compression is not one an XVA uses."""


class MissingLibraryError(SourceError):
    def __init__(self, library, reason):
        SourceError.__init__(self, "%s is required %s" % (library, reason))
        self.library = library
        self.reason = reason


def is_url(src):
    return src.startswith(("http://", "https://"))


class SshSource:
    """Where a file on another host is: ``user`` and ``port`` are None for ssh's own defaults."""

    def __init__(self, host, path, user=None, port=None):
        self.host = host
        self.path = path
        self.user = user
        self.port = port

    def netloc(self):
        return ("%s@" % self.user if self.user else "") + self.host + (":%d" % self.port if self.port else "")

    def url(self):
        """The source as an ``ssh://`` URL, the one spelling used in messages and manifests."""
        return "ssh://%s%s" % (self.netloc(), quote(self.path))

    def label(self):
        return "%s%s:%s" % ("%s@" % self.user if self.user else "", self.host, self.path)

    def remote_command(self):
        return "cat -- %s" % shlex.quote(self.path)

    def telling_lines(self, lines):
        """The lines of the remote side's standard error worth a message: ssh and cat say it last."""
        return lines[-3:]


XE_SSH_SCHEME = "xe+ssh://"
XE_COMPRESS = {"zstd": "zstd", "gzip": "true", "none": "false"}  # ours -> xe's compress= (true is gzip)
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")


class XeExportSource(SshSource):
    """``xe vm-export uuid=UUID filename= compress=...`` run on a Xen host over ssh: the export
    written to xe's standard output (empty ``filename=``), for sites whose XAPI HTTPS the KVM host
    cannot reach.  ``xe`` is the command's path on the Xen host."""

    def __init__(self, host, uuid, compress="zstd", user=None, port=None, xe="xe"):
        SshSource.__init__(self, host, "", user, port)
        self.uuid = uuid
        self.compress = compress
        self.xe = xe

    def url(self):
        query = [("uuid", self.uuid), ("compress", self.compress)] + ([("xe", self.xe)] if self.xe != "xe" else [])
        return "%s%s/?%s" % (XE_SSH_SCHEME, self.netloc(), urlencode(query, safe="/"))

    def label(self):
        return self.url()

    def telling_lines(self, lines):
        """xe names the error first, then one line per parameter (the VM, expected, actual...)."""
        return lines[:6]

    def remote_command(self):
        return " ".join(shlex.quote(word) for word in (
            self.xe, "vm-export", "uuid=%s" % self.uuid, "filename=", "compress=%s" % XE_COMPRESS[self.compress]))


def parse_xe_source(src):
    """An :class:`XeExportSource` from ``xe+ssh://[user@]host[:port]/?uuid=UUID[&compress=zstd|gzip|none]
    [&xe=/path/to/xe]``."""
    parts, port = _ssh_url_parts(src, "xe+ssh://")
    where = _ssh_host_only(src)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"uuid", "compress", "xe"})
    if parts.path not in ("", "/") or parts.fragment or unknown:
        raise SourceError("%s: an xe+ssh:// source is xe+ssh://[user@]host[:port]/?uuid=UUID&compress=zstd|gzip|none"
                          "%s" % (where, " (unknown: %s)" % ", ".join(unknown) if unknown else ""))
    if not _UUID.match(query.get("uuid", "")):
        raise SourceError("%s: uuid= must be the uuid of the VM or snapshot to export, not %r"
                          % (where, query.get("uuid", "")))
    compress = query.get("compress", "zstd")
    if compress not in XE_COMPRESS:
        raise SourceError("%s: compress= must be one of zstd, gzip, none, not %r" % (where, compress))
    xe = query.get("xe", "xe")
    if xe != "xe" and not xe.startswith("/"):
        raise SourceError("%s: xe= must be an absolute path to xe on the Xen host, not %r" % (where, xe))
    return XeExportSource(parts.hostname, query["uuid"], compress, _user_of(parts), port, xe)


def is_ssh_source(src):
    """Whether ``src`` names a file on another host.

    ``ssh://...`` always does.  ``[user@]host:/path`` (scp's spelling) does only when the part
    before the colon looks like a host name or address, the part after it is an absolute path,
    and no local file of that name exists: ``backup:/x.xva`` in the current directory, or
    ``./vm:1.xva``, stay local paths; anything with ``://`` is a URL, never scp's spelling.
    """
    src = os.fspath(src)
    if src.startswith(("ssh://", XE_SSH_SCHEME)):
        return True
    if "://" in src:  # http://, https:// and schemes nobody supports are no scp spelling
        return False
    return bool(_SCP_STYLE.match(src)) and not os.path.lexists(src)


def _ssh_host_only(src):
    """An ``ssh://`` URL cut down to its host, for messages about a URL that does not parse."""
    return "ssh://%s" % urlsplit(src).netloc.rsplit("@", 1)[-1]


def parse_ssh_source(src):
    """An :class:`SshSource` from ``ssh://[user@]host[:port]/abs/path`` or ``[user@]host:/abs/path``."""
    src = os.fspath(src)
    if src.startswith(XE_SSH_SCHEME):
        return parse_xe_source(src)
    if not src.startswith("ssh://"):
        match = _SCP_STYLE.match(src)
        if not match:
            raise SourceError("%s is not an ssh source ([user@]host:/absolute/path)" % src)
        return SshSource(match.group("host").strip("[]"), match.group("path"), match.group("user"))
    parts, port = _ssh_url_parts(src, "ssh://")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/" or parts.query or parts.fragment:
        raise SourceError("%s: an ssh:// source is ssh://[user@]host[:port]/absolute/path to the XVA "
                          "(no query, no fragment)" % _ssh_host_only(src))
    return SshSource(parts.hostname, path, _user_of(parts), port)


def _ssh_url_parts(src, scheme):
    """The split URL of an ssh:// or xe+ssh:// source and its port, after the checks both share."""
    parts = urlsplit(src)
    if parts.password is not None:
        raise SourceError("an %s source takes no password (ssh runs in batch mode): use a key, "
                          "ssh_private_key or the ssh agent" % scheme)
    if not parts.hostname:
        raise SourceError("%s names no host" % _ssh_host_only(src))
    try:
        return parts, parts.port
    except ValueError:
        raise SourceError("%s: the port is not a number from 1 to 65535" % _ssh_host_only(src))


def _user_of(parts):
    return unquote(parts.username) if parts.username else None


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
        with profile.timed("reading"):
            data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        if self._head or not hasattr(self._file, "readinto"):
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        with profile.timed("reading"):
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
    if is_ssh_source(src):
        try:
            return parse_ssh_source(src).url()
        except SourceError:
            return _ssh_host_only(src) if src.startswith(("ssh://", XE_SSH_SCHEME)) else src
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
    if not (is_url(src) or src.startswith("ssh://")):
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

    def readinto(self, buffer):
        # Straight into the caller's buffer: http.client decodes the chunked framing in place,
        # where read() would join the chunks into new bytes and copy them once more.
        try:
            got = self._response.readinto(buffer) or 0
        except (OSError, http.client.HTTPException) as exc:
            raise self._failed(exc)
        self.received += got
        return got

    def interrupt(self):
        """Ends a read of the connection waiting in another thread (shutdown wakes it)."""
        try:
            connection = socket.fromfd(self._response.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            return  # already closed, or no socket under this response
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            connection.close()  # the duplicate only

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


class _SshBody(io.RawIOBase):
    """The standard output of ``ssh HOST cat -- PATH``.  At its end ssh's exit status decides
    whether the stream was complete; closing it early kills and reaps ssh."""

    def __init__(self, process, stderr, source):
        io.RawIOBase.__init__(self)
        self._process = process
        self._stderr = stderr
        self._source = source
        self.received = 0
        self._released = False

    def readable(self):
        return True

    def readinto(self, buffer):
        got = self._process.stdout.readinto(buffer) or 0
        if not got:
            self._check_exit()
        self.received += got
        return got

    def _check_exit(self):
        code = self._process.wait()
        if code != 0:
            raise SourceError(ssh_failure_message(self._source, code, self._stderr_text(), self.received))

    def _stderr_text(self):
        self._stderr.seek(0)
        return self._stderr.read(65536).decode("utf-8", "replace")

    def interrupt(self):
        """Ends a read of ssh's output waiting in another thread: ssh stops, the pipe ends."""
        if self._process.poll() is None:
            self._process.kill()  # we stop reading; without this ssh would block on a full pipe

    def close(self):
        if self._released:
            return
        self._released = True
        try:
            self.interrupt()
            self._process.wait()
            self._process.stdout.close()
            self._stderr.close()
        finally:
            io.RawIOBase.close(self)


def ssh_failure_message(source, code, stderr, received=0):
    """What went wrong reading ``source`` over ssh, from its exit status and standard error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = "; ".join(source.telling_lines(lines)) or "no message"
    where = source.url()
    if received:  # the connection or the remote command died midway
        return "reading %s over ssh broke off after %d bytes (ssh exit %d): %s" % (where, received, code, said)
    if code == 255:  # ssh itself failed: connection, authentication or host key
        hint = ""
        if "Permission denied" in said:
            hint = " (the key was refused: check ssh_private_key and the remote authorized_keys)"
        elif "Host key verification failed" in said or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            hint = " (the host key is unknown or changed: add it to known_hosts on this host)"
        elif "Connection refused" in said:
            hint = " (nothing listens on the ssh port)"
        elif "timed out" in said:
            hint = " (no answer)"
        return "cannot reach %s over ssh for %s%s: %s" % (source.host, where, hint, said)
    return "cannot read %s over ssh (exit %d): %s" % (where, code, said)


def ssh_command(source, ssh_options=None, ssh_private_key=None, timeout=DEFAULT_TIMEOUT):
    """The argv that prints the remote file on standard output: the system ssh in batch mode
    (never a password or passphrase prompt), no tty, ``--`` before the destination."""
    connect = max(1, min(int(timeout or SSH_MAX_CONNECT_TIMEOUT), SSH_MAX_CONNECT_TIMEOUT))
    keepalives = max(1, int(timeout or DEFAULT_TIMEOUT) // SSH_KEEPALIVE_INTERVAL)
    argv = ["ssh", "-T", "-x", "-a", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % connect,
            "-o", "ServerAliveInterval=%d" % SSH_KEEPALIVE_INTERVAL, "-o", "ServerAliveCountMax=%d" % keepalives,
            "-o", "LogLevel=ERROR"]
    if ssh_private_key:
        argv += ["-i", os.fspath(ssh_private_key), "-o", "IdentitiesOnly=yes"]
    for option in ssh_options or ():
        if not _looks_like_ssh_option(option):
            raise SourceError("ssh_options takes ssh -o options such as StrictHostKeyChecking=yes, not %r" % option)
        argv += ["-o", option]
    if source.port:
        argv += ["-p", str(source.port)]
    if source.user:
        argv += ["-l", source.user]
    return argv + ["--", source.host, source.remote_command()]


def _looks_like_ssh_option(option):
    """``Keyword=value`` or ``Keyword value``, as ``ssh -o`` takes it; never another ssh flag."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9]*\s*[=\s]\s*\S", option or ""))


def open_ssh(src, ssh_options=None, ssh_private_key=None, timeout=DEFAULT_TIMEOUT):
    """Start ssh and return its output as a raw stream; the size stays unknown (finding it
    would cost another connection)."""
    source = parse_ssh_source(src)
    argv = ssh_command(source, ssh_options, ssh_private_key, timeout)
    stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ssh can never block on it
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                   bufsize=0, close_fds=True)  # restore_signals: ssh gets SIGPIPE back
    except OSError as exc:
        stderr.close()
        if isinstance(exc, FileNotFoundError):
            raise SourceError("cannot read %s: the ssh client is not installed on this host (Debian: "
                              "openssh-client)" % source.label())
        raise SourceError("cannot start ssh for %s: %s" % (source.label(), exc.strerror or exc))
    return _SshBody(process, stderr, source)


class ReadAhead(io.RawIOBase):
    """Reads a network stream in a thread of its own, up to ``depth`` blocks ahead of the
    reader: waiting for the network, TLS decryption (or draining ssh's pipe) then overlap with
    parsing, decompressing and hashing. Errors reach the reader at the point where they happened
    in the stream."""

    def __init__(self, raw, block=READ_SIZE, depth=3):
        io.RawIOBase.__init__(self)
        self._raw = raw
        self._filled = queue.Queue()
        self._free = queue.Queue()
        for _slot in range(depth):
            self._free.put(bytearray(block))
        self._view = None
        self._end = None  # once the stream ended: the exception it ended with, or False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="xva-read-ahead")
        self._thread.daemon = True  # a stalled host must not keep the process alive
        self._thread.start()

    @property
    def received(self):
        return getattr(self._raw, "received", None)

    def readable(self):
        return True

    def _fill(self):
        try:
            while True:
                buffer = self._free.get()
                if buffer is None or self._closing.is_set():
                    return
                got = self._raw.readinto(buffer)
                self._filled.put((buffer, got) if got else (None, None))
                if not got:
                    return
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the reader
            self._filled.put((None, exc))

    def _next_block(self):
        if self._view is not None:
            self._free.put(self._view.obj)
            self._view = None
        if self._end is None:
            buffer, got = self._filled.get()
            if buffer is not None:
                self._view = memoryview(buffer)[:got]
                return True
            self._end = got or False
        if self._end:
            raise self._end
        return False

    def readinto(self, buffer):
        while not self._view:
            if not self._next_block():
                return 0
        size = min(len(buffer), len(self._view))
        buffer[:size] = self._view[:size]
        self._view = self._view[size:]
        return size

    def close(self):
        if self._closing.is_set():
            return
        self._closing.set()
        self._free.put(None)  # wakes the thread when it waits for a free block
        try:
            # The thread may be waiting in a read of the connection: end that read first, so
            # the stream is never closed (and its descriptor reused) under it.
            self._raw.interrupt()
            self._thread.join(INTERRUPT_WAIT)
            self._raw.close()
        finally:
            io.RawIOBase.close(self)


def open_raw(src, open_url_func=None, ssh_options=None, ssh_private_key=None, **url_options):
    """A CountingReader over the raw (possibly compressed) bytes of ``src``."""
    if src == "-":
        return CountingReader(sys.stdin.buffer)
    if is_ssh_source(src):
        return CountingReader(ReadAhead(open_ssh(src, ssh_options, ssh_private_key,
                                                 url_options.get("timeout", DEFAULT_TIMEOUT))))
    if is_url(src):
        if open_url_func is None:
            raise SourceError("no HTTP client given for %s" % _redact(src))
        response, length = open_url(src, open_url_func, **url_options)
        return CountingReader(ReadAhead(response), length)
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
    if src == "-" or is_url(src) or is_ssh_source(src):
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


def decompressing_reader(raw, compression, decoder=None):
    """A buffered reader of the tar stream inside ``raw``: through a decoder process when the host
    has one (``decoder``: auto, external or library; see decoders.py), else in this process."""
    # Imported here: decoders imports SourceError from this module.
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.decoders import external_decoder
    external = external_decoder(raw, compression, decoder)
    if external is not None:
        return io.BufferedReader(external, READ_SIZE)
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
