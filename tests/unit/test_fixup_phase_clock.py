"""The per-phase seconds guest_fixup returns (``seconds``)."""

import time

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import PhaseClock


def test_phases_add_up_and_total_covers_them():
    clock = PhaseClock()
    with clock.phase("launch"):
        time.sleep(0.2)
    with clock.phase("initramfs"):
        time.sleep(0.1)
    with clock.phase("initramfs"):  # a phase met twice (two appliance launches) is summed
        time.sleep(0.1)
    seconds = clock.summary()
    assert seconds["launch"] == pytest.approx(0.2, abs=0.1)
    assert seconds["initramfs"] == pytest.approx(0.2, abs=0.1)
    assert seconds["total"] >= seconds["launch"] + seconds["initramfs"] - 0.1


def test_a_failing_phase_is_still_timed():
    clock = PhaseClock()
    with pytest.raises(ValueError):
        with clock.phase("bootloader"):
            time.sleep(0.1)
            raise ValueError("grub-install failed")
    assert clock.summary()["bootloader"] >= 0.1
