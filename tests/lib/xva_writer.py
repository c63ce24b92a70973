"""Write XVA files exactly as xapi does, for tests (see /work/shared/docs/xva-format.md).

The output is a plain tar stream with old V7 headers (no ``ustar`` magic, mode 0400 -- or 0 with
``legacy_types`` --, uid/gid 0, mtime 0, correct header checksum), ``ova.xml`` first, then each disk
as ``Ref:N/00000000`` + ``Ref:N/00000000.checksum|.xxhash`` members, disks in *string* order of their
Ref id, all-zero chunks omitted (the counter still advances) except the first and the last chunk,
optional zero-length keep-alive members (they advance the counter but not the disk offset and carry
the checksum of the empty input), a short last chunk when ``virtual_size`` is not a multiple of
1 MiB, and two zero blocks at the end (no record padding).  Optionally the whole stream is gzip or
zstd compressed.

The writer streams: it writes sequentially (``out`` may be a pipe), holds at most one chunk in
memory, and on file images it skips holes with ``SEEK_DATA``/``SEEK_HOLE`` so a 30 GiB sparse image
with a few hundred MiB of data packs in seconds.

``ova.xml`` is one bare XML-RPC ``<value>`` like xapi writes it: strings and 64-bit integers
(``memory_static_max``, ``virtual_size``, ``VCPUs_max``, ...) as bare ``<value>text</value>``,
booleans as ``<boolean>``, version numbers as ``<i4>``, dates as ``<dateTime.iso8601>``.  With
``VM.legacy_types`` strings are written ``<value><string>text</string></value>`` and 64-bit integers
that fit in 32 bits as ``<i4>`` (so ``xmlrpc.client.loads`` returns ints for them), like older
writers; the tar headers then also use mode 0 and the V7 NUL type flag.

Objects in ``ova.xml``: VM, VM_guest_metrics, VBD (one per :class:`Disk`, plus the empty CD drive
whose VDI is ``OpaqueRef:NULL``), VDI, SR (one per content type), VIF, network; each
``{class, id: "Ref:N", snapshot: {record}}``, cross-referenced by their ids as xapi does.

Faults (``fault=``), each producing a malformed XVA for the reader's bad-input tests.  The *target
disk* is the first disk folder in tar order (raises ``ValueError`` when there is none):

``corrupt_chunk``
    one byte of a data member is flipped after its checksum was computed (the first chunk that
    holds non-zero data, else chunk 0). Needs ``checksum``.
``truncate``
    the tar stream stops in the middle of the target disk's first data member (header and half of
    the data written, no end blocks). With compression the compressed stream itself is finished
    cleanly, so only the tar inside is cut.
``not_tar``
    64 KiB of fixed pseudo-random bytes, no tar at all (compressed if ``compression`` is set).
``first_not_ova``
    the target disk's whole folder comes before ``ova.xml``; the rest follows as usual.
``bad_ova_xml``
    ``ova.xml`` holds text that is not XML.
``oversized_ova_xml``
    ``ova.xml``'s header declares 100 MiB; only the real ova.xml plus a little space padding
    follows (a few KiB), then the stream ends. A reader must refuse it from the header size.
``dotdot_name``
    an extra member ``Ref:N/../../etc/x`` (N = the target's ref) right after ``ova.xml``.
``absolute_name``
    an extra member ``/etc/passwd`` right after ``ova.xml``.
``outside_folder``
    an extra data member ``Ref:99999/00000000`` (1 MiB, with a valid checksum member) for a Ref
    that is no VDI, placed in string order among the disk folders.
``stray_member``
    an extra member ``stray.txt`` right after ``ova.xml``.
``counter_repeat``
    the target's chunk 0 (data and checksum) is written twice in a row.
``counter_decrease``
    chunks 1 and 2 of the target are forced present and written as 0, 2, 1 (no keep-alives on
    the target). Needs at least 3 chunks.
``past_virtual_size``
    after the target's last chunk one more 1 MiB chunk (non-zero bytes, valid checksum) with the
    next counter, i.e. beyond ``virtual_size``.
``chunk_larger``
    the target's chunk 1 is forced present and written 4 KiB longer than the first chunk (valid
    checksum). Needs at least 2 chunks.
``missing_folder``
    the target disk's folder is left out of the tar entirely (its VDI stays in ova.xml).
``bad_checksum_format``
    the checksum member of the target's chunk 0 holds non-hex text of the right length. Needs
    ``checksum``.

Differences to the agreed API: only additions (extra optional fields on the dataclasses, the fault
``stray_member``, more keys in the returned dict).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import heapq
import os
import random
import uuid as _uuid
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as _xml_escape

CHUNK = 1024 * 1024
_ZERO_CHUNK = bytes(CHUNK)
_BLOCK = 512

FAULTS = (
    "corrupt_chunk", "truncate", "not_tar", "first_not_ova", "bad_ova_xml", "oversized_ova_xml",
    "dotdot_name", "absolute_name", "outside_folder", "stray_member", "counter_repeat",
    "counter_decrease", "past_virtual_size", "chunk_larger", "missing_folder",
    "bad_checksum_format",
)
CHECKSUM_EXT = {"sha1": ".checksum", "xxhash": ".xxhash"}


# --------------------------------------------------------------------------------------------
# Public data model
# --------------------------------------------------------------------------------------------
@dataclass
class Disk:
    image: bytes | str | os.PathLike = b""  # raw content, or path to a (sparse) raw image file
    virtual_size: int | None = None         # default: len(image) / file size
    userdevice: int = 0
    device: str = "xvda"                    # VBD device
    name: str = ""                          # VDI name_label
    bootable: bool = False
    vdi_uuid: str | None = None             # random uuid4 when None
    ref: int | None = None                  # the N of Ref:N; auto (1000 + i*7) when None
    sr_content_type: str = "user"           # "iso" makes an ISO VDI (no tar folder)
    vdi_type: str = "user"                  # "suspend" for a suspend VDI (no folder)
    # additions
    vbd_type: str | None = None             # VBD type; None: "CD" for ISO VDIs, else "Disk"
    mode: str | None = None                 # VBD mode; None: "RO" for ISO VDIs, else "RW"
    vdi_fields: dict = field(default_factory=dict)  # merged into the VDI record (None deletes)
    vbd_fields: dict = field(default_factory=dict)  # merged into the VBD record (None deletes)


@dataclass
class Nic:
    device: int
    mac: str
    mtu: int = 1500
    network: str = "Pool-wide network associated with eth0"
    bridge: str = "xenbr0"
    vif_fields: dict = field(default_factory=dict)  # addition: merged into the VIF record


def _default_disks():
    return [Disk(image=b"", virtual_size=4 * CHUNK, name="TestVM01 0", bootable=True)]


def _default_nics():
    return [Nic(device=0, mac="aa:bb:cc:dd:ee:01")]


@dataclass
class VM:
    name: str = "TestVM01"
    description: str = ""
    uuid: str | None = None
    vcpus: int = 1
    vcpus_max: int | None = None
    cores_per_socket: int | None = None
    memory_bytes: int = 512 * 2**20
    domain_type: str | None = "pv"          # pv|hvm|pvh|pv_in_pvh; None = old export without it
    firmware: str = "bios"                  # HVM_boot_params firmware (bios|uefi)
    pv_bootloader: str = "pygrub"           # written "" on HVM when left at this default
    pv_args: str = "console=hvc0"           # written "" on HVM when left at this default
    is_template: bool = False
    tags: list[str] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=_default_disks)
    nics: list[Nic] = field(default_factory=_default_nics)
    cd_drive: bool = True                   # an empty CD VBD (VDI OpaqueRef:NULL)
    actions_after_crash: str = "restart"
    actions_after_reboot: str = "restart"
    legacy_types: bool = False              # <string>/<i4> typed values, mode-0 V7 headers
    product_brand: str = "XCP-ng"
    product_version: str = "8.2.1"
    hostname: str = "xenhost1"
    # additions
    actions_after_shutdown: str = "destroy"
    hvm_boot_policy: str | None = None      # None: "BIOS order" when domain_type == "hvm", else ""
    nvram: dict = field(default_factory=dict)  # VM.NVRAM, e.g. {"EFI-variables": "<base64>"}
    date: str = "2021-12-03"                 # version.date
    build_number: str = "release/yangtze/master/58"
    xapi_major: int = 1
    xapi_minor: int = 20
    export_vsn: int = 2
    vm_fields: dict = field(default_factory=dict)  # merged into the VM record (None deletes)
    secure_boot: str | None = None          # platform["secureboot"] ("true"/"false"/"auto"); None: "false" on HVM
    vtpm: bool = False                      # one VTPM object listed in VM.VTPMs (XenServer 8 / XCP-ng 8.3)


# --------------------------------------------------------------------------------------------
# ova.xml
# --------------------------------------------------------------------------------------------
class _I64(str):
    """An int64 field: xapi marshals these as strings."""


class _Date(str):
    """An XML-RPC dateTime.iso8601 value."""


_NULL = "OpaqueRef:NULL"
_NEVER = _Date("19700101T00:00:00Z")


def _esc(s: str) -> str:
    return _xml_escape(s, {'"': "&quot;", "'": "&apos;"})


def _ser(v, legacy: bool, out: list) -> None:
    if isinstance(v, bool):
        out.append("<value><boolean>%d</boolean></value>" % v)
    elif isinstance(v, _I64):
        if legacy and -2**31 <= int(v) < 2**31:
            out.append("<value><i4>%d</i4></value>" % int(v))
        elif legacy:
            out.append("<value><string>%s</string></value>" % _esc(v))
        else:
            out.append("<value>%s</value>" % _esc(v))
    elif isinstance(v, _Date):
        out.append("<value><dateTime.iso8601>%s</dateTime.iso8601></value>" % v)
    elif isinstance(v, str):
        out.append(("<value><string>%s</string></value>" if legacy else "<value>%s</value>")
                   % _esc(v))
    elif isinstance(v, int):
        out.append("<value><i4>%d</i4></value>" % v)
    elif isinstance(v, float):
        out.append("<value><double>%r</double></value>" % v)
    elif isinstance(v, dict):
        out.append("<value><struct>")
        for k, x in v.items():
            out.append("<member><name>%s</name>" % _esc(str(k)))
            _ser(x, legacy, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif isinstance(v, (list, tuple)):
        out.append("<value><array><data>")
        for x in v:
            _ser(x, legacy, out)
        out.append("</data></array></value>")
    elif v is None:
        out.append("<value><nil/></value>")
    else:
        raise TypeError(f"cannot marshal {type(v).__name__} into ova.xml")


def to_xmlrpc_value(obj, legacy: bool = False) -> str:
    """Serialise ``obj`` as one bare XML-RPC ``<value>`` the way xapi does."""
    out: list = []
    _ser(obj, legacy, out)
    return "".join(out)


def _merge(rec: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    return rec


def _u() -> str:
    return str(_uuid.uuid4())


def _is_hvm(vm: VM) -> bool:
    if vm.domain_type is not None:
        return vm.domain_type == "hvm"
    return (vm.hvm_boot_policy or "") != ""


def _vm_record(vm: VM, vm_uuid: str, vbd_ids, vif_ids, suspend_vdi: str, gm_id: str, vtpm_ids=()) -> dict:
    hvm = _is_hvm(vm)
    policy = vm.hvm_boot_policy
    if policy is None:
        policy = "BIOS order" if vm.domain_type == "hvm" else ""
    pv_bootloader = "" if hvm and vm.pv_bootloader == "pygrub" else vm.pv_bootloader
    pv_args = "" if hvm and vm.pv_args == "console=hvc0" else vm.pv_args
    if hvm:
        boot_params = {"order": "cd", "firmware": vm.firmware}
    else:
        boot_params = {} if vm.firmware == "bios" else {"firmware": vm.firmware}
    platform = {"timeoffset": "0", "nx": "true", "acpi": "1", "apic": "true", "pae": "true"}
    if hvm:
        platform.update({"viridian": "false", "hpet": "true", "vga": "std", "videoram": "8",
                         "device-model": "qemu-upstream-compat",
                         "secureboot": "false"})
    if vm.secure_boot is not None:
        platform["secureboot"] = vm.secure_boot
    if vm.cores_per_socket is not None:
        platform["cores-per-socket"] = str(vm.cores_per_socket)
    mem = _I64(str(vm.memory_bytes))
    vcpus_max = vm.vcpus if vm.vcpus_max is None else vm.vcpus_max
    stale = "OpaqueRef:%s" % _u()
    last_booted = (
        "('struct' ((uuid '%s') (name_label '%s') (power_state 'Running') "
        "(resident_on '%s') (metrics '%s') (guest_metrics '%s') (VBDs ('%s'))))"
        % (vm_uuid, vm.name.replace("'", ""), stale, "OpaqueRef:%s" % _u(),
           "OpaqueRef:%s" % _u(), "OpaqueRef:%s" % _u())
    )
    rec = {
        "uuid": vm_uuid,
        "allowed_operations": [],
        "current_operations": {},
        "name_label": vm.name,
        "name_description": vm.description,
        "power_state": "Halted" if suspend_vdi == _NULL else "Suspended",
        "user_version": _I64("1"),
        "is_a_template": bool(vm.is_template),
        "is_default_template": False,
        "suspend_VDI": suspend_vdi,
        "resident_on": _NULL,
        "scheduled_to_be_resident_on": _NULL,
        "affinity": _NULL,
        "memory_overhead": _I64(str(5 * 2**20)),
        "memory_target": mem,
        "memory_static_max": mem,
        "memory_dynamic_max": mem,
        "memory_dynamic_min": mem,
        "memory_static_min": _I64(str(min(vm.memory_bytes, 128 * 2**20))),
        "VCPUs_params": {},
        "VCPUs_max": _I64(str(vcpus_max)),
        "VCPUs_at_startup": _I64(str(vm.vcpus)),
        "actions_after_softreboot": "soft_reboot",
        "actions_after_shutdown": vm.actions_after_shutdown,
        "actions_after_reboot": vm.actions_after_reboot,
        "actions_after_crash": vm.actions_after_crash,
        "consoles": [],
        "VIFs": list(vif_ids),
        "VBDs": list(vbd_ids),
        "VUSBs": [],
        "crash_dumps": [],
        "VTPMs": list(vtpm_ids),
        "PV_bootloader": pv_bootloader,
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": pv_args,
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": policy,
        "HVM_boot_params": boot_params,
        "HVM_shadow_multiplier": 1.0,
        "platform": platform,
        "PCI_bus": "",
        "other_config": {"base_template_name": "Debian Bullseye 11",
                         "import_task": stale, "mac_seed": _u()},
        "domid": _I64("-1"),
        "domarch": "",
        "last_boot_CPU_flags": {"vendor": "GenuineIntel", "features": "1fcbfbff-f7fa3223"},
        "is_control_domain": False,
        "metrics": _NULL,
        "guest_metrics": gm_id,
        "last_booted_record": last_booted,
        "recommendations": '<restrictions><restriction field="memory-static-max" '
                           'max="1649267441664"/></restrictions>',
        "xenstore_data": {"vm-data": ""},
        "ha_always_run": False,
        "ha_restart_priority": "",
        "is_a_snapshot": False,
        "snapshot_of": _NULL,
        "snapshots": [],
        "snapshot_time": _NEVER,
        "transportable_snapshot_id": "",
        "blobs": {},
        "tags": list(vm.tags),
        "blocked_operations": {},
        "snapshot_info": {},
        "snapshot_metadata": "",
        "parent": _NULL,
        "children": [],
        "bios_strings": {"bios-vendor": "Xen", "system-manufacturer": "Xen"},
        "protection_policy": _NULL,
        "is_snapshot_from_vmpp": False,
        "snapshot_schedule": _NULL,
        "is_vmss_snapshot": False,
        "appliance": _NULL,
        "start_delay": _I64("0"),
        "shutdown_delay": _I64("0"),
        "order": _I64("0"),
        "VGPUs": [],
        "attached_PCIs": [],
        "suspend_SR": _NULL,
        "version": _I64("0"),
        "generation_id": "",
        "hardware_platform_version": _I64("0"),
        "has_vendor_device": False,
        "requires_reboot": False,
        "reference_label": "",
        "NVRAM": dict(vm.nvram),
        "pending_guidances": [],
    }
    if vm.domain_type is not None:
        # xapi puts domain_type right after HVM_boot_params-ish fields; order is irrelevant
        rec["domain_type"] = vm.domain_type
    return _merge(rec, vm.vm_fields)


# --------------------------------------------------------------------------------------------
# Disk sources
# --------------------------------------------------------------------------------------------
class _Source:
    """Reads chunks of a disk image; bytes beyond the image's end read as zeros."""

    def __init__(self, image, virtual_size):
        self.fd = None
        if isinstance(image, (bytes, bytearray, memoryview)):
            self.mv = memoryview(image).cast("B")
            self.length = len(self.mv)
        else:
            self.mv = None
            self.fd = os.open(os.fspath(image), os.O_RDONLY)
            self.length = os.fstat(self.fd).st_size
        self.size = self.length if virtual_size is None else int(virtual_size)
        if self.size < 0:
            raise ValueError("virtual_size must be >= 0")

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, off: int, n: int):
        end = min(off + n, self.length)
        if off >= end:
            return _ZERO_CHUNK[:n] if n <= CHUNK else bytes(n)
        if self.mv is not None:
            data = bytes(self.mv[off:end])
        else:
            data = os.pread(self.fd, end - off, off)
            while len(data) < end - off:  # short reads are legal
                more = os.pread(self.fd, end - off - len(data), off + len(data))
                if not more:
                    break
                data += more
        if end - off < n:
            data = bytes(data) + bytes(n - (end - off))
        return data

    def extents(self):
        """Yield (start, end) byte ranges that may hold data, within [0, min(length, size))."""
        limit = min(self.length, self.size)
        if limit <= 0:
            return
        if self.mv is not None:
            yield (0, limit)
            return
        off = 0
        while off < limit:
            try:
                start = os.lseek(self.fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return
                yield (off, limit)  # SEEK_DATA unsupported: treat everything as data
                return
            if start >= limit:
                return
            try:
                end = os.lseek(self.fd, start, os.SEEK_HOLE)
            except OSError:
                end = limit
            end = min(end, limit)
            yield (start, end)
            off = end


def _extent_positions(src: _Source):
    prev = -1
    for s, e in src.extents():
        for p in range(max(s // CHUNK, prev + 1), (e - 1) // CHUNK + 1):
            yield p
            prev = p


def _unique(it):
    prev = None
    for x in it:
        if x != prev:
            yield x
            prev = x


# --------------------------------------------------------------------------------------------
# Tar output
# --------------------------------------------------------------------------------------------
def v7_header(name: str, size: int, mode: int = 0o400, typeflag: bytes = b"0") -> bytes:
    """An old V7 tar header as ocaml-tar (xapi) writes it: octal fields NUL-terminated,
    uid/gid/mtime 0, no ustar magic."""
    nb = name.encode("utf-8")
    if len(nb) > 100:
        raise ValueError(f"member name too long: {name!r}")
    if not 0 <= size < 8**11:
        raise ValueError("member size out of range")
    buf = bytearray(_BLOCK)
    buf[0:len(nb)] = nb
    buf[100:108] = b"%07o\0" % mode
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    buf[124:136] = b"%011o\0" % size
    buf[136:148] = b"00000000000\0"
    buf[156:157] = typeflag
    buf[148:156] = b" " * 8
    buf[148:156] = b"%07o\0" % sum(buf)
    return bytes(buf)


class _Stop(Exception):
    """Raised internally to end the stream early (truncate fault)."""


class _TarOut:
    def __init__(self, f, legacy: bool):
        self.f = f
        self.pos = 0
        self.members: list = []
        self.mode = 0 if legacy else 0o400
        self.typeflag = b"\0" if legacy else b"0"

    def _w(self, b):
        if len(b):
            self.f.write(b)
            self.pos += len(b)

    def header(self, name: str, size: int):
        self._w(v7_header(name, size, self.mode, self.typeflag))
        self.members.append((name, size))

    def pad(self, size: int):
        r = size % _BLOCK
        if r:
            self._w(_ZERO_CHUNK[:_BLOCK - r])

    def member(self, name: str, data):
        self.header(name, len(data))
        self._w(data)
        self.pad(len(data))

    def end(self):
        self._w(bytes(2 * _BLOCK))


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
def half_filled_disk(size: int, seed: int) -> bytes:
    """A disk image of ``size`` bytes whose even MiBs hold data derived from ``seed`` and whose
    odd MiBs are zero: the zero chunks are left out of an export, as xapi leaves them out."""
    mib = 1 << 20
    data = bytearray(size)
    for index in range(0, size // mib, 2):
        data[index * mib:(index + 1) * mib] = hashlib.shake_256(b"%d-%d" % (seed, index)).digest(mib)
    return bytes(data)


def chunk_checksum(kind: str, data) -> str:
    """The checksum member's text: SHA-1 lowercase hex, or XXH64 (seed 0) 16 uppercase hex."""
    if kind == "sha1":
        return hashlib.sha1(data).hexdigest()
    if kind == "xxhash":
        import xxhash
        return "%016X" % xxhash.xxh64_intdigest(data)
    raise ValueError(f"unknown checksum {kind!r}")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------
def _disk_events(src: _Source, keep_every: int | None, keep_zero: bool, forced=()):
    """Yield ("data", counter, position, bytes) / ("keepalive", counter, position, b"") in stream
    order, following xapi's stream_vdi rules."""
    size = src.size
    if size == 0:
        return
    n = (size + CHUNK - 1) // CHUNK
    last = n - 1
    if keep_zero:
        positions = range(n)
    else:
        positions = _unique(heapq.merge([0], _extent_positions(src), sorted(forced), [last]))
    ka_next = keep_every if keep_every else None  # next keep-alive position
    for p in positions:
        if p > last:
            break
        # keep-alives before every multiple of keep_every in [1, last-1] up to p
        while ka_next is not None and ka_next <= min(p, last - 1):
            q = ka_next
            yield ("keepalive", q + (q - 1) // keep_every, q, b"")
            ka_next += keep_every
        counter = p + (max(0, min(p, last - 1)) // keep_every if keep_every else 0)
        off = p * CHUNK
        ln = min(CHUNK, size - off)
        data = src.read(off, ln)
        if p != 0 and p != last and not keep_zero and p not in forced \
                and data == (_ZERO_CHUNK if ln == CHUNK else bytes(ln)):
            continue
        yield ("data", counter, p, data)


def write_xva(out, vm: VM, *, checksum: str | None = "xxhash", compression: str | None = None,
              keepalives: dict | None = None, keep_zero_chunks: bool = False,
              fault: str | None = None, preserve_power_state: bool = False,
              pad_last_chunk: bool = False) -> dict:
    """Write ``vm`` as an XVA to ``out`` (a path or a binary file object, written sequentially).

    ``checksum``: "xxhash" (``.xxhash`` members), "sha1" (``.checksum``) or None (no checksum
    members). ``compression``: None, "gzip" or "zstd" (whole stream). ``keepalives``:
    ``{disk_index: n}`` writes a zero-length keep-alive member before every chunk position that is
    a multiple of n (never before the first or the last chunk), like xapi after 5 s of silence.
    ``keep_zero_chunks``: write every chunk, all-zero ones included. ``fault``: see the module
    docstring.
    ``preserve_power_state``: like ``xe vm-export preserve-power-state=true`` of a suspended VM:
    ``suspend`` disks are attached through no VBD (only ``VM.suspend_VDI`` names them) and their
    data is streamed with checksum members like any disk. ``pad_last_chunk``: the last chunk of
    every disk is padded with zeros to 1 MiB, as Xen Orchestra writes it (the checksum covers
    the padded chunk). A disk of ``virtual_size`` 0 never has a folder (xapi writes no chunk).

    Returns ``{"refs": ["Ref:N" per vm.disks entry], "ova_xml": str, "vm_ref", "vm_uuid",
    "vdi_uuids", "folders": refs with a tar folder in tar order, "disks": per vm.disks entry
    {ref, virtual_size, folder, data_members, keepalives, omitted}, "members": [(name, size)] in
    tar order, "tar_bytes": uncompressed bytes written, "fault", "fault_target"}``.
    """
    if checksum not in (None, "sha1", "xxhash"):
        raise ValueError(f"checksum must be 'sha1', 'xxhash' or None, not {checksum!r}")
    if compression not in (None, "gzip", "zstd"):
        raise ValueError(f"compression must be None, 'gzip' or 'zstd', not {compression!r}")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if fault in ("corrupt_chunk", "bad_checksum_format") and checksum is None:
        raise ValueError(f"fault {fault!r} needs a checksum")
    keepalives = dict(keepalives or {})
    for k, v in keepalives.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError("keepalives values must be integers >= 1")

    # ---- allocate ids ------------------------------------------------------------------
    disk_refs: list[int] = []
    for i, d in enumerate(vm.disks):
        disk_refs.append(d.ref if d.ref is not None else 1000 + i * 7)
    if len(set(disk_refs)) != len(disk_refs):
        raise ValueError(f"duplicate disk refs: {disk_refs}")
    used = set(disk_refs)
    counter = [0]

    def new_id() -> str:
        counter[0] += 1
        while counter[0] in used:
            counter[0] += 1
        used.add(counter[0])
        return "Ref:%d" % counter[0]

    vm_id = new_id()
    vm_uuid = vm.uuid or _u()
    vif_ids = [new_id() for _nic in vm.nics]
    net_ids: dict = {}
    for nic in vm.nics:
        key = (nic.network, nic.bridge)
        if key not in net_ids:
            net_ids[key] = (new_id(), _u())
    vbd_ids = [new_id() for _disk in vm.disks]
    cd_id = new_id() if vm.cd_drive else None
    sr_ids: dict = {}
    for d in vm.disks:
        if d.sr_content_type not in sr_ids:
            sr_ids[d.sr_content_type] = (new_id(), _u())
    gm_id = new_id()
    vtpm_ids = [new_id()] if vm.vtpm else []
    vdi_ids = ["Ref:%d" % r for r in disk_refs]
    vdi_uuids = [d.vdi_uuid or _u() for d in vm.disks]

    # ---- objects -------------------------------------------------------------------------
    suspend = [vdi_ids[i] for i, d in enumerate(vm.disks) if d.vdi_type == "suspend"]
    objects = []
    unattached = {i for i, d in enumerate(vm.disks) if preserve_power_state and d.vdi_type == "suspend"}
    all_vbds = [b for i, b in enumerate(vbd_ids) if i not in unattached] + ([cd_id] if cd_id else [])
    objects.append({"class": "VM", "id": vm_id,
                    "snapshot": _vm_record(vm, vm_uuid, all_vbds, vif_ids,
                                           suspend[0] if suspend else _NULL, gm_id, vtpm_ids)})
    for vtpm_id in vtpm_ids:
        objects.append({"class": "VTPM", "id": vtpm_id, "snapshot": {
            "uuid": _u(), "allowed_operations": [], "current_operations": {}, "VM": vm_id,
            "backend": _NULL, "persistence_backend": "xapi", "is_unique": False,
            "is_protected": False}})
    objects.append({"class": "VM_guest_metrics", "id": gm_id, "snapshot": {
        "uuid": _u(), "os_version": {"name": "Debian GNU/Linux 11", "distro": "debian"},
        "PV_drivers_version": {}, "PV_drivers_up_to_date": False, "memory": {}, "disks": {},
        "networks": {"0/ip": "192.0.2.10"}, "other": {}, "last_updated": _NEVER,
        "other_config": {}, "live": False, "can_use_hotplug_vbd": "unspecified",
        "can_use_hotplug_vif": "unspecified", "PV_drivers_detected": False}})
    used_userdevices = {d.userdevice for d in vm.disks}
    for i, d in enumerate(vm.disks):
        if i in unattached:
            continue
        iso = d.sr_content_type == "iso"
        vbd_type = d.vbd_type or ("CD" if iso else "Disk")
        rec = {
            "uuid": _u(), "allowed_operations": [], "current_operations": {},
            "VM": vm_id, "VDI": vdi_ids[i], "device": d.device,
            "userdevice": str(d.userdevice), "bootable": bool(d.bootable),
            "mode": d.mode or ("RO" if iso else "RW"), "type": vbd_type,
            "unpluggable": False, "storage_lock": False, "empty": False,
            "reserved": False, "other_config": {"owner": ""}, "currently_attached": False,
            "status_code": _I64("0"), "status_detail": "", "runtime_properties": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
            "qos_supported_algorithms": [], "metrics": _NULL,
        }
        objects.append({"class": "VBD", "id": vbd_ids[i], "snapshot": _merge(rec, d.vbd_fields)})
    if cd_id:
        ud = 3
        while ud in used_userdevices:
            ud += 1
        objects.append({"class": "VBD", "id": cd_id, "snapshot": {
            "uuid": _u(), "allowed_operations": [], "current_operations": {},
            "VM": vm_id, "VDI": _NULL, "device": "xvdd", "userdevice": str(ud),
            "bootable": False, "mode": "RO", "type": "CD", "unpluggable": True,
            "storage_lock": False, "empty": True, "reserved": False, "other_config": {},
            "currently_attached": False, "status_code": _I64("0"), "status_detail": "",
            "runtime_properties": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
            "qos_supported_algorithms": [], "metrics": _NULL}})
    sizes = []
    for i, d in enumerate(vm.disks):
        if d.virtual_size is not None:
            vs = int(d.virtual_size)
        elif isinstance(d.image, (bytes, bytearray, memoryview)):
            vs = len(d.image)
        else:
            vs = os.stat(os.fspath(d.image)).st_size
        sizes.append(vs)
        rec = {
            "uuid": vdi_uuids[i], "name_label": d.name, "name_description": "",
            "allowed_operations": [], "current_operations": {},
            "SR": sr_ids[d.sr_content_type][0], "VBDs": [] if i in unattached else [vbd_ids[i]],
            "crash_dumps": [],
            "virtual_size": _I64(str(vs)), "physical_utilisation": _I64(str(vs)),
            "type": d.vdi_type, "sharable": False, "read_only": d.sr_content_type == "iso",
            "other_config": {"content_id": _u()}, "storage_lock": False,
            "location": (d.name or "disk") + ".iso" if d.sr_content_type == "iso"
            else vdi_uuids[i],
            "managed": True, "missing": False, "parent": _NULL, "xenstore_data": {},
            "sm_config": {} if d.sr_content_type == "iso" else {"vdi_type": "vhd"},
            "is_a_snapshot": False, "snapshot_of": _NULL, "snapshots": [],
            "snapshot_time": _NEVER, "tags": [], "allow_caching": False,
            "on_boot": "persist", "metadata_of_pool": _NULL, "metadata_latest": False,
            "is_tools_iso": False, "cbt_enabled": False,
        }
        objects.append({"class": "VDI", "id": vdi_ids[i], "snapshot": _merge(rec, d.vdi_fields)})
    for ctype, (sid, suuid) in sr_ids.items():
        iso = ctype == "iso"
        objects.append({"class": "SR", "id": sid, "snapshot": {
            "uuid": suuid, "name_label": "ISO library" if iso else "Local storage",
            "name_description": "", "allowed_operations": [], "current_operations": {},
            "VDIs": [vdi_ids[i] for i, d in enumerate(vm.disks) if d.sr_content_type == ctype],
            "PBDs": [], "virtual_allocation": _I64("0"), "physical_utilisation": _I64("0"),
            "physical_size": _I64(str(500 * 2**30)), "type": "iso" if iso else "ext",
            "content_type": ctype, "shared": iso, "other_config": {}, "tags": [],
            "sm_config": {}, "blobs": {}, "local_cache_enabled": False,
            "introduced_by": _NULL, "clustered": False, "is_tools_sr": False}})
    for nic, vif_id in zip(vm.nics, vif_ids):
        rec = {
            "uuid": _u(), "allowed_operations": [], "current_operations": {},
            "device": str(nic.device), "network": net_ids[(nic.network, nic.bridge)][0],
            "VM": vm_id, "MAC": nic.mac, "MTU": _I64(str(nic.mtu)), "other_config": {},
            "currently_attached": False, "status_code": _I64("0"), "status_detail": "",
            "runtime_properties": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
            "qos_supported_algorithms": [], "metrics": _NULL, "MAC_autogenerated": False,
            "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [],
            "ipv4_configuration_mode": "None", "ipv4_addresses": [], "ipv4_gateway": "",
            "ipv6_configuration_mode": "None", "ipv6_addresses": [], "ipv6_gateway": "",
        }
        objects.append({"class": "VIF", "id": vif_id, "snapshot": _merge(rec, nic.vif_fields)})
    for (netname, bridge), (nid, nuuid) in net_ids.items():
        objects.append({"class": "network", "id": nid, "snapshot": {
            "uuid": nuuid, "name_label": netname, "name_description": "",
            "allowed_operations": [], "current_operations": {},
            "VIFs": [vif_ids[j] for j, n in enumerate(vm.nics)
                     if (n.network, n.bridge) == (netname, bridge)],
            "PIFs": [], "MTU": _I64("1500"), "other_config": {}, "bridge": bridge,
            "managed": True, "blobs": {}, "tags": [], "default_locking_mode": "unlocked",
            "assigned_ips": {}, "purpose": []}})
    header = {
        "version": {
            "hostname": vm.hostname, "date": vm.date, "product_version": vm.product_version,
            "product_brand": vm.product_brand, "build_number": vm.build_number,
            "xapi_major": int(vm.xapi_major), "xapi_minor": int(vm.xapi_minor),
            "export_vsn": int(vm.export_vsn),
        },
        "objects": objects,
    }
    ova_xml = to_xmlrpc_value(header, legacy=vm.legacy_types)

    # ---- which disks have folders, in tar (string) order ----------------------------------
    folder_idx = [i for i, d in enumerate(vm.disks)
                  if d.sr_content_type != "iso" and sizes[i] > 0
                  and (d.vdi_type != "suspend" or preserve_power_state)]
    folder_idx.sort(key=lambda i: vdi_ids[i])
    target = folder_idx[0] if folder_idx else None
    needs_disk = fault not in (None, "not_tar", "bad_ova_xml", "oversized_ova_xml",
                               "absolute_name", "stray_member", "outside_folder")
    if needs_disk and target is None:
        raise ValueError(f"fault {fault!r} needs a disk with a tar folder")
    if fault == "counter_decrease" and sizes[target] <= 2 * CHUNK:
        raise ValueError("fault 'counter_decrease' needs a disk of at least 3 chunks")
    if fault == "truncate" and sizes[target] < 2:
        raise ValueError("fault 'truncate' needs a disk of at least 2 bytes")
    if fault == "chunk_larger" and sizes[target] <= CHUNK:
        raise ValueError("fault 'chunk_larger' needs a disk of at least 2 chunks")

    result = {
        "refs": vdi_ids, "ova_xml": ova_xml, "vm_ref": vm_id, "vm_uuid": vm_uuid,
        "vdi_uuids": vdi_uuids,
        "folders": [vdi_ids[i] for i in folder_idx
                    if not (fault == "missing_folder" and i == target)],
        "disks": [{"ref": vdi_ids[i], "virtual_size": sizes[i], "folder": i in folder_idx,
                   "data_members": 0, "keepalives": 0, "omitted": 0}
                  for i in range(len(vm.disks))],
        "members": [], "tar_bytes": 0, "fault": fault,
        "fault_target": vdi_ids[target] if target is not None else None,
    }

    # ---- output plumbing -----------------------------------------------------------------
    own = None
    if isinstance(out, (str, bytes, os.PathLike)):
        own = open(out, "wb")
        raw = own
    else:
        raw = out
    comp = None
    if compression == "gzip":
        comp = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0, filename="")
        f = comp
    elif compression == "zstd":
        import zstandard
        comp = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        f = comp
    else:
        f = raw
    tar = _TarOut(f, vm.legacy_types)
    try:
        try:
            _write_stream(tar, vm, result, ova_xml, folder_idx, target, vdi_ids, sizes,
                          checksum, keepalives, keep_zero_chunks, fault, pad_last_chunk)
        except _Stop:
            pass
        if comp is not None:
            comp.close()
        raw.flush()
    finally:
        if own is not None:
            own.close()
    result["members"] = tar.members
    result["tar_bytes"] = tar.pos
    return result


def _write_stream(tar: _TarOut, vm: VM, result, ova_xml, folder_idx, target, vdi_ids, sizes,
                  checksum, keepalives, keep_zero, fault, pad_last=False):
    ext = CHECKSUM_EXT.get(checksum)
    ova_bytes = ova_xml.encode("utf-8")

    if fault == "not_tar":
        tar._w(random.Random(0x58A).randbytes(64 * 1024))
        return
    if fault == "oversized_ova_xml":
        tar.header("ova.xml", 100 * 2**20)
        tar._w(ova_bytes + b" " * (4096 - len(ova_bytes) % 4096))
        return

    def put_checksum(name, data, bad=False):
        if ext is None:
            return
        text = chunk_checksum(checksum, data)
        if bad:
            text = ("NOT-A-CHECKSUM!" * 3)[:len(text)]
        tar.member(name + ext, text.encode("ascii"))

    def put_disk(i):
        info = result["disks"][i]
        src = _Source(vm.disks[i].image, sizes[i])
        prefix = vdi_ids[i]
        is_t = i == target
        ka = keepalives.get(i)
        forced = ()
        if is_t and fault == "counter_decrease":
            ka, forced = None, (1, 2)
        elif is_t and fault == "chunk_larger":
            forced = (1,)
        try:
            events = _disk_events(src, ka, keep_zero, forced)
            if is_t and fault == "counter_decrease":
                first3 = [next(events), next(events), next(events)]
                events = iter([first3[0], first3[2], first3[1]] + list(events))
            corrupted = bad_done = False
            first_len = None
            last_counter = -1
            data_positions = []
            for kind, cnt, pos, data in events:
                name = "%s/%08d" % (prefix, cnt)
                last_counter = max(last_counter, cnt)
                if kind == "keepalive":
                    info["keepalives"] += 1
                    tar.member(name, b"")
                    put_checksum(name, b"")
                    continue
                info["data_members"] += 1
                data_positions.append(pos)
                if pad_last and pos == (sizes[i] - 1) // CHUNK and len(data) < CHUNK:
                    data = bytes(data) + bytes(CHUNK - len(data))
                if first_len is None:
                    first_len = len(data)
                if is_t and fault == "chunk_larger" and pos == 1:
                    data = bytes(data)[:first_len] + bytes(first_len - len(data)) \
                        + b"\x5a" * 4096
                if is_t and fault == "truncate" and len(data) >= 2:
                    tar.header(name, len(data))
                    tar._w(data[:len(data) // 2])
                    raise _Stop()
                csum_data = data
                if is_t and fault == "corrupt_chunk" and not corrupted \
                        and (any(data) or pos == (sizes[i] - 1) // CHUNK):
                    b = bytearray(data)
                    j = next((k for k, x in enumerate(b) if x), len(b) // 2)
                    b[j] ^= 0xFF
                    tar.member(name, b)
                    corrupted = True
                else:
                    tar.member(name, data)
                put_checksum(name, csum_data,
                             bad=is_t and fault == "bad_checksum_format" and not bad_done)
                bad_done = True
                if is_t and fault == "counter_repeat" and pos == 0:
                    tar.member(name, data)
                    put_checksum(name, data)
            n_chunks = (sizes[i] + CHUNK - 1) // CHUNK
            info["omitted"] = n_chunks - len(set(data_positions))
            if is_t and fault == "past_virtual_size":
                extra = b"\xa5" * CHUNK
                name = "%s/%08d" % (prefix, last_counter + 1)
                tar.member(name, extra)
                put_checksum(name, extra)
        finally:
            src.close()

    order = list(folder_idx)
    if fault == "first_not_ova":
        put_disk(target)
        order.remove(target)
    if fault == "bad_ova_xml":
        tar.member("ova.xml", b"this is not XML at all <<< \x00\x01 >>>\n")
    else:
        tar.member("ova.xml", ova_bytes)
    if fault == "dotdot_name":
        tar.member("%s/../../etc/x" % vdi_ids[target], b"pwned\n")
    elif fault == "absolute_name":
        tar.member("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    elif fault == "stray_member":
        tar.member("stray.txt", b"not part of an XVA\n")
    if fault == "missing_folder":
        order.remove(target)
    stray_done = fault != "outside_folder"
    for i in order:
        if not stray_done and "Ref:99999" < vdi_ids[i]:
            _put_stray(tar, put_checksum)
            stray_done = True
        put_disk(i)
    if not stray_done:
        _put_stray(tar, put_checksum)
    tar.end()


def _put_stray(tar, put_checksum):
    data = b"\x42" * CHUNK
    tar.member("Ref:99999/00000000", data)
    put_checksum("Ref:99999/00000000", data)


def read_chunk_map(members):
    """Helper for tests: given [(name, size)] of a disk folder, return the byte offset of each
    data member by xapi's sequential rule (offset += gap * 1 MiB + len)."""
    offsets = {}
    prev = -1
    off = 0
    for name, size in members:
        cnt = int(name.rsplit("/", 1)[1])
        off += (cnt - prev - 1) * CHUNK
        offsets[name] = off
        off += size
        prev = cnt
    return offsets


__all__ = ["CHUNK", "FAULTS", "Disk", "Nic", "VM", "write_xva", "v7_header", "chunk_checksum",
           "to_xmlrpc_value", "read_chunk_map"]


if __name__ == "__main__":  # pragma: no cover - manual use: python xva_writer.py out.xva
    import sys
    r = write_xva(sys.argv[1], VM())
    print(r["refs"], r["tar_bytes"])
