# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of xen2kvm.migration.kvm_host_slot: runs on the controller only (slot files
under the controller's cache directory; see plugins/module_utils/_slots.py)."""

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.xen2kvm.migration.plugins.module_utils._slots import (
    ARGUMENT_SPEC, SlotError, Slots, default_directory)

display = Display()


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        base = args["dir"] or default_directory()
        holder, key = args["holder"], args["key"]
        # The task runs in a worker process that ends with the task; the slot must last until
        # the release task, so it belongs to the worker's parent, the ansible-playbook process.
        try:
            slots = Slots(base, key, args["limit"], owner_pid=os.getppid())
            if args["state"] == "released":
                result.update(changed=False, released=slots.release(holder), holders=slots.holders())
                return result

            def on_wait(busy, _waited):
                display.display("[%s] waiting for a slot on %s (%s)" % (holder, key, slots.describe(busy)))

            path, waited = slots.acquire(holder, args["timeout"], on_wait=on_wait)
        except (SlotError, OSError) as exc:
            result.update(failed=True, msg="kvm_host_slot %s for %s on %s: %s" % (
                args["state"], holder, key, exc))
            return result
        result.update(changed=False, slot=path, wait_seconds=round(waited, 1), holders=slots.holders())
        return result
