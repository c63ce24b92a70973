# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding the one VM a task means, by name or uuid, and what the modules say about it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.marks import read_mark
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError

NULL_REF = "OpaqueRef:NULL"


def _is_plain_vm(record):
    """A VM a user means by its name: not a template, a snapshot or a control domain (dom0)."""
    return not (record.get("is_a_template") or record.get("is_a_snapshot") or record.get("is_control_domain"))


def _kind(record):
    if record.get("is_control_domain"):
        return "a control domain"
    if record.get("is_a_snapshot"):
        return "a snapshot"
    if record.get("is_a_template"):
        return "a template"
    return "a VM"


def find_vm(client, name=None, uuid=None):
    """``(ref, record)`` of the VM called ``name`` or with ``uuid``.  A name shared by several
    VMs fails listing their uuids, so the user can pick one."""
    if uuid:
        client.subject = "VM %s" % uuid
        try:
            ref = client.call("VM.get_by_uuid", uuid)
        except XapiError as exc:
            if exc.code == "UUID_INVALID":
                raise XapiError("pool %s has no VM with uuid %s" % (client.pool, uuid), code="NOT_FOUND")
            raise
        record = client.call("VM.get_record", ref)
        client.subject = "VM %r (%s)" % (record.get("name_label"), uuid)
        if not _is_plain_vm(record):
            raise XapiError("%s on pool %s is %s, not a VM to migrate" % (client.subject, client.pool, _kind(record)),
                            code="NOT_A_VM")
        return ref, record
    client.subject = "VM %r" % name
    candidates = []
    for ref in client.call("VM.get_by_name_label", name):
        record = client.call("VM.get_record", ref)
        if _is_plain_vm(record):
            candidates.append((ref, record))
    if not candidates:
        raise XapiError("pool %s has no VM named %r (templates and snapshots are not counted)" % (client.pool, name),
                        code="NOT_FOUND")
    if len(candidates) > 1:
        uuids = sorted(record.get("uuid", "") for _ref, record in candidates)
        raise XapiError("%d VMs are named %r on pool %s: %s; give uuid instead of name"
                        % (len(candidates), name, client.pool, ", ".join(uuids)), code="AMBIGUOUS")
    ref, record = candidates[0]
    client.subject = "VM %r (%s)" % (name, record.get("uuid"))
    return ref, record


def host_name(client, host_ref):
    """The name_label of a host, or None for no host (a halted VM is resident nowhere)."""
    if not host_ref or host_ref == NULL_REF:
        return None
    return client.call("host.get_name_label", host_ref)


def vm_summary(client, record):
    """The ``vm`` the modules return: uuid, name, power_state, host, tags, mark."""
    return {
        "uuid": record.get("uuid", ""),
        "name": record.get("name_label", ""),
        "power_state": record.get("power_state", ""),
        "host": host_name(client, record.get("resident_on")),
        "tags": list(record.get("tags") or []),
        "mark": read_mark(record),
    }
