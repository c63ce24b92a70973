# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Linux names the n-th disk (a, b, ..., z, aa, ...), shared by the guest fixups and the
domain XML: both must agree that the i-th disk in boot order is ``vd<letters(i)>``."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def disk_letters(index):
    """0 -> a, 25 -> z, 26 -> aa."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def virtio_disk(index):
    """vda, vdb, ... for the index-th disk."""
    return "vd" + disk_letters(index)
