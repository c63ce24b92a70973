# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One XAPI session per module run: login over HTTPS with the SDK, always logout.

Every failure (XAPI's own error codes, a refused connection, an untrusted certificate, a
timeout) becomes one ``XapiError`` whose message names the pool and, once it is known, the VM,
so the user reads what went wrong instead of a traceback.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import socket
import ssl
import xmlrpc.client

from urllib.parse import urlsplit

try:
    import XenAPI
    HAS_XENAPI = True
except ImportError:
    XenAPI = None
    HAS_XENAPI = False

ORIGINATOR = "xen2kvm.migration"
DEFAULT_RPC_TIMEOUT = 120  # s; one XML-RPC call. Long calls (clean shutdown) go through tasks.


class XapiError(Exception):
    """A failure talking to XAPI, with a message fit for the user."""

    def __init__(self, message, code=None):
        super(XapiError, self).__init__(message)
        self.code = code


def normalise_url(xapi_url):
    """``https://pool-master`` from what the user gave; a bare host name means HTTPS."""
    url = (xapi_url or "").strip()
    if not url:
        raise XapiError("xapi_url is empty: give the pool master, e.g. https://xenhost1 (or set XENSERVER_HOST)")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise XapiError("xapi_url %r is not an https:// URL or a host name" % xapi_url)
    if parts.username or parts.password:
        raise XapiError("xapi_url must not carry credentials; give username and password instead")
    if parts.path not in ("", "/") or parts.query:
        raise XapiError("xapi_url %r has a path or query; give only the pool master, e.g. https://xenhost1"
                        % _without_secrets(xapi_url))
    return "%s://%s" % (parts.scheme, parts.netloc)


def _without_secrets(url):
    return url.split("?", 1)[0]


def ssl_context(validate_certs=True, ca_path=None):
    """The TLS context: the system's trust store, ``ca_path`` instead of it, or no checks."""
    if not validate_certs:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise XapiError("cannot read ca_path %s: %s" % (ca_path, exc))


class _TimedHTTPS(xmlrpc.client.SafeTransport):
    """XML-RPC over HTTPS that gives up on a silent pool instead of waiting forever."""

    def __init__(self, context, timeout):
        xmlrpc.client.SafeTransport.__init__(self, context=context)
        self._timeout = timeout

    def make_connection(self, host):
        connection = xmlrpc.client.SafeTransport.make_connection(self, host)
        connection.timeout = self._timeout
        return connection


class _TimedHTTP(xmlrpc.client.Transport):
    def __init__(self, timeout):
        xmlrpc.client.Transport.__init__(self)
        self._timeout = timeout

    def make_connection(self, host):
        connection = xmlrpc.client.Transport.make_connection(self, host)
        connection.timeout = self._timeout
        return connection


def describe_failure(details, pool, subject=None, username=None):
    """XAPI's ErrorDescription ``[CODE, params...]`` as a sentence naming the pool and VM."""
    details = [str(item) for item in (details or ["UNKNOWN_ERROR"])]
    code, params = details[0], details[1:]
    where = "%s on pool %s" % (subject, pool) if subject else "pool %s" % pool
    if code == "SESSION_AUTHENTICATION_FAILED":
        return ("XAPI at %s refused the login of user %r: wrong user name or password "
                "(SESSION_AUTHENTICATION_FAILED)" % (pool, username if username is not None else _param(params, 0)))
    if code == "HANDLE_INVALID":
        return ("%s: the %s %s no longer exists (HANDLE_INVALID); it was removed while this ran"
                % (where, _param(params, 0), _param(params, 1)))
    if code == "UUID_INVALID":
        return "pool %s has no %s with uuid %s (UUID_INVALID)" % (pool, _param(params, 0), _param(params, 1))
    if code == "VM_BAD_POWER_STATE":
        return ("%s is %s, and the operation needs it %s (VM_BAD_POWER_STATE)"
                % (where, _param(params, 2), _param(params, 1)))
    if code in ("VM_IS_SNAPSHOT", "VM_IS_TEMPLATE"):
        return "%s: %s is not allowed on a %s (%s)" % (where, _param(params, 1), code[6:].lower(), code)
    if code == "OPERATION_NOT_ALLOWED":
        return "%s: XAPI does not allow this: %s (OPERATION_NOT_ALLOWED)" % (where, _param(params, 0))
    if code == "OPERATION_BLOCKED":
        return ("%s: an administrator blocked this operation on it (blocked_operations: %s) (OPERATION_BLOCKED)"
                % (where, _param(params, 1)))
    if code == "VM_SHUTDOWN_TIMEOUT":
        return "%s did not shut down within XAPI's %s s (VM_SHUTDOWN_TIMEOUT)" % (where, _param(params, 1))
    if code == "VDI_IN_USE":
        return "%s: disk %s is in use (VDI_IN_USE)" % (where, _param(params, 0))
    return "%s: XAPI failed with %s" % (where, " ".join(details))


def _param(params, index):
    return params[index] if index < len(params) else "?"


class XapiClient:
    """A logged-in session. ``call("VM.get_record", ref)`` runs one XAPI call; its failure
    becomes an ``XapiError`` naming the pool and ``subject`` (set once the VM is known)."""

    def __init__(self, session, pool):
        self._session = session
        self.pool = pool
        self.subject = None
        self.signal_guard = None  # the run's SignalGuard, for steps that must not stop halfway

    def call(self, method, *args):
        target = self._session.xenapi
        for part in method.split("."):
            target = getattr(target, part)
        try:
            return target(*args)
        except Exception as exc:  # the SDK, xmlrpc, ssl and socket raise unrelated types
            raise translate(exc, self.pool, self.subject)


def translate(exc, pool, subject=None, username=None):
    """Any exception of the SDK or the transport as an ``XapiError``."""
    if isinstance(exc, XapiError):
        return exc
    if XenAPI is not None and isinstance(exc, XenAPI.Failure):
        details = exc.details if isinstance(exc.details, list) else [str(exc.details)]
        return XapiError(describe_failure(details, pool, subject, username), code=str(details[0]) if details else None)
    if isinstance(exc, ssl.SSLCertVerificationError) or (isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc)):
        return XapiError("the TLS certificate of %s is not trusted (%s): give the pool's certificate or CA in "
                         "ca_path (an XCP-ng host's is in /etc/xensource/xapi-ssl.pem)"
                         % (pool, getattr(exc, "verify_message", None) or exc), code="TLS")
    if isinstance(exc, ssl.SSLError):
        return XapiError("TLS failure talking to %s: %s" % (pool, exc), code="TLS")
    if isinstance(exc, socket.timeout):
        return XapiError("XAPI at %s did not answer in time (%s)" % (pool, exc or "timeout"), code="TIMEOUT")
    if isinstance(exc, ConnectionRefusedError):
        return XapiError("cannot connect to XAPI at %s: connection refused" % pool, code="CONNECTION")
    if isinstance(exc, (socket.gaierror, OSError)):
        return XapiError("cannot connect to XAPI at %s: %s" % (pool, exc), code="CONNECTION")
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return XapiError("%s does not answer like XAPI: HTTP %s %s" % (pool, exc.errcode, exc.errmsg), code="PROTOCOL")
    if isinstance(exc, (xmlrpc.client.Fault, xmlrpc.client.ResponseError)):
        return XapiError("%s does not answer like XAPI: %s" % (pool, exc), code="PROTOCOL")
    where = "%s on pool %s" % (subject, pool) if subject else "pool %s" % pool
    return XapiError("%s: unexpected %s: %s" % (where, type(exc).__name__, exc))


@contextlib.contextmanager
def xapi_session(xapi_url, username, password, validate_certs=True, ca_path=None, timeout=DEFAULT_RPC_TIMEOUT):
    """``with xapi_session(...) as client:`` a logged-in ``XapiClient``; the session is logged
    out on every way out (success, ``XapiError``, a signal turned into an exception)."""
    if XenAPI is None:
        raise XapiError("the XenAPI Python SDK is not installed", code="MISSING_LIBRARY")
    pool = normalise_url(xapi_url)
    if password is None:
        raise XapiError("no password for user %r on pool %s (set password or XENSERVER_PASSWORD)" % (username, pool))
    if pool.startswith("https://"):
        transport = _TimedHTTPS(ssl_context(validate_certs, ca_path), timeout)
    else:
        transport = _TimedHTTP(timeout)
    session = XenAPI.Session(pool, transport=transport)
    try:
        session.xenapi.login_with_password(username, password, "1.0", ORIGINATOR)
    except Exception as exc:
        raise translate(exc, pool, username=username)
    try:
        yield XapiClient(session, pool)
    finally:
        try:
            session.xenapi.session.logout()
        except Exception:  # the result is what matters; a failed logout expires on its own
            pass
