"""Partition table and superblock parsing, from hand-built bytes and from sfdisk/mkfs images."""

import binascii
import json
import shutil
import struct
import subprocess
import uuid

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import (
    GPT_TYPE_EFI_SYSTEM,
    GPT_TYPE_LINUX_FS,
    GPT_TYPE_LINUX_SWAP,
    GuestError,
    PartitionTableError,
    filesystem_type,
    mbr_has_boot_code,
    probe_filesystem,
    read_partition_table,
)

MiB = 1024 * 1024
S = 512


# --------------------------------------------------------------------------- builders


def mbr_entry(ptype, lba, count, bootable=False):
    return struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\0" * 3, ptype, b"\0" * 3,
                       lba, count)


def boot_sector(entries, disk_sig=0, code=b""):
    sector = bytearray(512)
    sector[: len(code)] = code
    struct.pack_into("<I", sector, 440, disk_sig)
    for slot, entry in enumerate(entries):
        sector[446 + 16 * slot: 446 + 16 * (slot + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def write_image(path, size, chunks):
    """Sparse image of ``size`` bytes with ``chunks`` {offset: bytes} written in."""
    with open(path, "wb") as fobj:
        fobj.truncate(size)
        for offset, data in chunks.items():
            fobj.seek(offset)
            fobj.write(data)
    return str(path)


def gpt_images(entries, disk_sectors, disk_guid=None):
    """Primary + backup GPT structures: {offset: bytes} for write_image()."""
    disk_guid = disk_guid or uuid.uuid4()
    raw_entries = bytearray(128 * 128)
    for index, (type_guid, part_guid, first, last, attrs, name) in enumerate(entries):
        entry = (uuid.UUID(type_guid).bytes_le + uuid.UUID(part_guid).bytes_le
                 + struct.pack("<QQQ", first, last, attrs)
                 + name.encode("utf-16-le").ljust(72, b"\0"))
        raw_entries[index * 128:(index + 1) * 128] = entry
    entries_crc = binascii.crc32(bytes(raw_entries)) & 0xFFFFFFFF

    def header(current, backup, entries_lba):
        fields = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, current,
                             backup, 34, disk_sectors - 34, disk_guid.bytes_le, entries_lba,
                             128, 128, entries_crc)
        crc = binascii.crc32(fields) & 0xFFFFFFFF
        fields = fields[:16] + struct.pack("<I", crc) + fields[20:]
        return fields.ljust(512, b"\0")

    last = disk_sectors - 1
    protective = boot_sector([mbr_entry(0xEE, 1, min(disk_sectors - 1, 0xFFFFFFFF))])
    return {
        0: protective,
        S: header(1, last, 2),
        2 * S: bytes(raw_entries),
        (last - 32) * S: bytes(raw_entries),
        last * S: header(last, 1, last - 32),
    }


def ext_superblock(magic=True, uuid_bytes=b"\x11" * 16, label=b"rootfs", compat=0x4,
                   incompat=0x2 | 0x40, ro_compat=0x1):
    sb = bytearray(1024)
    if magic:
        sb[0x38:0x3A] = b"\x53\xef"
    struct.pack_into("<III", sb, 0x5C, compat, incompat, ro_compat)
    sb[0x68:0x78] = uuid_bytes
    sb[0x78:0x78 + len(label)] = label
    return bytes(sb)


def fat_boot_sector(fat32=True, serial=0x1234ABCD, label=b"EFI        "):
    bs = bytearray(512)
    bs[0:3] = b"\xeb\x58\x90"
    bs[3:11] = b"mkfs.fat"
    struct.pack_into("<HB", bs, 11, 512, 1)
    bs[16] = 2
    if fat32:
        struct.pack_into("<I", bs, 67, serial)
        bs[71:82] = label
        bs[82:90] = b"FAT32   "
    else:
        struct.pack_into("<I", bs, 39, serial)
        bs[43:54] = label
        bs[54:62] = b"FAT16   "
    bs[510:512] = b"\x55\xaa"
    return bytes(bs)


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip("%s is not installed" % tool)


def sfdisk(image, script):
    need("sfdisk")
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
                   input=script, universal_newlines=True, check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sfdisk_json(image):
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out)["partitiontable"]


# --------------------------------------------------------------------------- hand-built MBR


def test_mbr_primary_extended_and_logical(tmp_path):
    mbr = boot_sector([
        mbr_entry(0x83, 2048, 2048, bootable=True),
        mbr_entry(0x05, 4096, 8192),
    ], disk_sig=0xDEADBEEF, code=b"\xeb\x63\x90")
    ebr1 = boot_sector([mbr_entry(0x83, 63, 1000), mbr_entry(0x05, 2048, 4096)])
    ebr2 = boot_sector([mbr_entry(0x82, 63, 500)])
    img = write_image(tmp_path / "d.img", 16 * MiB, {0: mbr, 4096 * S: ebr1, 6144 * S: ebr2})

    layout = read_partition_table(img)
    assert layout.scheme == "mbr"
    assert layout.disk_id == "deadbeef"
    assert [p.number for p in layout.partitions] == [1, 2, 5, 6]
    p1, p2, p5, p6 = layout.partitions
    assert (p1.start, p1.size, p1.type, p1.bootable) == (2048 * S, 2048 * S, "0x83", True)
    assert p2.extended and not p2.bootable
    assert (p5.start, p5.size, p5.logical) == ((4096 + 63) * S, 1000 * S, True)
    # The next EBR's position is relative to the extended partition, its logical to the EBR.
    assert (p6.start, p6.size, p6.type) == ((6144 + 63) * S, 500 * S, "0x82")
    assert p1.partuuid == "deadbeef-01" and p6.partuuid == "deadbeef-06"
    assert [p.number for p in layout.data_partitions()] == [1, 5, 6]
    assert layout.as_dict()["partitions"][0]["number"] == 1
    assert mbr_has_boot_code(img)


def test_mbr_ebr_chain_loop_is_refused(tmp_path):
    mbr = boot_sector([mbr_entry(0x05, 2048, 8192)])
    ebr = boot_sector([mbr_entry(0x83, 63, 100), mbr_entry(0x05, 0 + 1, 100)])
    ebr_back = boot_sector([mbr_entry(0x83, 63, 100), mbr_entry(0x05, 1, 100)])
    # Second EBR (at ext+1) links to itself.
    img = write_image(tmp_path / "d.img", 8 * MiB, {0: mbr, 2048 * S: ebr, 2049 * S: ebr_back})
    with pytest.raises(PartitionTableError, match="loops"):
        read_partition_table(img)


def test_empty_extended_partition_has_no_logicals(tmp_path):
    img = write_image(tmp_path / "d.img", 8 * MiB,
                      {0: boot_sector([mbr_entry(0x83, 2048, 100), mbr_entry(0x05, 4096, 100)])})
    layout = read_partition_table(img)
    assert [p.number for p in layout.partitions] == [1, 2]


def test_pv_disk_without_boot_code(tmp_path):
    img = write_image(tmp_path / "d.img", 4 * MiB, {0: boot_sector([mbr_entry(0x83, 2048, 4096)])})
    assert not mbr_has_boot_code(img)
    assert read_partition_table(img).partitions[0].partuuid == ""  # zero disk signature


def test_empty_dos_label(tmp_path):
    img = write_image(tmp_path / "d.img", 4 * MiB, {0: boot_sector([])})
    layout = read_partition_table(img)
    assert layout.scheme == "mbr" and layout.partitions == []


def test_qcow2_is_refused(tmp_path):
    img = write_image(tmp_path / "d.qcow2", 1 * MiB, {0: b"QFI\xfb\0\0\0\3"})
    with pytest.raises(GuestError, match="qcow2"):
        read_partition_table(img)


def test_missing_image(tmp_path):
    with pytest.raises(GuestError, match="cannot open"):
        read_partition_table(str(tmp_path / "nope.img"))


def test_unknown_content(tmp_path):
    img = write_image(tmp_path / "d.img", 1 * MiB, {})
    layout = read_partition_table(img)
    assert layout.scheme == "none" and layout.bare_filesystem is None


# --------------------------------------------------------------------------- hand-built GPT


GUIDS = ["11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-aaaaaaaaaaaa"]


def test_gpt_entries_and_crc(tmp_path):
    sectors = 64 * MiB // S
    disk_guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    chunks = gpt_images([
        (GPT_TYPE_EFI_SYSTEM, GUIDS[0], 2048, 4095, 0, "EFI system"),
        (GPT_TYPE_LINUX_FS, GUIDS[1], 4096, sectors - 2048, 0x4, "root"),
    ], sectors, disk_guid)
    img = write_image(tmp_path / "g.img", sectors * S, chunks)
    layout = read_partition_table(img)
    assert layout.scheme == "gpt"
    assert layout.disk_id == str(disk_guid)
    esp, root = layout.partitions
    assert (esp.number, esp.start, esp.size, esp.type) == (1, 2048 * S, 2048 * S,
                                                           GPT_TYPE_EFI_SYSTEM)
    assert esp.partuuid == GUIDS[0] and esp.name == "EFI system" and not esp.bootable
    assert root.bootable and root.name == "root" and root.type == GPT_TYPE_LINUX_FS


def test_gpt_numbering_keeps_empty_slots(tmp_path):
    sectors = 16 * MiB // S
    chunks = gpt_images([
        ("00000000-0000-0000-0000-000000000000", GUIDS[0], 0, 0, 0, ""),
        (GPT_TYPE_LINUX_SWAP, GUIDS[1], 2048, 4095, 0, ""),
    ], sectors)
    layout = read_partition_table(write_image(tmp_path / "g.img", sectors * S, chunks))
    assert [p.number for p in layout.partitions] == [2]


def test_gpt_corrupt_primary_falls_back_to_backup(tmp_path):
    sectors = 16 * MiB // S
    chunks = gpt_images([(GPT_TYPE_LINUX_FS, GUIDS[0], 2048, 8191, 0, "r")], sectors)
    header = bytearray(chunks[S])
    header[40] ^= 0xFF  # first_usable: CRC no longer matches
    chunks[S] = bytes(header)
    layout = read_partition_table(write_image(tmp_path / "g.img", sectors * S, chunks))
    assert layout.partitions[0].start == 2048 * S


def test_gpt_corrupt_primary_and_backup_is_an_error(tmp_path):
    sectors = 16 * MiB // S
    chunks = gpt_images([(GPT_TYPE_LINUX_FS, GUIDS[0], 2048, 8191, 0, "r")], sectors)
    for key in (S, (sectors - 1) * S):
        header = bytearray(chunks[key])
        header[40] ^= 0xFF
        chunks[key] = bytes(header)
    with pytest.raises(PartitionTableError, match="CRC"):
        read_partition_table(write_image(tmp_path / "g.img", sectors * S, chunks))


def test_gpt_corrupt_entries_is_detected(tmp_path):
    sectors = 16 * MiB // S
    chunks = gpt_images([(GPT_TYPE_LINUX_FS, GUIDS[0], 2048, 8191, 0, "r")], sectors)
    chunks[2 * S] = b"\x01" + chunks[2 * S][1:]
    # The backup entries are fine: the backup wins.
    layout = read_partition_table(write_image(tmp_path / "g.img", sectors * S, chunks))
    assert layout.partitions[0].type == GPT_TYPE_LINUX_FS
    chunks[(sectors - 33) * S] = chunks[2 * S]
    with pytest.raises(PartitionTableError, match="entries CRC"):
        read_partition_table(write_image(tmp_path / "g2.img", sectors * S, chunks))


def test_protective_mbr_without_gpt_header(tmp_path):
    img = write_image(tmp_path / "g.img", 4 * MiB, {0: boot_sector([mbr_entry(0xEE, 1, 8191)])})
    with pytest.raises(PartitionTableError, match="no GPT header"):
        read_partition_table(img)


# --------------------------------------------------------------------------- superblocks


def test_bare_ext4_from_bytes(tmp_path):
    uid = uuid.UUID("a1b2c3d4-0000-4000-8000-123456789abc")
    img = write_image(tmp_path / "e.img", 4 * MiB, {1024: ext_superblock(uuid_bytes=uid.bytes)})
    layout = read_partition_table(img)
    assert layout.scheme == "none"
    assert layout.bare_filesystem.type == "ext4"
    assert layout.bare_filesystem.uuid == str(uid)
    assert layout.bare_filesystem.label == "rootfs"
    assert not mbr_has_boot_code(img)


@pytest.mark.parametrize("compat,incompat,ro_compat,expected", [
    (0, 0x2, 0x1, "ext2"),
    (0x4, 0x2, 0x3, "ext3"),
    (0x4, 0x2 | 0x40, 0x1, "ext4"),  # extents
    (0x4, 0x2, 0x1 | 0x400, "ext4"),  # metadata_csum
])
def test_ext_variants(tmp_path, compat, incompat, ro_compat, expected):
    sb = ext_superblock(compat=compat, incompat=incompat, ro_compat=ro_compat)
    img = write_image(tmp_path / "e.img", 2 * MiB, {1024: sb})
    assert filesystem_type(img) == expected


def test_xfs_btrfs_swap_lvm_luks_from_bytes(tmp_path):
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    xfs = bytearray(512)
    xfs[0:4] = b"XFSB"
    xfs[32:48] = uid.bytes
    xfs[108:114] = b"xfsroot"[:6]
    btrfs = bytearray(0x12B + 256)
    btrfs[0x20:0x30] = uid.bytes
    btrfs[0x40:0x48] = b"_BHRfS_M"
    btrfs[0x12B:0x12B + 4] = b"data"
    swap_header = bytearray(44)
    swap_header[12:28] = uid.bytes
    swap_header[28:32] = b"swp1"
    lvm = bytearray(512)
    lvm[0:8] = b"LABELONE"
    struct.pack_into("<I", lvm, 20, 32)
    lvm[24:32] = b"LVM2 001"
    lvm[32:64] = b"AbCdEf0123456789AbCdEf0123456789"
    luks = bytearray(208)
    luks[0:6] = b"LUKS\xba\xbe"
    luks[168:168 + 36] = str(uid).encode()

    base = 0
    chunks = {}
    offsets = {}
    for name, data, at in (("xfs", xfs, 0), ("btrfs", btrfs, 0x10000),
                           ("swap", swap_header, 1024), ("lvm", lvm, 512), ("luks", luks, 0)):
        offsets[name] = base
        chunks[base + at] = bytes(data)
        base += 1 * MiB
    chunks[offsets["swap"] + 4086] = b"SWAPSPACE2"
    img = write_image(tmp_path / "fs.img", base, chunks)

    assert probe_filesystem(img, offsets["xfs"]).as_dict() == {
        "type": "xfs", "uuid": str(uid), "label": "xfsroo"}
    assert probe_filesystem(img, offsets["btrfs"]).as_dict() == {
        "type": "btrfs", "uuid": str(uid), "label": "data"}
    assert probe_filesystem(img, offsets["swap"]).as_dict() == {
        "type": "swap", "uuid": str(uid), "label": "swp1"}
    lvm_info = probe_filesystem(img, offsets["lvm"])
    assert lvm_info.type == "LVM2_member"
    assert lvm_info.uuid == "AbCdEf-0123-4567-89Ab-CdEf-0123-456789"
    assert probe_filesystem(img, offsets["luks"]).as_dict() == {
        "type": "crypto_LUKS", "uuid": str(uid), "label": ""}
    assert probe_filesystem(img, offsets["xfs"]).mountable
    assert not probe_filesystem(img, offsets["lvm"]).mountable


def test_fat_boot_sectors(tmp_path):
    img = write_image(tmp_path / "f.img", 2 * MiB, {0: fat_boot_sector(), 1 * MiB:
                                                    fat_boot_sector(False, 0xCAFE0001,
                                                                    b"NO NAME    ")})
    assert probe_filesystem(img, 0).as_dict() == {"type": "vfat", "uuid": "1234-ABCD",
                                                  "label": "EFI"}
    assert probe_filesystem(img, 1 * MiB).as_dict() == {"type": "vfat", "uuid": "CAFE-0001",
                                                        "label": ""}
    # A bare FAT disk ends in 55 AA too, but is not a partition table.
    layout = read_partition_table(img)
    assert layout.scheme == "none" and layout.bare_filesystem.type == "vfat"


def test_bare_xfs_disk(tmp_path):
    img = write_image(tmp_path / "x.img", 2 * MiB, {0: b"XFSB" + b"\0" * 508})
    layout = read_partition_table(img)
    assert layout.scheme == "none" and layout.bare_filesystem.type == "xfs"


def test_bare_swap_disk(tmp_path):
    img = write_image(tmp_path / "s.img", 2 * MiB, {4086: b"SWAPSPACE2"})
    assert read_partition_table(img).bare_filesystem.type == "swap"


# --------------------------------------------------------------------------- sfdisk images


def test_sfdisk_mbr_with_logicals_matches_sfdisk(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(b"")
    with open(img, "wb") as fobj:
        fobj.truncate(64 * MiB)
    sfdisk(img, "label: dos\nlabel-id: 0x1234abcd\n"
                "start=2048, size=16MiB, type=83, bootable\n"
                "size=8MiB, type=82\n"
                "type=5\n"
                "size=8MiB, type=83\n"
                "size=4MiB, type=8e\n"
                "type=83\n")
    layout = read_partition_table(str(img))
    table = sfdisk_json(img)
    assert layout.disk_id == "1234abcd"
    expected = []
    for part in table["partitions"]:
        number = int(part["node"].rsplit("img", 1)[1])
        expected.append((number, part["start"] * S, part["size"] * S,
                         "0x" + part["type"].zfill(2), bool(part.get("bootable"))))
    got = [(p.number, p.start, p.size, p.type, p.bootable) for p in layout.partitions]
    assert got == expected
    assert [p.number for p in layout.partitions] == [1, 2, 3, 5, 6, 7]
    assert layout.partition(7).partuuid == "1234abcd-07"


def test_sfdisk_gpt_matches_sfdisk(tmp_path):
    img = tmp_path / "g.img"
    with open(img, "wb") as fobj:
        fobj.truncate(64 * MiB)
    sfdisk(img, "label: gpt\n"
                "size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
                "size=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
                "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root, attrs=LegacyBIOSBootable\n")
    layout = read_partition_table(str(img))
    table = sfdisk_json(img)
    assert layout.scheme == "gpt"
    assert layout.disk_id == table["id"].lower()
    for part, mine in zip(table["partitions"], layout.partitions):
        assert mine.start == part["start"] * S
        assert mine.size == part["size"] * S
        assert mine.type == part["type"].lower()
        assert mine.partuuid == part["uuid"].lower()
        assert mine.name == part["name"]
    assert [p.bootable for p in layout.partitions] == [False, False, True]


def _mkfs_into(tmp_path, image, offset, argv, size):
    """Build a filesystem in its own file with ``argv`` and copy it into ``image``."""
    fs = tmp_path / ("fs-%d.img" % offset)
    with open(fs, "wb") as fobj:
        fobj.truncate(size)
    subprocess.run(argv + [str(fs)], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fs, "rb") as src, open(image, "r+b") as dst:
        dst.seek(offset)
        shutil.copyfileobj(src, dst)
    fs.unlink()


def test_real_filesystems_in_partitions(tmp_path):
    for tool in ("mkfs.ext4", "mkfs.ext2", "mkfs.vfat", "mkswap"):
        need(tool)
    img = tmp_path / "d.img"
    with open(img, "wb") as fobj:
        fobj.truncate(96 * MiB)
    sfdisk(img, "label: dos\nstart=2048, size=16MiB, type=83\nsize=16MiB, type=ef\n"
                "size=8MiB, type=82\nsize=32MiB, type=83\n")
    layout = read_partition_table(str(img))
    p1, p2, p3, p4 = layout.partitions
    boot_uuid = "0b0b0b0b-1111-4222-8333-444444444444"
    root_uuid = "f00dfeed-1111-4222-8333-444444444444"
    swap_uuid = "5a5a5a5a-1111-4222-8333-444444444444"
    _mkfs_into(tmp_path, img, p1.start, ["mkfs.ext2", "-q", "-F", "-U", boot_uuid, "-L", "boot"],
               p1.size)
    _mkfs_into(tmp_path, img, p2.start, ["mkfs.vfat", "-i", "DEADBEEF", "-n", "ESP"], p2.size)
    _mkfs_into(tmp_path, img, p3.start, ["mkswap", "-U", swap_uuid, "-L", "swap0"], p3.size)
    _mkfs_into(tmp_path, img, p4.start, ["mkfs.ext4", "-q", "-F", "-U", root_uuid, "-L", "root"],
               p4.size)
    assert probe_filesystem(str(img), p1.start).as_dict() == {
        "type": "ext2", "uuid": boot_uuid, "label": "boot"}
    assert probe_filesystem(str(img), p2.start).as_dict() == {
        "type": "vfat", "uuid": "DEAD-BEEF", "label": "ESP"}
    assert probe_filesystem(str(img), p3.start).as_dict() == {
        "type": "swap", "uuid": swap_uuid, "label": "swap0"}
    assert probe_filesystem(str(img), p4.start).as_dict() == {
        "type": "ext4", "uuid": root_uuid, "label": "root"}


def test_real_bare_ext4(tmp_path):
    need("mkfs.ext4")
    img = tmp_path / "bare.img"
    with open(img, "wb") as fobj:
        fobj.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "pvroot", str(img)], check=True)
    layout = read_partition_table(str(img))
    assert layout.scheme == "none"
    assert layout.bare_filesystem.type == "ext4" and layout.bare_filesystem.label == "pvroot"
    assert not mbr_has_boot_code(str(img))


def test_real_xfs_and_btrfs(tmp_path):
    need("mkfs.xfs")
    need("mkfs.btrfs")
    fs_uuid = "3e3e3e3e-1111-4222-8333-444444444444"
    xfs = tmp_path / "x.img"
    btrfs = tmp_path / "b.img"
    for path in (xfs, btrfs):
        with open(path, "wb") as fobj:
            fobj.truncate(320 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "uuid=" + fs_uuid, "-L", "xroot", str(xfs)],
                   check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-U", fs_uuid, "-L", "broot", str(btrfs)], check=True,
                   stdout=subprocess.PIPE)
    assert read_partition_table(str(xfs)).bare_filesystem.as_dict() == {
        "type": "xfs", "uuid": fs_uuid, "label": "xroot"}
    assert read_partition_table(str(btrfs)).bare_filesystem.as_dict() == {
        "type": "btrfs", "uuid": fs_uuid, "label": "broot"}
