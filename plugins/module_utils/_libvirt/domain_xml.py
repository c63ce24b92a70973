# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a libvirt domain XML for a migrated Xen VM, and compare it with a stored one.

Pure functions only: the VM ``spec`` (docs/spec.md) plus options in, an XML string out.  No
libvirt connection and no file access (the caller detects image formats it cannot tell from
the file name).  The comparison helpers (``project_stored``) let check mode predict whether
defining the XML would change libvirt's stored definition; see docs/kvm_domain.md.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import re
import xml.etree.ElementTree as ET

from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import virtio_disk

X2K_NS = "urn:xen2kvm:migration:1"
X2K_PREFIX = "x2k"
ET.register_namespace(X2K_PREFIX, X2K_NS)

NAME_MAX = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

XEN_ACTIONS = {
    "restart": "restart",
    "destroy": "destroy",
    "preserve": "preserve",
    "coredump_and_restart": "coredump-restart",
    "coredump_and_destroy": "coredump-destroy",
    "rename_restart": "rename-restart",
}
# libvirt accepts fewer values for on_poweroff / on_reboot than for on_crash.
_ACTIONS_ALLOWED = {
    "on_poweroff": ("destroy", "restart", "preserve", "rename-restart"),
    "on_reboot": ("destroy", "restart", "preserve", "rename-restart"),
    "on_crash": ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
                 "coredump-restart"),
}
_ACTION_SOURCES = (("on_poweroff", "actions_after_shutdown", "destroy"),
                   ("on_reboot", "actions_after_reboot", "restart"),
                   ("on_crash", "actions_after_crash", "restart"))

DISK_FORMATS = ("raw", "qcow2")
# ".img" is used for both raw and qcow2 images, so it tells nothing.
_EXT_FORMATS = {".qcow2": "qcow2", ".qcow": "qcow2", ".raw": "raw"}
MACHINE_ALIASES = {"pc": "pc-i440fx-", "q35": "pc-q35-"}

# The metadata item naming the disk image files (inode numbers, "-" when not a file) whose
# guest the UEFI domain's NVRAM belongs to: other files there mean the disks were replaced.
NVRAM_IMAGES = "nvram-images"
UNKNOWN_IMAGE = "-"

# Device kinds this builder owns: check mode compares every stored one of these, matched or not.
MANAGED_DEVICES = ("disk", "interface", "serial", "console", "channel", "graphics", "rng",
                   "memballoon")

# libvirt's <link state=.../> of a NIC: "down" is the cable pulled (the guest sees no carrier).
# "up" is also what a NIC without the element has, so the builder writes only "down".
LINK_STATES = ("up", "down")


class DomainXMLError(ValueError):
    """The spec and options cannot make a valid domain definition."""


# ---------------------------------------------------------------------------- small helpers


def validate_name(name):
    """Return ``name`` if libvirt and the serial-log path can take it, else raise."""
    if not isinstance(name, str) or not name:
        raise DomainXMLError("domain name must be a non-empty string")
    if len(name) > NAME_MAX:
        raise DomainXMLError("domain name %r is longer than %d characters" % (name, NAME_MAX))
    if not _NAME_RE.match(name):
        raise DomainXMLError(
            "domain name %r may only use letters, digits, '.', '_', '+' and '-', and must start "
            "with a letter or digit" % name)
    return name


def sanitize_name(label):
    """A libvirt-safe name derived from a Xen name_label ("Web server (1)" -> "Web-server-1")."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", label or "").strip("-._+")
    return name[:NAME_MAX].rstrip("-._+")


def format_from_path(path):
    """``raw``/``qcow2`` from the file name's extension, or None when it does not tell."""
    lower = path.lower()
    for ext, fmt in _EXT_FORMATS.items():
        if lower.endswith(ext):
            return fmt
    return None


def topology(vcpus, cores_per_socket):
    """(sockets, cores, threads): Xen's cores-per-socket when it divides vcpus, else 1."""
    try:
        cores = int(cores_per_socket or 1)
    except (TypeError, ValueError):
        cores = 1
    if cores < 1 or vcpus % cores:
        cores = 1
    return vcpus // cores, cores, 1


def map_action(xen_value, element):
    """Xen actions_after_* value -> libvirt on_* value (``element`` is on_crash, ...)."""
    value = XEN_ACTIONS.get(str(xen_value).strip().lower())
    if value is None:
        raise DomainXMLError("unknown Xen action %r for %s" % (xen_value, element))
    if value not in _ACTIONS_ALLOWED[element]:
        # coredump-* only exist for on_crash: keep the non-dump half.
        value = value.split("-", 1)[1] if value.startswith("coredump-") else "destroy"
    return value


def target_dev(index):
    """vda, vdb, ..., vdz, vdaa, ... for the index-th disk."""
    return virtio_disk(index)


def not_carried_over(spec):
    """Warnings naming what the source VM has that the KVM domain will not get."""
    warnings = []
    if spec.get("vtpm"):
        warnings.append(
            "the Xen VM %r has a vTPM; it is not carried over: the KVM domain gets no TPM, and what "
            "the guest sealed in it (BitLocker or LUKS keys bound to the TPM, measured-boot secrets, "
            "Windows Hello credentials) is lost - have the recovery keys ready before the first boot"
            % (spec.get("name") or ""))
    return warnings


def validate_link_state(state):
    """``state`` (None meaning up) if it is a libvirt NIC link state, else raise."""
    state = state or "up"
    if state not in LINK_STATES:
        raise DomainXMLError("link_state must be up or down, not %r" % (state,))
    return state


def resolve_machine(requested, firmware, existing=None):
    """The machine type to write.

    ``requested`` None picks ``q35`` for UEFI and ``pc`` for BIOS.  When the domain already exists
    with a versioned form of the requested alias (``pc-i440fx-7.2`` for ``pc``), that exact
    version is kept so reruns don't move the guest to a newer machine type after a qemu upgrade.
    """
    machine = requested or ("q35" if firmware == "uefi" else "pc")
    prefix = MACHINE_ALIASES.get(machine)
    if existing and prefix and existing.startswith(prefix):
        return existing
    return machine


# ---------------------------------------------------------------------------- disks and NICs


def normalize_disks(disks, spec_disks=None):
    """Turn the ``disks`` option into ``[{path, format, target, readonly, bootable}]``.

    Entries are paths or dicts ``{path, format?, userdevice?, ref?}`` (xva_convert's ``disks``).
    When every entry carries ``userdevice`` the list is sorted by it (numerically); otherwise the
    given order is kept.  Targets are vda, vdb, ... in that order.
    """
    entries = []
    for pos, item in enumerate(disks or []):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not item.get("path"):
            raise DomainXMLError("disks[%d] must be a path or a dict with a 'path'" % pos)
        entries.append(dict(item))
    if entries and all(e.get("userdevice") not in (None, "") for e in entries):
        try:
            entries.sort(key=lambda e: int(e["userdevice"]))
        except (TypeError, ValueError):
            raise DomainXMLError("disks: userdevice must be numeric")
    spec_by_ref = {}
    spec_by_userdevice = {}
    for sd in spec_disks or []:
        if sd.get("ref"):
            spec_by_ref[sd["ref"]] = sd
        if sd.get("userdevice") not in (None, ""):
            spec_by_userdevice[str(sd["userdevice"])] = sd
    result = []
    for index, entry in enumerate(entries):
        path = entry["path"]
        if not path.startswith("/"):
            raise DomainXMLError("disk path %r must be absolute" % path)
        fmt = entry.get("format") or format_from_path(path)
        if fmt is None:
            raise DomainXMLError("cannot tell the format of %s from its name: give format "
                                 "(raw or qcow2)" % path)
        if fmt not in DISK_FORMATS:
            raise DomainXMLError("disk %s: format %r is not one of %s"
                                 % (path, fmt, ", ".join(DISK_FORMATS)))
        sd = spec_by_ref.get(entry.get("ref")) or \
            spec_by_userdevice.get(str(entry.get("userdevice"))) or {}
        result.append({
            "path": path,
            "format": fmt,
            "target": target_dev(index),
            "readonly": str(sd.get("mode", "RW")).upper() == "RO",
            "bootable": bool(sd.get("bootable", False)),
        })
    return result


def _map_value(value, what):
    """One network_map value -> ("network"|"bridge"|"user", source or None)."""
    if isinstance(value, str):
        if value == "user":
            return "user", None
        return "network", value
    if isinstance(value, dict):
        if value.get("network"):
            return "network", str(value["network"])
        if value.get("bridge"):
            return "bridge", str(value["bridge"])
        if value.get("user") or value.get("type") == "user":
            return "user", None
    raise DomainXMLError("%s: expected 'user', a network name, {'network': NAME} or "
                         "{'bridge': BRIDGE}, got %r" % (what, value))


def map_nics(nics, network_map=None, default_network=None):
    """Spec NICs (device order) -> ``[{mac, type, source}]`` through ``network_map``.

    A NIC is looked up by its Xen network name_label, then by its bridge.  NICs found in neither
    take ``default_network`` when given; otherwise one error lists every unmapped network.
    """
    network_map = network_map or {}
    nics = sorted(nics or [], key=lambda n: int(n.get("device", 0) or 0))
    mapped, unmapped = [], []
    for nic in nics:
        mac = str(nic.get("mac", "")).strip().lower()
        if not re.match(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", mac):
            raise DomainXMLError("NIC %s: invalid MAC address %r" % (nic.get("device"), mac))
        value = None
        for key in (nic.get("network"), nic.get("bridge")):
            if key and key in network_map:
                value, what = network_map[key], "network_map[%r]" % key
                break
        if value is None:
            if default_network is None:
                unmapped.append("%r (bridge %s)" % (nic.get("network", ""), nic.get("bridge") or "-"))
                continue
            value, what = default_network, "default_network"
        kind, source = _map_value(value, what)
        mapped.append({"mac": mac, "type": kind, "source": source})
    if unmapped:
        raise DomainXMLError(
            "no network_map entry for the Xen network(s) %s: map each name_label or bridge to "
            "{'network': NAME}, {'bridge': BRIDGE} or 'user', or give default_network"
            % ", ".join(sorted(set(unmapped))))
    return mapped


# ---------------------------------------------------------------------------- builder


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _metadata(parent, spec, migrated_at, nvram_images=None):
    source = spec.get("source") or {}
    meta = _sub(parent, "metadata")
    mig = ET.SubElement(meta, "{%s}migration" % X2K_NS)
    product = " ".join(p for p in (source.get("product_brand"), source.get("product_version")) if p)
    items = [("source-uuid", spec.get("uuid", "")),
             ("source-name", spec.get("name", "")),
             ("source-host", source.get("hostname", "")),
             ("product", product),
             ("migrated-at", migrated_at)]
    if nvram_images is not None:
        items.append((NVRAM_IMAGES, " ".join(nvram_images)))
    for key, value in items:
        ET.SubElement(mig, "{%s}%s" % (X2K_NS, key)).text = str(value or "")


def read_metadata(root):
    """The x2k metadata of a parsed domain XML as a dict, or None when it has none."""
    mig = root.find("metadata/{%s}migration" % X2K_NS)
    if mig is None:
        return None
    return {child.tag.split("}", 1)[1]: (child.text or "") for child in mig}


def build_domain_xml(spec, disks=None, network_map=None, default_network=None,
                     domain_type="kvm", name=None, vcpus=None, memory_mib=None, machine=None,
                     firmware=None, graphics="none", uuid=None, migrated_at="",
                     existing_machine=None, nvram_images=None, link_state="up"):
    """Return the domain XML (str) for ``spec`` with the given overrides.

    ``uuid`` and ``migrated_at`` come from the existing domain on reruns so that an unchanged
    VM gives an unchanged definition.  ``existing_machine`` is the stored machine type (see
    :func:`resolve_machine`).  ``nvram_images`` (UEFI only) are the image files the NVRAM is
    for, recorded in the metadata (see :func:`nvram_reset_reason`).  ``link_state`` ``down``
    gives every NIC ``<link state='down'/>``.
    """
    if not isinstance(spec, dict):
        raise DomainXMLError("spec must be a dict (the output of xva_info / xva_convert)")
    if domain_type not in ("kvm", "qemu"):
        raise DomainXMLError("domain_type must be kvm or qemu, not %r" % domain_type)
    if name:
        name = validate_name(name)
    else:
        name = validate_name(sanitize_name(spec.get("name", "")) or "")
    firmware = firmware or spec.get("firmware") or "bios"
    if firmware not in ("bios", "uefi"):
        raise DomainXMLError("firmware must be bios or uefi, not %r" % firmware)
    vcpus = int(vcpus or spec.get("vcpus") or 1)
    memory_mib = int(memory_mib or spec.get("memory_mib") or 0)
    if vcpus < 1:
        raise DomainXMLError("vcpus must be at least 1")
    if memory_mib < 1:
        raise DomainXMLError("memory_mib must be at least 1 (spec has none)")
    if graphics not in ("none", "vnc"):
        raise DomainXMLError("graphics must be none or vnc, not %r" % graphics)
    link_state = validate_link_state(link_state)
    machine = resolve_machine(machine, firmware, existing_machine)
    # Secure Boot follows the Xen VM (platform:secureboot) and only applies to UEFI; OVMF's
    # secure-boot build needs SMM, which only q35 has.
    secure_boot = firmware == "uefi" and bool(spec.get("secure_boot"))
    if secure_boot and not machine.startswith(("q35", "pc-q35-")):
        raise DomainXMLError("the Xen VM boots with UEFI Secure Boot, which needs a q35 machine, not %r "
                             "(set spec.secure_boot to false to boot it without)" % machine)
    disk_list = normalize_disks(disks, spec.get("disks"))
    nic_list = map_nics(spec.get("nics"), network_map, default_network)

    root = ET.Element("domain", {"type": domain_type})
    _sub(root, "name", name)
    if uuid:
        _sub(root, "uuid", uuid)
    if spec.get("description"):
        _sub(root, "description", spec["description"])
    _metadata(root, spec, migrated_at, nvram_images if firmware == "uefi" else None)
    kib = memory_mib * 1024
    _sub(root, "memory", kib, unit="KiB")
    _sub(root, "currentMemory", kib, unit="KiB")
    _sub(root, "vcpu", vcpus, placement="static")

    os_el = _sub(root, "os", firmware="efi") if firmware == "uefi" else _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=machine)
    if firmware == "uefi":
        fw = _sub(os_el, "firmware")
        # libvirt's firmware autoselection: with both features it picks OVMF's secure-boot build
        # with Microsoft's keys enrolled (Debian: 40-edk2-x86_64-secure-enrolled.json), which
        # boots Windows and shim-signed Linux guests.
        if secure_boot:
            _sub(fw, "feature", enabled="yes", name="enrolled-keys")
        _sub(fw, "feature", enabled="yes" if secure_boot else "no", name="secure-boot")

    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if secure_boot:
        _sub(features, "smm", state="on")

    sockets, cores, threads = topology(vcpus, spec.get("cores_per_socket", 1))
    cpu = _sub(root, "cpu", mode="host-passthrough", migratable="on") \
        if domain_type == "kvm" else _sub(root, "cpu")
    _sub(cpu, "topology", sockets=sockets, dies=1, cores=cores, threads=threads)
    _sub(root, "clock", offset="utc")
    for element, key, default in _ACTION_SOURCES:
        _sub(root, element, map_action(spec.get(key) or default, element))

    devices = _sub(root, "devices")
    boot_index = next((i for i, d in enumerate(disk_list) if d["bootable"]), 0)
    for index, disk in enumerate(disk_list):
        block = disk["path"].startswith("/dev/")
        d = _sub(devices, "disk", type="block" if block else "file", device="disk")
        _sub(d, "driver", name="qemu", type=disk["format"], discard="unmap")
        if block:
            _sub(d, "source", dev=disk["path"])
        else:
            _sub(d, "source", file=disk["path"])
        _sub(d, "target", dev=disk["target"], bus="virtio")
        if index == boot_index:
            _sub(d, "boot", order=1)
        if disk["readonly"]:
            _sub(d, "readonly")
    for nic in nic_list:
        i = _sub(devices, "interface", type=nic["type"])
        _sub(i, "mac", address=nic["mac"])
        if nic["type"] == "network":
            _sub(i, "source", network=nic["source"])
        elif nic["type"] == "bridge":
            _sub(i, "source", bridge=nic["source"])
        _sub(i, "model", type="virtio")
        if link_state == "down":
            _sub(i, "link", state="down")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file="%s/%s-serial.log" % (SERIAL_LOG_DIR, name), append="off")
    _sub(serial, "target", port=0)
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port=0)
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    if graphics == "vnc":
        g = _sub(devices, "graphics", type="vnc", port=-1, autoport="yes", listen="127.0.0.1")
        _sub(g, "listen", type="address", address="127.0.0.1")
        video = _sub(devices, "video")
        _sub(video, "model", type="vga")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")
    return to_string(root)


def _secure_boot(root):
    feature = root.find("os/firmware/feature[@name='secure-boot']")
    return feature is not None and feature.get("enabled") == "yes"


def _uses_uefi(root):
    os_el = root.find("os")
    if os_el is None:
        return False
    loader = os_el.find("loader")
    return os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")


def recorded_images(root):
    """The image files (inode numbers) the stored domain's NVRAM is for; None when not recorded."""
    meta = read_metadata(root)
    if meta is None or NVRAM_IMAGES not in meta:
        return None
    return meta[NVRAM_IMAGES].split()


def nvram_reset_reason(stored_xml, new_xml, owned, forced=False):
    """Why the UEFI domain defined from ``new_xml`` must start from a fresh NVRAM, or None.

    ``stored_xml`` is the existing definition (None for a new domain), ``owned`` whether it was
    migrated from the same Xen VM.  The NVRAM holds boot entries pointing at files of the
    guest it was made for; it must not outlive that guest: when the domain is new (an NVRAM
    file left by an earlier domain of this name must not be picked up), replaces another
    domain, changes from BIOS or its Secure Boot setting (the NVRAM template differs), or when
    a disk image is a file the NVRAM was not made for (a new conversion writes new files).
    ``forced`` (the module's reset_nvram) resets it in any case.
    """
    new = ET.fromstring(new_xml)
    if not _uses_uefi(new):
        return None
    if forced:
        return "reset_nvram is true"
    if stored_xml is None:
        return "a new domain starts from OVMF's template"
    stored = ET.fromstring(stored_xml)
    if not owned:
        return "the domain it replaces was not migrated from this VM"
    if not _uses_uefi(stored):
        return "the domain booted with BIOS before"
    if _secure_boot(stored) != _secure_boot(new):
        return "Secure Boot is now %s, and OVMF's template for that differs" % (
            "on" if _secure_boot(new) else "off")
    known = set(recorded_images(stored) or []) - {UNKNOWN_IMAGE}
    images = set(recorded_images(new) or []) - {UNKNOWN_IMAGE}
    if known and images - known:
        return "the disk images were replaced (a new conversion): the old boot entries are stale"
    return None


# ---------------------------------------------------------------------------- NIC link state


def link_state_of(interface):
    """The link state of a parsed ``<interface>``: ``down`` or ``up`` (no element means up)."""
    link = interface.find("link")
    state = link.get("state") if link is not None else None
    return "down" if state == "down" else "up"


def interface_mac(interface):
    mac = interface.find("mac")
    return (mac.get("address") or "").lower() if mac is not None else ""


def interfaces(xml):
    """``[(mac, <interface> element)]`` of a domain XML string, in device order."""
    root = ET.fromstring(xml)
    return [(interface_mac(i), i) for i in root.findall("devices/interface")]


def with_link_state(interface, state):
    """The ``<interface>`` element as a device XML string for virDomainUpdateDeviceFlags, with its
    link set to ``state``.  ``up`` is written out: an update without the element would leave
    libvirt to pick the default, and the point is to say it."""
    state = validate_link_state(state)
    device = copy.deepcopy(interface)
    for link in device.findall("link"):
        device.remove(link)
    ET.SubElement(device, "link", {"state": state})
    return ET.tostring(device, encoding="unicode")


def link_differences(xml, state):
    """MACs of the NICs of domain XML ``xml`` whose link is not ``state``."""
    return [mac for mac, interface in interfaces(xml) if link_state_of(interface) != state]


def _drop_links(root, all_states=False):
    """Remove the NICs' ``<link>`` elements in place: those saying ``up`` (the same as none), or
    every one with ``all_states`` (to tell whether anything but the links changed)."""
    for interface in root.findall("devices/interface"):
        for link in interface.findall("link"):
            if all_states or link.get("state") != "down":
                interface.remove(link)
    return root


def to_string(root):
    root = copy.deepcopy(root)
    if hasattr(ET, "indent"):
        ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------- comparison


def _text(el):
    return (el.text or "").strip()


def _candidates(stored_parent, want, used):
    same = [c for c in stored_parent if c.tag == want.tag and id(c) not in used]
    # Prefer a stored element whose attributes include all of ours, then any of the same tag.
    for c in same:
        if all(c.get(k) == v for k, v in want.attrib.items()):
            return c
    for key in ("type", "dev", "address", "name", "model"):
        if key in want.attrib:
            for c in same:
                if c.get(key) == want.get(key):
                    return c
    return same[0] if same else None


def _project(stored, want):
    """Copy of ``stored`` restricted to what ``want`` sets (attributes, text, children)."""
    out = ET.Element(stored.tag, {k: stored.get(k) for k in want.attrib if stored.get(k) is not None})
    if _text(want):
        out.text = _text(stored)
    used = set()
    for wchild in want:
        match = _candidates(stored, wchild, used)
        if match is None:
            continue
        used.add(id(match))
        out.append(_project(match, wchild))
    if want.tag == "interface" and want.find("link") is None:
        # The builder owns the link state: writing none sets the link up, so a stored "down" is a change.
        for c in stored:
            if c.tag == "link" and c.get("state") == "down":
                out.append(_strip(c))
    if want.tag == "devices":
        # Stored devices of a managed kind we did not ask for would survive a define: show them.
        for c in stored:
            if c.tag in MANAGED_DEVICES and id(c) not in used:
                out.append(_strip(c))
    return out


def _strip(el, dropped=("address", "alias")):
    """Copy without libvirt's bookkeeping (addresses, aliases) for display and comparison."""
    out = ET.Element(el.tag, dict(el.attrib))
    out.text = _text(el) or None
    for child in el:
        if child.tag not in dropped:
            out.append(_strip(child, dropped))
    return out


def _clean(el):
    """Copy with the text normalised and nothing dropped."""
    return _strip(el, dropped=())


def _controller_key(controller):
    index = controller.get("index") or "0"
    return (controller.get("type") or "", int(index) if index.isdigit() else 0, controller.get("model") or "")


def canonical(xml, ignore_links=False):
    """``xml`` normalized for telling whether a definition changed: text trimmed and the
    controllers in one order.  libvirt keeps them in the order it added them, and after a q35
    domain's first start it stores its virtio-serial controller elsewhere than a define of the
    very same XML does: compared as they are, a rerun would always report a change.  A NIC's
    ``<link state='up'/>`` (left by a live update that set the link up) equals no ``<link>``;
    ``ignore_links`` drops the down ones too (links are switched live, without a restart)."""
    root = _drop_links(_clean(ET.fromstring(xml)), all_states=ignore_links)
    devices = root.find("devices")
    if devices is not None:
        controllers = [child for child in devices if child.tag == "controller"]
        for controller in controllers:
            devices.remove(controller)
        devices.extend(sorted(controllers, key=_controller_key))
    return to_string(root)


def compare_with_stored(stored_xml, new_xml):
    """Predict whether defining ``new_xml`` changes the stored (inactive) definition.

    Returns ``(changed, before, after)`` where ``before`` is the stored XML restricted to the
    elements and attributes the builder writes (plus any stored managed devices it would drop)
    and ``after`` the new XML, both normalized; ``changed`` is ``before != after``.  libvirt only
    adds defaults (addresses, controllers, emulator, ...) to what it is given, so elements the
    builder does not write are ignored.  Used by check mode; a real run compares libvirt's own
    stored XML before and after defining instead.
    """
    stored = _drop_links(ET.fromstring(stored_xml))
    new = _drop_links(_clean(ET.fromstring(new_xml)))
    before = _project(stored, new)
    after_s, before_s = to_string(new), to_string(before)
    return before_s != after_s, before_s, after_s
