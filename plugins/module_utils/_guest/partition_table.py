# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read MBR/GPT partition tables and filesystem superblocks straight from a disk image.

Why not sfdisk/blkid/kpartx: the KVM hosts we run on may lack device-mapper and partition
scanning of loop devices, and parsing tool output ties us to one tool version. The on-disk
formats are small and stable, so we read them ourselves with nothing but the stdlib.

Offsets and sizes are bytes. Partition numbers follow Linux: primaries and GPT entries keep
their slot number (1..4 / 1..N), logical partitions inside an extended one count from 5.
"""

import binascii
import os
import stat
import struct
import uuid
from dataclasses import asdict, dataclass, field
from typing import List, Optional


class GuestError(Exception):
    """Base of every error raised while accessing or inspecting a guest disk."""


class PartitionTableError(GuestError):
    """The partition table is present but cannot be trusted (corrupt, truncated, looping)."""


SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
QCOW_MAGIC = b"QFI\xfb"

MBR_EXTENDED_TYPES = (0x05, 0x0F, 0x85)
MBR_GPT_PROTECTIVE = 0xEE
MBR_TYPE_LINUX_SWAP = 0x82
MBR_TYPE_LINUX = 0x83
MBR_TYPE_LINUX_LVM = 0x8E
MBR_TYPE_EFI = 0xEF

GPT_TYPE_EFI_SYSTEM = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_TYPE_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
GPT_TYPE_LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_TYPE_LINUX_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
GPT_TYPE_LINUX_LVM = "e6d6d379-f507-44c2-a23c-238f2a3df928"
GPT_TYPE_LINUX_ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"

# A chain of EBRs is a linked list on disk; a corrupt one could point back at itself.
MAX_LOGICAL_PARTITIONS = 128
# GPT allows any entry count, but real tables have 128; refuse absurd ones before reading.
MAX_GPT_ENTRIES_BYTES = 4 * 1024 * 1024

# Filesystem types mount(8) can mount; everything else is data we only identify.
MOUNTABLE_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat")


@dataclass
class Partition:
    number: int
    start: int
    size: int
    type: str  # MBR: "0x83"; GPT: type GUID (lowercase)
    bootable: bool = False
    scheme: str = "mbr"  # mbr | gpt
    extended: bool = False  # the MBR extended container itself (holds logicals, no data)
    logical: bool = False
    partuuid: str = ""  # as the kernel shows it: GPT unique GUID, MBR "<disk id>-<NN>"
    name: str = ""  # GPT partition name (PARTLABEL)

    @property
    def end(self):
        return self.start + self.size

    def as_dict(self):
        return asdict(self)


@dataclass
class FilesystemInfo:
    type: str  # ext2|ext3|ext4|xfs|btrfs|swap|vfat|ntfs|LVM2_member|crypto_LUKS
    uuid: str = ""
    label: str = ""

    @property
    def mountable(self):
        return self.type in MOUNTABLE_FILESYSTEMS

    def as_dict(self):
        return asdict(self)


@dataclass
class DiskLayout:
    path: str
    size: int
    scheme: str  # mbr | gpt | none
    partitions: List[Partition] = field(default_factory=list)
    # Set when the disk has no partition table but a filesystem starts at byte 0 (PV guests
    # often get "xvda1" handed over as a whole disk).
    bare_filesystem: Optional[FilesystemInfo] = None
    disk_id: str = ""  # MBR disk signature (8 hex digits) or GPT disk GUID
    sector_size: int = SECTOR

    def partition(self, number):
        for part in self.partitions:
            if part.number == number:
                return part
        return None

    def data_partitions(self):
        """Partitions that can hold data, i.e. without the extended container."""
        return [p for p in self.partitions if not p.extended and p.size > 0]

    def as_dict(self):
        data = asdict(self)
        data["bare_filesystem"] = self.bare_filesystem.as_dict() if self.bare_filesystem else None
        return data


# --------------------------------------------------------------------------- low-level I/O


def _disk_size(fobj):
    # Block devices report st_size 0; seeking to the end works for both files and devices.
    return fobj.seek(0, os.SEEK_END)


def _read_at(fobj, offset, length):
    fobj.seek(offset)
    data = fobj.read(length)
    return data if data is not None else b""


def _open_disk(path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise GuestError("cannot open disk image %s: %s" % (path, exc.strerror or exc))


def _guid(raw):
    # GPT stores the first three GUID fields little-endian ("mixed endian").
    return str(uuid.UUID(bytes_le=bytes(raw)))


def _crc32(data):
    return binascii.crc32(data) & 0xFFFFFFFF


# --------------------------------------------------------------------------- MBR


def _mbr_entries(sector):
    """The four 16-byte slots of an MBR or EBR: (status, type, lba_start, lba_count)."""
    entries = []
    for slot in range(4):
        raw = sector[446 + 16 * slot: 446 + 16 * (slot + 1)]
        status, ptype, lba, count = struct.unpack("<B3xB3xII", raw)
        entries.append((status, ptype, lba, count))
    return entries


def _looks_like_fat_or_ntfs_boot_sector(sector):
    # FAT and NTFS boot sectors also end in 55 AA; without this check a bare vfat disk would
    # be misread as an MBR whose "entries" are boot code.
    if sector[3:11] == b"NTFS    ":
        return True
    return sector[54:59] == b"FAT12" or sector[54:59] == b"FAT16" or sector[82:87] == b"FAT32"


def _is_plausible_mbr(sector):
    if sector[510:512] != MBR_SIGNATURE or _looks_like_fat_or_ntfs_boot_sector(sector):
        return False
    used = 0
    for status, ptype, lba, count in _mbr_entries(sector):
        if status not in (0x00, 0x80):
            return False
        if ptype == 0:
            continue
        # A slot pointing at sector 0 would overlap the MBR itself: that is boot code or a
        # boot sector, not a table. (A slot running past the end of a truncated image is still
        # a table; that must fail loudly later rather than read as "no partitions".)
        if lba == 0 or count == 0:
            return False
        used += 1
    return used > 0


def _read_logical_partitions(fobj, extended, disk_id, disk_bytes):
    """Follow the EBR chain of an extended partition; logicals are numbered from 5."""
    partitions = []
    ext_start = extended.start // SECTOR
    next_ebr = 0  # relative to the extended partition start
    seen = set()
    number = 5
    while True:
        ebr_lba = ext_start + next_ebr
        if ebr_lba in seen:
            raise PartitionTableError(
                "%s: the extended partition's EBR chain loops back to sector %d" % (fobj.name, ebr_lba))
        if len(seen) >= MAX_LOGICAL_PARTITIONS:
            raise PartitionTableError(
                "%s: more than %d logical partitions; the EBR chain is corrupt"
                % (fobj.name, MAX_LOGICAL_PARTITIONS))
        seen.add(ebr_lba)
        if ebr_lba * SECTOR + SECTOR > disk_bytes:
            raise PartitionTableError(
                "%s: EBR at sector %d lies beyond the end of the disk" % (fobj.name, ebr_lba))
        sector = _read_at(fobj, ebr_lba * SECTOR, SECTOR)
        if sector[510:512] != MBR_SIGNATURE:
            # An empty extended partition has a zeroed first EBR; that just means no logicals.
            if next_ebr == 0:
                return partitions
            raise PartitionTableError(
                "%s: EBR at sector %d has no 55AA signature" % (fobj.name, ebr_lba))
        entries = _mbr_entries(sector)
        status, ptype, lba, count = entries[0]
        if ptype != 0 and count:
            partitions.append(Partition(
                number=number,
                # The logical's start is relative to its own EBR.
                start=(ebr_lba + lba) * SECTOR,
                size=count * SECTOR,
                type="0x%02x" % ptype,
                bootable=status == 0x80,
                scheme="mbr",
                logical=True,
                partuuid="%s-%02d" % (disk_id, number) if disk_id else "",
            ))
            number += 1
        _link_status, link_type, link_lba, _link_count = entries[1]
        if link_type not in MBR_EXTENDED_TYPES or link_lba == 0:
            return partitions
        next_ebr = link_lba  # the link is relative to the extended partition start


def _read_mbr(fobj, sector0, disk_bytes):
    disk_id = "%08x" % struct.unpack_from("<I", sector0, 440)[0]
    if disk_id == "00000000":
        disk_id = ""  # the kernel has no PARTUUID for a zero signature
    partitions = []
    extended = None
    for slot, (status, ptype, lba, count) in enumerate(_mbr_entries(sector0), start=1):
        if ptype == 0 or count == 0:
            continue
        part = Partition(
            number=slot,
            start=lba * SECTOR,
            size=count * SECTOR,
            type="0x%02x" % ptype,
            bootable=status == 0x80,
            scheme="mbr",
            extended=ptype in MBR_EXTENDED_TYPES,
            partuuid="%s-%02d" % (disk_id, slot) if disk_id else "",
        )
        partitions.append(part)
        if part.extended:
            if extended is not None:
                raise PartitionTableError("%s: MBR has more than one extended partition" % fobj.name)
            extended = part
    if extended is not None:
        partitions.extend(_read_logical_partitions(fobj, extended, disk_id, disk_bytes))
    return DiskLayout(path=fobj.name, size=disk_bytes, scheme="mbr", partitions=partitions,
                      disk_id=disk_id)


# --------------------------------------------------------------------------- GPT


_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")


def _parse_gpt_header(raw, where):
    """Unpack and CRC-check a GPT header; returns a dict or raises PartitionTableError."""
    (signature, revision, header_size, header_crc, _reserved, current_lba, backup_lba,
     first_usable, last_usable, disk_guid, entries_lba, entry_count, entry_size,
     entries_crc) = _GPT_HEADER.unpack_from(raw, 0)
    if signature != GPT_SIGNATURE:
        raise PartitionTableError("%s: no GPT signature" % where)
    if header_size < _GPT_HEADER.size or header_size > len(raw):
        raise PartitionTableError("%s: GPT header size %d is invalid" % (where, header_size))
    # The CRC covers header_size bytes with the CRC field itself zeroed.
    check = bytearray(raw[:header_size])
    check[16:20] = b"\0\0\0\0"
    if _crc32(bytes(check)) != header_crc:
        raise PartitionTableError("%s: GPT header CRC mismatch (the header is corrupt)" % where)
    if entry_size < 128 or entry_size % 8 or entry_count * entry_size > MAX_GPT_ENTRIES_BYTES:
        raise PartitionTableError(
            "%s: GPT entry array %d x %d bytes is invalid" % (where, entry_count, entry_size))
    return {
        "revision": revision, "current_lba": current_lba, "backup_lba": backup_lba,
        "first_usable": first_usable, "last_usable": last_usable,
        "disk_guid": _guid(disk_guid), "entries_lba": entries_lba,
        "entry_count": entry_count, "entry_size": entry_size, "entries_crc": entries_crc,
    }


def _read_gpt_entries(fobj, header, sector_size, where):
    length = header["entry_count"] * header["entry_size"]
    raw = _read_at(fobj, header["entries_lba"] * sector_size, length)
    if len(raw) != length:
        raise PartitionTableError("%s: GPT entry array is truncated" % where)
    if _crc32(raw) != header["entries_crc"]:
        raise PartitionTableError("%s: GPT partition entries CRC mismatch" % where)
    partitions = []
    for index in range(header["entry_count"]):
        entry = raw[index * header["entry_size"]: (index + 1) * header["entry_size"]]
        type_guid = entry[0:16]
        if type_guid == b"\0" * 16:
            continue  # unused slot; numbering still counts it, as Linux does
        first_lba, last_lba, attributes = struct.unpack_from("<QQQ", entry, 32)
        if last_lba < first_lba:
            raise PartitionTableError(
                "%s: GPT entry %d ends before it starts" % (where, index + 1))
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        partitions.append(Partition(
            number=index + 1,
            start=first_lba * sector_size,
            size=(last_lba - first_lba + 1) * sector_size,
            type=_guid(type_guid),
            # Attribute bit 2 is "legacy BIOS bootable", GPT's equivalent of the 0x80 flag.
            bootable=bool(attributes & 0x4),
            scheme="gpt",
            partuuid=_guid(entry[16:32]),
            name=name,
        ))
    return partitions


def _read_gpt(fobj, disk_bytes):
    # Images are nearly always 512-byte-sector; a 4Kn image keeps its header at byte 4096.
    errors = []
    for sector_size in (512, 4096):
        if disk_bytes < 2 * sector_size:
            continue
        primary = _read_at(fobj, sector_size, sector_size)
        if primary[:8] != GPT_SIGNATURE:
            continue
        where = "%s (primary GPT)" % fobj.name
        try:
            header = _parse_gpt_header(primary, where)
            partitions = _read_gpt_entries(fobj, header, sector_size, where)
        except PartitionTableError as exc:
            errors.append(str(exc))
            # The backup header in the last sector exists exactly for a damaged primary.
            backup_lba = disk_bytes // sector_size - 1
            where = "%s (backup GPT)" % fobj.name
            try:
                header = _parse_gpt_header(_read_at(fobj, backup_lba * sector_size, sector_size),
                                           where)
                partitions = _read_gpt_entries(fobj, header, sector_size, where)
            except PartitionTableError as exc2:
                errors.append(str(exc2))
                raise PartitionTableError("; ".join(errors))
        return DiskLayout(path=fobj.name, size=disk_bytes, scheme="gpt", partitions=partitions,
                          disk_id=header["disk_guid"], sector_size=sector_size)
    raise PartitionTableError(
        "%s: protective MBR announces GPT but no GPT header was found" % fobj.name)


# --------------------------------------------------------------------------- superblocks


def _ext_variant(sb):
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    # Same rule as libblkid: any feature ext3 does not know makes it ext4.
    ext3_incompat = 0x0002 | 0x0004 | 0x0010  # filetype, recover, meta_bg
    ext3_ro_compat = 0x0001 | 0x0002 | 0x0004  # sparse_super, large_file, btree_dir
    if incompat & ~ext3_incompat or ro_compat & ~ext3_ro_compat:
        return "ext4"
    if compat & 0x0004:  # has_journal
        return "ext3"
    return "ext2"


def _probe_ext(fobj, offset):
    sb = _read_at(fobj, offset + 1024, 1024)
    if len(sb) < 0x88 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    if incompat & 0x0008:  # journal_dev: an external journal, not a mountable filesystem
        return FilesystemInfo("jbd", _uuid_str(sb[0x68:0x78]), _cstr(sb[0x78:0x88]))
    return FilesystemInfo(_ext_variant(sb), _uuid_str(sb[0x68:0x78]), _cstr(sb[0x78:0x88]))


def _probe_xfs(fobj, offset):
    sb = _read_at(fobj, offset, 120)
    if sb[:4] != b"XFSB":
        return None
    return FilesystemInfo("xfs", _uuid_str(sb[32:48]), _cstr(sb[108:120]))


def _probe_btrfs(fobj, offset):
    sb = _read_at(fobj, offset + 0x10000, 0x12B + 256)
    if sb[0x40:0x48] != b"_BHRfS_M":
        return None
    return FilesystemInfo("btrfs", _uuid_str(sb[0x20:0x30]), _cstr(sb[0x12B:0x12B + 256]))


def _probe_swap(fobj, offset):
    # The signature sits at the end of the first page; pages other than 4 KiB exist on
    # other architectures, a swap made there would still be in use by the same guest.
    for page in (4096, 8192, 16384, 65536):
        magic = _read_at(fobj, offset + page - 10, 10)
        if magic in (b"SWAPSPACE2", b"SWAP-SPACE"):
            header = _read_at(fobj, offset + 1024, 44)
            if magic == b"SWAPSPACE2" and len(header) == 44:
                return FilesystemInfo("swap", _uuid_str(header[12:28]), _cstr(header[28:44]))
            return FilesystemInfo("swap")
    return None


def _probe_fat(fobj, offset):
    bs = _read_at(fobj, offset, 512)
    if len(bs) < 512 or bs[510:512] != MBR_SIGNATURE or bs[0] not in (0xEB, 0xE9):
        return None
    bytes_per_sector = struct.unpack_from("<H", bs, 11)[0]
    if bytes_per_sector not in (512, 1024, 2048, 4096) or bs[16] == 0:
        return None
    if bs[82:87] == b"FAT32":
        serial, label = struct.unpack_from("<I", bs, 67)[0], bs[71:82]
    elif bs[54:57] == b"FAT":
        serial, label = struct.unpack_from("<I", bs, 39)[0], bs[43:54]
    else:
        return None
    label = label.decode("ascii", "replace").rstrip(" \0")
    if label == "NO NAME":
        label = ""
    return FilesystemInfo("vfat", "%04X-%04X" % (serial >> 16, serial & 0xFFFF), label)


def _probe_ntfs(fobj, offset):
    bs = _read_at(fobj, offset, 0x50)
    if bs[3:11] != b"NTFS    ":
        return None
    return FilesystemInfo("ntfs", "%016X" % struct.unpack_from("<Q", bs, 0x48)[0])


def _probe_lvm_pv(fobj, offset):
    # The PV label may sit in any of the first four sectors.
    for sector in range(4):
        raw = _read_at(fobj, offset + sector * SECTOR, SECTOR)
        if raw[0:8] == b"LABELONE" and raw[24:32] == b"LVM2 001":
            header_offset = struct.unpack_from("<I", raw, 20)[0]
            pv_uuid = raw[header_offset:header_offset + 32].decode("ascii", "replace")
            if len(pv_uuid) == 32:
                # LVM shows its 32-char ids as 6-4-4-4-4-4-6 groups.
                cuts = (0, 6, 10, 14, 18, 22, 26, 32)
                pv_uuid = "-".join(pv_uuid[a:b] for a, b in zip(cuts, cuts[1:]))
            return FilesystemInfo("LVM2_member", pv_uuid)
    return None


def _probe_luks(fobj, offset):
    hdr = _read_at(fobj, offset, 208)
    if hdr[:6] != b"LUKS\xba\xbe":
        return None
    return FilesystemInfo("crypto_LUKS", _cstr(hdr[168:208]))


def _uuid_str(raw):
    if not raw.strip(b"\0"):
        return ""
    return str(uuid.UUID(bytes=bytes(raw)))


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


# Order matters: LVM/LUKS headers at the start win over stale superblocks further in, and
# swap is checked before ext because mkswap leaves sector 2 (ext's superblock) alone.
_PROBES = (_probe_lvm_pv, _probe_luks, _probe_xfs, _probe_fat, _probe_ntfs, _probe_swap,
           _probe_ext, _probe_btrfs)


def probe_filesystem(path, offset=0):
    """Identify the filesystem starting at ``offset`` of ``path``; None when unknown.

    Returns a FilesystemInfo with the type (ext2/ext3/ext4/xfs/btrfs/swap/vfat/ntfs/
    LVM2_member/crypto_LUKS), its UUID and label as blkid would print them.
    """
    with _open_disk(path) as fobj:
        return _probe_filesystem_in(fobj, offset)


def _probe_filesystem_in(fobj, offset):
    for probe in _PROBES:
        info = probe(fobj, offset)
        if info is not None:
            return info
    return None


def filesystem_type(path, offset=0):
    """Just the filesystem type name at ``offset`` (or None)."""
    info = probe_filesystem(path, offset)
    return info.type if info else None


# --------------------------------------------------------------------------- public API


def read_partition_table(path):
    """Read the partition table (or detect a bare filesystem) of a raw disk image or device.

    Raises GuestError when the disk cannot be read or is not a raw image, and
    PartitionTableError when a table is present but corrupt.
    """
    with _open_disk(path) as fobj:
        disk_bytes = _disk_size(fobj)
        head = _read_at(fobj, 0, SECTOR)
        if head[:4] == QCOW_MAGIC:
            raise GuestError(
                "%s is a qcow2 image; only raw images can be mapped (convert it with "
                "qemu-img convert -O raw first)" % path)
        if len(head) < SECTOR:
            raise GuestError("%s is too small to be a disk (%d bytes)" % (path, disk_bytes))
        entries = _mbr_entries(head)
        if head[510:512] == MBR_SIGNATURE and any(e[1] == MBR_GPT_PROTECTIVE for e in entries):
            return _read_gpt(fobj, disk_bytes)
        if _is_plausible_mbr(head):
            return _read_mbr(fobj, head, disk_bytes)
        bare = _probe_filesystem_in(fobj, 0)
        if bare is None and head[510:512] == MBR_SIGNATURE and not any(head[446:510]):
            # A freshly written, empty DOS label.
            return _read_mbr(fobj, head, disk_bytes)
        return DiskLayout(path=path, size=disk_bytes, scheme="none", bare_filesystem=bare)


def mbr_has_boot_code(path):
    """True when the first 440 bytes (the MBR boot code area) are not all zero.

    Xen PV guests boot through pygrub on the host, so their MBR has never had a boot loader.
    """
    with _open_disk(path) as fobj:
        code = _read_at(fobj, 0, 440)
    return any(code)


def mbr_boot_loader(path):
    """``grub`` when the MBR boot code is GRUB's boot.img, ``other`` for other boot code,
    ``None`` for none (a PV guest's empty MBR)."""
    with _open_disk(path) as fobj:
        code = _read_at(fobj, 0, 440)
    if not any(code):
        return None
    # GRUB 2 boot.img's messages are its only stable mark (GRUB legacy's stage1 has no "Hard Disk")
    return "grub" if b"GRUB \0Geom\0Hard Disk\0Read" in code else "other"


def is_block_device(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
