# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt Python binding, optional at import (ansible-test's import sanity test has none),
and the one standard failure when a module needs it and the target lacks it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    LIBVIRT_IMPORT_ERROR = None

LIBVIRT_REQUIREMENT = "libvirt-python (Debian: python3-libvirt)"


def require_libvirt(module):
    """fail_json with Ansible's standard message when the libvirt binding is missing."""
    if libvirt is None:
        module.fail_json(msg=missing_required_lib(LIBVIRT_REQUIREMENT), exception=LIBVIRT_IMPORT_ERROR)
