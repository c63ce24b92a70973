# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Getting a VM ready for XAPI's HTTP ``/export`` and cleaning up after it.

- ``snapshot`` (the VM keeps running): ``VM.snapshot``, marked in its other_config as ours,
  made exportable (``is_a_template`` and ``ha_always_run`` off, as XenServer's own recipe
  does), exported, then destroyed with its VDIs (``VM.destroy`` leaves a VM's VDIs behind).
  Snapshots a killed run left (SIGKILL, a lost controller) are swept at the next prepare.
- ``shutdown``: a clean shutdown within a time limit; the VM stays halted after the export.
- ``halted``: the VM must already be halted.

The export URL carries neither a session nor a password: ``xva_convert`` pulls it with HTTP
basic authentication, which XAPI's /export accepts, so no secret lands in a URL that is logged.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.power import clean_shutdown
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError

from urllib.parse import urlencode

SNAPSHOT_OF = "xen2kvm_snapshot_of"  # other_config key of our snapshots: the VM's uuid
SNAPSHOT_PREFIX = "xen2kvm-"
NULL_REF = "OpaqueRef:NULL"
COMPRESSIONS = ("zstd", "gzip", "none")


def export_url(pool, uuid, compression):
    """XAPI's export URL of ``uuid``; ``use_compression`` as xapi's export.ml reads it."""
    if compression not in COMPRESSIONS:
        raise XapiError("use_compression must be one of %s, not %r" % (", ".join(COMPRESSIONS), compression))
    query = [("uuid", uuid)]
    if compression != "none":
        query.append(("use_compression", compression))
    return "%s/export?%s" % (pool.rstrip("/"), urlencode(query))


def _export_src(client, uuid, compression):
    """Where xva_convert reads the export: the client's own source (xe over ssh) or XAPI's /export."""
    own_source = getattr(client, "export_src", None)
    return own_source(uuid, compression) if own_source else export_url(client.pool, uuid, compression)


def snapshot_name(vm_name, now=None):
    """``xen2kvm-<vm name>-<UTC time>``: whose it is and when, in XenCenter's snapshot list."""
    return "%s%s-%s" % (SNAPSHOT_PREFIX, vm_name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))


def is_our_snapshot(record, vm_uuid=None, vm_name=None):
    """A snapshot this collection made: marked in other_config, or (killed between the snapshot
    and the mark) named by ``snapshot_name`` for this VM."""
    if not record.get("is_a_snapshot"):
        return False
    marked = (record.get("other_config") or {}).get(SNAPSHOT_OF)
    if marked:
        return vm_uuid is None or marked == vm_uuid
    name = record.get("name_label") or ""
    if vm_name is None:
        return name.startswith(SNAPSHOT_PREFIX)
    return name.startswith("%s%s-" % (SNAPSHOT_PREFIX, vm_name))


def destroy_snapshot(client, snap_ref):
    """Destroy a snapshot and its own VDIs.  Its VDIs go first, so a run killed halfway leaves a
    snapshot the next sweep finds, never VDIs that nothing points to.  A VDI that is not a
    snapshot VDI, or that another VM uses, is left alone: it is somebody's disk."""
    for vdi_ref in _snapshot_vdis(client, snap_ref):
        client.call("VDI.destroy", vdi_ref)
    client.call("VM.destroy", snap_ref)


def _snapshot_vdis(client, snap_ref):
    vdis = []
    for vbd_ref in client.call("VM.get_VBDs", snap_ref):
        vdi_ref = client.call("VBD.get_VDI", vbd_ref)
        if vdi_ref in ("", NULL_REF) or vdi_ref in vdis:
            continue
        vdi = client.call("VDI.get_record", vdi_ref)
        users = set(client.call("VBD.get_VM", vbd) for vbd in vdi.get("VBDs") or [])
        if vdi.get("is_a_snapshot") and users <= {snap_ref}:
            vdis.append(vdi_ref)
    return vdis


def sweep_stale_snapshots(client, vm_record, check_mode=False):
    """Destroy the snapshots of this VM a killed run left behind; returns their uuids."""
    swept = []
    for snap_ref in vm_record.get("snapshots") or []:
        try:
            record = client.call("VM.get_record", snap_ref)
        except XapiError as exc:
            if exc.code == "HANDLE_INVALID":
                continue  # removed meanwhile
            raise
        if is_our_snapshot(record, vm_record.get("uuid"), vm_record.get("name_label")):
            if not check_mode:
                destroy_snapshot(client, snap_ref)
            swept.append(record.get("uuid"))
    return swept


def _take_snapshot(client, vm_ref, vm_record, now=None):
    """A snapshot marked as ours and made exportable; destroyed again if that fails."""
    guard = client.signal_guard
    snap_ref = None
    try:
        # A signal during VM.snapshot waits until its answer is in: the snapshot then exists,
        # and only with its ref can it be destroyed here rather than by the next run's sweep.
        with guard.deferred() if guard is not None else contextlib.nullcontext():
            snap_ref = client.call("VM.snapshot", vm_ref, snapshot_name(vm_record.get("name_label", ""), now))
        client.call("VM.remove_from_other_config", snap_ref, SNAPSHOT_OF)  # copied from the VM, if it had one
        client.call("VM.add_to_other_config", snap_ref, SNAPSHOT_OF, vm_record.get("uuid", ""))
        client.call("VM.set_is_a_template", snap_ref, False)
        client.call("VM.set_ha_always_run", snap_ref, False)
        return snap_ref, client.call("VM.get_uuid", snap_ref)
    except BaseException:  # also a signal turned into an exception: no snapshot left behind
        if snap_ref is not None:
            with guard.deferred(raise_after=False) if guard is not None else contextlib.nullcontext():
                destroy_snapshot(client, snap_ref)
        raise


def prepare_export(client, vm_ref, vm_record, mode, shutdown_timeout, compression, check_mode=False, now=None):
    """Ready the VM for /export in ``mode``; returns the module's result."""
    power_state = vm_record.get("power_state")
    result = {"changed": False, "power_state_before": power_state, "mode": mode, "swept": [],
              "snapshot_uuid": None, "stopped": False, "exported_uuid": vm_record.get("uuid"),
              "export_src": _export_src(client, vm_record.get("uuid"), compression)}
    if mode == "snapshot":
        result["swept"] = sweep_stale_snapshots(client, vm_record, check_mode)
        result["changed"] = True
        if check_mode:
            result.update(exported_uuid=None, export_src=None)
            return result
        _snap_ref, snap_uuid = _take_snapshot(client, vm_ref, vm_record, now)
        result.update(snapshot_uuid=snap_uuid, exported_uuid=snap_uuid,
                      export_src=_export_src(client, snap_uuid, compression))
        return result
    if power_state == "Halted":
        return result
    if mode == "halted":
        raise XapiError("%s on pool %s is %s; export_mode halted needs a halted VM (use snapshot to export it "
                        "running, or shutdown to stop it first)" % (client.subject, client.pool, power_state),
                        code="VM_BAD_POWER_STATE")
    if power_state != "Running":
        raise XapiError("%s on pool %s is %s; export_mode shutdown stops running VMs only (resume it first, "
                        "or use snapshot)" % (client.subject, client.pool, power_state), code="VM_BAD_POWER_STATE")
    if not check_mode:
        clean_shutdown(client, vm_ref, shutdown_timeout)
    result.update(changed=True, stopped=True)
    return result


def release_snapshot(client, snapshot_uuid, check_mode=False, vm_uuid=None):
    """Destroy the snapshot ``snapshot_uuid`` made by ``prepare_export`` (of the VM ``vm_uuid``,
    when given) and its VDIs.  Returns whether there was one; a snapshot that is gone already is
    not an error (cleanup reruns)."""
    client.subject = "snapshot %s" % snapshot_uuid
    try:
        snap_ref = client.call("VM.get_by_uuid", snapshot_uuid)
        record = client.call("VM.get_record", snap_ref)
    except XapiError as exc:
        if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
            return False
        raise
    if not is_our_snapshot(record):
        raise XapiError("%s on pool %s (%r) is not a snapshot made by xen2kvm; refusing to destroy it"
                        % (client.subject, client.pool, record.get("name_label")), code="NOT_OURS")
    if vm_uuid and not is_our_snapshot(record, vm_uuid):
        raise XapiError("%s on pool %s (%r) is a snapshot of another VM than %s; refusing to destroy it"
                        % (client.subject, client.pool, record.get("name_label"), vm_uuid), code="NOT_OURS")
    if not check_mode:
        destroy_snapshot(client, snap_ref)
    return True
