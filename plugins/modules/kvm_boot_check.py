#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kvm_boot_check
short_description: Start a libvirt domain and wait until its guest has booted
version_added: "0.1.0"
description:
  - Starts the domain if it is not running (unless O(start=false)) and waits until the guest has
    booted, that is until a login prompt appears on its serial console or the QEMU guest agent
    answers C(guest-ping).
  - The serial console is read from the log file libvirt writes for the domain's C(<serial><log>)
    element (as M(xen2kvm.migration.kvm_domain) defines it), or from O(console_log).
  - When the module starts the domain, only console output written since then is searched.
  - A domain that is not running is not started (also in check mode) while one of its disk images is
    attached to a loop device, mounted from one or held open by a process on this host; the
    message names each holder (command and pid, loop device, mount point, and the process whose
    mount namespace still has it mounted when that is not this one).
  - On timeout, or when the domain stops before booting, the module fails with the last 40 lines
    of the console in its message.
  - When QEMU pauses the domain on a disk error (by default it does so when a write to an image
    fails because the KVM host's filesystem is full), the module fails at once, naming each disk
    and its error, instead of waiting out O(timeout) beside a paused guest. The domain is left
    paused, so that it can be resumed once there is space.
  - With O(wait_for=login), the module also fails at once when systemd reports on the console that
    the getty of C(ttyS0) will not start (C(Dependency failed for ... Serial Getty on ttyS0), after
    C(/dev/ttyS0) did not appear within systemd's device timeout, say), because no login prompt
    can come then. O(wait_for=any) keeps waiting for the guest agent.
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  check_mode:
    support: full
    description: Does not start the domain or wait; reports whether it would start it and, for a
      running domain, whether it already shows a login prompt or an answering agent.
  diff_mode:
    support: none
    description: No definition changes.
options:
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  name:
    description: Domain name.
    type: str
    required: true
  start:
    description: Start the domain when it is not running. With V(false), a stopped domain fails the
      module.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the guest to boot.
    type: int
    default: 300
  wait_for:
    description:
      - V(login) waits for a login prompt on the serial console, V(agent) for the guest agent,
        V(any) for whichever comes first.
    type: str
    choices: [login, agent, any]
    default: any
  console_log:
    description: The serial console log file. Defaults to the file in the domain's C(<serial><log>)
      element.
    type: path
  login_regex:
    description: Python regular expression a console line must match to count as a login prompt.
    type: str
    default: '^\S.* login: *$'
  poll_interval:
    description: Seconds between two looks at the console and the agent.
    type: float
    default: 1.0
notes:
  - Requires libvirt-python (Debian C(python3-libvirt)) on the target host.
  - The guest agent is only reachable when the domain has the C(org.qemu.guest_agent.0) channel
    and the guest runs qemu-guest-agent.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - libvirt-python (Debian python3-libvirt)
  - a running libvirtd reachable at O(uri) (Debian libvirt-daemon-system)
seealso:
  - module: xen2kvm.migration.kvm_domain
"""

EXAMPLES = r"""
- name: Boot the migrated VM and wait for its login prompt
  xen2kvm.migration.kvm_boot_check:
    name: TestVM01
    wait_for: login
    timeout: 600
  register: boot

- name: Show how it came up
  ansible.builtin.debug:
    msg: "{{ boot.method }} after {{ boot.seconds }} s:\n{{ boot.banner }}"

- name: Wait for the guest agent of a Windows guest that is already running
  xen2kvm.migration.kvm_boot_check:
    name: win2019
    start: false
    wait_for: agent
"""

RETURN = r"""
changed:
  description: Whether the module started the domain.
  returned: always
  type: bool
started:
  description: Whether the module started the domain (same as RV(changed)).
  returned: always
  type: bool
seconds:
  description: Seconds from the start (or from the call, for a running domain) until the guest
    was seen booted.
  returned: success
  type: float
  sample: 41.5
method:
  description: How the boot was seen, V(login) or V(agent); empty in check mode when not seen.
  returned: success
  type: str
  sample: login
banner:
  description: Up to 20 console lines before and including the login prompt (the last console
    lines when the agent answered).
  returned: success
  type: str
  sample: "Debian GNU/Linux 12 web01 ttyS0\n\nweb01 login: "
console_log:
  description: The console log file read (empty when there is none).
  returned: success
  type: str
  sample: /var/log/libvirt/qemu/TestVM01-serial.log
state:
  description: The domain's libvirt state at the end.
  returned: success
  type: str
  sample: running
tail:
  description: The last 40 console lines, when the module failed waiting.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.boot_check import (
    DEFAULT_LOGIN_REGEX, boot_check)
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import require_libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain import (
    KvmDomainError)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", default="qemu:///system"),
            name=dict(type="str", required=True),
            start=dict(type="bool", default=True),
            timeout=dict(type="int", default=300),
            wait_for=dict(type="str", choices=["login", "agent", "any"], default="any"),
            console_log=dict(type="path"),
            login_regex=dict(type="str", default=DEFAULT_LOGIN_REGEX),
            poll_interval=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    require_libvirt(module)
    try:
        result = boot_check(module.params, check_mode=module.check_mode)
    except KvmDomainError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
