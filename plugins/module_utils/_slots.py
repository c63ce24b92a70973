# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slots on the controller that limit how many VMs one KVM host works on at once.

Ansible's ``throttle`` counts a task over all hosts of a play, not per KVM host, and a slot has
to be held across many tasks (transfer, conversion, fixup, boot). So a slot is a file
``<dir>/<key>/slot-<N>`` (``N`` below the limit) created with ``O_EXCL``; it names the process
that owns it (the ``ansible-playbook`` process, which outlives the task that took the slot) with
that process's start time, and the holder (the VM). A slot whose process is gone, or whose pid
now belongs to a younger process, is reclaimed: a killed run never blocks the next one.

Every look at the slots of a key happens under ``flock`` on ``<dir>/<key>/.lock``, so reclaiming
a stale slot and taking a free one cannot race with another run doing the same; the kernel drops
that lock when its process dies, so the lock itself can never be stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from urllib.parse import quote

SLOT_PREFIX = "slot-"
LOCK_NAME = ".lock"
POLL_SECONDS = 1.0
REPORT_EVERY_SECONDS = 10.0

# Shared by the action plugin and the doc-only module (validate-modules compares it to the docs).
ARGUMENT_SPEC = dict(
    key=dict(type="str", required=True, no_log=False),
    holder=dict(type="str", required=True),
    state=dict(type="str", choices=["acquired", "released"], default="acquired"),
    limit=dict(type="int", default=2),
    timeout=dict(type="int", default=604800),
    dir=dict(type="path"),
)


class SlotError(Exception):
    """Bad input, or no slot within the timeout."""


def default_directory():
    """``$XDG_CACHE_HOME/xen2kvm/slots``, else ``~/.cache/xen2kvm/slots``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "xen2kvm", "slots")


def key_directory(base, key):
    """One directory per key; any inventory name maps to a distinct plain file name."""
    if not key:
        raise SlotError("the slot key (the KVM host's inventory name) is empty")
    name = quote(key, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return os.path.join(base, name)


def process_start_time(pid):
    """The start time of ``pid`` in clock ticks after boot (/proc/PID/stat field 22); None
    where /proc does not tell (the pid alone is compared then)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid, start_time):
    """Whether the process that took a slot still runs (the same process, not a reused pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = process_start_time(pid)
    if now is None or start_time is None:
        return True
    return now == start_time


def read_slot(path):
    """The slot's record, or None when it is unreadable or not a slot record (a writer that died
    between creating and writing it: writes happen under the lock, so nobody is still writing)."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    return record


class Slots:
    """The slots of one key (KVM host) under ``base``, at most ``limit`` held at once."""

    def __init__(self, base, key, limit, owner_pid=None):
        if limit < 1:
            raise SlotError("the limit of VMs at once on %s must be at least 1, not %d" % (key, limit))
        self.key = key
        self.limit = limit
        self.directory = key_directory(base, key)
        self.owner_pid = owner_pid if owner_pid is not None else os.getppid()
        self.owner_start = process_start_time(self.owner_pid)

    def _locked(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _live_slots(self):
        """``{path: record}`` of the slots held by running processes; stale ones are removed."""
        live = {}
        for name in sorted(os.listdir(self.directory)):
            if not name.startswith(SLOT_PREFIX):
                continue
            path = os.path.join(self.directory, name)
            record = read_slot(path)
            if record is not None and process_alive(record["pid"], record.get("start_time")):
                live[path] = record
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return live

    def _mine(self, record, holder):
        return record.get("holder") == holder and record["pid"] == self.owner_pid

    def try_acquire(self, holder):
        """``(path, busy)``: the slot taken (or already held by ``holder`` of this run), else None
        and the records of the slots that are busy."""
        fd = self._locked()
        try:
            live = self._live_slots()
            for path, record in live.items():
                if self._mine(record, holder):
                    return path, []
            if len(live) >= self.limit:
                return None, sorted(live.values(), key=lambda r: (r.get("acquired", 0), r.get("holder", "")))
            return self._create(holder, live), []
        finally:
            os.close(fd)  # drops the flock

    def _create(self, holder, live):
        record = {"pid": self.owner_pid, "start_time": self.owner_start, "holder": holder, "acquired": time.time()}
        for index in range(self.limit):
            path = os.path.join(self.directory, "%s%d" % (SLOT_PREFIX, index))
            if path in live:
                continue
            try:
                slot_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            with os.fdopen(slot_fd, "w") as handle:
                json.dump(record, handle)
            return path
        # Fewer live slots than the limit leaves an index below the limit free; only a slot file
        # made outside this lock (by hand) can get here.
        raise SlotError("no free slot file under %s although fewer than %d are held" % (self.directory, self.limit))

    def acquire(self, holder, timeout, on_wait=None, clock=time.monotonic, sleep=time.sleep):
        """Wait until a slot is free, checking every second; ``on_wait(busy, waited)`` is called
        at the first wait and then every 10 s. Returns ``(path, seconds waited)``."""
        started = clock()
        reported = None
        while True:
            path, busy = self.try_acquire(holder)
            waited = clock() - started
            if path is not None:
                return path, waited
            if waited >= timeout:
                raise SlotError("no slot on %s after waiting %d s: %s (at most %d VMs at once, max_parallel)"
                                % (self.key, int(waited), self.describe(busy), self.limit))
            if on_wait is not None and (reported is None or waited - reported >= REPORT_EVERY_SECONDS):
                on_wait(busy, waited)
                reported = waited
            sleep(min(POLL_SECONDS, max(timeout - waited, 0)))

    def describe(self, busy):
        return "%d of %d busy: %s" % (len(busy), self.limit, ", ".join(str(r.get("holder")) for r in busy))

    def release(self, holder):
        """Remove the slot ``holder`` holds for this run; True when there was one."""
        fd = self._locked()
        try:
            released = False
            for path, record in self._live_slots().items():
                if self._mine(record, holder):
                    os.unlink(path)
                    released = True
            return released
        finally:
            os.close(fd)

    def holders(self):
        fd = self._locked()
        try:
            return sorted(str(r.get("holder")) for r in self._live_slots().values())
        finally:
            os.close(fd)
