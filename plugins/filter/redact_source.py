# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: redact_source
short_description: An XVA source without its credentials, fit for logs and reports
version_added: "0.1.0"
description:
  - Returns the source as the modules of this collection print it. An C(http(s)://) URL loses
    its user information (C(user:password@)) and the values of credential-like query parameters
    (C(session_id), C(password), C(token), ...), which become C(********); an C(ssh://) URL or
    C([user@]host:/path) loses a password it should not carry. A path is returned as it is.
author:
  - xen2kvm developers (@xen2kvm)
options:
  _input:
    description: The source, as given to M(xen2kvm.migration.xva_convert)'s O(xen2kvm.migration.xva_convert#module:src).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Say where the XVA comes from, without the pool's password
  ansible.builtin.debug:
    msg: "{{ 'https://root:secret@xenhost1/export?uuid=5d1c&session_id=OpaqueRef:9' | xen2kvm.migration.redact_source }}"
    # https://xenhost1/export?uuid=5d1c&session_id=********
"""

RETURN = r"""
_value:
  description: The source without credentials.
  type: str
"""

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import redacted_source


class FilterModule:
    """The collection's filters."""

    def filters(self):
        return {"redact_source": redacted_source}
