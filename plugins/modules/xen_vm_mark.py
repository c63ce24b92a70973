#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xen_vm_mark
short_description: Mark a XenServer / XCP-ng VM as migrated to KVM, or remove the mark
version_added: "0.1.0"
description:
  - A source VM left halted after its migration carries a mark so that nobody starts it by
    mistake while its copy runs on KVM, and so a rerun of the migration sees it.
  - The mark is the other_config keys C(xen2kvm_migrated_to) (C(<kvm_host>/<domain>)) and
    C(xen2kvm_migrated_at) (UTC, ISO 8601), and the tag
    C(xen2kvm-migrated-to:<kvm_host>/<domain>), which XenCenter and Xen Orchestra show.
  - Setting the same mark again changes nothing (its time is kept); a mark naming another
    target is replaced.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xapi
  - xen2kvm.migration.xapi.vm
  - xen2kvm.migration.xapi_ssh
attributes:
  check_mode:
    support: full
    description: Reports the change without making it.
  diff_mode:
    support: full
    description: Shows the mark's other_config keys and tags before and after.
options:
  state:
    description: C(present) sets the mark, C(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  kvm_host:
    description: The KVM host the VM went to. Required with O(state=present).
    type: str
  domain:
    description: The libvirt domain it became. Required with O(state=present).
    type: str
requirements:
  - Python 3.11 on the host the module runs on (Debian 12's python3, the version tested)
  - XenAPI (the XenAPI Python SDK)
seealso:
  - module: xen2kvm.migration.xen_vm_info
"""

EXAMPLES = r"""
- name: Mark the halted source VM
  xen2kvm.migration.xen_vm_mark:
    xapi_url: https://xenhost1
    password: "{{ vault_xapi_password }}"
    ca_path: /etc/xen2kvm/xenhost1.pem
    name: web01
    kvm_host: kvm1
    domain: web01
  delegate_to: localhost

- name: Unmark it after a rollback
  xen2kvm.migration.xen_vm_mark:
    xapi_url: https://xenhost1
    password: "{{ vault_xapi_password }}"
    name: web01
    state: absent
  delegate_to: localhost
"""

RETURN = r"""
mark:
  description: The mark now (kvm_host, domain, migrated_to, migrated_at, tag), or an empty dict.
  returned: success
  type: dict
  sample: {"kvm_host": "kvm1", "domain": "web01", "migrated_to": "kvm1/web01",
           "migrated_at": "2026-01-02T03:04:05Z", "tag": "xen2kvm-migrated-to:kvm1/web01"}
vm:
  description: The VM (uuid, name, power_state, host, tags, mark), as M(xen2kvm.migration.xen_vm_info) returns it.
  returned: success
  type: dict
"""

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.actions import mark_action
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.module import run_with_pool, xapi_module


def main():
    module = xapi_module(dict(state=dict(type="str", default="present", choices=["present", "absent"]),
                              kvm_host=dict(type="str"), domain=dict(type="str")),
                         required_if=[("state", "present", ("kvm_host", "domain"))])
    params = module.params
    run_with_pool(module, lambda client: mark_action(client, params["state"], params["kvm_host"], params["domain"],
                                                     params["name"], params["uuid"], module.check_mode))


if __name__ == "__main__":
    main()
