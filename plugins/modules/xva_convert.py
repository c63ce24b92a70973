#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: xva_convert
short_description: Convert a XenServer / XCP-ng XVA export into raw or qcow2 disk images
version_added: "0.1.0"
description:
  - Reads the XVA stream once, from start to end, and writes every disk of the VM straight into
    its final image. No extraction, no temporary copy of the chunks, constant memory.
  - Every chunk's checksum (SHA-1 C(.checksum) or XXH64 C(.xxhash)) is verified as it arrives.
  - Omitted and all-zero chunks become holes, so images are sparse. Each image has exactly the
    VDI's C(virtual_size).
  - Images are written under hidden temporary names, synced and renamed only when the whole XVA
    was read and verified. On any error nothing is left at the destination names and the
    temporary files are removed.
  - A manifest (C(.<first image name>.xen2kvm.json)) beside the images records what they were made from, so
    a rerun on the same source is C(changed=false).
author:
  - xen2kvm developers (@xen2kvm)
extends_documentation_fragment:
  - xen2kvm.migration.xva_source
options:
  dest:
    description: Directory for the images; created when missing.
    type: path
    required: true
  format:
    description:
      - Image format. C(qcow2) is made from the raw stream with C(qemu-img convert) (holes are
        skipped) and must pass C(qemu-img check).
    type: str
    choices: [raw, qcow2]
    default: raw
  name:
    description:
      - File name template of the images, in Python C(str.format) syntax with the fields
        C(vm) (the VM name made file-name safe), C(index) (0 for the first disk in
        C(userdevice) order), C(userdevice), C(format), C(uuid) (VM) and C(vdi_uuid).
    type: str
    default: "{vm}-disk{index}.{format}"
  verify_checksums:
    description:
      - Verify every chunk's checksum member. An XVA without any checksum members is accepted
        with a warning; one where only some chunks have checksums is refused.
    type: bool
    default: true
  force:
    description:
      - Convert again even when the manifest says the images are complete, and replace existing
        files at the image names that were not made from this XVA.
    type: bool
    default: false
  status_file:
    description:
      - A JSON file updated every second with the progress (C(bytes_done), C(bytes_total),
        C(percent), C(mb_per_s), C(eta_s), C(state)). Poll it from another task or a shell.
    type: path
attributes:
  check_mode:
    support: full
    description: Reads ova.xml and reports the planned images without writing anything.
  diff_mode:
    support: none
    description: Images are binary; the result lists what was written.
notes:
  - The source is read sequentially, so a pipe or an HTTP stream works as well as a file.
  - C(qcow2) output needs C(qemu-img) (Debian C(qemu-utils)) and temporary space for the raw image.
  - qcow2 sizes are whole 512-byte sectors; a VDI whose size is not is rounded up with zeros.
requirements:
  - xxhash (Debian python3-xxhash) to verify C(.xxhash) checksums (XenServer 8.1 / XCP-ng 8.1 and later)
  - zstandard (Debian python3-zstandard) to read zstd-compressed exports
seealso:
  - module: xen2kvm.migration.xva_info
"""

EXAMPLES = r"""
- name: Convert a nightly export into qcow2 images
  xen2kvm.migration.xva_convert:
    src: /backup/TestVM01/TestVM01.xva
    dest: /var/lib/libvirt/images
    format: qcow2
  register: converted

- name: Stream a running export from XAPI, zstd-compressed, with progress in a file
  xen2kvm.migration.xva_convert:
    src: "https://xenhost1/export?uuid={{ vm_uuid }}&use_compression=zstd"
    session_id: "{{ xapi_session }}"
    dest: /var/lib/libvirt/images
    status_file: /run/xen2kvm/TestVM01.progress.json
  async: 86400
  poll: 30

- name: Name the images after the VDI uuid
  xen2kvm.migration.xva_convert:
    src: /backup/TestVM01.xva
    dest: /srv/images
    name: "{vdi_uuid}.raw"
"""

RETURN = r"""
spec:
  description: The exported VM, as returned by M(xen2kvm.migration.xva_info).
  returned: success
  type: dict
disks:
  description: The images, in the order of the disks in RV(spec) (userdevice order).
  returned: success
  type: list
  elements: dict
  contains:
    ref:
      description: The VDI's folder in the XVA.
      type: str
      sample: "Ref:12"
    userdevice:
      description: The Xen VBD userdevice.
      type: int
    path:
      description: The image file.
      type: str
      sample: /var/lib/libvirt/images/TestVM01-disk0.qcow2
    format:
      description: C(raw) or C(qcow2).
      type: str
    virtual_size:
      description: Disk size in bytes (the VDI's virtual_size).
      type: int
    allocated_bytes:
      description: Bytes allocated on the destination file system. Not returned in check mode.
      type: int
    chunks:
      description: Data members read for this disk. Not returned in check mode.
      type: int
    checksums_verified:
      description: True when every chunk's checksum was checked. Not returned in check mode.
      type: bool
    seconds:
      description: Time spent on this disk. Not returned in check mode.
      type: float
    mb_per_s:
      description: Virtual MiB per second for this disk. Not returned in check mode.
      type: float
compression:
  description: The stream's compression, C(none), C(gzip) or C(zstd).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.urls import open_url

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.images import DEFAULT_NAME, ImageError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.module import SOURCE_ARGUMENT_SPEC, url_options
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import MissingLibraryError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            SOURCE_ARGUMENT_SPEC,
            dest=dict(type="path", required=True),
            format=dict(type="str", choices=["raw", "qcow2"], default="raw"),
            name=dict(type="str", default=DEFAULT_NAME),
            verify_checksums=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
            status_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = convert_xva(params["src"], params["dest"], fmt=params["format"], name_template=params["name"],
                             verify_checksums=params["verify_checksums"], force=params["force"],
                             status_file=params["status_file"], check_mode=module.check_mode,
                             open_url_func=open_url, url_options=url_options(params))
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library, reason=exc.reason))
    except (XvaError, ImageError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if params["verify_checksums"] and any(disk.get("checksums_verified") is False for disk in result["disks"]):
        module.warn("this XVA carries no checksums, so its data could not be verified")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
