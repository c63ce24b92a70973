#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kvm_pool
short_description: Make a libvirt directory storage pool for the migrated disk images
version_added: "0.1.0"
description:
  - Defines a libvirt storage pool of type C(dir) at O(path), builds it (creates the directory)
    when the directory is missing, starts it and sets its autostart flag, each only when needed,
    so a second run reports no change.
  - Fails when a pool of that name exists at another path or of another type; it is never
    redefined under its volumes.
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  check_mode:
    support: full
    description: Reports what it would do without doing it.
  diff_mode:
    support: none
    description: No diff; RV(actions) lists the steps.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - libvirt-python (Debian python3-libvirt)
  - a running libvirtd reachable at O(uri) (Debian libvirt-daemon-system)
options:
  name:
    description: The pool's name.
    type: str
    required: true
  path:
    description: The pool's directory.
    type: path
    required: true
  autostart:
    description: Whether libvirtd starts the pool when it starts.
    type: bool
    default: true
  uri:
    description: The libvirt connection URI.
    type: str
    default: qemu:///system
seealso:
  - module: xen2kvm.migration.kvm_domain
"""

EXAMPLES = r"""
- name: Make the images pool
  xen2kvm.migration.kvm_pool:
    name: migrated
    path: /var/lib/libvirt/images/migrated
"""

RETURN = r"""
actions:
  description: What was done (or would be in check mode), in order, from C(define), C(build), C(start), C(autostart) and C(no autostart).
  returned: success
  type: list
  elements: str
  sample: [define, start, autostart]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import require_libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.pool import (
    PoolError, ensure_dir_pool, libvirt)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            path=dict(type="path", required=True),
            autostart=dict(type="bool", default=True),
            uri=dict(type="str", default="qemu:///system"),
        ),
        supports_check_mode=True,
    )
    require_libvirt(module)
    params = module.params
    try:
        conn = libvirt.open(params["uri"])
    except libvirt.libvirtError as exc:
        module.fail_json(msg="cannot connect to libvirt at %s: %s" % (params["uri"], exc))
    try:
        changed, actions = ensure_dir_pool(conn, params["name"], params["path"], params["autostart"],
                                           check_mode=module.check_mode)
    except PoolError as exc:
        module.fail_json(msg=str(exc))
    except libvirt.libvirtError as exc:
        module.fail_json(msg="storage pool %s: %s" % (params["name"], exc))
    finally:
        conn.close()
    module.exit_json(changed=changed, actions=actions)


if __name__ == "__main__":
    main()
