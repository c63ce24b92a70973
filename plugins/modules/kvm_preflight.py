#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kvm_preflight
short_description: Check that a KVM host can take a migrated VM before anything is copied
version_added: "0.1.0"
description:
  - Runs every check and fails once, listing every problem found, so a migration stops early
    with one clear message rather than hours later.
  - "Space: the free space of the filesystem that holds (or will hold) O(images_dir) must be at
    least the sum of O(disk_bytes) plus O(margin_bytes). Each disk counts at its full virtual
    size because a raw image can grow to that and the XVA does not tell how much the guest uses.
    With O(allow_sparse) a shortfall is only a warning."
  - "Tools: the commands C(qemu-img), C(qemu-system-x86_64) and C(virsh) on PATH, and the Python
    modules C(libvirt), C(xxhash) and C(zstandard) for the interpreter the module runs with. Each
    one missing is named with its Debian package (C(qemu-utils), C(qemu-system-x86),
    C(libvirt-clients), C(python3-libvirt), C(python3-xxhash), C(python3-zstandard)), and the
    message says to run the C(xen2kvm.migration.kvm_host) role, which installs them."
  - "libvirt: a connection to O(uri) must open."
  - "Domain name: a libvirt domain called O(domain_name) must not exist, unless it was migrated
    by this collection (its metadata) from the Xen VM O(source_uuid), which is a rerun. Without
    O(source_uuid) any domain migrated by this collection is accepted."
  - Images already in O(images_dir) from an earlier run are not subtracted from the need.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.attributes.read_only
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - libvirt-python (Debian python3-libvirt); its absence is reported as a problem
options:
  images_dir:
    description: The directory the disk images will be written to; it need not exist yet.
    type: path
    required: true
  disk_bytes:
    description: The virtual sizes of the VM's disks in bytes, one per disk (or one total).
    type: list
    elements: int
    required: true
  domain_name:
    description: The libvirt domain name the VM will get.
    type: str
    required: true
  source_uuid:
    description: The Xen VM's uuid (the spec's C(uuid)). None when unset.
    type: str
  margin_bytes:
    description: Free space required on top of the disks.
    type: int
    default: 1073741824
  allow_sparse:
    description: Only warn when the disks at full size do not fit.
    type: bool
    default: false
  uri:
    description: The libvirt connection URI.
    type: str
    default: qemu:///system
seealso:
  - module: xen2kvm.migration.kvm_domain
"""

EXAMPLES = r"""
- name: Check the KVM host before copying anything
  xen2kvm.migration.kvm_preflight:
    images_dir: /var/lib/libvirt/images
    disk_bytes: "{{ xen_source_spec.disks | map(attribute='virtual_size') | list }}"
    domain_name: "{{ xen_source_spec.name }}"
    source_uuid: "{{ xen_source_spec.uuid }}"
"""

RETURN = r"""
free_bytes:
  description: Free space for unprivileged users on the filesystem of O(images_dir).
  returned: always
  type: int
needed_bytes:
  description: The disks' total plus O(margin_bytes).
  returned: always
  type: int
problems:
  description: Every problem found; the module fails when there is one.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.preflight import (
    check_domain_name, check_space, check_tools)


def check_libvirt(params):
    if libvirt is None:
        return []  # check_tools reports the missing binding
    try:
        conn = libvirt.open(params["uri"])
    except libvirt.libvirtError as exc:
        return ["cannot connect to libvirt at %s (is libvirtd running? Debian package libvirt-daemon-system, "
                "role xen2kvm.migration.kvm_host): %s" % (params["uri"], exc)]
    try:
        return check_domain_name(conn, libvirt, params["domain_name"], params["source_uuid"])
    finally:
        conn.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images_dir=dict(type="path", required=True),
            disk_bytes=dict(type="list", elements="int", required=True),
            domain_name=dict(type="str", required=True),
            source_uuid=dict(type="str"),
            margin_bytes=dict(type="int", default=1073741824),
            allow_sparse=dict(type="bool", default=False),
            uri=dict(type="str", default="qemu:///system"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    problems, warnings, facts = check_space(params["images_dir"], params["disk_bytes"], params["margin_bytes"],
                                            params["allow_sparse"])
    problems += check_tools() + check_libvirt(params)
    for warning in warnings:
        module.warn(warning)
    result = dict(changed=False, free_bytes=facts["free_bytes"], needed_bytes=facts["needed_bytes"], problems=problems)
    if problems:
        module.fail_json(msg="preflight for %s failed: %s" % (
            params["domain_name"], " ".join("(%d) %s." % (i, p) for i, p in enumerate(problems, 1))), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
