# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's ``spec`` (docs/spec.md) of a live VM, from its XAPI records.

An XVA's ova.xml holds these very records (VM, VBD, VDI, SR, VIF, network), each as
``{class, id, snapshot: record}``.  So the records are put into that shape and read by
``_xva.ova_xml.vm_spec``: one reading of the fields for both sources, and ``xen_vm_info``'s
spec cannot drift from ``xva_info``'s.  The differences: disk ``ref`` is the VDI's OpaqueRef
(an export numbers them ``Ref:N``), and ``source`` describes the pool master, with
``export_vsn`` 0 as nothing was exported yet.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.ova_xml import OvaXmlError, vm_spec
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError

NULL_REF = "OpaqueRef:NULL"


def version_record(software_version, host_name=""):
    """ova.xml's ``version`` record from a host's ``software_version`` map."""
    software_version = software_version or {}
    major, _dot, minor = str(software_version.get("xapi", "")).partition(".")
    return {
        "hostname": software_version.get("hostname") or host_name,
        "date": software_version.get("date", ""),
        "product_brand": software_version.get("product_brand", ""),
        "product_version": software_version.get("product_version", ""),
        "build_number": software_version.get("build_number", ""),
        "xapi_major": major,
        "xapi_minor": minor,
        "export_vsn": 0,
    }


def records_document(vm_ref, vm_record, records, version):
    """``{"version", "objects"}`` as in ova.xml; ``records`` maps ``(class, ref)`` to a record."""
    objects = [{"class": "VM", "id": vm_ref, "snapshot": vm_record}]
    for (cls, ref), record in sorted(records.items()):
        objects.append({"class": cls, "id": ref, "snapshot": record})
    return {"version": version, "objects": objects}


def _read(client, cls, ref, records):
    if ref and ref != NULL_REF and (cls, ref) not in records:
        records[(cls, ref)] = client.call("%s.get_record" % cls, ref)
    return records.get((cls, ref))


def vm_records(client, vm_record):
    """The VBD, VDI, SR, VIF and network records the spec reads, keyed ``(class, ref)``."""
    records = {}
    for vbd_ref in vm_record.get("VBDs") or []:
        vbd = _read(client, "VBD", vbd_ref, records)
        vdi = _read(client, "VDI", vbd.get("VDI"), records)
        if vdi is not None:
            _read(client, "SR", vdi.get("SR"), records)
    for vif_ref in vm_record.get("VIFs") or []:
        vif = _read(client, "VIF", vif_ref, records)
        _read(client, "network", vif.get("network"), records)
    return records


def master_version(client):
    """The pool master's version, as an export from it would carry."""
    pool_ref = client.call("pool.get_all")[0]
    master = client.call("pool.get_master", pool_ref)
    host = client.call("host.get_record", master)
    return version_record(host.get("software_version"), host.get("name_label", ""))


def live_spec(client, vm_ref, vm_record):
    """The spec of the VM behind ``vm_ref`` (docs/spec.md)."""
    document = records_document(vm_ref, vm_record, vm_records(client, vm_record), master_version(client))
    try:
        spec, _vdi_refs = vm_spec(document)
    except OvaXmlError as exc:
        raise XapiError("%s on pool %s: its records do not describe a VM to migrate: %s"
                        % (client.subject or "the VM", client.pool, exc))
    return spec
