# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks on the KVM host before a VM's disks are copied (the logic behind kvm_preflight).

Every check returns the problems it found as sentences, so the module can fail once, listing
all of them, instead of stopping at the first.

Space rule: the images are written raw and, unless sparse images are allowed, each disk is
counted at its full virtual size (a raw image can fill up to that, and the XVA does not say how
much of it the guest uses). The margin is added on top, for the filesystem's own metadata and
whatever else writes to that filesystem during the copy.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import xml.etree.ElementTree as ET

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain_xml import read_metadata

GiB = 1 << 30
DEFAULT_MARGIN_BYTES = GiB
# What the migration runs on the KVM host, and the Debian package that provides it: qemu-img
# (qcow2, checks), the emulator libvirt starts, virsh (what users and the docs reach the domains
# with), and the Python modules of the libvirt binding and of the XVA checksums and zstd decoding (the
# zstd command itself is never run).
REQUIRED_COMMANDS = (("qemu-img", "qemu-utils"), ("qemu-system-x86_64", "qemu-system-x86"),
                     ("virsh", "libvirt-clients"))
REQUIRED_PYTHON_MODULES = (("libvirt", "python3-libvirt"), ("xxhash", "python3-xxhash"),
                           ("zstandard", "python3-zstandard"))
KVM_HOST_ROLE = "xen2kvm.migration.kvm_host"


def human(size):
    for unit, factor in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", 1 << 20)):
        if size >= factor:
            return "%.1f %s" % (size / factor, unit)
    return "%d bytes" % size


def existing_ancestor(path):
    """``path`` or the nearest parent that exists: the filesystem the directory will be made on."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def total_bytes(disk_bytes):
    """A list of disk sizes or one total, as an int."""
    if isinstance(disk_bytes, (list, tuple)):
        return sum(int(size) for size in disk_bytes)
    return int(disk_bytes)


def check_space(images_dir, disk_bytes, margin_bytes=DEFAULT_MARGIN_BYTES, allow_sparse=False):
    """(problems, warnings, facts) of the free space in ``images_dir`` for disks of ``disk_bytes``."""
    where = existing_ancestor(images_dir)
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    disks = total_bytes(disk_bytes)
    needed = disks + margin_bytes
    facts = {"free_bytes": free, "needed_bytes": needed, "filesystem_path": where}
    if free >= needed:
        return [], [], facts
    message = ("not enough free space for the disk images in %s: %s free on the filesystem of %s, %s needed "
               "(%s of disks at their full virtual size + %s margin)" % (
                   images_dir, human(free), where, human(needed), human(disks), human(margin_bytes)))
    if allow_sparse:
        return [], [message + "; going on since sparse images are allowed and may need less"], facts
    return [message], [], facts


def _importable(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def check_tools(commands=REQUIRED_COMMANDS, python_modules=REQUIRED_PYTHON_MODULES):
    """Problems for each required command not on PATH and each Python module not importable,
    then one that names the packages to install and how."""
    problems = []
    packages = []
    for command, package in commands:
        if not shutil.which(command):
            problems.append("command %s not found on PATH %s (Debian package %s)" % (
                command, os.environ.get("PATH", ""), package))
            packages.append(package)
    for name, package in python_modules:
        if not _importable(name):
            problems.append("Python module %s not importable by %s (Debian package %s)" % (
                name, sys.executable, package))
            packages.append(package)
    if packages:
        packages = sorted(set(packages))
        problems.append("KVM host packages missing: %s; run the role %s on this host (or apt-get install %s)" % (
            ", ".join(packages), KVM_HOST_ROLE, " ".join(packages)))
    return problems


def check_domain_name(conn, libvirt, domain_name, source_uuid=None):
    """Problems when a domain called ``domain_name`` exists and is not this source's migration.

    Accepted: no such domain, or one whose xen2kvm metadata names ``source_uuid`` (a rerun of
    this migration). Without ``source_uuid`` any domain migrated by xen2kvm is accepted."""
    try:
        dom = conn.lookupByName(domain_name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return []
        return ["cannot look up domain %s: %s" % (domain_name, exc)]
    metadata = read_metadata(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    if metadata is None:
        return ["domain name %s is taken by a libvirt domain (uuid %s) that was not migrated by xen2kvm; "
                "choose another name or remove that domain" % (domain_name, dom.UUIDString())]
    theirs = metadata.get("source-uuid") or ""
    if source_uuid and theirs.lower() != source_uuid.lower():
        return ["domain name %s is taken by a domain migrated from another Xen VM (%s, uuid %s), not from %s" % (
            domain_name, metadata.get("source-name") or "unnamed", theirs or "unknown", source_uuid)]
    return []


OVMF_PACKAGE = "ovmf"


def uefi_firmware_problems(domcaps_xml, machine, secure_boot=False):
    """Problems when libvirt's domain capabilities (``virsh domcapabilities``) offer no UEFI
    firmware to autoselect for ``machine``, or no Secure Boot build when ``secure_boot``."""
    root = ET.fromstring(domcaps_xml)
    firmware = [v.text for v in root.findall("os/enum[@name='firmware']/value")]
    loaders = [v.text for v in root.findall("os/loader/value")]
    install = "run the role %s on this host (or apt-get install %s)" % (KVM_HOST_ROLE, OVMF_PACKAGE)
    if "efi" not in firmware:
        loaders_text = " (loaders: %s)" % ", ".join(loaders) if loaders else ""
        return ["the VM boots with UEFI, but libvirt offers no UEFI firmware (OVMF) for machine %s%s: Debian "
                "package %s is missing; %s" % (machine, loaders_text, OVMF_PACKAGE, install)]
    secure = [v.text for v in root.findall("os/loader/enum[@name='secure']/value")]
    if secure_boot and "yes" not in secure:
        return ["the VM boots with UEFI Secure Boot, but libvirt offers no Secure Boot build of OVMF for machine %s "
                "(has %s): Debian package %s provides it; %s" % (machine, ", ".join(loaders) or "none",
                                                                 OVMF_PACKAGE, install)]
    return []


def check_uefi_firmware(conn, libvirt, machine, virttype, secure_boot=False):
    """:func:`uefi_firmware_problems` of what libvirt at ``conn`` reports for x86_64 ``machine``."""
    try:
        domcaps = conn.getDomainCapabilities(None, "x86_64", machine, virttype, 0)
    except libvirt.libvirtError as exc:
        return ["cannot ask libvirt which firmware a %s domain of machine %s can use: %s" % (
            virttype, machine, exc.get_error_message())]
    return uefi_firmware_problems(domcaps, machine, secure_boot)


# libvirt's virDomainState values as virsh spells them.
DOMAIN_STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shut off",
                 6: "crashed", 7: "pmsuspended"}


def domain_state(conn, libvirt, domain_name):
    """The state of the domain called ``domain_name`` ("running", "shut off", ...), None when there is none."""
    try:
        state, _reason = conn.lookupByName(domain_name).state()
    except libvirt.libvirtError:
        return None
    return DOMAIN_STATES.get(state, "unknown")


def kvm_usable(dev_kvm="/dev/kvm", nested_pvm="/sys/module/kvm_pvm"):
    """Whether domains of type kvm can run: /dev/kvm is there and this host is not a Nested-PVM
    guest, whose /dev/kvm opens but cannot run the guests libvirt defines."""
    return os.path.exists(dev_kvm) and not os.path.exists(nested_pvm)


# Pool types whose volumes are files in a directory, where xva_convert can write images.
FILE_POOL_TYPES = ("dir", "fs", "netfs")


def pool_directory(conn, libvirt, pool_name):
    """(problems, the directory of the storage pool ``pool_name`` or None)."""
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError as exc:
        return ["storage pool %s: %s (make it with the role xen2kvm.migration.kvm_host, kvm_host_pool)"
                % (pool_name, exc.get_error_message())], None
    root = ET.fromstring(pool.XMLDesc(0))
    if root.get("type") not in FILE_POOL_TYPES:
        return ["storage pool %s is of type %s; only %s pools hold image files" % (
            pool_name, root.get("type"), ", ".join(FILE_POOL_TYPES))], None
    return [], root.findtext("target/path")
