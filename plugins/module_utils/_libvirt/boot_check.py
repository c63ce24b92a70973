# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait until a libvirt domain has booted (the logic behind kvm_boot_check).

Booted means: a login prompt appeared on the serial console, read from the log file that
libvirt's virtlogd writes for ``<serial><log file=.../>``, or the QEMU guest agent answered
``guest-ping``.  Only the part of the log written since the domain was started is searched
when this code starts it (libvirt truncates the log then unless ``append='on'``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time
import xml.etree.ElementTree as ET

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt.domain import (
    KvmDomainError, connect, domain_disk_paths, domain_state, find_domain, refuse_disks_in_use)

try:
    import libvirt
    import libvirt_qemu
except ImportError:
    libvirt = libvirt_qemu = None

DEFAULT_LOGIN_REGEX = r"^\S.* login: *$"
BANNER_LINES = 20
TAIL_LINES = 40
LOG_READ_MAX = 4 * 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


class BootCheckError(KvmDomainError):
    """Timeout or failure; ``details`` carries ``tail`` (the last console lines)."""


def serial_log(dom):
    """(path, append) of the first ``<serial>``/``<console>`` log of the domain, or (None, False)."""
    root = ET.fromstring(dom.XMLDesc(0))
    for xpath in ("devices/serial/log", "devices/console/log"):
        log = root.find(xpath)
        if log is not None and log.get("file"):
            return log.get("file"), log.get("append") == "on"
    return None, False


def console_lines(path, offset=0):
    """The console text written since ``offset``, as clean lines (CR and escapes dropped)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(offset, size - LOG_READ_MAX) if size >= offset else 0
            f.seek(start)
            data = f.read()
    except (IOError, OSError):
        return []
    text = _ANSI.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "\n")
    return [line.rstrip("\x00") for line in text.split("\n")]


def find_login(lines, regex):
    """Index of the last line matching ``regex``, or None."""
    for index in range(len(lines) - 1, -1, -1):
        if regex.search(lines[index]):
            return index
    return None


def agent_ping(dom, timeout=2):
    try:
        libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}', timeout, 0)
    except libvirt.libvirtError:
        return False
    return True


def tail(lines, count=TAIL_LINES):
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines[-count:])


# libvirt's virDomainState / virDomainPausedReason / virDomainDiskErrorCode values (stable ABI)
_PAUSED, _PAUSED_IOERROR = 3, 5
_DISK_ERRORS = {1: "an I/O error", 2: "no space left on the KVM host's filesystem holding it"}


def io_error_pause(dom):
    """What stopped the guest when qemu paused it on a disk error, else None.

    qemu pauses a guest whose image write fails with ENOSPC (its default werror=enospc) rather
    than hand the guest an error; without this the guest would sit paused until the timeout.
    """
    state, reason = dom.state()[:2]
    if state != _PAUSED or reason != _PAUSED_IOERROR:
        return None
    try:
        errors = dom.diskErrors() or {}
    except libvirt.libvirtError:
        errors = {}
    found = ["%s: %s" % (disk, _DISK_ERRORS.get(code, "error %s" % code))
             for disk, code in sorted(errors.items()) if code]
    return "; ".join(found) or "a disk error libvirt did not name"


# systemd's word that the getty of the first serial port will never start (after udev did not
# bring up /dev/ttyS0 within the device timeout, say); it is not retried, so no login prompt can
# come on the console this check reads.  The unit name may be cut to fit the console width.
_SERIAL_GETTY_DEPENDENCY_FAILED = re.compile(r"Dependency failed for .*Serial Getty on ttyS0\b")


def serial_getty_failure(lines):
    """systemd's console line saying the ttyS0 getty will not start, or None."""
    for line in lines:
        if _SERIAL_GETTY_DEPENDENCY_FAILED.search(line):
            return line.strip()
    return None


def _probe(dom, log_path, offset, regex, wait_for):
    """One look: ("login"|"agent", lines) when booted, (None, lines) otherwise."""
    lines = console_lines(log_path, offset) if log_path else []
    if wait_for in ("login", "any") and lines:
        index = find_login(lines, regex)
        if index is not None:
            return "login", lines[max(0, index + 1 - BANNER_LINES):index + 1]
    if wait_for in ("agent", "any") and agent_ping(dom):
        return "agent", lines[-BANNER_LINES:]
    return None, lines


def boot_check(params, check_mode=False, clock=time.monotonic, sleep=time.sleep):
    """Start the domain if asked and wait until it booted; returns the module result."""
    regex = re.compile(params.get("login_regex") or DEFAULT_LOGIN_REGEX)
    wait_for = params.get("wait_for") or "any"
    timeout = float(params.get("timeout") or 300)
    interval = float(params.get("poll_interval") or 1.0)
    conn = connect(params.get("uri") or "qemu:///system")
    try:
        dom = find_domain(conn, params["name"])
        if dom is None:
            raise BootCheckError("domain %s does not exist" % params["name"])
        log_path, append = serial_log(dom)
        log_path = params.get("console_log") or log_path
        if wait_for == "login" and not log_path:
            raise BootCheckError("domain %s has no serial log file: give console_log or use "
                                 "wait_for=agent" % params["name"])
        result = {"changed": False, "started": False, "console_log": log_path or "",
                  "method": "", "seconds": 0.0, "banner": ""}
        running = bool(dom.isActive())
        if not running and not params.get("start", True):
            raise BootCheckError("domain %s is not running and start=false" % params["name"])
        if not running:
            refuse_disks_in_use(params["name"], domain_disk_paths(dom), dom)
        if check_mode:
            method, lines = _probe(dom, log_path, 0, regex, wait_for) if running else (None, [])
            result.update(changed=not running, started=not running, method=method or "",
                          banner="\n".join(lines) if method else "", state=domain_state(dom))
            return result
        offset = 0
        t0 = clock()
        if not running:
            if append and log_path and os.path.exists(log_path):
                offset = os.path.getsize(log_path)
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                raise BootCheckError("starting domain %s failed: %s" % (params["name"], exc))
            result.update(changed=True, started=True)
            t0 = clock()
        while True:
            method, lines = _probe(dom, log_path, offset, regex, wait_for)
            elapsed = clock() - t0
            if method:
                result.update(method=method, seconds=round(elapsed, 1), banner="\n".join(lines),
                              state=domain_state(dom))
                return result
            disk_error = io_error_pause(dom)
            if disk_error:
                raise BootCheckError(
                    "domain %s paused after %.0f s on a disk error (%s); last console lines:\n%s"
                    % (params["name"], elapsed, disk_error, tail(lines)), tail=tail(lines),
                    started=result["started"], changed=result["changed"], seconds=round(elapsed, 1),
                    state="paused")
            getty_failure = serial_getty_failure(lines) if wait_for == "login" else None
            if getty_failure:
                raise BootCheckError(
                    "domain %s: no login prompt can come on its serial console after %.0f s: systemd "
                    "says '%s' (the guest may be up otherwise: wait_for=any also takes an answer from "
                    "its guest agent); last console lines (%s):\n%s"
                    % (params["name"], elapsed, getty_failure, log_path, tail(lines)), tail=tail(lines),
                    started=result["started"], changed=result["changed"], seconds=round(elapsed, 1))
            if not dom.isActive():
                raise BootCheckError(
                    "domain %s stopped after %.0f s before it booted; last console lines:\n%s"
                    % (params["name"], elapsed, tail(lines)), tail=tail(lines),
                    started=result["started"], changed=result["changed"])
            if elapsed >= timeout:
                what = {"login": "no login prompt", "agent": "no answer from the guest agent",
                        "any": "neither a login prompt nor the guest agent"}[wait_for]
                raise BootCheckError(
                    "domain %s: %s after %.0f s; last console lines (%s):\n%s"
                    % (params["name"], what, elapsed, log_path or "no console log", tail(lines)),
                    tail=tail(lines), started=result["started"], changed=result["changed"],
                    seconds=round(elapsed, 1))
            sleep(min(interval, max(0.05, timeout - elapsed)))
    finally:
        conn.close()
