# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "firstboot": what only the running guest can do, done once at its first boot on KVM.

A one-shot systemd unit (or, on sysvinit, an init script in runlevels 2-5) runs the commands
collected by the other fixups -- the final ``grub-install /dev/vda`` and ``update-grub`` that
the seed how-to typed by hand, installing qemu-guest-agent when the chroot had no mirror -- logs
to /var/log/xen2kvm-firstboot.log and then removes itself.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SCRIPT = "/usr/local/sbin/xen2kvm-firstboot"
UNIT = "/etc/systemd/system/xen2kvm-firstboot.service"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/xen2kvm-firstboot.service"
INITSCRIPT = "/etc/init.d/xen2kvm-firstboot"
RC_LINKS = ["/etc/rc%d.d/S99xen2kvm-firstboot" % level for level in (2, 3, 4, 5)]

UNIT_TEXT = """[Unit]
Description=xen2kvm: finish the migration from Xen (runs once)
After=network-online.target local-fs.target
Wants=network-online.target
ConditionPathExists=%(script)s

[Service]
Type=oneshot
ExecStart=%(script)s
RemainAfterExit=no
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
""" % {"script": SCRIPT}

INITSCRIPT_TEXT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          xen2kvm-firstboot
# Required-Start:    $local_fs $network $remote_fs
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: xen2kvm: finish the migration from Xen (runs once)
### END INIT INFO
case "$1" in
  start) [ -x %(script)s ] && %(script)s ;;
esac
exit 0
""" % {"script": SCRIPT}


def with_fresh_package_lists(commands):
    """``commands`` with an ``apt-get update`` before the first ``apt-get install``: the package
    lists in a migrated image are as old as its last update under Xen, and the versions they name
    may be gone from the mirror."""
    commands = list(commands)
    for index, command in enumerate(commands):
        if command.startswith("apt-get update"):
            break
        if command.startswith("apt-get install"):
            commands.insert(index, "apt-get update")
            break
    return commands


def script_text(commands):
    """The one-shot script: each command logged, failures logged but not fatal, then removal."""
    commands = with_fresh_package_lists(commands)
    body = ["#!/bin/sh",
            "# xen2kvm first boot on KVM: runs once, then removes itself.",
            "exec >>/var/log/xen2kvm-firstboot.log 2>&1",
            'echo "xen2kvm firstboot $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
            "export DEBIAN_FRONTEND=noninteractive"]
    for command in commands:
        body.append("echo '+ %s'" % command.replace("'", "'\\''"))
        body.append("%s || echo 'failed: %s'" % (command, command.replace("'", "'\\''")))
    body += ["rm -f %s %s %s %s" % (UNIT_LINK, UNIT, INITSCRIPT, " ".join(RC_LINKS)),
             "rm -f %s" % SCRIPT, "exit 0", ""]
    return "\n".join(body)


def apply(guest, facts, commands):
    """Fixup entry point: install the one-shot job for ``commands`` (nothing when empty)."""
    if not commands:
        return
    guest.write(SCRIPT, script_text(commands), "work only the running guest can do", mode=0o755)
    if facts["init"]["init"] == "sysvinit":
        guest.write(INITSCRIPT, INITSCRIPT_TEXT, "run the first-boot job once (sysvinit)", mode=0o755)
        for link in RC_LINKS:
            guest.symlink("../init.d/xen2kvm-firstboot", link, "start the first-boot job")
    else:
        guest.write(UNIT, UNIT_TEXT, "run the first-boot job once (systemd)", mode=0o644)
        guest.symlink("/etc/systemd/system/xen2kvm-firstboot.service", UNIT_LINK, "start the first-boot job")
