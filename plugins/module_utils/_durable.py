# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Making what was written survive a crash: one fsync for files and directories alike."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os


def fsync_path(path):
    """Flush a file (also one another program wrote: qemu-img does not sync) or a directory's
    entries (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
