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

XAPI_ARGUMENT_SPEC = dict(
    xapi_url=dict(type="str", required=True, fallback=(env_fallback, ["XENSERVER_HOST"])),
    username=dict(type="str", default="root", fallback=(env_fallback, ["XENSERVER_USER"])),
    password=dict(type="str", no_log=True, fallback=(env_fallback, ["XENSERVER_PASSWORD"])),
    validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["XENSERVER_VALIDATE_CERTS"])),
    ca_path=dict(type="path"),
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
    return AnsibleModule(argument_spec=spec, supports_check_mode=True, **kwargs)


def run_with_pool(module, action):
    """``action(client)`` in a session to the pool; exits the module with its result dict."""
    if not HAS_XENAPI:
        module.fail_json(msg=missing_required_lib("XenAPI", reason="to talk to XAPI (pip install XenAPI)"))
    params = module.params
    try:
        with SignalGuard(lambda name: Interrupted("stopped by %s; cleaned up what this run had started" % name)) \
                as guard:
            with xapi_session(params["xapi_url"], params["username"], params["password"],
                              params["validate_certs"], params["ca_path"]) as client:
                client.signal_guard = guard
                result = action(client)
    except XapiError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)
