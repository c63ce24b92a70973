# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starting a VM and shutting it down cleanly within a time limit.

``VM.clean_shutdown`` returns only when the guest has halted, and a guest without PV drivers
or a hung one never does (xapi's own limit is 20 minutes).  So it runs as a task
(``Async.VM.clean_shutdown``) that is polled until ``timeout`` and cancelled then: the VM is
left running, never forced off (``hard_shutdown`` could lose the guest's unwritten data).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.xen2kvm.migration.plugins.module_utils._xapi.session import XapiError, describe_failure

POLL_SECONDS = (0.1, 0.2, 0.5, 1.0)  # quick first looks (a halted test guest), then once a second


def _poll_intervals():
    yield from POLL_SECONDS
    while True:
        yield POLL_SECONDS[-1]


def clean_shutdown(client, vm_ref, timeout, clock=time.monotonic, sleep=time.sleep):
    """Shut the VM down cleanly; fail naming the VM when it has not halted after ``timeout`` s."""
    task = client.call("Async.VM.clean_shutdown", vm_ref)
    try:
        deadline = clock() + timeout
        intervals = _poll_intervals()
        status = client.call("task.get_status", task)
        while status == "pending" and clock() < deadline:
            sleep(min(next(intervals), max(deadline - clock(), 0)))
            status = client.call("task.get_status", task)
        if status == "pending":
            try:
                client.call("task.cancel", task)
            except XapiError:  # a task xapi cannot cancel: the timeout is still what the user must hear
                pass
            raise XapiError("%s on pool %s did not shut down within %s s of a clean shutdown request (a guest "
                            "without PV drivers or ACPI, or a hung one); it was still running when this gave up. "
                            "Shut it down in the guest, or raise shutdown_timeout"
                            % (client.subject, client.pool, timeout), code="SHUTDOWN_TIMEOUT")
        if status != "success":
            details = client.call("task.get_error_info", task) or [status.upper()]
            raise XapiError(describe_failure(details, client.pool, client.subject), code=details[0])
    finally:
        try:
            client.call("task.destroy", task)
        except XapiError:  # the outcome above is what the user needs; tasks expire on their own
            pass


def ensure_power(client, vm_ref, record, state, timeout, check_mode=False):
    """Bring the VM to ``state`` (running|halted).  Returns ``(changed, power_state_after)``."""
    current = record.get("power_state")
    wanted = "Running" if state == "running" else "Halted"
    if current == wanted:
        return False, current
    if current not in ("Running", "Halted"):
        raise XapiError("%s on pool %s is %s; resume or unpause it in XenCenter or with xe first, this module "
                        "only starts halted VMs and stops running ones" % (client.subject, client.pool, current),
                        code="VM_BAD_POWER_STATE")
    if check_mode:
        return True, wanted
    if wanted == "Running":
        client.call("VM.start", vm_ref, False, False)
    else:
        clean_shutdown(client, vm_ref, timeout)
    return True, client.call("VM.get_power_state", vm_ref)
