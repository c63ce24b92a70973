#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kvm_domain
short_description: Define a libvirt/KVM domain for a VM migrated from XenServer / XCP-ng
version_added: "0.1.0"
description:
  - Builds a libvirt domain from the collection's VM C(spec) (see docs/spec.md) and the converted
    disk images, and defines it, starts it or removes it.
  - Disks are virtio (C(vda), C(vdb), ... in C(userdevice) order), NICs are virtio with the source
    MAC addresses in C(device) order, mapped to libvirt networks or bridges through O(network_map).
    The domain gets a serial console logged to C(/var/log/libvirt/qemu/NAME-serial.log), a QEMU
    guest agent channel, a virtio RNG and balloon, and C(x2k) metadata recording the source VM.
  - The NICs' links can be left down (O(link_state=down)), so that the domain boots with its network
    cable pulled, as needed while the Xen VM it was exported from still runs (a snapshot export), and
    O(link_state=up) plugs it in at cut-over, in the running guest too, without a restart.
  - Idempotent. If the domain exists, its UUID, its recorded migration time and its versioned
    machine type are kept. On a real run the XML is always defined and the module reports a
    change only when libvirt's stored definition changed. In check mode it compares the new XML
    with the stored one, looking only at the elements and attributes the module writes.
  - A domain with the same name that was not created by this collection, or that was migrated
    from another Xen VM, is never overwritten or removed unless O(force=true).
author:
  - xen2kvm developers (@xen2kvm)
attributes:
  check_mode:
    support: full
    description: Predicts the change without defining, moving images, starting or removing.
  diff_mode:
    support: full
    description: Returns the stored inactive XML before and after (in check mode, both reduced to
      the elements the module writes).
options:
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  spec:
    description:
      - The VM spec returned by C(xva_info) or C(xva_convert).
      - Required unless O(state=absent), or O(state=defined) with O(name) and O(link_state) (then only
        the NICs' links of the existing domain change).
    type: dict
  disks:
    description:
      - The disk images in order. Each item is a path, or a dict with C(path) and optionally
        C(format) (V(raw) or V(qcow2)), C(userdevice) and C(ref) (the C(disks) list that
        C(xva_convert) returns fits as it is).
      - When every item has C(userdevice), the list is sorted by it; otherwise the given order is
        kept. The first becomes C(vda). Read-only and bootable flags come from the matching
        C(spec.disks) entry (by C(ref), then C(userdevice)).
      - Without C(format), the format comes from the file name (C(.qcow2), C(.raw)), else from the
        file header. qcow2 images with a backing file are refused.
    type: list
    elements: raw
    default: []
  network_map:
    description:
      - "Maps a Xen network (its name_label, or its bridge such as C(xenbr0)) to where the NIC goes
        on the KVM host: C({network: NAME}) (a libvirt network), C({bridge: BR}) (a host bridge)
        or the string V(user) (QEMU user-mode networking)."
      - A NIC whose network is in neither the map nor O(default_network) fails the module, listing
        every unmapped network.
    type: dict
    default: {}
  default_network:
    description:
      - Where NICs go whose Xen network is not in O(network_map). A libvirt network name, V(user),
        or a dict as in O(network_map).
    type: raw
  domain_type:
    description: libvirt domain type; V(qemu) is software emulation (TCG), for tests.
    type: str
    choices: [kvm, qemu]
    default: kvm
  name:
    description:
      - Domain name. Letters, digits, C(.), C(_), C(+) and C(-), at most 64 characters.
      - Defaults to the spec's name with other characters replaced by C(-).
    type: str
  vcpus:
    description: Number of vCPUs, instead of C(spec.vcpus).
    type: int
  memory_mib:
    description: Memory in MiB, instead of C(spec.memory_mib).
    type: int
  machine:
    description:
      - QEMU machine type. Defaults to V(pc) for BIOS guests (widest compatibility with old
        guests) and V(q35) for UEFI guests. An existing domain keeps its versioned machine type
        (for example C(pc-i440fx-7.2)) when it is a version of the requested one.
    type: str
  firmware:
    description:
      - V(bios) (SeaBIOS) or V(uefi) (OVMF chosen by libvirt's firmware autoselection), instead
        of C(spec.firmware).
      - With V(uefi), UEFI Secure Boot follows C(spec.secure_boot) (the Xen VM's
        C(platform:secureboot=true)) - OVMF's Secure Boot build with Microsoft's keys enrolled,
        SMM on, machine C(q35) - and is off otherwise. Set C(spec.secure_boot) to false to boot
        such a guest without it.
      - "A UEFI domain gets its own NVRAM, copied from OVMF's template when it first starts
        (C(/var/lib/libvirt/qemu/nvram/NAME_VARS.fd)). It holds none of the Xen VM's boot entries,
        so the guest boots through C(\\EFI\\BOOT\\BOOTX64.EFI) (the guest_fixup module puts it there).
        The NVRAM is deleted, to start again from the template, when the domain is new, replaces a
        domain of another VM, was a BIOS domain, changes its Secure Boot setting, or when a disk
        image is not one of the files the NVRAM was made for (recorded by inode number in the
        domain's metadata; a new conversion writes new files). A rerun with the same images keeps it.
        A running domain's NVRAM is never deleted: the module warns and a later run deletes it."
    type: str
    choices: [bios, uefi]
  graphics:
    description: V(vnc) adds a VNC display listening on 127.0.0.1 only, and a VGA adapter.
    type: str
    choices: [none, vnc]
    default: none
  migrated_at:
    description:
      - The migration time recorded in the metadata (ISO 8601 UTC). Defaults to the time recorded
        in the existing domain, or now for a new one.
    type: str
  link_state:
    description:
      - The link state of every NIC of the domain (libvirt's C(<link state=.../>)). V(down) is a
        pulled cable (the guest sees no carrier; nothing reaches the network through the NIC), V(up)
        a plugged one.
      - With O(spec), unset means V(up). The definition carries it, and on a running domain every NIC
        whose link differs is switched in the running guest as well (virDomainUpdateDeviceFlags, live
        and in the definition), without a restart; RV(restart_needed) stays false for it.
      - Without O(spec) (O(state=defined) and O(name)), only the links of the existing domain are set,
        live and in its definition; the rest of the domain is left alone. A domain without xen2kvm
        metadata needs O(force=true). This is the cut-over of a domain imported with its links down
        (playbooks/cutover.yml).
      - A rerun with the same value changes nothing; switching is a change, with a diff.
    type: str
    choices: [up, down]
  state:
    description:
      - V(defined) defines the domain, V(running) also starts it when it is not running,
        V(absent) stops it if running and undefines it (with its NVRAM).
      - V(running) refuses to start the domain (also in check mode) while one of its disk images
        is attached to a loop device, mounted from one or held open by a process on this host; the
        message names each holder (command and pid, loop device, mount point, and the process whose
        mount namespace still has it mounted when that is not this one).
    type: str
    choices: [defined, running, absent]
    default: defined
  autostart:
    description: Whether libvirt starts the domain when the host boots. Left as it is when unset.
    type: bool
  force:
    description: Overwrite or remove a domain of the same name that this collection did not create
      from this spec.
    type: bool
    default: false
  pool:
    description:
      - Name of a libvirt storage pool of type C(dir) (or C(fs)/C(netfs)). The images are moved
        (see O(pool_action)) into its target directory under their file names, made mode 0600 and
        owned by the pool's target owner/group when those are set and not root, else by
        C(libvirt-qemu:kvm); then the pool is refreshed. An image already there is left alone.
    type: str
  pool_action:
    description: Whether O(pool) moves or copies the images (copies are sparse).
    type: str
    choices: [move, copy]
    default: move
  reset_nvram:
    description:
      - Delete the UEFI domain's NVRAM (boot entries, UEFI settings) even when its images are the
        same files, so the next start copies OVMF's template; for images on block devices, whose
        replacement the module cannot see. Every run with it is a change. No effect on BIOS domains
        or while the domain runs.
    type: bool
    default: false
  remove_disks:
    description: With O(state=absent), also delete the domain's disk images (through the storage
      pool when an image is a pool volume). They are kept by default.
    type: bool
    default: false
notes:
  - Requires libvirt-python (Debian C(python3-libvirt)) on the target host.
  - A new domain gets the Xen VM's uuid as its libvirt uuid (so the guest keeps its SMBIOS system
    uuid) unless another domain already uses it.
  - Changing a running domain changes its stored definition only (except the NICs' links, see
    O(link_state)); RV(restart_needed) tells when it needs a restart to take effect.
  - A vTPM of the Xen VM (C(spec.vtpm)) is not carried over; the module warns, naming what the
    guest loses with it (keys sealed in the TPM, such as BitLocker's).
requirements:
  - Python 3.11 on the target host (Debian 12's python3, the version tested)
  - libvirt-python (Debian python3-libvirt)
  - a running libvirtd reachable at O(uri) (Debian libvirt-daemon-system)
seealso:
  - module: xen2kvm.migration.kvm_boot_check
  - module: xen2kvm.migration.xva_convert
"""

EXAMPLES = r"""
- name: Define the migrated VM on the default libvirt network
  xen2kvm.migration.kvm_domain:
    spec: "{{ converted.spec }}"
    disks: "{{ converted.disks }}"
    network_map:
      "Pool-wide network associated with eth0": {network: default}
      xenbr1: {bridge: br-dmz}
    state: running
    autostart: true

- name: Move the images into the 'vms' pool and use user-mode networking for every NIC
  xen2kvm.migration.kvm_domain:
    spec: "{{ converted.spec }}"
    disks:
      - /srv/convert/web01-disk0.qcow2
      - {path: /srv/convert/web01-disk1.img, format: raw}
    default_network: user
    pool: vms
    memory_mib: 4096
    graphics: vnc

- name: Import the VM with its NICs unplugged while its Xen source still runs (snapshot export)
  xen2kvm.migration.kvm_domain:
    spec: "{{ converted.spec }}"
    disks: "{{ converted.disks }}"
    network_map:
      "Pool-wide network associated with eth0": {bridge: br0}
    link_state: down
    state: running

- name: Cut over, plug the running domain's NICs in, without restarting it
  xen2kvm.migration.kvm_domain:
    name: web01
    link_state: up

- name: Remove the test domain, keeping its images
  xen2kvm.migration.kvm_domain:
    name: web01
    state: absent
"""

RETURN = r"""
domain:
  description: The domain after the run.
  returned: always
  type: dict
  contains:
    name:
      description: Domain name.
      type: str
      sample: TestVM01
    uuid:
      description: Domain UUID (empty when absent).
      type: str
      sample: 0f5e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b
    state:
      description: libvirt state (running, shutoff, paused, ...), or absent.
      type: str
      sample: shutoff
xml:
  description: The stored inactive domain XML; in check mode the XML that would be defined;
    empty for O(state=absent).
  returned: success
  type: str
changed:
  description: Whether the stored definition, the images' location, the running state or autostart
    changed (or would change, in check mode).
  returned: always
  type: bool
xml_changed:
  description: Whether the stored definition changed (or would).
  returned: when O(state) is not V(absent)
  type: bool
started:
  description: Whether the domain was started.
  returned: when O(state) is not V(absent)
  type: bool
restart_needed:
  description: The definition of a running domain changed; restart it to apply the change.
  returned: when O(state) is not V(absent)
  type: bool
disks:
  description: The disk images used, with their final paths and formats.
  returned: when O(state) is not V(absent)
  type: list
  elements: dict
  sample: [{path: /var/lib/libvirt/images/TestVM01-disk0.qcow2, format: qcow2}]
nvram_reset:
  description: The UEFI domain's NVRAM was deleted (or would be, in check mode); it starts again from
    OVMF's template at the next start.
  returned: when O(state) is not V(absent)
  type: bool
nvram_reset_reason:
  description: Why the NVRAM was reset, empty when it was not.
  returned: when O(state) is not V(absent)
  type: str
  sample: "the disk images were replaced (a new conversion): the old boot entries are stale"
link_changes:
  description:
    - The NICs whose link was switched to O(link_state) (or would be, in check mode), by MAC address.
      C(live) the running guest's NIC was switched, C(config) the stored definition said
      otherwise before the run.
  returned: when O(state) is not V(absent)
  type: list
  elements: dict
  sample: [{mac: "aa:00:5e:00:53:01", live: true, config: true}]
placed:
  description: Images moved or copied into O(pool) (C(src), C(dest), C(action)).
  returned: when O(state) is not V(absent)
  type: list
  elements: dict
removed_disks:
  description: Images deleted with O(remove_disks=true).
  returned: when O(state=absent)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xen2kvm.migration.plugins.module_utils._module_result import exit_with_diff
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import require_libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain import (
    KvmDomainError, run)
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain_xml import not_carried_over


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", default="qemu:///system"),
            spec=dict(type="dict"),
            disks=dict(type="list", elements="raw", default=[]),
            network_map=dict(type="dict", default={}),
            default_network=dict(type="raw"),
            domain_type=dict(type="str", choices=["kvm", "qemu"], default="kvm"),
            name=dict(type="str"),
            vcpus=dict(type="int"),
            memory_mib=dict(type="int"),
            machine=dict(type="str"),
            firmware=dict(type="str", choices=["bios", "uefi"]),
            graphics=dict(type="str", choices=["none", "vnc"], default="none"),
            migrated_at=dict(type="str"),
            state=dict(type="str", choices=["defined", "running", "absent"], default="defined"),
            autostart=dict(type="bool"),
            force=dict(type="bool", default=False),
            pool=dict(type="str"),
            pool_action=dict(type="str", choices=["move", "copy"], default="move"),
            remove_disks=dict(type="bool", default=False),
            reset_nvram=dict(type="bool", default=False),
            link_state=dict(type="str", choices=["up", "down"]),
        ),
        required_if=[("state", "running", ["spec"])],
        required_one_of=[("spec", "name")],
        supports_check_mode=True,
    )
    require_libvirt(module)
    try:
        result = run(module.params, check_mode=module.check_mode)
    except KvmDomainError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    if module.params["state"] != "absent" and module.params.get("spec"):
        for warning in not_carried_over(module.params["spec"]):
            module.warn(warning)
    exit_with_diff(module, result)


if __name__ == "__main__":
    main()
