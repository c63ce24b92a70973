# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the XVA-reading modules share: the source options (doc fragment xva_source) and keeping
the credentials a source URL may carry out of everything Ansible prints or stores."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import DEFAULT_TIMEOUT, source_secrets

SOURCE_ARGUMENT_SPEC = dict(
    src=dict(type="str", required=True),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    url_username=dict(type="str"),
    url_password=dict(type="str", no_log=True),
    session_id=dict(type="str", no_log=True),
    timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    ssh_options=dict(type="list", elements="str"),
    # A path, not the key: nothing to mask (no_log=False says so to sanity's no_log check).
    ssh_private_key=dict(type="path", no_log=False),
)

URL_OPTION_NAMES = ("validate_certs", "ca_path", "url_username", "url_password", "session_id", "timeout")
SSH_OPTION_NAMES = ("ssh_options", "ssh_private_key")


def url_options(params):
    """The options that say how to open ``src``: the HTTP ones and the ssh ones."""
    return {key: params[key] for key in URL_OPTION_NAMES + SSH_OPTION_NAMES}


def protect_source_secrets(module):
    """Add the password and the session_id (or other credential) values inside ``src`` to the
    values Ansible masks: in the result, ``invocation`` (printed at -vvv, stored by AWX),
    warnings, failure messages and the target's log."""
    src = (module.params or {}).get("src")
    if src:
        module.no_log_values.update(source_secrets(src))


class XvaSourceModule(AnsibleModule):
    """An AnsibleModule that masks the credentials inside ``src`` from the start: AnsibleModule
    logs its arguments (``Invoked with ...``) before the module's own code runs."""

    def _log_invocation(self):
        protect_source_secrets(self)
        super(XvaSourceModule, self)._log_invocation()

    def __init__(self, *args, **kwargs):
        super(XvaSourceModule, self).__init__(*args, **kwargs)
        protect_source_secrets(self)  # also when no_log skipped the invocation log
