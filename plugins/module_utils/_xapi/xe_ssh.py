# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The second way to reach a pool: ``xe`` run on a Xen host over ssh, for sites whose XAPI HTTPS
the KVM host cannot reach.

``XeSshClient`` answers the same ``call("VM.get_record", ref)`` the XenAPI client does, so the
lookup, export, mark and power logic of this package runs unchanged on both transports.  Refs are
uuids here (xe names objects by uuid).  Each call is one ``ssh HOST xe ...`` in batch mode with
the options of the ``ssh://`` source (plugins/module_utils/_xva/stream.py); the export itself is
the ``xe+ssh://`` source ``xva_convert`` reads, so no byte of the disks passes through here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import re
import shlex
import subprocess
import tempfile

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError, describe_failure
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import (
    SourceError, SshSource, XeExportSource, ssh_command, ssh_failure_message)

NULL_REF = "OpaqueRef:NULL"
CALL_TIMEOUT = 300  # s; one xe command (a snapshot of a big VM takes a while)
# xe's own texts for the XAPI errors this package acts on (its CLI prints the error's description,
# then one "name: value" line per parameter); anything else it prints as "Error code: CODE".
XE_ERROR_TEXTS = {
    "The uuid you supplied was invalid.": "UUID_INVALID",
    "You gave an invalid object reference.": "HANDLE_INVALID",
    "The operation could not be performed because the VM was in the wrong power state.": "VM_BAD_POWER_STATE",
    "You attempted an operation that was explicitly blocked": "OPERATION_BLOCKED",
}
_PARAM_LINE = re.compile(r"^\s*(?P<name>[A-Za-z0-9_:.-]+) \( ?(?:RO|RW|SRO|SRW|MRO|MRW)\)\s*: ?(?P<value>.*)$")


class _XeCommand(SshSource):
    """One xe command on the Xen host, in the shape ``ssh_command`` builds an argv from."""

    def __init__(self, host, words, user=None, port=None):
        SshSource.__init__(self, host, "", user, port)
        self.words = words

    def url(self):
        return "ssh://%s%s%s" % ("%s@" % self.user if self.user else "", self.host,
                                 ":%d" % self.port if self.port else "")

    def remote_command(self):
        return " ".join(shlex.quote(word) for word in self.words)


def parse_minimal(text):
    """``--minimal`` output: uuids separated by commas, nothing for none."""
    return [item for item in text.strip().split(",") if item]


def parse_param_list(text):
    """``*-param-list`` output (``name ( RW): value`` lines) as {xe name: raw value}."""
    params = {}
    for line in text.splitlines():
        match = _PARAM_LINE.match(line)
        if match:
            params[match.group("name")] = match.group("value").strip()
    return params


def parse_set(value):
    """An xe set (``a; b``), empty for nothing."""
    return [item.strip() for item in (value or "").split(";") if item.strip()]


def parse_map(value):
    """An xe map (``key: value; key2: value2``)."""
    result = {}
    for item in parse_set(value):
        key, _sep, val = item.partition(":")
        result[key.strip()] = val.strip()
    return result


def _ref_or_null(value):
    return value if re.match(r"^[0-9a-fA-F-]{36}$", value or "") else NULL_REF


def vm_record(params):
    """The fields of a VM record this package reads, from ``vm-param-list``."""
    return {
        "uuid": params.get("uuid", ""),
        "name_label": params.get("name-label", ""),
        "power_state": params.get("power-state", "").capitalize(),  # xe prints "running", XAPI "Running"
        "is_a_template": params.get("is-a-template") == "true",
        "is_a_snapshot": params.get("is-a-snapshot") == "true",
        "is_control_domain": params.get("is-control-domain") == "true",
        "other_config": parse_map(params.get("other-config")),
        "tags": parse_set(params.get("tags")),
        "snapshots": parse_set(params.get("snapshots")),
        "resident_on": _ref_or_null(params.get("resident-on")),
    }


def xe_error_details(text):
    """XAPI's ``[CODE, params...]`` from what xe printed on failure, or None when it is no XAPI error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    if lines[0].startswith("Error code:"):
        code = lines[0].split(":", 1)[1].strip()
        params = []
        if len(lines) > 1 and lines[1].startswith("Error parameters:"):
            params = [item.strip() for item in lines[1].split(":", 1)[1].split(",") if item.strip()]
        return [code] + params
    for text_start, code in XE_ERROR_TEXTS.items():
        if lines[0].startswith(text_start):
            return [code] + [line.split(":", 1)[1].strip() for line in lines[1:] if ":" in line]
    return None


class _Job:
    """A running ``xe`` (the clean shutdown), polled like an XAPI task."""

    def __init__(self, process, output, words):
        self.process = process
        self.output = output
        self.words = words

    def text(self):
        self.output.seek(0)
        return self.output.read(65536).decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class XeSshClient:
    """``call(method, *args)`` as ``XapiClient`` has it, carried out by xe over ssh."""

    def __init__(self, host, user=None, port=None, private_key=None, ssh_options=None, xe="xe", timeout=CALL_TIMEOUT):
        self.host = host
        self.user = user
        self.port = port
        self.private_key = private_key
        self.ssh_options = list(ssh_options or [])
        self.xe_path = xe or "xe"
        self.timeout = timeout
        self.pool = "%s (xe over ssh)" % host  # what the shared messages call "pool ..."
        self.subject = None
        self.signal_guard = None
        self._jobs = {}

    # ------------------------------------------------------------------ running xe
    def argv(self, *words):
        command = _XeCommand(self.host, [self.xe_path] + list(words), self.user, self.port)
        try:
            return ssh_command(command, self.ssh_options, self.private_key, self.timeout)
        except SourceError as exc:
            raise XapiError(str(exc), code="SSH_OPTIONS")

    def export_src(self, uuid, compression):
        """The ``xe+ssh://`` source xva_convert reads the export of ``uuid`` from."""
        return XeExportSource(self.host, uuid, compression, self.user, self.port, self.xe_path).url()

    def xe(self, *words):
        """xe's standard output, or an ``XapiError`` naming the host, the command and what failed."""
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.run(self.argv(*words), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=output, timeout=self.timeout, check=False)
            except FileNotFoundError:
                raise XapiError("the ssh client is not installed on this host (Debian: openssh-client)", code="SSH")
            except subprocess.TimeoutExpired:
                raise XapiError("xe %s on %s did not finish within %s s" % (words[0], self.host, self.timeout),
                                code="TIMEOUT")
            output.seek(0)
            err = output.read(65536).decode("utf-8", "replace")
        if process.returncode != 0:
            raise self.failure(words, process.returncode, err + process.stdout.decode("utf-8", "replace"))
        return process.stdout.decode("utf-8", "replace")

    def failure(self, words, code, text):
        if code == 255:  # ssh itself: connection, key, host key
            return XapiError(ssh_failure_message(_XeCommand(self.host, [], self.user, self.port), code, text),
                             code="SSH")
        details = xe_error_details(text)
        if details:
            return XapiError(describe_failure(details, self.pool, self.subject), code=details[0])
        said = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "no message"
        where = "%s on %s" % (self.subject, self.host) if self.subject else self.host
        return XapiError("xe %s failed for %s (exit %d): %s" % (words[0], where, code, said), code="XE")

    def call(self, method, *args):
        handler = _CALLS.get(method)
        if handler is None:
            raise XapiError("%s is not available with transport ssh (xe); use transport xapi" % method,
                            code="NOT_SUPPORTED")
        return handler(self, *args)

    # ------------------------------------------------------------------ XAPI calls as xe commands
    def _vm_uuid(self, uuid):
        return self.xe("vm-param-get", "uuid=%s" % uuid, "param-name=uuid").strip()

    def _vm_record(self, uuid):
        return vm_record(parse_param_list(self.xe("vm-param-list", "uuid=%s" % uuid)))

    def _vms_named(self, name):
        return parse_minimal(self.xe("vm-list", "name-label=%s" % name, "params=uuid", "--minimal"))

    def _snapshot(self, uuid, name):
        return self.xe("vm-snapshot", "uuid=%s" % uuid, "new-name-label=%s" % name).strip()

    def _param_set(self, uuid, setting, command="vm-param-set"):
        self.xe(command, "uuid=%s" % uuid, setting)

    def _param_remove(self, uuid, name, key):
        self.xe("vm-param-remove", "uuid=%s" % uuid, "param-name=%s" % name, "param-key=%s" % key)

    def _param_add(self, uuid, name, key):
        self.xe("vm-param-add", "uuid=%s" % uuid, "param-name=%s" % name, "param-key=%s" % key)

    def _vdi_record(self, uuid):
        params = parse_param_list(self.xe("vdi-param-list", "uuid=%s" % uuid))
        return {"uuid": params.get("uuid", ""), "is_a_snapshot": params.get("is-a-snapshot") == "true",
                "VBDs": parse_set(params.get("vbd-uuids"))}

    def _vbd_field(self, uuid, name):
        return _ref_or_null(self.xe("vbd-param-get", "uuid=%s" % uuid, "param-name=%s" % name).strip())

    def _start_job(self, *words):
        output = tempfile.TemporaryFile()
        process = subprocess.Popen(self.argv(*words), stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        job_id = "xe-job:%d" % process.pid
        self._jobs[job_id] = _Job(process, output, words)
        return job_id

    def _job_status(self, job_id):
        code = self._jobs[job_id].process.poll()
        return "pending" if code is None else ("success" if code == 0 else "failure")

    def _job_error(self, job_id):
        text = self._jobs[job_id].text()
        said = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "no message"
        return xe_error_details(text) or ["XE_FAILED", said]

    def _job_destroy(self, job_id):
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.stop()
            job.output.close()

    def close(self):
        for job_id in list(self._jobs):
            self._job_destroy(job_id)


_CALLS = {
    "VM.get_by_uuid": XeSshClient._vm_uuid,
    "VM.get_record": XeSshClient._vm_record,
    "VM.get_by_name_label": XeSshClient._vms_named,
    "VM.get_uuid": lambda client, uuid: uuid,
    "VM.get_power_state": lambda client, uuid: client.xe(
        "vm-param-get", "uuid=%s" % uuid, "param-name=power-state").strip().capitalize(),
    "VM.snapshot": XeSshClient._snapshot,
    "VM.add_to_other_config": lambda client, uuid, key, value: client._param_set(
        uuid, "other-config:%s=%s" % (key, value)),
    "VM.remove_from_other_config": lambda client, uuid, key: client._param_remove(uuid, "other-config", key),
    "VM.set_is_a_template": lambda client, uuid, value: client._param_set(
        uuid, "is-a-template=%s" % str(bool(value)).lower(), "template-param-set"),
    "VM.set_ha_always_run": lambda client, uuid, value: client._param_set(
        uuid, "ha-always-run=%s" % str(bool(value)).lower(), "template-param-set"),
    "VM.add_tags": lambda client, uuid, tag: client._param_add(uuid, "tags", tag),
    "VM.remove_tags": lambda client, uuid, tag: client._param_remove(uuid, "tags", tag),
    "VM.get_VBDs": lambda client, uuid: parse_minimal(client.xe("vbd-list", "vm-uuid=%s" % uuid, "params=uuid",
                                                                "--minimal")),
    "VBD.get_VDI": lambda client, uuid: client._vbd_field(uuid, "vdi-uuid"),
    "VBD.get_VM": lambda client, uuid: client._vbd_field(uuid, "vm-uuid"),
    "VDI.get_record": XeSshClient._vdi_record,
    "VDI.destroy": lambda client, uuid: client.xe("vdi-destroy", "uuid=%s" % uuid),
    "VM.destroy": lambda client, uuid: client.xe("vm-destroy", "uuid=%s" % uuid),
    "VM.start": lambda client, uuid, paused=False, force=False: client.xe("vm-start", "uuid=%s" % uuid),
    "host.get_name_label": lambda client, uuid: client.xe(
        "host-param-get", "uuid=%s" % uuid, "param-name=name-label").strip(),
    # xe vm-shutdown waits for the guest; run in the background it stands in for XAPI's task, so
    # power.clean_shutdown keeps its time limit.  Killing it leaves xapi's own request pending on
    # the host (xapi gives up after its own limit): the VM is never forced off.
    "Async.VM.clean_shutdown": lambda client, uuid: client._start_job("vm-shutdown", "uuid=%s" % uuid),
    "task.get_status": XeSshClient._job_status,
    "task.cancel": lambda client, job_id: client._jobs[job_id].stop(),
    "task.get_error_info": XeSshClient._job_error,
    "task.destroy": XeSshClient._job_destroy,
}


@contextlib.contextmanager
def xe_ssh_session(host, user=None, port=None, private_key=None, ssh_options=None, xe="xe"):
    """``with xe_ssh_session(...) as client:`` an ``XeSshClient``; background xe jobs end on exit.
    The first command checks that ssh reaches the host and that xe runs there."""
    if not host:
        raise XapiError("transport ssh needs ssh_host: the Xen host (pool master) to run xe on")
    client = XeSshClient(host, user, port, private_key, ssh_options, xe)
    try:
        yield client
    finally:
        client.close()
