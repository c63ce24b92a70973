# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of every module that talks to a XenServer / XCP-ng pool through XAPI."""

    DOCUMENTATION = r"""
options:
  xapi_url:
    description:
      - The pool master, as C(https://xenhost1) or a bare host name (then C(https://NAME)).
        Only the scheme, host and port are used.
      - A pool member answers with an error naming the master; give the master.
      - If not set, the environment variable C(XENSERVER_HOST) is used (as community.general's
        xenserver modules do).
      - Required with O(transport=xapi) (the default); not used with O(transport=ssh).
    type: str
  username:
    description:
      - The XAPI user. If not set, the environment variable C(XENSERVER_USER) is used.
    type: str
    default: root
  password:
    description:
      - The XAPI user's password. If not set, the environment variable C(XENSERVER_PASSWORD) is
        used. Never shown in results or logs.
    type: str
  validate_certs:
    description:
      - Verify the pool's TLS certificate. If not set, the environment variable
        C(XENSERVER_VALIDATE_CERTS) is used.
      - To trust a pool with a self-signed certificate (XCP-ng's default), give it in O(ca_path)
        rather than turning this off.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file of CA certificates (or the pool master's own certificate) to verify the pool
        against, instead of the system's trust store. On XCP-ng the host's certificate is in
        C(/etc/xensource/xapi-ssl.pem) (copy the certificate part only).
    type: path
notes:
  - One XAPI session per task, logged out when the task ends, also when it fails or is stopped
    by SIGTERM, SIGINT or SIGHUP.
requirements:
  - XenAPI (the XenAPI Python SDK, C(pip install XenAPI)) on the host the module runs on, with
    O(transport=xapi)
"""

    # The VM a module works on, found by name or uuid (lookup.py).
    VM = r"""
options:
  name:
    description:
      - The VM's name (name_label). Exactly one of O(name) and O(uuid) (C(xen_vm_export) with
        O(xen2kvm.migration.xen_vm_export#module:state=released) needs neither).
      - A name that several VMs share fails, listing their uuids.
    type: str
  uuid:
    description: The VM's uuid.
    type: str
"""
