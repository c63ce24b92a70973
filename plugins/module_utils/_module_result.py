# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How modules hand their result to Ansible: the diff only in diff mode, warnings as warnings."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def exit_with_diff(module, result):
    """``result`` carries ``diff`` (and optionally ``warnings``); exit the module with them
    placed where Ansible expects them."""
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)
