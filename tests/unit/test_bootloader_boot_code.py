"""Which BIOS boot code the bootloader fixup rewrites: none for an HVM guest's own GRUB 2."""

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups.bootloader import (
    GRUB_MARKER, boot_code_needs_writing)
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import mbr_boot_loader

from fake_tree import fake_guest_root

# The message strings of GRUB 2's boot.img and of GRUB legacy's stage1, where they sit in the MBR.
GRUB2_STRINGS = b"GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n"
LEGACY_STRINGS = b"GRUB \0Geom\0Read\0 Error\0"


def _mbr(tmp_path, code):
    image = tmp_path / "disk.raw"
    sector = bytearray(512)
    sector[:len(code)] = code
    sector[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(sector) + bytes(1024 * 1024))
    return str(image)


@pytest.mark.parametrize("code, expected", [
    (b"\xeb\x63\x90" + bytes(0x17d) + GRUB2_STRINGS, "grub"),
    (b"\xeb\x48\x90" + bytes(0x17d) + LEGACY_STRINGS, "other"),
    (b"\xfa\x33\xc0\x8e\xd0\xbc\x00\x7c" + b"SYSLINUX", "other"),
    (b"", None),
])
def test_the_mbr_boot_loader_is_recognised(tmp_path, code, expected):
    assert mbr_boot_loader(_mbr(tmp_path, code)) == expected


def _guest(tmp_path, files=None):
    return GuestEditor(fake_guest_root(tmp_path / "root", files or {}, directories=("/var/log",)))


def test_a_pv_guest_without_boot_code_gets_it(tmp_path):
    assert boot_code_needs_writing(_guest(tmp_path), {"mbr_boot_code": False})


def test_an_hvm_guests_own_grub_is_kept(tmp_path):
    facts = {"mbr_boot_code": True, "mbr_boot_loader": "grub", "grub_pc_core": True}
    assert not boot_code_needs_writing(_guest(tmp_path), facts)


@pytest.mark.parametrize("facts", [
    {"mbr_boot_code": True, "mbr_boot_loader": "other", "grub_pc_core": True},   # foreign boot code
    {"mbr_boot_code": True, "mbr_boot_loader": "grub", "grub_pc_core": False},   # no core image of its own
])
def test_other_boot_code_is_replaced_once(tmp_path, facts):
    assert boot_code_needs_writing(_guest(tmp_path), facts)
    written = _guest(tmp_path, {GRUB_MARKER: "grub-install --target=i386-pc (hd0)\n"})
    assert not boot_code_needs_writing(written, facts)
