# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decompression in a process of its own (``zstd -dc``, ``igzip -dc``, ``pigz -dc``).

In-process decompression holds the GIL for much of its time and shares two cores with tar
parsing, hashing and writing; a decoder process runs beside them.  We still read the source
ourselves (a feeder thread copies it into the decoder's standard input), so files, pipes, HTTP
and ssh sources behave the same and progress keeps counting the compressed bytes.

``XEN2KVM_DECODER=auto|external|library`` chooses: ``auto`` (the default) uses what measured
faster on each format (a decoder process for gzip, the library for zstd unless python3-zstandard
is missing), ``external`` a decoder process whenever the host has one, ``library`` always the
in-process path.  A host without any decoder silently uses the library.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import profile, stream
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import SourceError

DECODER_ENV = "XEN2KVM_DECODER"
CHOICES = ("auto", "external", "library")
# Best first: igzip (ISA-L, Debian package isal) decodes gzip ~3x faster than zlib, pigz ~1.5x.
DECODERS = {
    "gzip": (("igzip", "-dc"), ("pigz", "-dc")),
    "zstd": (("zstd", "-dc"),),
}
# Formats where ``auto`` takes a decoder process even when the library is there.  gzip: igzip
# beside the converter beat zlib inside it clearly (3 GiB disk, 700 MiB data: 1.9-2.5 s against
# 2.7-4.1 s).  zstd: the library is as fast or faster and costs ~0.5 s less CPU (zstandard
# decodes outside the GIL, and the pipes cost copies), so ``zstd -dc`` is only for hosts without
# python3-zstandard.
AUTO_EXTERNAL = ("gzip",)
FEED_SIZE = 1 << 20
PIPE_SIZE = 1 << 20      # Linux's default limit for unprivileged pipes (fs.pipe-max-size)
FEEDER_WAIT = 2          # s for the feeder to notice the decoder is gone (a local read ends by then)
INTERRUPT_WAIT = 10      # s for the feeder to leave a network read once the source is closed
# What the decoders say when their input ends early (zstd, igzip, pigz, gzip).
_TRUNCATION_WORDS = ("premature end", "complete gzip file", "incomplete", "unexpected end")


def decoder_choice(choice=None):
    """``choice``, else the environment's, else ``auto``; anything else is a clear error."""
    choice = choice or os.environ.get(DECODER_ENV) or "auto"
    if choice not in CHOICES:
        raise SourceError("%s must be one of %s, not %r" % (DECODER_ENV, ", ".join(CHOICES), choice))
    return choice


def find_decoder(compression):
    """The argv of the best decoder this host has for ``compression``, or None."""
    for argv in DECODERS.get(compression, ()):
        path = shutil.which(argv[0])
        if path:
            return [path] + list(argv[1:])
    return None


def external_decoder(raw, compression, choice=None):
    """An :class:`ExternalDecoder` of ``raw``, or None when the in-process library should decode."""
    choice = decoder_choice(choice)
    if compression is None or choice == "library":
        return None
    if choice == "auto" and compression not in AUTO_EXTERNAL and _library_decodes(compression):
        return None
    argv = find_decoder(compression)
    if argv is None:
        return None
    try:
        return ExternalDecoder(raw, argv, compression)
    except OSError:  # vanished or not executable since which(): the library still works
        return None


def _library_decodes(compression):
    """Whether this Python can decode ``compression`` itself (zlib always; zstd needs zstandard)."""
    return compression != "zstd" or stream.HAS_ZSTANDARD


def _widen_pipe(handle):
    """Fewer, larger reads and writes per decoded GiB; the default 64 KiB costs syscalls."""
    try:
        import fcntl
        fcntl.fcntl(handle.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (ImportError, OSError):
        pass  # not Linux, or a lower limit: the default size still works


def _write_all(handle, view):
    """False when the decoder is gone (its exit status then says why)."""
    while view:
        try:
            written = handle.write(view)
        except BrokenPipeError:
            return False
        view = view[written:]
    return True


def _how_it_ended(code):
    if code >= 0:
        return "exit %d" % code
    try:
        return "killed by signal %d, %s" % (-code, signal.Signals(-code).name)
    except ValueError:
        return "killed by signal %d" % -code


class ExternalDecoder(io.RawIOBase):
    """The decoded stream: the standard output of ``argv``, fed ``raw`` by a thread.

    Errors keep their meaning: a source error in the feeder (timeout, ssh failure) reaches the
    reader as that error; a decoder failing on damaged or cut-off data says so with its own
    words.  close() at any point kills and reaps the decoder and ends the feeder."""

    def __init__(self, raw, argv, compression=None):
        io.RawIOBase.__init__(self)
        self._raw = raw
        self.command = " ".join([os.path.basename(argv[0])] + list(argv[1:]))
        self._compression = compression or os.path.basename(argv[0])
        self._stderr = tempfile.TemporaryFile()  # a file, never a pipe that can fill up
        self._released = False
        self._feed_error = None
        self._outcome = None      # once the output ended: the exception to raise, or False
        self._stopping = False
        try:
            # A session of its own: a terminal's Ctrl-C reaches us (SignalGuard), and we end the decoder.
            self._process = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=self._stderr, bufsize=0, close_fds=True,
                                             start_new_session=True)
        except OSError:
            self._released = True  # nothing started: close() (also from __del__) has nothing to end
            self._stderr.close()
            raise
        _widen_pipe(self._process.stdin)
        _widen_pipe(self._process.stdout)
        self._feeder = threading.Thread(target=self._feed, name="xva-decoder-feed")
        self._feeder.daemon = True  # a stalled source must not keep the process alive
        self._feeder.start()

    def readable(self):
        return True

    def _feed(self):
        buffer = bytearray(FEED_SIZE)
        view = memoryview(buffer)
        try:
            while not self._stopping:
                got = self._raw.readinto(buffer)
                if not got or not _write_all(self._process.stdin, view[:got]):
                    return
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the reader
            self._feed_error = exc
        finally:
            # Set before the decoder sees its input end, so the reader finds the cause first.
            try:
                self._process.stdin.close()
            except OSError:
                pass

    def readinto(self, buffer):
        if self._outcome is None:
            with profile.timed("decompressing"):
                got = self._process.stdout.readinto(buffer) or 0
            if got:
                return got
            self._outcome = self._ending()
        if self._outcome:
            raise self._outcome
        return 0

    def _ending(self):
        """What the end of the decoder's output means: False for a complete stream, else the error."""
        code = self._process.wait()
        if self._feed_error is None and code == 0:
            self._feeder.join(INTERRUPT_WAIT)  # the decoder read to the end: the feeder is leaving
        if self._feed_error is not None:
            return self._feed_error
        if code == 0:
            return False
        return self._failure(code)

    def _failure(self, code):
        said = self._last_stderr_line()
        text = "%s failed (%s)%s" % (self.command, _how_it_ended(code), ": %s" % said if said else "")
        if code > 0 and any(word in said.lower() for word in _TRUNCATION_WORDS):
            return EOFError("%s stream ends before its end: %s" % (self._compression, text))
        if code > 0:
            return SourceError("%s stream is corrupt: %s" % (self._compression, text))
        return SourceError("cannot decompress the %s stream: %s" % (self._compression, text))

    def _last_stderr_line(self):
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 4096))
        lines = [line.strip() for line in self._stderr.read().decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        return lines[-1] if lines else ""

    def close(self):
        if self._released:
            return
        self._released = True
        try:
            self._stop()
        finally:
            io.RawIOBase.close(self)

    def _stop(self):
        self._stopping = True
        try:
            if self._process.poll() is None:
                self._process.kill()  # early close: we stop reading, it would block on a full pipe
            self._process.wait()
            self._feeder.join(FEEDER_WAIT)  # its next write fails: the decoder is gone
            if self._feeder.is_alive():
                self._raw.close()  # a read waiting on the network: closing the source ends it
                self._feeder.join(INTERRUPT_WAIT)
        finally:
            self._process.stdout.close()
            self._stderr.close()
            self._raw.close()
