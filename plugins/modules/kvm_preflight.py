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
  - "libvirt: a connection to O(uri) must open; O(pool), when given, must exist and hold files."
  - "Domain name: a libvirt domain called O(domain_name) must not exist, unless it was migrated
    by this collection (its metadata) from the Xen VM O(source_uuid), which is a rerun. Without
    O(source_uuid) any domain migrated by this collection is accepted."
  - "Firmware: with O(firmware=uefi), libvirt must offer UEFI firmware (OVMF) to autoselect for the
    machine type (V(q35) unless O(machine) says otherwise), and a Secure Boot build of it when
    O(secure_boot) is true, as its domain capabilities tell. Missing, it names the Debian package
    C(ovmf) and the C(xen2kvm.migration.kvm_host) role, which installs it."
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
    description:
      - The directory the disk images will be written to; it need not exist yet.
      - Required unless O(pool) is given, whose directory is used instead.
    type: path
  pool:
    description:
      - A libvirt storage pool the images will be written into. It must exist and be of a type
        whose volumes are files (V(dir), V(fs), V(netfs)); its target directory is checked for
        space instead of O(images_dir) and returned as RV(images_dir).
    type: str
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
  firmware:
    description: The VM's firmware, the spec's C(firmware). V(uefi) adds the firmware check.
    type: str
    choices: [bios, uefi]
    default: bios
  secure_boot:
    description: The VM boots with UEFI Secure Boot (the spec's C(secure_boot)); with O(firmware=uefi) a
      Secure Boot build of OVMF is required.
    type: bool
    default: false
  machine:
    description: The machine type the domain will get, for the firmware check.
    type: str
    default: q35
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
    firmware: "{{ xen_source_spec.firmware }}"
    secure_boot: "{{ xen_source_spec.secure_boot | default(false) }}"

- name: The same, for images written into the storage pool vmpool
  xen2kvm.migration.kvm_preflight:
    pool: vmpool
    disk_bytes: [21474836480]
    domain_name: TestVM01
  register: preflight

- name: Use KVM where it works
  ansible.builtin.debug:
    msg: "domain type {{ 'kvm' if preflight.kvm_usable else 'qemu' }}, images in {{ preflight.images_dir }}"
"""

RETURN = r"""
images_dir:
  description: The directory checked for space, O(images_dir) or the directory of O(pool).
  returned: always
  type: str
  sample: /var/lib/libvirt/images
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
domain_state:
  description:
    - The state of the existing domain O(domain_name) as virsh names it (V(running), V(paused),
      V(shut off), ...); V(null) when there is no such domain or libvirt cannot be reached.
  returned: always
  type: str
  sample: running
kvm_usable:
  description:
    - Whether domains of type V(kvm) can run on this host, C(/dev/kvm) exists and the host is not
      a Nested-PVM guest (C(/sys/module/kvm_pvm)), whose C(/dev/kvm) cannot run them. Otherwise
      use domain type V(qemu).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.preflight import (
    check_domain_name, check_space, check_tools, check_uefi_firmware, domain_state, kvm_usable, pool_directory)


def check_libvirt(params):
    """(problems, the state of the domain of that name or None, the pool's directory or None)."""
    if libvirt is None:
        return [], None, None  # check_tools reports the missing binding
    try:
        conn = libvirt.open(params["uri"])
    except libvirt.libvirtError as exc:
        return ["cannot connect to libvirt at %s (is libvirtd running? Debian package libvirt-daemon-system, "
                "role xen2kvm.migration.kvm_host): %s" % (params["uri"], exc)], None, None
    try:
        problems, pool_dir = pool_directory(conn, libvirt, params["pool"]) if params["pool"] else ([], None)
        problems += check_domain_name(conn, libvirt, params["domain_name"], params["source_uuid"])
        if params["firmware"] == "uefi":
            problems += check_uefi_firmware(conn, libvirt, params["machine"], "kvm" if kvm_usable() else "qemu",
                                            params["secure_boot"])
        return problems, domain_state(conn, libvirt, params["domain_name"]), pool_dir
    finally:
        conn.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images_dir=dict(type="path"),
            pool=dict(type="str"),
            disk_bytes=dict(type="list", elements="int", required=True),
            domain_name=dict(type="str", required=True),
            source_uuid=dict(type="str"),
            margin_bytes=dict(type="int", default=1073741824),
            allow_sparse=dict(type="bool", default=False),
            uri=dict(type="str", default="qemu:///system"),
            firmware=dict(type="str", choices=["bios", "uefi"], default="bios"),
            secure_boot=dict(type="bool", default=False),
            machine=dict(type="str", default="q35"),
        ),
        required_one_of=[("images_dir", "pool")],
        supports_check_mode=True,
    )
    params = module.params
    problems, state, pool_dir = check_libvirt(params)
    images_dir = pool_dir or params["images_dir"]
    if images_dir is None:  # the pool's problem is reported; nothing to check space on
        space_problems, warnings, facts = [], [], dict(free_bytes=0, needed_bytes=0)
    else:
        space_problems, warnings, facts = check_space(images_dir, params["disk_bytes"], params["margin_bytes"],
                                                      params["allow_sparse"])
    problems = space_problems + check_tools() + problems
    for warning in warnings:
        module.warn(warning)
    result = dict(changed=False, images_dir=images_dir, free_bytes=facts["free_bytes"],
                  needed_bytes=facts["needed_bytes"], problems=problems, domain_state=state, kvm_usable=kvm_usable())
    if problems:
        module.fail_json(msg="preflight for %s failed: %s" % (
            params["domain_name"], " ".join("(%d) %s." % (i, p) for i, p in enumerate(problems, 1))), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
