# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a conversion's time goes, for ``make bench PROFILE=1``: seconds per phase (reading,
decompressing, hashing, writing, syncing, ...), summed over the threads that spend them.

Off unless the environment has ``XEN2KVM_PROFILE=<path>``: then ``timed``/``add`` collect and
``save`` writes the totals there as JSON. When off, ``timed`` costs one attribute lookup.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import threading
import time

_PATH = os.environ.get("XEN2KVM_PROFILE") or None
_TOTALS = {}
_LOCK = threading.Lock()


def enabled():
    return _PATH is not None


def add(phase, seconds):
    if _PATH is None:
        return
    with _LOCK:
        _TOTALS[phase] = _TOTALS.get(phase, 0.0) + seconds


class timed:
    """``with timed("hashing"): ...`` adds the block's wall time to the phase."""

    __slots__ = ("phase", "start")

    def __init__(self, phase):
        self.phase = phase
        self.start = None

    def __enter__(self):
        if _PATH is not None:
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        if self.start is not None:
            add(self.phase, time.perf_counter() - self.start)
        return False


def totals():
    with _LOCK:
        return dict(_TOTALS)


def save():
    """Write the totals to the XEN2KVM_PROFILE file (nothing when profiling is off)."""
    if _PATH is None:
        return
    temp = "%s.%d.tmp" % (_PATH, os.getpid())
    with open(temp, "w") as handle:
        json.dump(totals(), handle, sort_keys=True)
    os.replace(temp, _PATH)
