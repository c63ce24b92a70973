# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The second transport of the xen_vm_* modules: xe on the Xen host over ssh."""

    DOCUMENTATION = r"""
options:
  transport:
    description:
      - C(xapi) talks to XAPI over HTTPS with the XenAPI SDK (O(xapi_url), O(username), O(password)).
      - C(ssh) runs C(xe) on the Xen host O(ssh_host) over ssh instead, for sites whose XAPI HTTPS
        the KVM host cannot reach. The results are the same, except that
        M(xen2kvm.migration.xen_vm_info) returns no C(spec) (run M(xen2kvm.migration.xva_info) on
        the export's source for it), and M(xen2kvm.migration.xen_vm_export) returns an
        C(xe+ssh://) source (C(xe vm-export ... filename= compress=...) read from xe's standard
        output) in C(export_src) for M(xen2kvm.migration.xva_convert), given the same ssh options.
      - ssh runs in batch mode (a key, never a password prompt) and checks the host key against
        known_hosts.
    type: str
    choices: [xapi, ssh]
    default: xapi
  ssh_host:
    description: The Xen host (pool master) to run C(xe) on. Required with O(transport=ssh).
    type: str
  ssh_user:
    description: The ssh user on O(ssh_host); it must be allowed to run C(xe) (normally root).
    type: str
    default: root
  ssh_port:
    description: The ssh port of O(ssh_host); ssh's own default when not set.
    type: int
  ssh_private_key:
    description: The private key to log in with (C(ssh -i)); the ssh agent and ssh's defaults otherwise.
    type: path
  ssh_options:
    description:
      - Extra C(ssh -o) options such as C(UserKnownHostsFile=/etc/xen2kvm/known_hosts).
    type: list
    elements: str
    default: []
  xe_path:
    description: The C(xe) command on the Xen host (an absolute path when it is not on the ssh user's PATH).
    type: str
    default: xe
"""
