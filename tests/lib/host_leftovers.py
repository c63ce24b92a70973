"""What a guest_fixup run may have left on the host for one test's own images.

Tests run beside others that mount guests too (Molecule, another lane of ``make test``), so the
checks look only at what belongs to the images of the test: loop devices backing them, and the
run records GuestMount keeps (``/run/xen2kvm/guest-*.json``) until every mount, loop device and
process of a run is released -- a record naming one of the images means something was left.
"""
from __future__ import annotations

import glob
import json
import os

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.loop import loops_for_file
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import MOUNT_BASES


def run_records_naming(images):
    wanted = {os.path.realpath(str(image)) for image in images}
    found = []
    for base in MOUNT_BASES:
        for path in glob.glob(os.path.join(base, "guest-*.json")):
            try:
                with open(path) as handle:
                    disks = json.load(handle).get("disks", [])
            except (OSError, ValueError, AttributeError):
                continue
            if wanted & {os.path.realpath(disk) for disk in disks}:
                found.append(path)
    return found


def held_on_host(images):
    """Loop devices backing ``images`` and run records naming them; empty when all is released."""
    held = [loop["device"] for image in images for loop in loops_for_file(str(image))]
    return held + run_records_naming(images)
