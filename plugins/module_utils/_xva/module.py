# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the XVA-reading modules share: the source options (doc fragment xva_source)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SOURCE_ARGUMENT_SPEC = dict(
    src=dict(type="str", required=True),
    validate_certs=dict(type="bool", default=True),
    url_username=dict(type="str"),
    url_password=dict(type="str", no_log=True),
    session_id=dict(type="str", no_log=True),
    timeout=dict(type="int", default=60),
)

URL_OPTION_NAMES = ("validate_certs", "url_username", "url_password", "session_id", "timeout")


def url_options(params):
    return {key: params[key] for key in URL_OPTION_NAMES}
