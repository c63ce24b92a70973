"""A stand-in for XenServer's ``xe`` CLI on a Xen host, for the tests of the ssh transport.

    fake_xe.py COMMAND key=value ... [--minimal]

It carries out the xe commands the collection runs by calling the XAPI double
(tests/lib/xapi_double.py) over XML-RPC with the XenAPI SDK, so the double's counters (sessions,
snapshots, exports) show the cleanup of both transports.  ``vm-export filename=`` (empty) writes
the export to standard output, read from the double's HTTP ``/export`` as xe itself does.  Output
and error texts follow xe's: ``--minimal`` gives comma-separated uuids, ``*-param-list`` gives
``name ( RW): value`` lines, errors go to standard error with exit status 1.

The double is named by the environment (a wrapper script named ``xe`` sets it):
FAKE_XE_URL (http://127.0.0.1:PORT), FAKE_XE_USER, FAKE_XE_PASSWORD.
"""

import base64
import http.client
import os
import sys
import urllib.error
import urllib.request

import XenAPI

NOT_IN_DATABASE = "<not in database>"
CHUNK = 1 << 20
XE_COMPRESS = {"true": "gzip", "gzip": "gzip", "zstd": "zstd", "false": None, "": None}
# xe name -> (record field, how it is printed); the VM fields the collection reads
VM_PARAMS = [
    ("uuid", "uuid", "RO"), ("name-label", "name_label", "RW"), ("name-description", "name_description", "RW"),
    ("is-a-template", "is_a_template", "RW"), ("is-a-snapshot", "is_a_snapshot", "RO"),
    ("is-control-domain", "is_control_domain", "RO"), ("power-state", "power_state", "RO"),
    ("resident-on", "resident_on", "RO"), ("other-config", "other_config", "MRW"), ("tags", "tags", "SRW"),
    ("snapshots", "snapshots", "SRO"), ("ha-always-run", "ha_always_run", "RW"),
]


class XeFailure(Exception):
    """What xe prints on standard error before exiting 1."""


def _print_value(api, value, uuid_of_ref):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "; ".join("%s: %s" % item for item in value.items())
    if isinstance(value, list):
        return "; ".join(uuid_of_ref(item) for item in value)
    if isinstance(value, str) and value.startswith("OpaqueRef:"):
        return uuid_of_ref(value)
    if isinstance(value, str) and value in ("Running", "Halted", "Suspended", "Paused"):
        return value.lower()  # xe prints power states in lower case
    return str(value)


class FakeXe:
    def __init__(self, api, url, user, password):
        self.api = api
        self.url = url
        self.user = user
        self.password = password

    # ------------------------------------------------------------------ helpers
    def vm_ref(self, args):
        if "uuid" in args:
            return self.api.VM.get_by_uuid(args["uuid"])
        if "vm" in args:  # xe's vm= takes a name or a uuid
            refs = self.api.VM.get_by_name_label(args["vm"])
            if len(refs) == 1:
                return refs[0]
            if len(refs) > 1:
                raise XeFailure("Multiple matches VM found for the parameter: vm=%s" % args["vm"])
            return self.api.VM.get_by_uuid(args["vm"])
        raise XeFailure("No matching VMs found")

    def uuid_of(self, ref):
        if not ref or ref == "OpaqueRef:NULL":
            return NOT_IN_DATABASE
        for cls in ("VM", "VDI", "VBD", "host", "VIF", "SR", "network"):
            try:
                return getattr(self.api, cls).get_uuid(ref)
            except XenAPI.Failure:
                continue
        return ref

    def vm_params(self, ref):
        record = self.api.VM.get_record(ref)
        return [(name, mode, _print_value(self.api, record.get(field, ""), self.uuid_of))
                for name, field, mode in VM_PARAMS]

    # ------------------------------------------------------------------ commands
    def vm_list(self, args, minimal):
        if "uuid" in args:
            refs = [ref for ref in self.api.VM.get_all() if self.api.VM.get_uuid(ref) == args["uuid"]]
        elif "name-label" in args:
            refs = self.api.VM.get_by_name_label(args["name-label"])
        else:
            refs = self.api.VM.get_all()
        refs = [ref for ref in refs if not (self.api.VM.get_is_a_template(ref)
                                            or self.api.VM.get_is_control_domain(ref))]
        uuids = [self.api.VM.get_uuid(ref) for ref in refs]
        if minimal:
            return ",".join(uuids)
        return "\n\n".join("uuid ( RO)           : %s" % uuid for uuid in uuids)

    def vm_param_get(self, args, _minimal):
        ref = self.vm_ref(args)
        for name, _mode, value in self.vm_params(ref):
            if name == args.get("param-name"):
                return value
        raise XeFailure("Unknown field '%s'" % args.get("param-name"))

    def vm_param_list(self, args, _minimal):
        params = self.vm_params(self.vm_ref(args))
        width = max(len(name) + len(mode) + 3 for name, mode, _value in params)
        return "\n".join(("%s ( %s)" % (name, mode)).rjust(width) + ": " + value for name, mode, value in params)

    def vm_snapshot(self, args, _minimal):
        return self.api.VM.get_uuid(self.api.VM.snapshot(self.vm_ref(args), args["new-name-label"]))

    def vm_param_set(self, args, _minimal):
        ref = self.vm_ref(args)
        for key, value in args.items():
            if key.startswith("other-config:"):
                other_key = key.split(":", 1)[1]
                self.api.VM.remove_from_other_config(ref, other_key)
                self.api.VM.add_to_other_config(ref, other_key, value)
            elif key == "is-a-template":
                self.api.VM.set_is_a_template(ref, value == "true")
            elif key == "ha-always-run":
                self.api.VM.set_ha_always_run(ref, value == "true")
            elif key != "uuid":
                raise XeFailure("Unknown field '%s'" % key)
        return ""

    def vm_param_add(self, args, _minimal):
        if args.get("param-name") != "tags":
            raise XeFailure("Unknown field '%s'" % args.get("param-name"))
        self.api.VM.add_tags(self.vm_ref(args), args["param-key"])
        return ""

    def vm_param_remove(self, args, _minimal):
        ref = self.vm_ref(args)
        if args.get("param-name") == "tags":
            self.api.VM.remove_tags(ref, args["param-key"])
        elif args.get("param-name") == "other-config":
            self.api.VM.remove_from_other_config(ref, args["param-key"])
        else:
            raise XeFailure("Unknown field '%s'" % args.get("param-name"))
        return ""

    def vm_shutdown(self, args, _minimal):
        self.api.VM.clean_shutdown(self.vm_ref(args))
        return ""

    def vm_start(self, args, _minimal):
        self.api.VM.start(self.vm_ref(args), False, False)
        return ""

    def vm_destroy(self, args, _minimal):
        self.api.VM.destroy(self.vm_ref(args))
        return ""

    def vm_uninstall(self, args, _minimal):
        """The VM and the VDIs only it uses, as xe vm-uninstall force=true destroys them."""
        ref = self.vm_ref(args)
        vdis = []
        for vbd in self.api.VM.get_VBDs(ref):
            vdi = self.api.VBD.get_VDI(vbd)
            if vdi != "OpaqueRef:NULL" and all(self.api.VBD.get_VM(other) == ref
                                               for other in self.api.VDI.get_VBDs(vdi)):
                vdis.append(vdi)
        lines = ["The following items are about to be destroyed",
                 "VM : %s (%s)" % (self.api.VM.get_uuid(ref), self.api.VM.get_name_label(ref))]
        lines += ["VDI: %s (%s)" % (self.api.VDI.get_uuid(vdi), self.api.VDI.get_name_label(vdi)) for vdi in vdis]
        for vdi in vdis:
            self.api.VDI.destroy(vdi)
        self.api.VM.destroy(ref)
        return "\n".join(lines + ["All objects destroyed"])

    def template_param_set(self, args, minimal):
        return self.vm_param_set(args, minimal)

    def vbd_list(self, args, minimal):
        vbds = self.api.VM.get_VBDs(self.api.VM.get_by_uuid(args["vm-uuid"]))
        return ",".join(self.api.VBD.get_uuid(vbd) for vbd in vbds)

    def vbd_param_get(self, args, _minimal):
        ref = self.api.VBD.get_by_uuid(args["uuid"])
        field = {"vdi-uuid": "VDI", "vm-uuid": "VM"}[args["param-name"]]
        return self.uuid_of(self.api.VBD.get_record(ref)[field])

    def vdi_param_list(self, args, _minimal):
        record = self.api.VDI.get_record(self.api.VDI.get_by_uuid(args["uuid"]))
        rows = [("uuid", "RO", record["uuid"]), ("name-label", "RW", record.get("name_label", "")),
                ("is-a-snapshot", "RO", _print_value(self.api, bool(record.get("is_a_snapshot")), self.uuid_of)),
                ("vbd-uuids", "SRO", "; ".join(self.uuid_of(vbd) for vbd in record.get("VBDs", [])))]
        return "\n".join(("%s ( %s)" % (name, mode)).rjust(22) + ": " + value for name, mode, value in rows)

    def vdi_destroy(self, args, _minimal):
        self.api.VDI.destroy(self.api.VDI.get_by_uuid(args["uuid"]))
        return ""

    def host_param_get(self, args, _minimal):
        ref = self.api.host.get_by_uuid(args["uuid"])
        return {"name-label": self.api.host.get_name_label}[args["param-name"]](ref)

    def vm_export(self, args, _minimal):
        """The export on standard output when filename= is empty, as xe streams it from xapi."""
        ref = self.vm_ref(args)
        record = self.api.VM.get_record(ref)
        if record["power_state"] != "Halted":
            raise XenAPI.Failure(["VM_BAD_POWER_STATE", ref, "halted", record["power_state"].lower()])
        if args.get("filename"):
            raise XeFailure("this fake xe writes exports to standard output only (filename=)")
        compression = XE_COMPRESS.get(args.get("compress", ""), "invalid")
        if compression == "invalid":
            raise XeFailure("Failed to parse argument 'compress': expecting 'true', 'false', 'gzip' or 'zstd'")
        query = "uuid=%s" % record["uuid"] + ("&use_compression=%s" % compression if compression else "")
        request = urllib.request.Request("%s/export?%s" % (self.url, query))
        token = base64.b64encode(("%s:%s" % (self.user, self.password)).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
        sent = 0
        with urllib.request.urlopen(request) as response:
            out = sys.stdout.buffer
            try:
                while True:
                    data = response.read1(CHUNK)  # what arrived, as xe passes it on
                    if not data:
                        break
                    out.write(data)
                    out.flush()
                    sent += len(data)
            except (http.client.IncompleteRead, OSError) as exc:
                # this fake's own wording: the export connection to xapi died midway
                raise XeFailure("Error: the export from xapi ended after %d bytes: %s" % (sent, type(exc).__name__))
        return None


def xe_error_text(api, details):
    """A XAPI failure as xe prints it."""
    code, params = details[0], details[1:]
    if code == "UUID_INVALID":
        return "The uuid you supplied was invalid.\ntype: %s\nuuid: %s" % (params[0], params[1])
    if code == "HANDLE_INVALID":
        return ("You gave an invalid object reference.  The object may have recently been deleted.  The class "
                "parameter gives the type of reference given, and the handle parameter echoes the bad value "
                "given.\nclass: %s\nhandle: %s" % (params[0], params[1]))
    if code == "VM_BAD_POWER_STATE":
        try:
            vm = "%s (%s)" % (api.VM.get_uuid(params[0]), api.VM.get_name_label(params[0]))
        except XenAPI.Failure:
            vm = params[0]
        return ("The operation could not be performed because the VM was in the wrong power state.\n"
                "vm: %s\nexpected: %s\nactual: %s" % (vm, params[1], params[2]))
    return "Error code: %s\nError parameters: %s" % (code, ", ".join(str(p) for p in params))


def parse_args(words):
    args, minimal = {}, False
    for word in words:
        if word == "--minimal":
            minimal = True
        elif "=" in word:
            key, _sep, value = word.partition("=")
            args[key] = value
        else:
            raise XeFailure("Syntax error: %s" % word)
    return args, minimal


def main(argv):
    if not argv:
        sys.stderr.write("Usage: xe <cmd> [-s server] [-pw passwd] [-p port] [-u user] [-pwf password-file]\n")
        return 1
    url, user, password = os.environ["FAKE_XE_URL"], os.environ["FAKE_XE_USER"], os.environ["FAKE_XE_PASSWORD"]
    session = XenAPI.Session(url)
    command = getattr(FakeXe, argv[0].replace("-", "_"), None)
    if command is None:
        sys.stderr.write("Unknown command: %s\nFor usage run: 'xe help'\n" % argv[0])
        return 1
    try:
        args, minimal = parse_args(argv[1:])
        session.xenapi.login_with_password(user, password, "1.0", "fake-xe")
        try:
            output = command(FakeXe(session.xenapi, url, user, password), args, minimal)
        except XenAPI.Failure as failure:  # printed while the session can still name the VM
            sys.stderr.write(xe_error_text(session.xenapi, failure.details) + "\n")
            return 1
        finally:
            session.xenapi.session.logout()
    except (XeFailure, KeyError) as exc:
        sys.stderr.write("%s\n" % (exc if isinstance(exc, XeFailure) else "Required parameter not found: %s" % exc))
        return 1
    except BrokenPipeError:
        return 1
    except urllib.error.HTTPError as exc:
        sys.stderr.write("Error code: %s\nError parameters: %s\n" % ("VM_EXPORT_FAILED", exc))
        return 1
    if output:
        sys.stdout.write(output + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
