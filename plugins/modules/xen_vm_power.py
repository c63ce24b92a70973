#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xen_vm_power
short_description: Start or cleanly shut down a VM on a XenServer / XCP-ng pool
version_added: "0.1.0"
description:
  - Brings a VM to O(state). The migration uses it to start the source VM again when the
    migration of a VM that export mode C(shutdown) stopped fails (rollback).
  - C(halted) asks the guest to shut down cleanly and waits at most O(shutdown_timeout)
    seconds; a guest that does not stop in time is left running and the module fails. It never
    forces a VM off.
  - A suspended or paused VM is refused; resume or unpause it first.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xapi
  - xen2kvm.migration.xapi.vm
  - xen2kvm.migration.xapi_ssh
attributes:
  check_mode:
    support: full
    description: Reports whether the power state would change, without changing it.
  diff_mode:
    support: none
    description: The result shows the power state before and after.
options:
  state:
    description: C(running) starts a halted VM, C(halted) shuts a running one down cleanly.
    type: str
    choices: [running, halted]
    required: true
  shutdown_timeout:
    description: Seconds to wait for a clean shutdown.
    type: int
    default: 600
requirements:
  - Python 3.11 on the host the module runs on (Debian 12's python3, the version tested)
  - XenAPI (the XenAPI Python SDK)
seealso:
  - module: xen2kvm.migration.xen_vm_export
"""

EXAMPLES = r"""
- name: Start the source VM again after a failed migration
  xen2kvm.migration.xen_vm_power:
    xapi_url: https://xenhost1
    password: "{{ vault_xapi_password }}"
    ca_path: /etc/xen2kvm/xenhost1.pem
    name: web01
    state: running
  delegate_to: localhost
"""

RETURN = r"""
power_state_before:
  description: The power state found.
  returned: success
  type: str
  sample: Halted
power_state:
  description: The power state now (in check mode, the one it would have).
  returned: success
  type: str
  sample: Running
vm:
  description: The VM (uuid, name, power_state, host, tags, mark), as M(xen2kvm.migration.xen_vm_info) returns it.
  returned: success
  type: dict
"""

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.actions import power_action
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.module import run_with_pool, xapi_module


def main():
    module = xapi_module(dict(state=dict(type="str", required=True, choices=["running", "halted"]),
                              shutdown_timeout=dict(type="int", default=600)))
    params = module.params
    run_with_pool(module, lambda client: power_action(client, params["state"], params["name"], params["uuid"],
                                                      params["shutdown_timeout"], module.check_mode))


if __name__ == "__main__":
    main()
