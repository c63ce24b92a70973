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
    was read and verified; the images, the manifest and the directory entries are synced to disk
    before success is reported. On any error, and on SIGTERM, SIGINT or SIGHUP, nothing is
    written to the destination names, the temporary files are removed and the status file says
    C(failed). Temporary files of a run killed outright (SIGKILL, power loss) are removed by the
    next run.
  - A manifest (C(.<first image name>.xen2kvm.json)) beside the images records what they were made
    from (the export's ova.xml, the VM uuid, the source, whether checksums were verified) and how
    the images looked when written. A rerun on the same export is C(changed=false), also after
    the images were fixed up or booted. See docs/xva_convert.md in the collection.
  - Without O(force) nothing else is replaced. A different export of the same VM (xapi numbers
    every export anew), images of another VM, files no manifest records, and images changed since
    their conversion are refused with a message naming both sides. Even with O(force) the disk of
    a running VM is never replaced.
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
      - A rerun with C(true) over images converted with C(false) from an XVA that has checksums
        converts again, verifying; when those images were changed since, it fails unless
        O(force) is set.
    type: bool
    default: true
  force:
    description:
      - Convert again even when the manifest says the images are complete, and replace whatever
        is at the image names - another export of the same VM, another VM's images, unknown
        files, images changed since their conversion. Never the disk of a running VM.
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
  - >-
    The module's action plugin runs it as an async job on its host and prints one progress line
    per VM about every 5 seconds while it converts (C([TestVM01] convert 42% 310/740 MiB 85 MiB/s ETA 0:05)),
    with no O(status_file), C(async) or configuration needed; the result is the module's own.
    See docs/xva_convert.md in the collection.
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - qemu-img (Debian qemu-utils) for O(format=qcow2)
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
      description:
        - True only when every chunk's checksum was compared with the data, by this run or by
          the conversion the manifest records. False with O(verify_checksums=false) or when the
          XVA has no checksums. Not returned in check mode.
      type: bool
    modified_since_conversion:
      description:
        - True when the image was changed (fixed up, booted, replaced) after the conversion that
          made it; such an image is kept. Not returned in check mode.
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

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.urls import open_url

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.images import DEFAULT_NAME, ImageError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.module import (
    SOURCE_ARGUMENT_SPEC, XvaSourceModule, url_options)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import MissingLibraryError


def main():
    module = XvaSourceModule(
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
