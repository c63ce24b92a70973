# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the xen_vm_* modules share: the pool options (doc fragment ``xapi``), the VM selector,
and one way to run: SDK present, a session for the run, signals turned into a clean failure,
every ``XapiError`` a ``fail_json`` message."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.xen2kvm.migration.plugins.module_utils._interrupt import SignalGuard
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import (
    HAS_XENAPI, XapiError, xapi_session)
from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.xe_ssh import xe_ssh_session

XAPI_ARGUMENT_SPEC = dict(
    xapi_url=dict(type="str", fallback=(env_fallback, ["XENSERVER_HOST"])),
    username=dict(type="str", default="root", fallback=(env_fallback, ["XENSERVER_USER"])),
    password=dict(type="str", no_log=True, fallback=(env_fallback, ["XENSERVER_PASSWORD"])),
    validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["XENSERVER_VALIDATE_CERTS"])),
    ca_path=dict(type="path"),
    # transport ssh (doc fragment xapi_ssh): xe on the Xen host over ssh, for sites whose XAPI
    # HTTPS the KVM host cannot reach
    transport=dict(type="str", default="xapi", choices=["xapi", "ssh"]),
    ssh_host=dict(type="str"),
    ssh_user=dict(type="str", default="root"),
    ssh_port=dict(type="int"),
    ssh_private_key=dict(type="path"),
    ssh_options=dict(type="list", elements="str", default=[]),
    xe_path=dict(type="str", default="xe"),
)

VM_SELECTOR_SPEC = dict(name=dict(type="str"), uuid=dict(type="str"))


class Interrupted(XapiError):
    """SIGTERM, SIGINT or SIGHUP arrived: cleanup runs, then the module fails with this."""


def xapi_module(argument_spec, require_vm=True, **kwargs):
    """An AnsibleModule with the pool options and ``name`` | ``uuid`` (one of them required
    when ``require_vm``)."""
    spec = dict(XAPI_ARGUMENT_SPEC)
    spec.update(VM_SELECTOR_SPEC)
    spec.update(argument_spec)
    kwargs.setdefault("mutually_exclusive", []).append(("name", "uuid"))
    if require_vm:
        kwargs.setdefault("required_one_of", []).append(("name", "uuid"))
    kwargs.setdefault("required_if", []).extend([("transport", "xapi", ("xapi_url",)),
                                                 ("transport", "ssh", ("ssh_host",))])
    return AnsibleModule(argument_spec=spec, supports_check_mode=True, **kwargs)


def run_with_pool(module, action):
    """``action(client)`` in a session to the pool; exits the module with its result dict."""
    if params_transport(module) == "xapi" and not HAS_XENAPI:
        module.fail_json(msg=missing_required_lib("XenAPI", reason="to talk to XAPI (pip install XenAPI)"))
    params = module.params
    try:
        with SignalGuard(lambda name: Interrupted("stopped by %s; cleaned up what this run had started" % name)) \
                as guard:
            with _pool_client(params) as client:
                client.signal_guard = guard
                result = action(client)
    except XapiError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


def params_transport(module):
    return module.params.get("transport") or "xapi"


def _pool_client(params):
    """The XenAPI session (transport xapi) or xe over ssh (transport ssh): the same ``call``."""
    if (params.get("transport") or "xapi") == "ssh":
        return xe_ssh_session(params["ssh_host"], params["ssh_user"], params["ssh_port"], params["ssh_private_key"],
                              params["ssh_options"], params["xe_path"])
    return xapi_session(params["xapi_url"], params["username"], params["password"], params["validate_certs"],
                        params["ca_path"])
