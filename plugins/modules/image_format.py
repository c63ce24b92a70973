#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_format
short_description: Turn the raw images of an XVA conversion into qcow2, after their fixup
version_added: "0.1.0"
description:
  - M(xen2kvm.migration.guest_fixup) works on raw images only. For a VM wanted in qcow2, convert
    the XVA to raw (M(xen2kvm.migration.xva_convert)), fix the images up, then run this module;
    each raw image becomes a qcow2 image beside it, named as M(xen2kvm.migration.xva_convert)
    would name it with C(format=qcow2) and the same O(name) template.
  - Each qcow2 image is written under a hidden temporary name, must pass C(qemu-img check) and
    hold the same data as the raw image (C(qemu-img compare)), and is then renamed into place.
    The qcow2 images get the manifest M(xen2kvm.migration.xva_convert) would have written for
    them (same export, source and checksum record), so a later M(xen2kvm.migration.xva_convert)
    with C(format=qcow2) from the same export finds them done (C(changed=false)) and refuses to
    replace them without its C(force), even after they were booted.
  - Only then are the raw images removed, with their manifest and the marker
    M(xen2kvm.migration.guest_fixup) left beside them. A failure removes the temporary files and
    leaves the raw images as they were.
  - The raw images must be recorded by a manifest of M(xen2kvm.migration.xva_convert) (all of
    them, in this order). An image in use (a process, a qemu, a loop device or a mount) is
    refused. An existing file at a qcow2 name that is not this export's qcow2 image is replaced
    only with O(force), and never while in use.
  - A rerun after success changes nothing.
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  check_mode:
    support: full
    description: Checks everything and reports the planned qcow2 images without writing or removing anything.
  diff_mode:
    support: none
    description: No diff.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - qemu-img (Debian qemu-utils)
options:
  images:
    description:
      - The raw images of one conversion in disk order, as M(xen2kvm.migration.xva_convert)
        returned them (C(convert_result.disks | map(attribute='path') | list)).
    type: list
    elements: path
    required: true
  format:
    description: The format to make. Only C(qcow2).
    type: str
    choices: [qcow2]
    default: qcow2
  name:
    description:
      - The file name template the conversion used (M(xen2kvm.migration.xva_convert)'s C(name)); it
        must contain C({format}) so the raw and qcow2 names differ.
    type: str
    default: "{vm}-disk{index}.{format}"
  force:
    description: Replace files at the qcow2 names that are not this export's qcow2 images.
    type: bool
    default: false
seealso:
  - module: xen2kvm.migration.xva_convert
  - module: xen2kvm.migration.guest_fixup
"""

EXAMPLES = r"""
- name: Turn the fixed-up raw images into qcow2
  xen2kvm.migration.image_format:
    images: "{{ convert_result.disks | map(attribute='path') | list }}"
  register: qcow2_images

- name: Define the domain on the qcow2 images
  xen2kvm.migration.kvm_domain:
    spec: "{{ convert_result.spec }}"
    disks: "{{ qcow2_images.disks }}"
"""

RETURN = r"""
disks:
  description: The qcow2 images in disk order, as M(xen2kvm.migration.xva_convert) returns its disks.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: The qcow2 image.
      type: str
      sample: /var/lib/libvirt/images/TestVM01-disk0.qcow2
    format:
      description: C(qcow2).
      type: str
    virtual_size:
      description: Disk size in bytes.
      type: int
    userdevice:
      description: The Xen VBD userdevice.
      type: int
    modified_since_conversion:
      description: True when the qcow2 image was changed (booted) since it was made.
      type: bool
  sample: [{path: /var/lib/libvirt/images/TestVM01-disk0.qcow2, format: qcow2, virtual_size: 10737418240}]
removed:
  description: The raw images removed (to be removed, in check mode); empty when nothing was done.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.images import DEFAULT_NAME, ImageError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reformat import ReformatError, reformat


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images=dict(type="list", elements="path", required=True),
            format=dict(type="str", choices=["qcow2"], default="qcow2"),
            name=dict(type="str", default=DEFAULT_NAME),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = reformat(params["images"], params["name"], params["force"], module.check_mode)
    except (ReformatError, ImageError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
