#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xen_vm_export
short_description: Ready a XenServer / XCP-ng VM for XAPI's HTTP export, and clean up after it
version_added: "0.1.0"
description:
  - With O(state=prepared), readies the VM for XAPI's C(/export) and returns its URL in
    RV(export_src), for M(xen2kvm.migration.xva_convert) to pull on the KVM host with
    C(url_username)/C(url_password) (the XAPI credentials; XAPI accepts HTTP basic
    authentication on C(/export)). The URL carries no session and no password.
  - O(mode=snapshot) (the VM keeps running) first destroys the snapshots of this VM a killed
    earlier run left (marked in their other_config C(xen2kvm_snapshot_of), or named
    C(xen2kvm-<vm>-...); RV(swept)), then takes a snapshot named C(xen2kvm-<vm>-<UTC time>),
    marks it, and makes it exportable (C(is_a_template) and C(ha_always_run) off). If that
    fails or the task is stopped, the snapshot is destroyed again.
  - O(mode=shutdown) shuts a running VM down cleanly, waiting at most O(shutdown_timeout)
    seconds (a guest that does not stop in time is left running and the task fails); the VM
    stays halted. O(mode=halted) fails unless the VM is halted already.
  - With O(state=released), destroys the snapshot O(snapshot_uuid) and its own VDIs (never the
    VM's disks; only a snapshot this module made is accepted). A snapshot that is gone already
    is C(changed=false), so it fits an C(always) section.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xapi
  - xen2kvm.migration.xapi.vm
  - xen2kvm.migration.xapi_ssh
attributes:
  check_mode:
    support: full
    description:
      - Reports what would change. In O(mode=snapshot) no snapshot exists, so RV(export_src),
        RV(exported_uuid) and RV(snapshot_uuid) are null.
  diff_mode:
    support: none
    description: The result says what was done (RV(swept), RV(snapshot_uuid), RV(stopped)).
options:
  state:
    description: C(prepared) readies the export, C(released) destroys the snapshot taken for it.
    type: str
    choices: [prepared, released]
    default: prepared
  mode:
    description:
      - C(snapshot) exports a snapshot of the running VM, C(shutdown) stops the VM first,
        C(halted) exports a VM that is halted already.
    type: str
    choices: [snapshot, shutdown, halted]
    default: snapshot
  shutdown_timeout:
    description: Seconds to wait for a clean shutdown in O(mode=shutdown).
    type: int
    default: 600
  use_compression:
    description:
      - The compression XAPI applies to the export (its C(use_compression) parameter).
        C(zstd) needs XCP-ng 8.1 / XenServer 8 or later; C(gzip) works everywhere;
        C(none) sends the most bytes but costs the pool no CPU.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  snapshot_uuid:
    description:
      - The snapshot to destroy with O(state=released) (RV(snapshot_uuid) of the prepare).
      - Left out (a prepare that failed before its snapshot), there is nothing to release and
        the task reports no change.
    type: str
requirements:
  - Python 3.11 on the host the module runs on (Debian 12's python3, the version tested)
  - XenAPI (the XenAPI Python SDK)
seealso:
  - module: xen2kvm.migration.xva_convert
  - module: xen2kvm.migration.xen_vm_info
"""

EXAMPLES = r"""
- name: Export a running VM through a snapshot, converted on the KVM host
  block:
    - name: Snapshot it
      xen2kvm.migration.xen_vm_export:
        xapi_url: https://xenhost1
        password: "{{ vault_xapi_password }}"
        ca_path: /etc/xen2kvm/xenhost1.pem
        name: web01
        mode: snapshot
      delegate_to: localhost
      register: export

    - name: Convert the export as it streams in
      xen2kvm.migration.xva_convert:
        src: "{{ export.export_src }}"
        url_username: root
        url_password: "{{ vault_xapi_password }}"
        ca_path: /etc/xen2kvm/xenhost1.pem
        dest: /var/lib/libvirt/images
  always:
    - name: Destroy the snapshot and its disks
      xen2kvm.migration.xen_vm_export:
        xapi_url: https://xenhost1
        password: "{{ vault_xapi_password }}"
        ca_path: /etc/xen2kvm/xenhost1.pem
        state: released
        snapshot_uuid: "{{ export.snapshot_uuid | default(omit) }}"
      delegate_to: localhost

- name: Where only ssh reaches the Xen host, xe does the same (the export streams over ssh)
  block:
    - name: Snapshot it with xe
      xen2kvm.migration.xen_vm_export:
        transport: ssh
        ssh_host: xenhost1
        ssh_options: [UserKnownHostsFile=/etc/xen2kvm/known_hosts]
        name: web01
      register: export

    - name: Convert xe vm-export's standard output (export_src is an xe+ssh:// source)
      xen2kvm.migration.xva_convert:
        src: "{{ export.export_src }}"
        ssh_options: [UserKnownHostsFile=/etc/xen2kvm/known_hosts]
        dest: /var/lib/libvirt/images
  always:
    - name: Destroy the snapshot and its disks with xe
      xen2kvm.migration.xen_vm_export:
        transport: ssh
        ssh_host: xenhost1
        ssh_options: [UserKnownHostsFile=/etc/xen2kvm/known_hosts]
        state: released
        snapshot_uuid: "{{ export.snapshot_uuid | default(omit) }}"
"""

RETURN = r"""
export_src:
  description:
    - The C(/export) URL of the VM or its snapshot, without credentials.
    - With O(transport=ssh), the C(xe+ssh://) source that runs C(xe vm-export) on the Xen host.
  returned: state=prepared
  type: str
  sample: "https://xenhost1/export?uuid=0f5e...&use_compression=zstd"
exported_uuid:
  description: The uuid the URL exports (the snapshot's in O(mode=snapshot)).
  returned: state=prepared
  type: str
snapshot_uuid:
  description: The snapshot taken (O(mode=snapshot)), to pass to O(state=released); null otherwise.
  returned: always
  type: str
power_state_before:
  description: The VM's power state when the task started.
  returned: state=prepared
  type: str
  sample: Running
stopped:
  description: Whether this task shut the VM down (O(mode=shutdown)).
  returned: state=prepared
  type: bool
swept:
  description: The uuids of stale snapshots of this VM a killed earlier run left, destroyed now.
  returned: state=prepared
  type: list
  elements: str
mode:
  description: The export mode.
  returned: state=prepared
  type: str
vm:
  description: The VM (uuid, name, power_state, host, tags, mark), as M(xen2kvm.migration.xen_vm_info) returns it.
  returned: state=prepared
  type: dict
"""

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.actions import export_action
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.module import run_with_pool, xapi_module


def main():
    module = xapi_module(dict(
        state=dict(type="str", default="prepared", choices=["prepared", "released"]),
        mode=dict(type="str", default="snapshot", choices=["snapshot", "shutdown", "halted"]),
        shutdown_timeout=dict(type="int", default=600),
        use_compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
        snapshot_uuid=dict(type="str"),
    ), require_vm=False)  # released needs only the snapshot; prepared checks for the VM itself
    params = module.params
    run_with_pool(module, lambda client: export_action(
        client, params["state"], params["name"], params["uuid"], params["mode"], params["shutdown_timeout"],
        params["use_compression"], params["snapshot_uuid"], module.check_mode))


if __name__ == "__main__":
    main()
