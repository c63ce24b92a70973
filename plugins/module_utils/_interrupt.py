# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stopping cleanly: signals become exceptions, and temporary files carry their owner.

A conversion or a repartition writes big temporary files.  SIGTERM (systemd, ``timeout``,
Ansible's async timeout), SIGINT (Ctrl-C) and SIGHUP (a closed ssh session) kill Python
without running ``finally`` blocks, so those files would stay behind: ``SignalGuard`` turns the
signals into an exception for as long as such files exist, and the normal cleanup runs.
SIGKILL cannot be caught, so every temporary name carries ``<pid>@<host>`` and the next run
removes the ones whose process is gone (``sweep_dead_temps``), never those of a live one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import re
import signal
import socket
import stat
import threading

TEMP_MARK = ".xen2kvm-part"
GUARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_TAGGED = re.compile(r"\.xen2kvm-part\.(\d+)@([A-Za-z0-9_-]+)(?:\.|$)")


def _host():
    return re.sub(r"[^A-Za-z0-9-]+", "_", socket.gethostname())[:40] or "host"


def owner_tag():
    """``<pid>@<host>``: the host keeps a directory shared over NFS safe from a sweep elsewhere."""
    return "%d@%s" % (os.getpid(), _host())


def temp_mark():
    """The part of every temporary name that says whose it is, e.g. ``.xen2kvm-part.123@kvm1``."""
    return "%s.%s" % (TEMP_MARK, owner_tag())


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def sweep_dead_temps(directory):
    """Remove the temporary files in ``directory`` left by processes of this host that died
    (SIGKILL, power loss).  Returns the names removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    host = _host()
    removed = []
    for name in names:
        match = _TAGGED.search(name)
        if not match or match.group(2) != host or process_alive(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            os.unlink(path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        removed.append(name)
    return sorted(removed)


class SignalGuard:
    """While active, SIGTERM/SIGINT/SIGHUP raise ``make_error(signal_name)`` in the main thread.

    Only the first signal raises; later ones (an impatient second Ctrl-C) must not cut the
    cleanup short.  Inside ``deferred()`` a signal is remembered and raised when the block
    ends, for steps that must not stop halfway (renaming the finished images into place).
    The previous handlers are restored on exit.  A signal the process ignores (nohup) stays
    ignored.  Outside the main thread Python cannot install handlers, so the guard does nothing
    there.
    """

    def __init__(self, make_error):
        self.make_error = make_error
        self.received = None
        self._raised = False
        self._deferring = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in GUARDED_SIGNALS:
            signum = getattr(signal, name)
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # started under nohup or in the background: meant to ignore it
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._restore()
        if exc_type is None:
            self._raise_pending()
        return False

    def _restore(self):
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum, _frame):
        if self.received is None:
            self.received = signal.Signals(signum).name
        if not self._deferring:
            self._raise_pending()

    def _raise_pending(self):
        if self.received is not None and not self._raised:
            self._raised = True
            raise self.make_error(self.received)

    @contextlib.contextmanager
    def deferred(self, raise_after=True):
        """Hold signals off for the block; with ``raise_after`` act on one that came meanwhile."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if raise_after and not self._deferring:
            self._raise_pending()
