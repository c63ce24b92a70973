#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xen_vm_info
short_description: Find a VM on a XenServer / XCP-ng pool and read its spec
version_added: "0.1.0"
description:
  - Finds one VM on the pool by O(name) or O(uuid) through XAPI and returns its power state,
    the host it runs on, its tags and migration mark, and its C(spec) in the same shape as
    M(xen2kvm.migration.xva_info) returns for an export of it (the collection's docs/spec.md).
  - Templates, snapshots and the control domain are never matched by name. A name that several
    VMs share fails, listing their uuids.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xapi
  - xen2kvm.migration.xapi.vm
  - xen2kvm.migration.xapi_ssh
  - xen2kvm.migration.attributes.read_only
requirements:
  - Python 3.11 on the host the module runs on (Debian 12's python3, the version tested)
  - XenAPI (the XenAPI Python SDK)
seealso:
  - module: xen2kvm.migration.xva_info
  - module: xen2kvm.migration.xen_vm_export
"""

EXAMPLES = r"""
- name: Look the VM up on the pool
  xen2kvm.migration.xen_vm_info:
    xapi_url: https://xenhost1
    username: root
    password: "{{ vault_xapi_password }}"
    ca_path: /etc/xen2kvm/xenhost1.pem
    name: web01
  delegate_to: localhost
  register: source

- name: Show where it runs
  ansible.builtin.debug:
    msg: "{{ source.vm.name }} is {{ source.vm.power_state }} on {{ source.vm.host }}"
"""

RETURN = r"""
vm:
  description: The VM as it is now.
  returned: success
  type: dict
  contains:
    uuid:
      description: The VM's uuid.
      type: str
    name:
      description: Its name_label.
      type: str
    power_state:
      description: C(Running), C(Halted), C(Suspended) or C(Paused).
      type: str
    host:
      description: The name of the host it runs on; null when it runs nowhere.
      type: str
    tags:
      description: Its tags.
      type: list
      elements: str
    mark:
      description:
        - The migration mark M(xen2kvm.migration.xen_vm_mark) set (kvm_host, domain, migrated_to,
          migrated_at, tag), or an empty dict.
      type: dict
spec:
  description:
    - The VM in the shape of M(xen2kvm.migration.xva_info)'s spec (docs/spec.md). A disk's
      C(ref) is its VDI's OpaqueRef here, C(source) describes the pool master, and
      C(source.export_vsn) is 0, as nothing was exported yet.
    - Null with O(transport=ssh) (xe gives no records in one go); run
      M(xen2kvm.migration.xva_info) on the C(export_src) of M(xen2kvm.migration.xen_vm_export) for it.
  returned: success
  type: dict
"""

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.actions import vm_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.module import run_with_pool, xapi_module


def main():
    module = xapi_module({})
    run_with_pool(module, lambda client: vm_info(client, module.params["name"], module.params["uuid"]))


if __name__ == "__main__":
    main()
