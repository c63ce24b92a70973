#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kvm_host_slot
short_description: Limit how many VMs one KVM host works on at once (a slot on the controller)
version_added: "0.1.0"
description:
  - Runs on the controller only (an action plugin; this file holds its documentation). With
    O(state=acquired) it waits until one of O(limit) slots of O(key) is free and takes it for
    O(holder); O(state=released) gives the holder's slot back. C(playbooks/migrate.yml) holds a
    slot of the VM's KVM host from the transfer to the end of the boot check, so a fleet run with
    many forks converts at most C(max_parallel) VMs per KVM host at once.
  - Ansible's C(throttle) counts one task over all hosts; this counts per O(key), and a slot is
    held across many tasks.
  - A slot is a file C(<dir>/<key>/slot-<N>) created exclusively, naming the C(ansible-playbook)
    process (pid and start time), the holder and when it was taken. A slot whose process is gone,
    or whose pid now belongs to another process, is taken back, so a killed run never blocks the
    next one. All changes happen under a lock (C(flock)) on C(<dir>/<key>/.lock).
  - "While it waits, it prints one line at once and then every 10 seconds, checking every
    second; for example, for vmC on kvm1 where vmA and vmB hold both slots,
    [vmC] waiting for a slot on kvm1 (2 of 2 busy: vmA, vmB)"
  - A slot is controller state, not a change on any host, so the module never reports C(changed).
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  action:
    support: full
    description: Runs as an action plugin on the controller.
  async:
    support: none
    description: Waits in the task itself.
  bypass_host_loop:
    support: none
    description: Runs once per host.
  check_mode:
    support: full
    description: Takes and releases slots as in a normal run, so a check-mode run is limited too.
  diff_mode:
    support: none
    description: No diff.
  platform:
    support: full
    platforms: posix
    description: The controller (Linux C(/proc) tells a reused pid; elsewhere only the pid is checked).
requirements:
  - Python 3.11 on the controller (the version tested)
options:
  key:
    description: What the slots limit, the KVM host's inventory name in C(migrate.yml).
    type: str
    required: true
  holder:
    description: Who takes the slot, the VM's name in C(migrate.yml); shown to those who wait.
    type: str
    required: true
  state:
    description: V(acquired) waits for and takes a slot; V(released) gives the holder's slot back (nothing when it has none).
    type: str
    choices: [acquired, released]
    default: acquired
  limit:
    description: How many holders O(key) may have at once; at least 1.
    type: int
    default: 2
  timeout:
    description:
      - Seconds to wait for a slot before failing with the holders' names; V(0) tries once.
      - The default, a week, waits for as many turns as a fleet needs.
    type: int
    default: 604800
  dir:
    description:
      - Directory on the controller for the slots.
      - Default C($XDG_CACHE_HOME/xen2kvm/slots), or C(~/.cache/xen2kvm/slots) when C(XDG_CACHE_HOME) is unset.
    type: path
seealso:
  - module: xen2kvm.migration.xva_convert
"""

EXAMPLES = r"""
- name: Wait for one of the KVM host's two slots
  xen2kvm.migration.kvm_host_slot:
    key: "{{ kvm_host }}"
    holder: "{{ inventory_hostname }}"
    limit: 2
  register: slot

- name: Give the slot back
  xen2kvm.migration.kvm_host_slot:
    key: "{{ kvm_host }}"
    holder: "{{ inventory_hostname }}"
    state: released
"""

RETURN = r"""
slot:
  description: The slot file taken.
  returned: O(state=acquired) and success
  type: str
  sample: /root/.cache/xen2kvm/slots/kvm1/slot-0
wait_seconds:
  description: Seconds spent waiting for the slot.
  returned: O(state=acquired) and success
  type: float
  sample: 42.0
released:
  description: Whether the holder had a slot that was given back.
  returned: O(state=released)
  type: bool
holders:
  description: The holders of O(key)'s slots after the task, by name.
  returned: success
  type: list
  elements: str
  sample: [vmA, vmB]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._slots import ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="kvm_host_slot runs on the controller through its action plugin; "
                         "call it as xen2kvm.migration.kvm_host_slot")


if __name__ == "__main__":
    main()
