# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Define, start and remove a migrated VM's libvirt domain (the logic behind kvm_domain).

Idempotence: on a real run the XML is always defined and libvirt's own stored inactive XML is
compared before and after (``domain_xml.canonical``: libvirt may store the controllers in
another order), so ``changed`` is exact whatever libvirt normalizes.  Check mode
cannot define, so it compares the built XML with the stored one through
``domain_xml.compare_with_stored`` (only what the builder writes is compared).  The existing
UUID, the ``migrated-at`` time and a versioned machine type are carried over, so a rerun with
the same input gives the same definition.  See docs/kvm_domain.md.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import grp
import os
import pwd
import stat
import struct
import subprocess
import xml.etree.ElementTree as ET

from ansible_collections.xen2kvm.migration.plugins.module_utils._in_use import image_holders
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import libvirt
from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain_xml import (
    UNKNOWN_IMAGE, DomainXMLError, build_domain_xml, canonical, compare_with_stored, format_from_path,
    interfaces, link_differences, link_state_of, nvram_reset_reason, read_metadata, recorded_images, sanitize_name,
    validate_link_state, validate_name, with_link_state)

POOL_TYPES = ("dir", "fs", "netfs")
QEMU_USER, QEMU_GROUP = "libvirt-qemu", "kvm"

_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff",
           6: "crashed", 7: "pmsuspended"}


class KvmDomainError(Exception):
    """A failure to report with fail_json; ``details`` go into the result."""

    def __init__(self, msg, **details):
        super(KvmDomainError, self).__init__(msg)
        self.details = details


def connect(uri):
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise KvmDomainError("cannot connect to libvirt at %s: %s" % (uri, exc))


def find_domain(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise KvmDomainError("cannot look up domain %s: %s" % (name, exc))


def domain_state(dom):
    return _STATES.get(dom.state()[0], "unknown") if dom is not None else "absent"


def domain_info(dom, name=None):
    if dom is None:
        return {"name": name, "uuid": "", "state": "absent"}
    return {"name": dom.name(), "uuid": dom.UUIDString(), "state": domain_state(dom)}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- disks


def sniff_format(path):
    """qcow2 when the file starts with the qcow2 magic, raw when readable, None otherwise.

    A qcow2 header naming a backing file is refused: an image coming from another hypervisor
    must be self-contained, and a backing file could point at any host file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except (IOError, OSError):
        return None
    if head[:4] == b"QFI\xfb":
        if len(head) == 16 and struct.unpack(">Q", head[8:16])[0]:
            raise KvmDomainError("%s is a qcow2 image with a backing file: refusing it" % path)
        return "qcow2"
    return "raw"


def resolve_disks(disks):
    """The ``disks`` option as dicts with a ``format``: given, else file name, else header."""
    result = []
    for pos, item in enumerate(disks or []):
        entry = {"path": item} if isinstance(item, str) else dict(item or {})
        if not entry.get("path"):
            raise KvmDomainError("disks[%d] must be a path or a dict with a 'path'" % pos)
        if not entry.get("format"):
            entry["format"] = format_from_path(entry["path"]) or sniff_format(entry["path"])
        result.append(entry)
    return result


def _pool_owner(root):
    """uid, gid for images placed in a pool: its target permissions when they name a
    non-root owner, else libvirt-qemu:kvm (None when those don't exist here)."""
    perms = root.find("target/permissions")
    uid = gid = None
    if perms is not None:
        try:
            uid = int(perms.findtext("owner", "-1"))
            gid = int(perms.findtext("group", "-1"))
        except ValueError:
            uid = gid = None
    if uid is None or uid <= 0:
        try:
            uid = pwd.getpwnam(QEMU_USER).pw_uid
        except KeyError:
            uid = None
    if gid is None or gid <= 0:
        try:
            gid = grp.getgrnam(QEMU_GROUP).gr_gid
        except KeyError:
            gid = None
    return uid, gid


def _copy_sparse(src, dst):
    try:
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", src, dst], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KvmDomainError("copying %s to %s failed: %s"
                             % (src, dst, getattr(exc, "stderr", b"").decode() or exc))


def _place(src, dst, action, uid, gid):
    tmp = dst + ".x2k-part"
    if action == "move":
        try:
            os.rename(src, tmp)
        except OSError:
            _copy_sparse(src, tmp)
    else:
        _copy_sparse(src, tmp)
    os.chmod(tmp, 0o600)
    if uid is not None or gid is not None:
        os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
    os.rename(tmp, dst)
    if action == "move" and os.path.exists(src):
        os.unlink(src)


def place_in_pool(conn, pool_name, disks, action, check_mode):
    """Move (or copy) the images into a directory pool; returns (disks, changed, placed)."""
    try:
        pool = conn.storagePoolLookupByName(pool_name)
        root = ET.fromstring(pool.XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise KvmDomainError("storage pool %s: %s" % (pool_name, exc))
    if root.get("type") not in POOL_TYPES:
        raise KvmDomainError("storage pool %s is of type %s; only %s pools hold image files"
                             % (pool_name, root.get("type"), "/".join(POOL_TYPES)))
    target = root.findtext("target/path")
    if not target or not os.path.isdir(target):
        raise KvmDomainError("storage pool %s has no usable target path (%s)" % (pool_name, target))
    uid, gid = _pool_owner(root)
    result, placed = [], []
    for disk in disks:
        src = disk["path"]
        dst = os.path.join(target, os.path.basename(src))
        disk = dict(disk, path=dst)
        result.append(disk)
        if os.path.realpath(os.path.dirname(src)) == os.path.realpath(target):
            continue
        if os.path.exists(dst):
            if not os.path.exists(src) or os.path.samefile(src, dst):
                continue
            if action == "copy" and os.path.getsize(src) == os.path.getsize(dst):
                continue
            raise KvmDomainError("%s already exists in pool %s and differs from %s: remove one"
                                 % (dst, pool_name, src))
        if not os.path.exists(src):
            raise KvmDomainError("disk image %s does not exist" % src)
        placed.append({"src": src, "dest": dst, "action": action})
        if not check_mode:
            _place(src, dst, action, uid, gid)
    if not check_mode and pool.isActive() and (placed or _not_yet_volumes(pool, result)):
        pool.refresh(0)
    return result, bool(placed), placed


def _not_yet_volumes(pool, disks):
    """True when an image already in the pool's directory (converted there: nothing to place) is
    not one of its volumes: libvirt lists only the files it saw at its last refresh."""
    known = set(pool.listVolumes())
    return any(os.path.basename(disk["path"]) not in known for disk in disks)


# ---------------------------------------------------------------------------- define


def _owned(meta, spec):
    """True when the x2k metadata says this domain was migrated from ``spec``'s VM."""
    if meta is None:
        return False
    if not spec:
        return True
    if spec.get("uuid"):
        return meta.get("source-uuid") == spec["uuid"]
    return meta.get("source-name") == spec.get("name", "")


def _free_uuid(conn, uuid):
    """The Xen VM uuid when no other domain uses it (the guest then keeps its SMBIOS uuid)."""
    if not uuid:
        return None
    try:
        conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return uuid
    return None


def image_ids(disks):
    """The inode number of each disk image file ("-" for a block device or a missing file):
    what tells the images a UEFI domain's NVRAM was made for from a later conversion's."""
    ids = []
    for disk in disks:
        try:
            st = os.stat(disk["path"])
        except OSError:
            ids.append(UNKNOWN_IMAGE)
            continue
        ids.append(str(st.st_ino) if stat.S_ISREG(st.st_mode) else UNKNOWN_IMAGE)
    return ids


def reset_nvram(conn, dom, xml):
    """Start the inactive domain's NVRAM again from OVMF's template: libvirt deletes the file
    when undefining with VIR_DOMAIN_UNDEFINE_NVRAM (it knows the path even when the firmware is
    autoselected, which libvirt 9.0 does only at start), and the next start copies the template.
    ``xml`` (what was just defined) is defined again with the domain's uuid: libvirt's own stored
    XML would come back with its devices in another order, and the next rerun would see a change.
    Autostart is kept."""
    root = ET.fromstring(xml)
    if root.find("uuid") is None:
        uuid_el = ET.Element("uuid")
        uuid_el.text = dom.UUIDString()
        root.insert(1, uuid_el)
        xml = ET.tostring(root, encoding="unicode")
    autostart = dom.autostart()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise KvmDomainError("the domain was undefined to reset its NVRAM and libvirt refused to define it "
                             "again: %s" % exc, xml=xml)
    if autostart:
        dom.setAutostart(1)
    return dom


def domain_name(params):
    if params.get("name"):
        return validate_name(params["name"])
    spec = params.get("spec") or {}
    return validate_name(sanitize_name(spec.get("name", "")))


def define(conn, params, check_mode):
    """Build and define the domain; returns a partial result dict and the domain (or None)."""
    spec = params["spec"]
    name = domain_name(params)
    disks = resolve_disks(params.get("disks"))
    pool_changed, placed = False, []
    if params.get("pool"):
        disks, pool_changed, placed = place_in_pool(conn, params["pool"], disks,
                                                    params.get("pool_action") or "move",
                                                    check_mode)
        disks = resolve_disks(disks)  # a rerun finds the images only in the pool
    dom = find_domain(conn, name)
    before = ""
    uuid, migrated_at, machine = None, params.get("migrated_at") or "", None
    owned, recorded = False, None
    if dom is not None:
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        root = ET.fromstring(before)
        meta = read_metadata(root)
        owned = _owned(meta, spec)
        recorded = recorded_images(root)
        if not owned:
            if not params.get("force"):
                why = "it has no xen2kvm metadata" if meta is None else \
                    "it was migrated from another VM (source uuid %s)" % meta.get("source-uuid")
                raise KvmDomainError("a domain named %s already exists and %s: not overwriting it "
                                     "without force=true" % (name, why), domain=domain_info(dom))
        elif not migrated_at:
            migrated_at = meta.get("migrated-at", "")
        uuid = dom.UUIDString()
        type_el = root.find("os/type")
        machine = type_el.get("machine") if type_el is not None else None
    else:
        uuid = _free_uuid(conn, spec.get("uuid"))
    build_args = dict(
        disks=disks, network_map=params.get("network_map"),
        default_network=params.get("default_network"), domain_type=params.get("domain_type") or "kvm",
        name=name, vcpus=params.get("vcpus"), memory_mib=params.get("memory_mib"),
        machine=params.get("machine"), firmware=params.get("firmware"),
        graphics=params.get("graphics") or "none", uuid=uuid,
        migrated_at=migrated_at or utc_now(), existing_machine=machine,
        link_state=params.get("link_state") or "up")
    xml = build_domain_xml(spec, nvram_images=image_ids(disks), **build_args)
    reason = nvram_reset_reason(before or None, xml, owned, forced=bool(params.get("reset_nvram")))
    result = {"name": name, "disks": disks, "placed": placed, "nvram_reset": False, "nvram_reset_reason": "",
              "warnings": []}
    if reason and dom is not None and dom.isActive():
        # The running guest uses its NVRAM: the old record stays, so a run while it is shut off resets it.
        result["warnings"].append(
            "domain %s is running, so its NVRAM was not reset (%s); shut it down and run again to reset it"
            % (name, reason))
        xml = build_domain_xml(spec, nvram_images=recorded, **build_args)
        reason = None
    if check_mode:
        if dom is None:
            changed, b, a = True, "", xml
        else:
            changed, b, a = compare_with_stored(before, xml)
        result.update(xml_changed=changed, xml=xml, diff={"before": b, "after": a},
                      changed=changed or pool_changed or bool(reason),
                      nvram_reset=bool(reason), nvram_reset_reason=reason or "")
        return result, dom
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise KvmDomainError("libvirt refused the domain definition: %s" % exc, xml=xml)
    if reason:
        dom = reset_nvram(conn, dom, xml)
    after = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    changed = not before or canonical(after) != canonical(before)
    # The links of a running domain are switched live (sync_links): no restart for those.
    beyond_links = bool(before) and canonical(after, ignore_links=True) != canonical(before, ignore_links=True)
    result.update(xml_changed=changed, xml=after, diff={"before": before, "after": after},
                  changed=changed or pool_changed or bool(reason),
                  restart_needed=bool(beyond_links and dom.isActive()),
                  nvram_reset=bool(reason), nvram_reset_reason=reason or "")
    return result, dom


# ---------------------------------------------------------------------------- NIC links


def _update_device(dom, xml, flags, mac):
    try:
        dom.updateDeviceFlags(xml, flags)
    except libvirt.libvirtError as exc:
        raise KvmDomainError("setting the link of NIC %s of domain %s failed: %s" % (mac, dom.name(), exc),
                             domain=domain_info(dom))


def sync_links(dom, state, check_mode):
    """Set the link of every NIC of ``dom`` to ``state`` where it differs, in the running guest
    (no restart: the guest sees its cable plugged in or pulled) and in the stored definition.

    One virDomainUpdateDeviceFlags(LIVE|CONFIG) per NIC, with the NIC as the definition has it:
    the definition keeps everything else it says.  Should libvirt refuse that for the live NIC
    (the running NIC differs from its definition in more than the link: a restart is pending),
    the live NIC is updated from its own XML and the definition from its own.  Returns
    ``[{mac, live, config}]``, what changed (or would, in check mode) for each NIC."""
    state = validate_link_state(state)
    if dom is None:
        return []
    config = dict(interfaces(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    live = dict(interfaces(dom.XMLDesc(0))) if dom.isActive() else {}
    changes = []
    for mac in list(config) + [m for m in live if m not in config]:
        need_config = mac in config and link_state_of(config[mac]) != state
        need_live = mac in live and link_state_of(live[mac]) != state
        if not (need_config or need_live):
            continue
        changes.append({"mac": mac, "live": need_live, "config": need_config})
        if check_mode:
            continue
        if need_live and mac in config:
            try:
                dom.updateDeviceFlags(with_link_state(config[mac], state),
                                      libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                continue
            except libvirt.libvirtError:
                pass  # the running NIC is not what its definition says: each one on its own below
        if need_live:
            _update_device(dom, with_link_state(live[mac], state), libvirt.VIR_DOMAIN_AFFECT_LIVE, mac)
        if need_config:
            _update_device(dom, with_link_state(config[mac], state), libvirt.VIR_DOMAIN_AFFECT_CONFIG, mac)
    return changes


def set_links_only(conn, params, check_mode):
    """``state: defined`` without ``spec``: only the NICs' links of the existing domain ``name``
    change (the cut-over of a domain imported with its links down)."""
    name = domain_name(params)
    dom = find_domain(conn, name)
    if dom is None:
        raise KvmDomainError("domain %s does not exist: without spec, kvm_domain only sets the link state "
                             "of an existing domain's NICs" % name, domain=domain_info(None, name))
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if read_metadata(ET.fromstring(before)) is None and not params.get("force"):
        raise KvmDomainError("domain %s was not created by xen2kvm (it has no xen2kvm metadata): not changing "
                             "its links without force=true" % name, domain=domain_info(dom))
    changes = sync_links(dom, params["link_state"], check_mode)
    after = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if not check_mode else before
    if check_mode and changes:
        after = _with_all_links(before, params["link_state"])
    return {"changed": bool(changes), "domain": domain_info(dom, name), "xml": after,
            "xml_changed": any(c["config"] for c in changes), "started": False,
            "restart_needed": False, "link_changes": changes, "placed": [],
            "disks": [{"path": path} for path in _disk_sources(ET.fromstring(before))],
            "nvram_reset": False, "nvram_reset_reason": "", "diff": {"before": before, "after": after}}


def _link_changes(dom, res, state, check_mode):
    """What the spec run changed in the NICs' links: ``config`` where the definition (the stored
    one before ``define``) said otherwise, ``live`` where the running guest's NIC was switched
    (the definition already has the link: the running NICs follow it here)."""
    before = res["diff"]["before"]
    config = set(link_differences(before, state)) if before else set()
    live = set()
    if dom is not None and dom.isActive():
        live = set(c["mac"] for c in sync_links(dom, state, check_mode) if c["live"])
    macs = [mac for mac, _interface in interfaces(res["xml"])]
    return [{"mac": mac, "live": mac in live, "config": mac in config}
            for mac in macs + sorted((config | live) - set(macs)) if mac in config or mac in live]


def _with_all_links(xml, state):
    """``xml`` with every NIC's link set to ``state`` (what check mode shows as the after)."""
    root = ET.fromstring(xml)
    for interface in root.findall("devices/interface"):
        for link in interface.findall("link"):
            interface.remove(link)
        ET.SubElement(interface, "link", {"state": state})
    return ET.tostring(root, encoding="unicode")


def set_autostart(dom, wanted, check_mode):
    if wanted is None:
        return False
    current = bool(dom.autostart()) if dom is not None else False
    if current == wanted:
        return False
    if not check_mode:
        dom.setAutostart(1 if wanted else 0)
    return True


def refuse_disks_in_use(name, paths, dom=None):
    """KvmDomainError naming every holder when a disk image of the domain ``name`` is attached
    to a loop device, mounted from one, or held by a process: booting a VM on a disk the host
    is also writing to corrupts it.  Only called while the domain is not running, so no qemu of
    its own can be among the holders."""
    busy = []
    for path in paths:
        holders = image_holders(path)
        if holders:
            busy.append("%s is in use: %s" % (path, ", ".join(holders)))
    if busy:
        raise KvmDomainError("not starting domain %s: %s. Stop those processes, unmount and detach the loop "
                             "devices (umount, losetup -d) first" % (name, "; ".join(busy)),
                             domain=domain_info(dom, name))


def domain_disk_paths(dom):
    """The disk images (and block devices) the domain's definition uses, CD-ROMs left out."""
    return _disk_sources(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))


def start(dom, check_mode, name=None, disks=()):
    if dom is not None and dom.isActive():
        return False
    refuse_disks_in_use(dom.name() if dom is not None else name,
                        domain_disk_paths(dom) if dom is not None else [d["path"] for d in disks], dom)
    if not check_mode:
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            raise KvmDomainError("starting domain %s failed: %s" % (dom.name(), exc),
                                 domain=domain_info(dom))
    return True


# ---------------------------------------------------------------------------- absent


def _disk_sources(root):
    paths = []
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        if source is not None and (source.get("file") or source.get("dev")):
            paths.append(source.get("file") or source.get("dev"))
    return paths


def _remove_image(conn, path):
    try:
        vol = conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        vol = None
    if vol is not None:
        vol.delete(0)
    elif os.path.isfile(path):
        os.unlink(path)


def remove(conn, params, check_mode):
    spec = params.get("spec") or {}
    name = domain_name(params)
    dom = find_domain(conn, name)
    if dom is None:
        return {"changed": False, "name": name, "diff": {"before": "", "after": ""},
                "removed_disks": []}, None
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    root = ET.fromstring(before)
    if not _owned(read_metadata(root), spec) and not params.get("force"):
        raise KvmDomainError("domain %s was not created by xen2kvm (or not from this spec): not "
                             "removing it without force=true" % name, domain=domain_info(dom))
    disks = _disk_sources(root) if params.get("remove_disks") else []
    result = {"changed": True, "name": name, "diff": {"before": before, "after": ""},
              "removed_disks": disks}
    if check_mode:
        return result, dom
    try:
        if dom.isActive():
            dom.destroy()
        flags = 0
        for flag in ("VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
                     "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                     "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA"):
            flags |= getattr(libvirt, flag, 0)
        dom.undefineFlags(flags)
        for path in disks:
            _remove_image(conn, path)
    except (libvirt.libvirtError, OSError) as exc:
        raise KvmDomainError("removing domain %s failed: %s" % (name, exc))
    return result, None


# ---------------------------------------------------------------------------- entry point


def run(params, check_mode=False):
    """Everything kvm_domain does; returns the module result (``diff`` always included)."""
    state = params.get("state") or "defined"
    spec_less_links = state == "defined" and params.get("spec") is None and params.get("name") \
        and params.get("link_state")
    if state != "absent" and not isinstance(params.get("spec"), dict) and not spec_less_links:
        raise KvmDomainError("spec is required when state is %s (without spec, give name and link_state "
                             "to set only the link state of an existing domain's NICs)" % state)
    if state == "absent" and not params.get("name") and not (params.get("spec") or {}).get("name"):
        raise KvmDomainError("state=absent needs name or spec")
    conn = connect(params.get("uri") or "qemu:///system")
    try:
        try:
            if state == "absent":
                res, dom = remove(conn, params, check_mode)
                return {"changed": res["changed"], "domain": domain_info(dom, res["name"]),
                        "xml": "", "removed_disks": res["removed_disks"], "diff": res["diff"]}
            if not isinstance(params.get("spec"), dict):
                return set_links_only(conn, params, check_mode)
            res, dom = define(conn, params, check_mode)
            link_changes = _link_changes(dom, res, params.get("link_state") or "up", check_mode)
            changed = res["changed"] or any(c["live"] for c in link_changes)
            started = False
            if state == "running":
                started = start(dom, check_mode, res["name"], res["disks"])
            autostart_changed = set_autostart(dom, params.get("autostart"), check_mode)
            info = domain_info(dom, res["name"])
            if check_mode and started:
                info["state"] = "running"
            return {"changed": changed or started or autostart_changed, "domain": info,
                    "xml": res["xml"], "xml_changed": res["xml_changed"], "started": started,
                    "disks": res["disks"], "placed": res["placed"],
                    "restart_needed": res.get("restart_needed", False), "diff": res["diff"],
                    "nvram_reset": res["nvram_reset"], "nvram_reset_reason": res["nvram_reset_reason"],
                    "link_changes": link_changes, "warnings": res["warnings"]}
        except DomainXMLError as exc:
            raise KvmDomainError(str(exc))
        except libvirt.libvirtError as exc:
            raise KvmDomainError("libvirt error: %s" % exc)
    finally:
        conn.close()
