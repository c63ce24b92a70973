# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libvirt directory storage pool, defined, built, started and marked autostart idempotently
(the logic behind kvm_pool)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.binding import libvirt


class PoolError(Exception):
    pass


def pool_xml(name, path):
    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(pool, encoding="unicode")


def _pool_type_and_path(pool):
    root = ET.fromstring(pool.XMLDesc(0))
    return root.get("type"), (root.findtext("target/path") or "").rstrip("/") or "/"


def _lookup(conn, name):
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def ensure_dir_pool(conn, name, path, autostart=True, check_mode=False):
    """Define, build (the directory), start and set autostart on a dir pool ``name`` at ``path``.

    Returns (changed, actions). A pool of that name at another path or of another type is an
    error: moving a pool under its volumes is not this function's call."""
    path = os.path.normpath(path)
    actions = []
    pool = _lookup(conn, name)
    if pool is None:
        actions.append("define")
        if not check_mode:
            pool = conn.storagePoolDefineXML(pool_xml(name, path), 0)
    else:
        pool_type, pool_path = _pool_type_and_path(pool)
        if (pool_type, pool_path) != ("dir", path):
            raise PoolError("storage pool %s exists as a %s pool at %s, not a dir pool at %s; remove it or choose "
                            "another name" % (name, pool_type, pool_path, path))
    if not os.path.isdir(path):
        actions.append("build")
        if not check_mode:
            pool.build(0)
    if pool is None or not pool.isActive():
        actions.append("start")
        if not check_mode:
            pool.create(0)
    if pool is None or bool(pool.autostart()) != bool(autostart):
        actions.append("autostart" if autostart else "no autostart")
        if not check_mode:
            pool.setAutostart(1 if autostart else 0)
    return bool(actions), actions
