#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xva_info
short_description: Read the VM description from a XenServer / XCP-ng XVA export
version_added: "0.1.0"
description:
  - Reads only the C(ova.xml) member at the start of an XVA (plain, gzip or zstd, recognised by
    magic bytes) and returns the exported VM as the collection's C(spec) with its name, vCPUs,
    memory, PV or HVM, firmware, disks in C(userdevice) order and NICs in C(device) order.
  - Returns at once even for a very large XVA, since the disk data is never read.
  - CD drives, ISO images and suspend images are not listed as disks.
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xva_source
  - xen2kvm.migration.attributes.read_only
notes:
  - Requires C(zstandard) (Debian C(python3-zstandard)) on the target only for zstd-compressed exports.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - zstandard (Debian python3-zstandard) to read zstd-compressed exports
seealso:
  - module: xen2kvm.migration.xva_convert
"""

EXAMPLES = r"""
- name: Read the VM description of a nightly export
  xen2kvm.migration.xva_info:
    src: /backup/TestVM01/backup-2024-05-01-(01:00:00)/TestVM01.xva
  register: xva

- name: Show the disks in boot order
  ansible.builtin.debug:
    msg: "{{ xva.spec.disks | map(attribute='virtual_size') | list }}"

- name: Read a VM straight from XAPI's HTTP export
  xen2kvm.migration.xva_info:
    src: "https://xenhost1/export?uuid={{ vm_uuid }}&use_compression=zstd"
    session_id: "{{ xapi_session }}"
"""

RETURN = r"""
spec:
  description: The exported VM, as described in the collection's docs/spec.md.
  returned: success
  type: dict
  contains:
    name:
      description: The VM's name_label.
      type: str
      sample: TestVM01
    uuid:
      description: The Xen VM uuid.
      type: str
    description:
      description: The VM's name_description.
      type: str
    vcpus:
      description: vCPUs at startup.
      type: int
      sample: 2
    vcpus_max:
      description: Maximum vCPUs.
      type: int
    cores_per_socket:
      description: From the platform field C(cores-per-socket); 1 when absent.
      type: int
    memory_mib:
      description: memory_static_max in MiB.
      type: int
      sample: 1024
    xen_domain_type:
      description: C(pv), C(hvm) or C(pvh).
      type: str
    firmware:
      description: C(bios) or C(uefi).
      type: str
    secure_boot:
      description:
        - Whether the UEFI VM boots with Secure Boot enforced (C(platform:secureboot=true)).
        - C(auto) counts as false, since the export does not tell whether the pool enforced it.
      type: bool
    vtpm:
      description: Whether the VM has a vTPM. Its contents are not part of the export.
      type: bool
    pv_bootloader:
      description: PV boot loader (C(pygrub) on most PV guests).
      type: str
    pv_args:
      description: Kernel arguments of a PV guest.
      type: str
    is_template:
      description: Whether the exported object is a template (a snapshot exported directly is one).
      type: bool
    tags:
      description: The VM's tags.
      type: list
      elements: str
    source:
      description: The exporting host (hostname, date, product_brand, product_version, xapi_version).
      type: dict
    disks:
      description: Disks ordered by userdevice (ref, userdevice, device, virtual_size, bootable, name, vdi_uuid, mode).
      type: list
      elements: dict
    nics:
      description: NICs ordered by device (device, mac, mtu, network, bridge).
      type: list
      elements: dict
compression:
  description: The stream's compression, C(none), C(gzip) or C(zstd).
  returned: success
  type: str
  sample: zstd
"""

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.urls import open_url

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import xva_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.module import (
    SOURCE_ARGUMENT_SPEC, XvaSourceModule, url_options)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import MissingLibraryError


def main():
    module = XvaSourceModule(
        argument_spec=SOURCE_ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    try:
        result = xva_info(module.params["src"], open_url, url_options(module.params))
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library, reason=exc.reason))
    except (XvaError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
