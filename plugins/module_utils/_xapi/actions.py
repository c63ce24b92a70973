# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one call each xen_vm_* module makes: find the VM, do the module's work with the pieces
of this package, and return the module's result."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.export import prepare_export, release_snapshot
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.lookup import find_vm, vm_summary
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.marks import apply_mark, marked_record, plan_mark
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.power import ensure_power
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.spec import live_spec


def vm_info(client, name=None, uuid=None):
    """xen_vm_info's result: the VM (uuid, name, power state, host, tags, mark) and its spec."""
    vm_ref, record = find_vm(client, name=name, uuid=uuid)
    # xe prints no VBD/VIF records in one go; over ssh the spec comes from xva_info on the export
    spec = None if getattr(client, "export_src", None) else live_spec(client, vm_ref, record)
    return {"changed": False, "vm": vm_summary(client, record), "spec": spec}


def export_action(client, state, name=None, uuid=None, mode="snapshot", shutdown_timeout=600, compression="zstd",
                  snapshot_uuid=None, check_mode=False):
    """xen_vm_export's result for ``state`` prepared or released."""
    if state == "released":
        if not snapshot_uuid:
            return {"changed": False, "snapshot_uuid": None}
        return {"changed": release_snapshot(client, snapshot_uuid, check_mode, vm_uuid=uuid),
                "snapshot_uuid": snapshot_uuid}
    if not (name or uuid):
        raise XapiError("state prepared needs the VM's name or uuid")
    vm_ref, record = find_vm(client, name=name, uuid=uuid)
    result = prepare_export(client, vm_ref, record, mode, shutdown_timeout, compression, check_mode)
    result["vm"] = vm_summary(client, client.call("VM.get_record", vm_ref) if not check_mode else record)
    return result


def power_action(client, state, name=None, uuid=None, shutdown_timeout=600, check_mode=False):
    """xen_vm_power's result."""
    vm_ref, record = find_vm(client, name=name, uuid=uuid)
    changed, after = ensure_power(client, vm_ref, record, state, shutdown_timeout, check_mode)
    return {"changed": changed, "power_state_before": record.get("power_state"), "power_state": after,
            "vm": vm_summary(client, dict(record, power_state=after) if check_mode else
                             client.call("VM.get_record", vm_ref))}


def mark_action(client, state, kvm_host=None, domain=None, name=None, uuid=None, check_mode=False, now=None):
    """xen_vm_mark's result, with the diff of the mark."""
    if state == "present" and not (kvm_host and domain):
        raise XapiError("state present needs kvm_host and domain (the mark names where the VM went)")
    vm_ref, record = find_vm(client, name=name, uuid=uuid)
    now = now or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan = plan_mark(record, state, kvm_host, domain, now)
    if plan["calls"] and not check_mode:
        apply_mark(client, vm_ref, plan)
    after = marked_record(record, plan) if check_mode else client.call("VM.get_record", vm_ref)
    summary = vm_summary(client, after)
    return {"changed": bool(plan["calls"]), "mark": summary["mark"], "vm": summary,
            "diff": {"before": plan["before"], "after": plan["after"]}}
