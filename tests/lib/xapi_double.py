"""A stand-in for a XenServer / XCP-ng pool master's XAPI, for tests (XenServer cannot run here).

It behaves as XAPI is documented to (datamodel_errors.ml, xapi_vm_lifecycle.ml, export.ml of
xapi-project/xen-api), on 127.0.0.1 only:

- XML-RPC at ``/``, every answer ``{"Status": "Success", "Value": ...}`` or ``{"Status":
  "Failure", "ErrorDescription": [...]}`` so the XenAPI SDK works against it:
  ``session.login_with_password`` / ``session.logout``; for every class (VM, VBD, VDI, VIF,
  network, SR, host, pool, task) ``get_record``, ``get_all``, ``get_all_records``,
  ``get_by_uuid``, ``get_<field>``, and ``get_by_name_label`` where XAPI has it;
  ``VM.snapshot`` (a snapshot VM with its own VBDs and VDIs: ``is_a_template`` and
  ``is_a_snapshot`` true, ``snapshot_of`` the VM, other_config and tags copied as xapi's clone
  does), ``VM.set_is_a_template``, ``VM.set_ha_always_run``, ``VM.clean_shutdown``,
  ``VM.hard_shutdown``, ``VM.start``, ``VM.destroy`` (its VBDs and VIFs go, its VDIs stay),
  ``VDI.destroy`` (its VBDs go too), ``VM.add_tags`` / ``remove_tags`` / ``set_tags``,
  ``VM.add_to_other_config`` / ``remove_from_other_config``; ``Async.<call>`` returns a task
  (``task.get_status`` / ``get_result`` / ``get_error_info`` / ``cancel`` / ``destroy``).
- XAPI's failures with their documented parameters: SESSION_AUTHENTICATION_FAILED,
  SESSION_INVALID, HANDLE_INVALID [class, handle], UUID_INVALID [class, uuid],
  VM_BAD_POWER_STATE [vm, expected, actual] (lower case, expected states joined by ", "),
  VM_IS_TEMPLATE / VM_IS_SNAPSHOT [vm, operation], OPERATION_BLOCKED [vm, reason] (an
  operation listed in the VM's ``blocked_operations``), MAP_DUPLICATE_KEY [class, field, ref, key],
  VDI_IN_USE [vdi, "destroy"], MESSAGE_METHOD_UNKNOWN; any call can be made to fail once with
  ``fail_next={"VM.clean_shutdown": ["VM_BAD_POWER_STATE", ...]}``.
- The VM, VBD, VDI, VIF, network and SR records come from the fixture XVA's own ``ova.xml``
  (its ``Ref:N`` ids turned into OpaqueRefs), so a VM's records describe what its export holds.
- ``GET /export?uuid=...|ref=...&session_id=...[&use_compression=zstd|gzip|true]`` streams the
  VM's (or, for a snapshot, its parent's) XVA with chunked transfer encoding and **no
  Content-Length**, compressed on the fly when asked (the fixture is sent as it is otherwise),
  after a redirect as XAPI gives for a VM whose storage is on another member: ``redirect=True``
  (default) to ``/member/export`` on the same port, ``export_port_redirect=True`` to a second
  listening port. HTTP basic auth is accepted in place of a session. A running VM is refused
  (500, VM_BAD_POWER_STATE), as xapi only exports halted or suspended VMs.
- a limited export rate on request (``bytes_per_second``), as a busy host's link would send it;
- faults on request: stop the stream after N bytes (a dropped connection), reset the TCP
  connection after N bytes, or stall after N bytes (the connection stays open, nothing more is
  sent: a hung host, or a compressor holding back xapi's keep-alives); N counts bytes sent;
- HTTPS with a self-signed certificate for 127.0.0.1 made by ``openssl`` in a temporary directory
  (``tls=True``; ``ca_file`` is the certificate to trust), as an XCP-ng host has by default.

``rpc_value(method, *args)`` acts on the pool as its admin would (a user's own snapshot, say);
``delay_calls={"VM.set_is_a_template": 30}`` holds a call's answer back (a busy pool).

Counters for cleanup assertions: ``live_sessions()``, ``snapshots()`` (records of the snapshots
alive), ``live_tasks()``, ``calls`` (``(method, args)`` with no session id and no password),
``exports`` (``(uuid, compression)`` per export streamed). ``export_blocks(uuid, compression)``
gives an export's bytes without HTTP (for a fake ``xe vm-export`` on the host).
"""

import base64
import copy
import gzip
import http.server
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid as uuidlib
import xmlrpc.client
import zlib
from socketserver import ThreadingMixIn

CHUNK = 256 * 1024
NULL = "OpaqueRef:NULL"
CLASSES_BY_NAME = ("VM", "host", "network", "SR", "VDI")  # XAPI has get_by_name_label for these
POWER_STATES_FOR = {  # xapi_vm_lifecycle.ml allowed_power_states, for the operations we offer
    "start": ["Halted"],
    "clean_shutdown": ["Running"],
    "hard_shutdown": ["Paused", "Suspended", "Running"],
    "destroy": ["Halted", "Suspended"],
    "export": ["Halted", "Suspended"],
    "make_into_template": ["Halted"],
}
SNAPSHOT_OPERATIONS = ("revert", "clone", "copy", "export", "destroy", "hard_shutdown")
TEMPLATE_OPERATIONS = ("clone", "copy", "export", "destroy", "make_into_template")


def _new_ref():
    return "OpaqueRef:" + str(uuidlib.uuid4())


class XapiVM:
    """One VM (or snapshot) of the pool. ``shutdown_seconds``: how long the guest takes to halt
    after a clean shutdown request; None = it ignores the request (no PV drivers, hung guest)."""

    def __init__(self, name, xva_path, uuid=None, power_state="Halted", tags=None, other_config=None,
                 shutdown_seconds=0.2, ha_always_run=False):
        self.name = name
        self.xva_path = str(xva_path)
        self.uuid = uuid or str(uuidlib.uuid4())
        self.ref = _new_ref()
        self.power_state = power_state
        self.tags = list(tags or [])
        self.other_config = dict(other_config or {})
        self.shutdown_seconds = shutdown_seconds
        self.ha_always_run = ha_always_run
        self.blocked_operations = {}  # operation -> reason, as VM.blocked_operations (OPERATION_BLOCKED)
        self.is_a_template = False
        self.is_a_snapshot = False
        self.snapshot_of = NULL
        self.snapshot_time = xmlrpc.client.DateTime(time.gmtime(0))
        self.fields = {}  # the rest of the VM record (from ova.xml)
        self.vbds = []
        self.vifs = []


class _Server(ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class XapiFailure(Exception):
    """An XAPI error: ``args[0]`` is the ErrorDescription list."""


class XapiDouble:
    """``with XapiDouble(vms, username="root", password="pw") as xapi: xapi.url``"""

    def __init__(self, vms, username="root", password="secret", redirect=True, cut_after=None,
                 stall_after=None, tls=False, reset_after=None, bytes_per_second=None,
                 export_port_redirect=False, fail_next=None, host_name="xenhost1"):
        self.vms = list(vms)
        self.username = username
        self.password = password
        self.redirect = redirect
        self.export_port_redirect = export_port_redirect
        self.cut_after = cut_after
        self.stall_after = stall_after
        self.reset_after = reset_after  # bytes, then a TCP reset (RST) instead of a clean close
        self.bytes_per_second = bytes_per_second  # per export, as a busy host's link would send it
        self.tls = tls
        self.fail_next = dict(fail_next or {})
        self.delay_calls = {}  # method -> seconds to wait before answering (a busy pool), e.g. to signal a client
        self.ca_file = None
        self.sessions = set()
        self.requests = []
        self.member_requests = []  # those that reached the second port (export_port_redirect)
        self.calls = []
        self.exports = []
        self.released = threading.Event()  # ends a stall
        self.lock = threading.RLock()
        self.objects = {cls: {} for cls in ("VBD", "VDI", "VIF", "network", "SR", "host", "pool", "task")}
        self.host_ref = self._add_host(host_name)
        for vm in self.vms:
            self._load_records(vm)
        self._servers = []
        self._threads = []
        self._cert_dir = None
        self.export_cache = None  # a directory while the double runs
        self._timers = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        self.export_cache = tempfile.mkdtemp(prefix="xapi-double-exports-")
        context = self._tls_context() if self.tls else None
        self._servers.append(self._serve(_handler_for(self, member=False), context))
        if self.export_port_redirect:
            self._servers.append(self._serve(_handler_for(self, member=True), context))
        return self

    def _serve(self, handler, context):
        server = _Server(("127.0.0.1", 0), handler)
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def _tls_context(self):
        self._cert_dir = tempfile.mkdtemp(prefix="xapi-double-tls-")
        cert, key = os.path.join(self._cert_dir, "cert.pem"), os.path.join(self._cert_dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.ca_file = cert
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def __exit__(self, *exc):
        self.released.set()
        for timer in self._timers:
            timer.cancel()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        if self._cert_dir:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
        shutil.rmtree(self.export_cache, ignore_errors=True)
        return False

    def _base_url(self, index):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self._servers[index].server_address[1])

    @property
    def url(self):
        return self._base_url(0)

    @property
    def member_url(self):
        """The second listening port (``export_port_redirect=True``), as another pool member."""
        return self._base_url(1)

    def login(self):
        session = "OpaqueRef:" + secrets.token_hex(16)
        self.sessions.add(session)
        return session

    # ------------------------------------------------------------------ counters for tests
    def live_sessions(self):
        return len(self.sessions)

    def snapshots(self):
        with self.lock:
            return [self._vm_record(vm) for vm in self.vms if vm.is_a_snapshot]

    def live_tasks(self):
        return len(self.objects["task"])

    def vm(self, name):
        """The VM (not a snapshot) called ``name``."""
        for vm in self.vms:
            if vm.name == name and not vm.is_a_snapshot:
                return vm
        raise KeyError(name)

    def vdis_of(self, vm):
        """The VDI records of ``vm``'s disk VBDs (not the CD drive)."""
        vdis = []
        for vbd_ref in vm.vbds:
            vdi_ref = self.objects["VBD"][vbd_ref]["VDI"]
            if vdi_ref in self.objects["VDI"]:
                vdis.append(self.objects["VDI"][vdi_ref])
        return vdis

    # ------------------------------------------------------------------ records
    def _add_host(self, name):
        host_ref, pool_ref = _new_ref(), _new_ref()
        self.objects["host"][host_ref] = {
            "uuid": str(uuidlib.uuid4()), "name_label": name, "name_description": "", "address": "127.0.0.1",
            "hostname": name, "enabled": True, "API_version_major": "2", "API_version_minor": "21",
            "software_version": {"product_brand": "XCP-ng", "product_version": "8.2.1", "build_number":
                                 "release/yangtze/master/58", "date": "2021-12-03", "hostname": name,
                                 "xapi": "1.20", "platform_name": "XCP"},
            "resident_VMs": [], "other_config": {}, "tags": []}
        self.objects["pool"][pool_ref] = {"uuid": str(uuidlib.uuid4()), "name_label": "", "master": host_ref,
                                          "other_config": {}, "tags": []}
        return host_ref

    def _load_records(self, vm):
        """Build the VM's VBD/VDI/VIF/network/SR records from its XVA's ova.xml (when the fixture
        has one: faulty fixtures only get a VM record)."""
        document = read_ova_xml(vm.xva_path)
        if document is None:
            return
        refs = {str(obj.get("id")): _new_ref() for obj in document["objects"] if isinstance(obj, dict)}
        exported_vm = None
        for obj in document["objects"]:
            if not isinstance(obj, dict):
                continue
            record = _translate(obj.get("snapshot") or {}, refs)
            cls, ref = str(obj.get("class")), refs[str(obj.get("id"))]
            if cls == "VM" and exported_vm is None and record.get("is_a_snapshot") not in (True, "true"):
                exported_vm = ref
                for key in ("uuid", "name_label", "power_state", "tags", "other_config", "is_a_template",
                            "is_a_snapshot", "snapshot_of", "ha_always_run", "resident_on", "snapshots"):
                    record.pop(key, None)
                vm.vbds = list(record.pop("VBDs", []))
                vm.vifs = list(record.pop("VIFs", []))
                vm.fields = record
            elif cls in self.objects:
                record.setdefault("other_config", {})
                self.objects[cls][ref] = record
        vm.vbds = [r for r in vm.vbds if r in self.objects["VBD"]]
        vm.vifs = [r for r in vm.vifs if r in self.objects["VIF"]]
        for record in list(self.objects["VBD"].values()) + list(self.objects["VIF"].values()):
            if record.get("VM") == exported_vm:
                record["VM"] = vm.ref
                record["currently_attached"] = vm.power_state == "Running"

    def _vm_record(self, vm):
        record = copy.deepcopy(vm.fields)
        record.update({
            "uuid": vm.uuid, "name_label": vm.name, "power_state": vm.power_state, "tags": list(vm.tags),
            "other_config": dict(vm.other_config), "is_a_template": vm.is_a_template,
            "is_a_snapshot": vm.is_a_snapshot, "snapshot_of": vm.snapshot_of,
            "snapshot_time": vm.snapshot_time, "ha_always_run": vm.ha_always_run,
            "blocked_operations": dict(vm.blocked_operations),
            "is_control_domain": False, "VBDs": list(vm.vbds), "VIFs": list(vm.vifs),
            "resident_on": self.host_ref if vm.power_state == "Running" else NULL,
            "snapshots": [s.ref for s in self.vms if s.snapshot_of == vm.ref],
        })
        record.setdefault("name_description", "")
        return record

    # ------------------------------------------------------------------ XML-RPC
    def rpc_value(self, method, *args):
        """Make a call as the pool's admin would (xe on the host): no session, not counted in
        ``calls``. Raises ``XapiFailure``."""
        with self.lock:
            return self._call(method, args)

    def rpc(self, method, params):
        delay = self.delay_calls.get(method)
        if delay:
            with self.lock:
                self.calls.append((method, tuple(params[1:])))
            self.released.wait(delay)  # outside the lock: the pool goes on answering others
        try:
            return {"Status": "Success", "Value": self._dispatch(method, tuple(params), counted=not delay)}
        except XapiFailure as failure:
            return {"Status": "Failure", "ErrorDescription": [str(p) for p in failure.args[0]]}

    def _dispatch(self, method, params, counted=True):
        with self.lock:
            if method == "session.login_with_password":
                self.calls.append((method, tuple(params[:1])))
                self._injected(method)
                if tuple(params[:2]) != (self.username, self.password):
                    raise XapiFailure(["SESSION_AUTHENTICATION_FAILED", params[0] if params else "",
                                       "Authentication failure"])
                return self.login()
            if counted:
                self.calls.append((method, tuple(params[1:])))
            if method == "session.logout":
                self._session_ok(params[0] if params else None)
                self.sessions.discard(params[0])
                return ""
            self._session_ok(params[0] if params else None)
            if method.startswith("Async."):
                return self._async(method[len("Async."):], params[1:])
            self._injected(method)
            return self._call(method, params[1:])

    def _injected(self, method):
        failure = self.fail_next.pop(method, None)
        if failure:
            raise XapiFailure(list(failure))

    def _session_ok(self, session):
        if session not in self.sessions:
            raise XapiFailure(["SESSION_INVALID", str(session)])

    def _call(self, method, args):
        cls, _dot, name = method.partition(".")
        handler = getattr(self, "_%s_%s" % (cls, name), None)
        if handler is not None:
            return handler(*args)
        if cls == "VM" or cls in self.objects:
            return self._generic(cls, name, args)
        raise XapiFailure(["MESSAGE_METHOD_UNKNOWN", method])

    def _table(self, cls):
        if cls == "VM":
            return {vm.ref: self._vm_record(vm) for vm in self.vms}
        return self.objects[cls]

    def _generic(self, cls, name, args):
        if name == "get_all":
            return list(self._table(cls))
        if name == "get_all_records":
            return copy.deepcopy(self._table(cls))
        if name == "get_by_uuid":
            for ref, record in self._table(cls).items():
                if record.get("uuid") == args[0]:
                    return ref
            raise XapiFailure(["UUID_INVALID", cls, args[0]])
        if name == "get_by_name_label" and cls in CLASSES_BY_NAME:
            return [ref for ref, record in self._table(cls).items() if record.get("name_label") == args[0]]
        if name == "get_record":
            return copy.deepcopy(self._record(cls, args[0]))
        if name.startswith("get_") and args:
            record = self._record(cls, args[0])
            if name[4:] in record:
                return copy.deepcopy(record[name[4:]])
        raise XapiFailure(["MESSAGE_METHOD_UNKNOWN", "%s.%s" % (cls, name)])

    def _record(self, cls, ref):
        if cls == "VM":
            return self._vm_record(self._vm(ref))
        if ref not in self.objects[cls]:
            raise XapiFailure(["HANDLE_INVALID", cls, ref])
        return self.objects[cls][ref]

    def _vm(self, ref):
        for vm in self.vms:
            if vm.ref == ref:
                return vm
        raise XapiFailure(["HANDLE_INVALID", "VM", ref])

    _vm_by_ref = _vm  # the name older tests knew

    def _check_operation(self, vm, operation):
        """xapi_vm_lifecycle.ml's order: blocked, power state, then template, then snapshot."""
        if operation in vm.blocked_operations:
            raise XapiFailure(["OPERATION_BLOCKED", vm.ref, vm.blocked_operations[operation]])
        allowed = POWER_STATES_FOR.get(operation)
        if allowed is not None and vm.power_state not in allowed:
            raise XapiFailure(["VM_BAD_POWER_STATE", vm.ref, ", ".join(s.lower() for s in allowed),
                               vm.power_state.lower()])
        if vm.is_a_template and not vm.is_a_snapshot and operation not in TEMPLATE_OPERATIONS:
            raise XapiFailure(["VM_IS_TEMPLATE", vm.ref, operation])
        if vm.is_a_snapshot and operation not in SNAPSHOT_OPERATIONS:
            raise XapiFailure(["VM_IS_SNAPSHOT", vm.ref, operation])

    # -- VM calls
    def _VM_get_by_name_label(self, label):
        return [vm.ref for vm in self.vms if vm.name == label]

    def _VM_snapshot(self, ref, new_name, ignore_vdis=()):
        vm = self._vm(ref)
        self._check_operation(vm, "snapshot")
        snap = XapiVM(new_name, vm.xva_path, power_state="Halted", tags=vm.tags, other_config=vm.other_config)
        snap.is_a_template, snap.is_a_snapshot, snap.snapshot_of = True, True, vm.ref
        snap.snapshot_time = xmlrpc.client.DateTime(time.gmtime())
        snap.fields = copy.deepcopy(vm.fields)
        snap.fields["snapshot_info"] = {"power-state-at-snapshot": vm.power_state,
                                        "disk-snapshot-type": "crash_consistent"}
        for vbd_ref in vm.vbds:
            vbd = copy.deepcopy(self.objects["VBD"][vbd_ref])
            vdi_ref = vbd.get("VDI", NULL)
            if vdi_ref in self.objects["VDI"] and vdi_ref not in ignore_vdis:
                vbd["VDI"] = self._snapshot_vdi(vdi_ref)
            new_vbd = _new_ref()
            vbd.update({"uuid": str(uuidlib.uuid4()), "VM": snap.ref, "currently_attached": False})
            self.objects["VBD"][new_vbd] = vbd
            if vbd["VDI"] in self.objects["VDI"]:
                self.objects["VDI"][vbd["VDI"]].setdefault("VBDs", []).append(new_vbd)
            snap.vbds.append(new_vbd)
        for vif_ref in vm.vifs:
            vif = copy.deepcopy(self.objects["VIF"][vif_ref])
            vif.update({"uuid": str(uuidlib.uuid4()), "VM": snap.ref, "currently_attached": False})
            new_vif = _new_ref()
            self.objects["VIF"][new_vif] = vif
            snap.vifs.append(new_vif)
        self.vms.append(snap)
        return snap.ref

    def _snapshot_vdi(self, vdi_ref):
        vdi = copy.deepcopy(self.objects["VDI"][vdi_ref])
        vdi.update({"uuid": str(uuidlib.uuid4()), "is_a_snapshot": True, "snapshot_of": vdi_ref, "VBDs": [],
                    "snapshot_time": xmlrpc.client.DateTime(time.gmtime())})
        new_ref = _new_ref()
        self.objects["VDI"][new_ref] = vdi
        return new_ref

    def _VM_set_is_a_template(self, ref, value):
        vm = self._vm(ref)
        if value and not vm.is_a_template:
            self._check_operation(vm, "make_into_template")
        vm.is_a_template = bool(value)
        return ""

    def _VM_set_ha_always_run(self, ref, value):
        self._vm(ref).ha_always_run = bool(value)
        return ""

    def _VM_start(self, ref, start_paused=False, force=False):
        vm = self._vm(ref)
        self._check_operation(vm, "start")
        self._set_power(vm, "Paused" if start_paused else "Running")
        return ""

    def _VM_clean_shutdown(self, ref):
        """Synchronous: returns when the guest halted. A guest that ignores the request keeps the
        call waiting, as xapi does (use Async.VM.clean_shutdown to time out)."""
        vm = self._vm(ref)
        self._check_operation(vm, "clean_shutdown")
        if vm.shutdown_seconds is None:
            raise XapiFailure(["VM_SHUTDOWN_TIMEOUT", vm.ref, "1200."])
        self._set_power(vm, "Halted")
        return ""

    def _VM_hard_shutdown(self, ref):
        vm = self._vm(ref)
        self._check_operation(vm, "hard_shutdown")
        self._set_power(vm, "Halted")
        return ""

    def _set_power(self, vm, state):
        vm.power_state = state
        for vbd_ref in vm.vbds:
            self.objects["VBD"][vbd_ref]["currently_attached"] = state in ("Running", "Paused")

    def _VM_destroy(self, ref):
        vm = self._vm(ref)
        self._check_operation(vm, "destroy")
        for vbd_ref in vm.vbds:
            vbd = self.objects["VBD"].pop(vbd_ref, None)
            if vbd and vbd.get("VDI") in self.objects["VDI"]:
                vdi = self.objects["VDI"][vbd["VDI"]]
                vdi["VBDs"] = [v for v in vdi.get("VBDs", []) if v != vbd_ref]
        for vif_ref in vm.vifs:
            self.objects["VIF"].pop(vif_ref, None)
        self.vms.remove(vm)
        return ""

    def _VM_add_tags(self, ref, tag):
        vm = self._vm(ref)
        if tag not in vm.tags:
            vm.tags.append(tag)
        return ""

    def _VM_remove_tags(self, ref, tag):
        vm = self._vm(ref)
        vm.tags = [t for t in vm.tags if t != tag]
        return ""

    def _VM_set_tags(self, ref, tags):
        self._vm(ref).tags = list(tags)
        return ""

    def _VM_add_to_other_config(self, ref, key, value):
        vm = self._vm(ref)
        if key in vm.other_config:
            raise XapiFailure(["MAP_DUPLICATE_KEY", "VM", "other_config", vm.ref, key])
        vm.other_config[key] = value
        return ""

    def _VM_remove_from_other_config(self, ref, key):
        self._vm(ref).other_config.pop(key, None)
        return ""

    # -- VDI calls
    def _VDI_destroy(self, ref):
        self._record("VDI", ref)
        vbds = [r for r, vbd in self.objects["VBD"].items() if vbd.get("VDI") == ref]
        if any(self.objects["VBD"][r].get("currently_attached") for r in vbds):
            raise XapiFailure(["VDI_IN_USE", ref, "destroy"])
        del self.objects["VDI"][ref]
        for vbd_ref in vbds:  # xapi_vdi.ml destroys the VDI's VBDs at once
            del self.objects["VBD"][vbd_ref]
            for vm in self.vms:
                if vbd_ref in vm.vbds:
                    vm.vbds.remove(vbd_ref)
        return ""

    # -- tasks
    def _async(self, method, args):
        task_ref = _new_ref()
        task = {"uuid": str(uuidlib.uuid4()), "name_label": "Async." + method, "status": "pending",
                "progress": 0.0, "result": "", "error_info": [], "other_config": {}}
        self.objects["task"][task_ref] = task
        failure = self.fail_next.pop(method, None)
        if failure:
            task.update(status="failure", error_info=list(failure), progress=1.0)
            return task_ref
        if method == "VM.clean_shutdown":
            return self._async_clean_shutdown(task_ref, task, args[0])
        try:
            task["result"] = _result_xml(self._call(method, args))
            task.update(status="success", progress=1.0)
        except XapiFailure as failure:
            task.update(status="failure", error_info=[str(p) for p in failure.args[0]], progress=1.0)
        return task_ref

    def _async_clean_shutdown(self, task_ref, task, vm_ref):
        try:
            vm = self._vm(vm_ref)
            self._check_operation(vm, "clean_shutdown")
        except XapiFailure as failure:
            task.update(status="failure", error_info=[str(p) for p in failure.args[0]], progress=1.0)
            return task_ref
        if vm.shutdown_seconds is None:
            return task_ref  # the guest ignores it: pending until cancelled

        def halted():
            with self.lock:
                if task["status"] == "pending" and vm in self.vms:
                    self._set_power(vm, "Halted")
                    task.update(status="success", progress=1.0)
        timer = threading.Timer(vm.shutdown_seconds, halted)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return task_ref

    def _task_cancel(self, ref):
        task = self._record("task", ref)
        if task["status"] == "pending":
            task.update(status="cancelled", error_info=["TASK_CANCELLED", ref])
        return ""

    def _task_destroy(self, ref):
        self._record("task", ref)
        del self.objects["task"][ref]
        return ""

    # ------------------------------------------------------------------ HTTP export
    def export_blocks(self, uuid, compression=None):
        """The bytes an export of ``uuid`` streams (``compression``: None, "gzip" or "zstd"), with
        xapi's checks, for a stand-in of ``xe vm-export filename= compress=...`` on the host.
        Raises ``XapiFailure`` (UUID_INVALID, VM_BAD_POWER_STATE) before the first byte."""
        with self.lock:
            vm = self._vm(self._generic("VM", "get_by_uuid", (uuid,)))
            self._check_operation(vm, "export")
            self.exports.append((vm.uuid, compression))
        return _export_blocks(vm.xva_path, {"use_compression": compression} if compression else {},
                              self.export_cache)

    def find_export(self, query):
        with self.lock:
            for vm in self.vms:
                if query.get("uuid") == vm.uuid or query.get("ref") == vm.ref:
                    return vm
        return None


_XapiFailure = XapiFailure  # the name older code used


def _result_xml(value):
    """A task's result as xapi stores it: the XML-RPC value as text."""
    return xmlrpc.client.dumps((value,), allow_none=True).replace("<params>\n<param>\n", "").replace(
        "</param>\n</params>\n", "").strip()


def _translate(value, refs):
    """``value`` with every ova.xml ``Ref:N`` replaced by the OpaqueRef it stands for."""
    if isinstance(value, str):
        return refs.get(value, value)
    if isinstance(value, list):
        return [_translate(item, refs) for item in value]
    if isinstance(value, dict):
        return {key: _translate(item, refs) for key, item in value.items()}
    return value


def _open_plain(path):
    """A reader of the XVA's tar stream, whatever its compression."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\x28\xb5\x2f\xfd":
        import zstandard  # Debian's python3-zstandard, like the converter's own tests
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def read_ova_xml(path):
    """The fixture XVA's ova.xml as ``{"version", "objects"}``, or None when it has none."""
    try:
        with _open_plain(path) as stream:
            header = stream.read(512)
            if len(header) < 512 or header[:7] != b"ova.xml":
                return None
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            if size > 64 << 20:
                return None
            data = stream.read(size)
        (document,), _method = xmlrpc.client.loads("<params><param>%s</param></params>" % data.decode().strip())
    except Exception:  # a faulty fixture (bad_ova_xml, not_tar, ...) is served all the same
        return None
    return document if isinstance(document, dict) and isinstance(document.get("objects"), list) else None


def _compressor(query):
    """export.ml: use_compression "true"|"gzip" -> gzip, "zstd" -> zstd, anything else none."""
    choice = query.get("use_compression", "")
    if choice in ("true", "gzip"):
        zipper = zlib.compressobj(6, zlib.DEFLATED, 31)
        return "gzip", zipper.compress, zipper.flush
    if choice == "zstd":
        import zstandard
        zipper = zstandard.ZstdCompressor(level=3).compressobj()
        return "zstd", zipper.compress, zipper.flush
    return None, (lambda data: data), (lambda: b"")


def _export_blocks(path, query, cache_dir=None):
    """The export's bytes in blocks, each valid until the next is asked for. With ``cache_dir``,
    a compressed export is kept there once streamed whole and sent from there the next time:
    the same bytes, without spending this machine's CPU again on what a pool's dom0 does on its
    own."""
    compression, compress, flush = _compressor(query)
    if compression is None:
        # the fixture as it is (one stored compressed too: what the older tests serve)
        yield from _file_blocks(path)
        return None
    cached = _cached_export(path, compression, cache_dir)
    if cached is not None and os.path.exists(cached):
        yield from _file_blocks(cached)
        return compression
    part = "%s.%s.part" % (cached, secrets.token_hex(4)) if cached is not None else None  # exports may overlap
    keep = open(part, "wb") if part is not None else None
    try:
        with _open_plain(path) as handle:  # xapi compresses the plain tar
            for out in _compressed_blocks(handle, compress, flush):
                if keep is not None:
                    keep.write(out)
                yield out
        if keep is not None:
            keep.close()
            os.replace(part, cached)
            keep = None
    finally:
        if keep is not None:  # the client went away mid-stream: nothing half-written is kept
            keep.close()
            os.unlink(part)
    return compression


def _cached_export(path, compression, cache_dir):
    if cache_dir is None or compression is None:
        return None
    st = os.stat(path)
    return os.path.join(cache_dir, "%d-%d-%d.%s" % (st.st_ino, st.st_size, st.st_mtime_ns, compression))


def _file_blocks(path):
    """The file in blocks read into one buffer (a fresh 256 KiB object per block costs this
    machine page faults that a real host's xapi does not make the client wait for)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            got = handle.readinto(buffer)
            if not got:
                return
            yield view[:got]


def _compressed_blocks(handle, compress, flush):
    while True:
        data = handle.read(CHUNK)
        if not data:
            break
        out = compress(data)
        if out:
            yield out
    tail = flush()
    if tail:
        yield tail


def _handler_for(xapi, member):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            params, method = xmlrpc.client.loads(self.rfile.read(length))
            body = xmlrpc.client.dumps((xapi.rpc(method, params),), methodresponse=True, allow_none=True).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self, query):
            if query.get("session_id") in xapi.sessions:
                return True
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                user, _sep, password = base64.b64decode(auth[6:]).decode().partition(":")
                return (user, password) == (xapi.username, xapi.password)
            return False

        def do_GET(self):
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            xapi.requests.append(self.path)
            if member:
                xapi.member_requests.append(self.path)
            if parts.path not in ("/export", "/member/export"):
                return self._plain(404, "not found")
            if not self._authorised(query):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="xapi"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if not member and xapi.export_port_redirect:
                return self._redirect("%s/export?%s" % (xapi.member_url, parts.query))
            if not member and xapi.redirect and parts.path == "/export":
                return self._redirect("/member/export?" + parts.query)
            vm = xapi.find_export(query)
            if vm is None:
                return self._plain(404, "VM not found")
            try:
                with xapi.lock:
                    xapi._check_operation(vm, "export")
            except XapiFailure as failure:  # xapi fails the export's task; the client sees a 500
                return self._plain(500, failure.args[0][0])
            xapi.exports.append((vm.uuid, _compressor(query)[0]))
            self._stream(_export_blocks(vm.xva_path, query, xapi.export_cache))
            return None

        def _redirect(self, location):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _plain(self, code, text):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, blocks):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            began = time.monotonic()
            for data in blocks:
                if xapi.bytes_per_second:
                    time.sleep(max(began + sent / xapi.bytes_per_second - time.monotonic(), 0))
                if xapi.stall_after is not None and sent + len(data) > xapi.stall_after:
                    data = data[:max(xapi.stall_after - sent, 0)]
                    if data:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    xapi.released.wait()  # silent, with the connection open
                    self.close_connection = True
                    return
                if xapi.reset_after is not None and sent + len(data) > xapi.reset_after:
                    self.wfile.write(b"%x\r\n%s" % (len(data), data[:max(xapi.reset_after - sent, 0)]))
                    self.wfile.flush()
                    # SO_LINGER 0: close() sends RST, as a crashed host or a middlebox would
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if xapi.cut_after is not None and sent + len(data) > xapi.cut_after:
                    data = data[:max(xapi.cut_after - sent, 0)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if data else b"")
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n" % len(data))
                self.wfile.write(data)
                self.wfile.write(b"\r\n")
                sent += len(data)
            self.wfile.write(b"0\r\n\r\n")

    return Handler
