# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long copy, written as JSON to a status file another process can poll, and read
back as one compact line (``read_status``, ``progress_line``) by the xva_convert action plugin.

A timer thread writes the file, so it keeps being refreshed while the source stalls (XAPI sends
keep-alives when it has nothing to say) — a reader of the file can tell "slow" from "hung".
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile
import threading
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._durable import fsync_path
from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import temp_mark

INTERVAL = 1.0
MiB = 1 << 20
GIB_FROM = 10 << 30  # from this total on, sizes read better in GiB


def write_json_atomically(path, payload, durable=True):
    """Write ``payload`` to ``path`` through a temporary file and a rename.  ``durable``: the
    file and its directory entry are synced, so after a crash the file is old or new, never
    empty.  The temporary name carries its owner, so a killed run's leftover can be swept."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s%s." % (os.path.basename(path), temp_mark()), dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True)
            handle.write("\n")
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(tmp, path)
        if durable:
            fsync_path(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class ProgressReporter:
    """Calls ``snapshot()`` (returning ``(done, total, extra_dict)``) every second and writes it."""

    def __init__(self, path, snapshot, interval=INTERVAL):
        self.path = path
        self.snapshot = snapshot
        self.interval = interval
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = None

    def status(self, state="running", error=None):
        done, total, extra = self.snapshot()
        elapsed = max(time.time() - self.started, 1e-6)
        rate = done / elapsed
        remaining = max(total - done, 0) if total else None
        payload = {
            "state": state,
            "bytes_done": done,
            "bytes_total": total,
            "percent": round(100.0 * done / total, 1) if total else None,
            "elapsed_s": round(elapsed, 1),
            "mb_per_s": round(rate / (1 << 20), 1),
            "eta_s": round(remaining / rate, 1) if remaining is not None and rate > 0 else None,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # lets whoever follows the file stop the conversion (the action plugin, when its task is cut short)
            "pid": os.getpid(),
        }
        payload.update(extra)
        if error:
            payload["error"] = error
        return payload

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._write("running")

    def _write(self, state, error=None):
        # Only the final state is synced: an fsync every second would wait behind the image
        # data being written back.
        try:
            write_json_atomically(self.path, self.status(state, error), durable=state != "running")
        except (OSError, ValueError):
            pass  # progress is advisory; it must never break the conversion

    def __enter__(self):
        if self.path:
            self._write("running")
            self._thread = threading.Thread(target=self._loop, name="xva-progress")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._thread is not None:
            self._stop.set()
            try:
                self._thread.join()
            except BaseException as late:  # a signal turned into an exception while waiting
                exc = exc or late
                self._thread.join()  # its last "running" must not land after our final state
                raise
            finally:
                self._write("failed" if exc is not None else "done", str(exc) if exc is not None else None)
        return False


def read_status(text):
    """The status dict in a status file's ``text``; None when the text is empty or not a JSON object."""
    try:
        status = json.loads(text)
    except (TypeError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def format_duration(seconds):
    """``m:ss`` below an hour, ``h:mm:ss`` from one on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return "%d:%02d:%02d" % (hours, minutes, secs)
    return "%d:%02d" % (minutes, secs)


def _number(status, key):
    value = status.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _amount(done, total):
    if total is not None and total >= GIB_FROM:
        return "%.1f/%.1f GiB" % (done / float(1 << 30), total / float(1 << 30))
    if total:
        return "%d/%d MiB" % (done // MiB, total // MiB)
    return "%d MiB" % (done // MiB)


def progress_line(label, status, waited=None):
    """One line for a console: ``[label] convert 42% 310/740 MiB 85 MiB/s ETA 0:05``.

    ``status`` is what ``read_status`` returned (None before the module wrote its first status;
    ``waited``, the seconds since the start, then says for how long).  The phase is the status's
    ``phase`` when it has one; a state other than ``running``, or ``finishing`` once every byte
    is written, is shown instead of the ETA.
    """
    if not status:
        line = "[%s] convert starting" % label
        return line + (" (%s)" % format_duration(waited) if waited is not None else "")
    parts = ["[%s]" % label, str(status.get("phase") or "convert")]
    percent = _number(status, "percent")
    if percent is not None:
        parts.append("%d%%" % int(percent))
    done = _number(status, "bytes_done")
    if done is not None:
        parts.append(_amount(done, _number(status, "bytes_total")))
    rate = _number(status, "mb_per_s")
    if rate is not None:
        parts.append("%s MiB/s" % ("%.1f" % rate if rate < 10 else "%d" % round(rate)))
    state = status.get("state") or "running"
    total = _number(status, "bytes_total")
    if state != "running":
        parts.append(str(state))
    elif total and done is not None and done >= total:
        parts.append("finishing")  # every byte is written: syncing, qcow2 conversion, renames
    else:
        eta = _number(status, "eta_s")
        parts.append("ETA " + (format_duration(eta) if eta is not None else "?"))
    return " ".join(parts)
