# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM description an XVA carries in ``ova.xml``, turned into the collection's ``spec``.

ova.xml is one bare XML-RPC ``<value>`` holding ``{version, objects}``; objects reference each
other by their ``id`` (``Ref:N``).  The layout and every field used here are described in
docs/spec.md and the XVA format notes.  The file comes from the source host, so it is treated
as untrusted: size-capped by the caller, no DTDs, and every field read defensively.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xmlrpc.client

MAX_OVA_XML_BYTES = 64 * 1024 * 1024
NULL_REF = "OpaqueRef:NULL"
XEN_ACTIONS_DEFAULT = {"actions_after_reboot": "restart", "actions_after_crash": "restart",
                       "actions_after_shutdown": "destroy"}


class OvaXmlError(ValueError):
    """ova.xml is missing, malformed, or does not describe one exportable VM."""


def parse_ova_xml(data):
    """Parse the raw bytes of ova.xml into ``{"version": {...}, "objects": [...]}``."""
    if len(data) > MAX_OVA_XML_BYTES:
        raise OvaXmlError("ova.xml is %d bytes, more than the %d allowed" % (len(data), MAX_OVA_XML_BYTES))
    # A DOCTYPE is never part of xapi's output and is how entity-expansion attacks get in.
    if re.search(rb"<!(DOCTYPE|ENTITY)", data, re.IGNORECASE):
        raise OvaXmlError("ova.xml contains a DOCTYPE/ENTITY declaration, which xapi never writes")
    text = data.decode("utf-8", errors="strict") if isinstance(data, bytes) else data
    wrapped = "<params><param>%s</param></params>" % text.strip()
    try:
        (document,), _method = xmlrpc.client.loads(wrapped)
    except Exception as exc:  # expat and xmlrpc raise several unrelated types
        raise OvaXmlError("ova.xml is not a valid XML-RPC value: %s" % exc)
    if not isinstance(document, dict) or not isinstance(document.get("objects"), list):
        raise OvaXmlError("ova.xml has no 'objects' list")
    return document


def _as_int(value, default=0):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _as_bool(value):
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _as_str(value):
    return "" if value is None else str(value)


def _as_dict(value):
    return value if isinstance(value, dict) else {}


def _as_list(value):
    return value if isinstance(value, list) else []


class OvaModel:
    """Index of the objects in ova.xml, with the lookups a migration needs."""

    def __init__(self, document):
        self.version = _as_dict(document.get("version"))
        self.by_id = {}
        self.by_class = {}
        for obj in document["objects"]:
            if not isinstance(obj, dict):
                continue
            record = _as_dict(obj.get("snapshot"))
            cls = _as_str(obj.get("class"))
            self.by_id[_as_str(obj.get("id"))] = (cls, record)
            self.by_class.setdefault(cls.lower(), []).append((_as_str(obj.get("id")), record))

    def record(self, ref, cls=None):
        found = self.by_id.get(_as_str(ref))
        if found is None or (cls is not None and found[0].lower() != cls.lower()):
            return None
        return found[1]

    def vm(self):
        """The exported VM: the one VM object that is not a snapshot (a snapshot exported directly
        is the only VM object, so it is accepted then)."""
        vms = [(ref, rec) for ref, rec in self.by_class.get("vm", [])
               if not _as_bool(rec.get("is_control_domain"))]
        if not vms:
            raise OvaXmlError("ova.xml describes no VM")
        primary = [item for item in vms if not _as_bool(item[1].get("is_a_snapshot"))]
        if len(primary) == 1:
            return primary[0]
        if len(vms) == 1:
            return vms[0]
        raise OvaXmlError("ova.xml describes %d VMs; expected one" % len(primary or vms))

    def vdi_ids(self):
        return {ref for ref, _rec in self.by_class.get("vdi", [])}


def _domain_type(vm):
    kind = _as_str(vm.get("domain_type")).lower()
    if kind in ("hvm", "pv", "pvh"):
        return kind
    if kind == "pv_in_pvh":
        return "pv"
    # Exports from before XenServer 7.5 say it only through the HVM boot policy.
    return "pv" if _as_str(vm.get("HVM_boot_policy")) == "" else "hvm"


def _secure_boot(vm, firmware):
    """platform["secureboot"] of a UEFI VM: "true" is enforced.  "auto" (XenServer 8 / XCP-ng 8.3)
    enforces it only when the pool has Secure Boot certificates, which the export does not tell,
    so it counts as off: a guest that booted with it boots without it, not the other way round."""
    value = _as_str(_as_dict(vm.get("platform")).get("secureboot")).strip().lower()
    return firmware == "uefi" and value == "true"


def _disk_entries(model, vm):
    disks = []
    for vbd_ref in _as_list(vm.get("VBDs")):
        vbd = model.record(vbd_ref, "VBD")
        if vbd is None or _as_str(vbd.get("type")).lower() == "cd":
            continue
        vdi_ref = _as_str(vbd.get("VDI"))
        vdi = model.record(vdi_ref, "VDI")
        if vdi_ref in ("", NULL_REF) or vdi is None:
            continue
        sr = model.record(vdi.get("SR"), "SR") or {}
        if _as_str(sr.get("content_type")).lower() == "iso" or _as_str(vdi.get("type")).lower() == "suspend":
            continue
        virtual_size = _as_int(vdi.get("virtual_size"), -1)
        if virtual_size < 0:
            raise OvaXmlError("VDI %s has no valid virtual_size" % vdi_ref)
        disks.append({
            "ref": vdi_ref,
            "userdevice": _as_int(vbd.get("userdevice"), 0),
            "device": _as_str(vbd.get("device")),
            "virtual_size": virtual_size,
            "bootable": _as_bool(vbd.get("bootable")),
            "name": _as_str(vdi.get("name_label")),
            "vdi_uuid": _as_str(vdi.get("uuid")),
            "mode": _as_str(vbd.get("mode")) or "RW",
        })
    disks.sort(key=lambda disk: (disk["userdevice"], disk["ref"]))
    seen = set()
    for disk in disks:
        if disk["ref"] in seen:
            raise OvaXmlError("VDI %s is attached twice" % disk["ref"])
        seen.add(disk["ref"])
    return disks


def _nic_entries(model, vm):
    nics = []
    for vif_ref in _as_list(vm.get("VIFs")):
        vif = model.record(vif_ref, "VIF")
        if vif is None:
            continue
        network = model.record(vif.get("network"), "network") or {}
        nics.append({
            "device": _as_int(vif.get("device"), 0),
            "mac": _as_str(vif.get("MAC")).strip().lower(),
            "mtu": _as_int(vif.get("MTU"), 1500) or 1500,
            "network": _as_str(network.get("name_label")),
            "bridge": _as_str(network.get("bridge")),
        })
    nics.sort(key=lambda nic: nic["device"])
    return nics


def _source(version):
    major, minor = _as_str(version.get("xapi_major")), _as_str(version.get("xapi_minor"))
    return {
        "hostname": _as_str(version.get("hostname")),
        "date": _as_str(version.get("date")),
        "product_brand": _as_str(version.get("product_brand")),
        "product_version": _as_str(version.get("product_version")),
        "build_number": _as_str(version.get("build_number")),
        "xapi_version": "%s.%s" % (major, minor) if major else "",
        "export_vsn": _as_int(version.get("export_vsn"), 0),
    }


def vm_spec(document):
    """Build the collection's ``spec`` (docs/spec.md) from a parsed ova.xml document."""
    model = OvaModel(document)
    _vm_ref, vm = model.vm()
    vcpus_max = max(_as_int(vm.get("VCPUs_max"), 1), 1)
    vcpus = min(max(_as_int(vm.get("VCPUs_at_startup"), vcpus_max), 1), vcpus_max)
    cores = _as_int(_as_dict(vm.get("platform")).get("cores-per-socket"), 1)
    memory = _as_int(vm.get("memory_static_max"), 0)
    firmware = "uefi" if _as_str(_as_dict(vm.get("HVM_boot_params")).get("firmware")).lower() == "uefi" else "bios"
    spec = {
        "uuid": _as_str(vm.get("uuid")),
        "name": _as_str(vm.get("name_label")),
        "description": _as_str(vm.get("name_description")),
        "vcpus": vcpus,
        "vcpus_max": vcpus_max,
        "cores_per_socket": cores if cores >= 1 else 1,
        "memory_mib": -(-memory // (1024 * 1024)),
        "xen_domain_type": _domain_type(vm),
        "firmware": firmware,
        "secure_boot": _secure_boot(vm, firmware),
        "vtpm": any(_as_str(ref) not in ("", NULL_REF) for ref in _as_list(vm.get("VTPMs"))),
        "pv_bootloader": _as_str(vm.get("PV_bootloader")),
        "pv_args": _as_str(vm.get("PV_args")),
        "is_template": _as_bool(vm.get("is_a_template")),
        "tags": [_as_str(tag) for tag in _as_list(vm.get("tags"))],
        "has_nvram": bool(_as_dict(vm.get("NVRAM"))),
        "source": _source(model.version),
        "disks": _disk_entries(model, vm),
        "nics": _nic_entries(model, vm),
    }
    for key, default in XEN_ACTIONS_DEFAULT.items():
        spec[key] = _as_str(vm.get(key)) or default
    if not spec["name"]:
        raise OvaXmlError("the VM in ova.xml has no name_label")
    return spec, model.vdi_ids()
