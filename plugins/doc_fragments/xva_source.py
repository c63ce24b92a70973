# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of every module that reads an XVA from a path, a pipe or an HTTP(S) URL."""

    DOCUMENTATION = r"""
options:
  src:
    description:
      - The XVA. A path on the target host, C(-) for standard input, a FIFO (for example fed by
        C(xe vm-export filename= ...)), or an C(http://) or C(https://) URL such as XAPI's
        C(/export?uuid=...). Plain, gzip and zstd streams are recognised by their magic bytes.
      - Redirects are followed and no Content-Length is needed.
    type: str
    required: true
  validate_certs:
    description: Verify the server's TLS certificate when O(src) is an C(https://) URL.
    type: bool
    default: true
  url_username:
    description: User for HTTP basic authentication.
    type: str
  url_password:
    description: Password for HTTP basic authentication.
    type: str
  session_id:
    description:
      - An XAPI session reference (C(OpaqueRef:...)), added to the URL as the C(session_id) parameter.
    type: str
  timeout:
    description: Seconds to wait for the HTTP server to answer.
    type: int
    default: 60
"""
