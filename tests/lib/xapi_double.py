"""A stand-in for a XenServer host's XAPI, for tests (XenServer itself cannot run here).

It behaves as XAPI is documented to, on 127.0.0.1 only:
- XML-RPC at ``/``: ``session.login_with_password`` / ``session.logout``, ``VM.get_by_name_label``,
  ``VM.get_by_uuid``, ``VM.get_record``, ``VM.get_power_state``, ``VM.get_all_records``, every
  answer wrapped as ``{"Status": "Success", "Value": ...}`` or ``{"Status": "Failure",
  "ErrorDescription": [...]}`` (so the XenAPI SDK works against it);
- ``GET /export?uuid=...|ref=...&session_id=...`` streams the VM's XVA with chunked transfer
  encoding and **no Content-Length**, after an optional redirect (XAPI redirects to the pool
  member that holds the VM), with HTTP basic auth accepted in place of a session;
- a limited export rate on request (``bytes_per_second``), as a busy host's link would send it;
- faults on request: stop the stream after N bytes (a dropped connection), reset the TCP
  connection after N bytes, or stall after N
  bytes (the connection stays open, nothing more is sent: a hung host, or a compressor holding
  back xapi's keep-alives);
- HTTPS with a self-signed certificate for 127.0.0.1 made by ``openssl`` in a temporary directory
  (``tls=True``; ``ca_file`` is the certificate to trust), as an XCP-ng host has by default.
"""

import base64
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
from socketserver import ThreadingMixIn

CHUNK = 256 * 1024


class XapiVM:
    def __init__(self, name, xva_path, uuid=None, power_state="Halted"):
        self.name = name
        self.xva_path = str(xva_path)
        self.uuid = uuid or str(uuidlib.uuid4())
        self.ref = "OpaqueRef:" + str(uuidlib.uuid4())
        self.power_state = power_state


class _Server(ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class XapiDouble:
    """``with XapiDouble(vms, username="root", password="pw") as xapi: xapi.url``"""

    def __init__(self, vms, username="root", password="secret", redirect=True, cut_after=None,
                 stall_after=None, tls=False, reset_after=None, bytes_per_second=None):
        self.vms = list(vms)
        self.username = username
        self.password = password
        self.redirect = redirect
        self.cut_after = cut_after
        self.stall_after = stall_after
        self.reset_after = reset_after  # bytes, then a TCP reset (RST) instead of a clean close
        self.bytes_per_second = bytes_per_second  # per export, as a busy host's link would send it
        self.tls = tls
        self.ca_file = None
        self.sessions = set()
        self.requests = []
        self.released = threading.Event()  # ends a stall
        self._server = None
        self._thread = None
        self._cert_dir = None

    # -- lifecycle
    def __enter__(self):
        handler = _handler_for(self)
        self._server = _Server(("127.0.0.1", 0), handler)
        if self.tls:
            self._server.socket = self._tls_context().wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        if self._cert_dir:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
        return False

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self._server.server_address[1])

    def login(self):
        session = "OpaqueRef:" + secrets.token_hex(16)
        self.sessions.add(session)
        return session

    # -- XML-RPC methods
    def rpc(self, method, params):
        try:
            return {"Status": "Success", "Value": self._call(method, params)}
        except _XapiFailure as failure:
            return {"Status": "Failure", "ErrorDescription": failure.args[0]}

    def _session_ok(self, session):
        if session not in self.sessions:
            raise _XapiFailure(["SESSION_INVALID", str(session)])

    def _vm_by_ref(self, ref):
        for vm in self.vms:
            if vm.ref == ref:
                return vm
        raise _XapiFailure(["HANDLE_INVALID", "VM", ref])

    def _call(self, method, params):
        if method == "session.login_with_password":
            if params[:2] != (self.username, self.password) and list(params[:2]) != [self.username, self.password]:
                raise _XapiFailure(["SESSION_AUTHENTICATION_FAILED", params[0], "Authentication failure"])
            return self.login()
        if method == "session.logout":
            self.sessions.discard(params[0])
            return ""
        self._session_ok(params[0] if params else None)
        if method == "VM.get_by_name_label":
            return [vm.ref for vm in self.vms if vm.name == params[1]]
        if method == "VM.get_by_uuid":
            for vm in self.vms:
                if vm.uuid == params[1]:
                    return vm.ref
            raise _XapiFailure(["UUID_INVALID", "VM", params[1]])
        if method == "VM.get_record":
            return self._record(self._vm_by_ref(params[1]))
        if method == "VM.get_power_state":
            return self._vm_by_ref(params[1]).power_state
        if method == "VM.get_all_records":
            return {vm.ref: self._record(vm) for vm in self.vms}
        raise _XapiFailure(["MESSAGE_METHOD_UNKNOWN", method])

    @staticmethod
    def _record(vm):
        return {"uuid": vm.uuid, "name_label": vm.name, "power_state": vm.power_state,
                "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False}

    # -- HTTP export
    def find_export(self, query):
        for vm in self.vms:
            if query.get("uuid") == vm.uuid or query.get("ref") == vm.ref:
                return vm
        return None


class _XapiFailure(Exception):
    pass


def _handler_for(xapi):
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
            if parts.path not in ("/export", "/member/export"):
                return self._plain(404, "not found")
            if not self._authorised(query):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="xapi"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if xapi.redirect and parts.path == "/export":
                self.send_response(302)
                self.send_header("Location", "/member/export?" + parts.query)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            vm = xapi.find_export(query)
            if vm is None:
                return self._plain(404, "VM not found")
            if vm.power_state != "Halted":
                return self._plain(500, "VM_BAD_POWER_STATE")
            self._stream(vm.xva_path)
            return None

        def _plain(self, code, text):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, path):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            began = time.monotonic()
            with open(path, "rb") as handle:
                while True:
                    if xapi.bytes_per_second:
                        time.sleep(max(began + sent / xapi.bytes_per_second - time.monotonic(), 0))
                    data = handle.read(CHUNK)
                    if not data:
                        break
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
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    sent += len(data)
            self.wfile.write(b"0\r\n\r\n")

    return Handler
