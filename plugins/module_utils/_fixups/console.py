# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "console": the Xen console (hvc0/xvc0) becomes tty0 + the serial port ttyS0.

The seed how-to deleted ``console=hvc0`` and was left with no serial console at all; here it
is redirected, so ``virsh console`` and the boot proof can read the guest.  Kernel arguments
live in several places and all of them are fixed: both ``GRUB_CMDLINE_LINUX`` variables
(virt-v2v only looks at the first one it finds), grub-legacy stanzas and their Debian
``# kopt=`` line, sysvinit's inittab, securetty and systemd's getty links.  grub-mkconfig reads
``/etc/default/grub.d/*.cfg`` after ``/etc/default/grub``, so what those files set wins and they
are fixed too.  Xen guest builders commented out the virtual-terminal gettys of inittab (a PV
guest has no screen); they come back when the Xen console getty goes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import devices

KVM_CONSOLES = ["console=tty0", "console=ttyS0,115200"]
_XEN_CONSOLE = re.compile(r"^console=(?:hvc|xvc)\d*(?:,.*)?$")
_XEN_ONLY_ARGS = re.compile(r"^(?:xencons|xen_emul_unplug|xen_pv_hvm|xen_nopvspin)(?:=.*)?$")
GETTY_WANTS = "/etc/systemd/system/getty.target.wants"
GRUB_DEFAULT_D = "/etc/default/grub.d"
_OURS = "#xen2kvm: "  # how fix_inittab comments out a line
_XEN_GETTY = re.compile(r"\b(?:hvc|xvc)\d+\b")
# "#2:23:respawn:/sbin/getty 38400 tty2": a virtual-terminal getty some Xen tool commented out.
_COMMENTED_VT_GETTY = re.compile(r"^#+[ \t]*(\w{1,4}:[^:\n]*:respawn:[^\n]*getty[^\n]*\btty\d+\b[^\n]*\n?)$")
_VT_GETTY_OF = re.compile(r"\btty(\d+)\b")


def fix_kernel_args(args, mapping=None, add_consoles=True, ifnames0=False):
    """One kernel command line (a string) fixed for KVM."""
    words = [w for w in args.split() if not _XEN_CONSOLE.match(w) and not _XEN_ONLY_ARGS.match(w)]
    if mapping is not None:
        words = [_rename_arg(w, mapping) for w in words]
    if add_consoles and not any(w.startswith("console=ttyS") for w in words):
        words = [w for w in words if w != "console=tty0"] + KVM_CONSOLES
    if ifnames0 and "net.ifnames=0" not in words:
        words.append("net.ifnames=0")
    return " ".join(words)


def _rename_arg(word, mapping):
    key, sep, value = word.partition("=")
    if sep and key in ("root", "resume") and value.startswith("/dev/"):
        return key + "=" + mapping.rename(value)
    return word


def _assignment(text, name):
    match = re.search(r"(?m)^%s=(.*)$" % re.escape(name), text)
    if not match:
        return None, None
    try:
        words = shlex.split(match.group(1))
    except ValueError:
        words = [match.group(1).strip("\"'")]
    return match, " ".join(words)


def _set_assignment(text, name, value):
    match, _old = _assignment(text, name)
    line = '%s="%s"' % (name, value.replace('"', '\\"'))
    if match:
        return text[:match.start()] + line + text[match.end():]
    return text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"


def fix_default_grub(text, mapping=None, ifnames0=False):
    """/etc/default/grub: consoles (and the device names) in both command line variables, and
    the grub menu on the serial port as well as the screen."""
    _m, linux = _assignment(text, "GRUB_CMDLINE_LINUX")
    _m, default = _assignment(text, "GRUB_CMDLINE_LINUX_DEFAULT")
    text = _set_assignment(text, "GRUB_CMDLINE_LINUX",
                           fix_kernel_args(linux or "", mapping, add_consoles=True, ifnames0=ifnames0))
    if default is not None:
        # The serial console belongs in GRUB_CMDLINE_LINUX (also used for recovery entries);
        # here the Xen console is dropped and nothing added twice.
        text = _set_assignment(text, "GRUB_CMDLINE_LINUX_DEFAULT",
                               " ".join(w for w in fix_kernel_args(default, mapping, add_consoles=False).split()
                                        if w not in KVM_CONSOLES and w != "net.ifnames=0"))
    if _assignment(text, "GRUB_TERMINAL")[0] is None:
        text = _set_assignment(text, "GRUB_TERMINAL", "console serial")
    if _assignment(text, "GRUB_SERIAL_COMMAND")[0] is None:
        text = _set_assignment(text, "GRUB_SERIAL_COMMAND", "serial --unit=0 --speed=115200")
    return text


def _fix_every_assignment(text, name, fix):
    """Apply ``fix`` to the value of every ``NAME=...`` line of a shell snippet."""
    def one(match):
        try:
            words = shlex.split(match.group(1), posix=True)
        except ValueError:
            words = [match.group(1).strip("\"'")]
        return '%s="%s"' % (name, fix(" ".join(words)).replace('"', '\\"'))
    return re.sub(r"(?m)^%s=(.*)$" % re.escape(name), one, text)


def _appends(value, name):
    return "$%s" % name in value or "${%s}" % name in value


def fix_default_grub_d(text, mapping=None, ifnames0=False):
    """A /etc/default/grub.d/*.cfg snippet, sourced after /etc/default/grub.  A value that
    extends the earlier one (``"$GRUB_CMDLINE_LINUX ..."``) only loses its Xen arguments; one
    that replaces it must carry the serial console itself."""
    def linux(value):
        if _appends(value, "GRUB_CMDLINE_LINUX"):
            return fix_kernel_args(value, mapping, add_consoles=False)
        return fix_kernel_args(value, mapping, add_consoles=True, ifnames0=ifnames0)

    def default(value):
        return " ".join(w for w in fix_kernel_args(value, mapping, add_consoles=False).split()
                        if w not in KVM_CONSOLES and w != "net.ifnames=0")

    text = _fix_every_assignment(text, "GRUB_CMDLINE_LINUX", linux)
    return _fix_every_assignment(text, "GRUB_CMDLINE_LINUX_DEFAULT", default)


def grub_default_d_files(guest):
    """The guest's /etc/default/grub.d/*.cfg, in the order grub-mkconfig sources them."""
    return ["%s/%s" % (GRUB_DEFAULT_D, name) for name in guest.listdir(GRUB_DEFAULT_D) if name.endswith(".cfg")]


def fix_menu_lst(text, mapping=None, ifnames0=False):
    """grub-legacy: ``kernel`` lines and the Debian ``# kopt=`` / ``# groot`` automagic lines."""
    def kernel_line(match):
        head, image, args = match.group(1), match.group(2), match.group(3) or ""
        return head + image + " " + fix_kernel_args(args, mapping, ifnames0=ifnames0)

    text = re.sub(r"(?m)^(\s*kernel\s+)(\S+)[ \t]*(.*)$", kernel_line, text)
    text = re.sub(r"(?m)^(#\s*kopt=)(.*)$",
                  lambda m: m.group(1) + fix_kernel_args(m.group(2), mapping, ifnames0=ifnames0), text)
    return devices.rename_in_words(text, mapping) if mapping is not None else text


def _active_vt_gettys(lines):
    """Numbers of the virtual terminals (tty1...) an active inittab line runs a getty on."""
    numbers = set()
    for line in lines:
        fields = line.split(":")
        if not line.lstrip().startswith("#") and len(fields) >= 4 and "getty" in fields[3]:
            numbers.update(_VT_GETTY_OF.findall(fields[3]))
    return numbers


def _restore_vt_gettys(lines):
    """Un-comment the tty gettys a Xen tool commented out; a getty it moved from ttyN to the Xen
    console (same id N) gets its ttyN line back."""
    out = []
    for line in lines:
        match = _COMMENTED_VT_GETTY.match(line)
        out.append(match.group(1) if match else line)
    active = _active_vt_gettys(out)
    restored = []
    for line in out:
        if restored and not restored[-1].endswith("\n"):
            restored[-1] += "\n"
        restored.append(line)
        original = line[len(_OURS):] if line.startswith(_OURS) else ""
        fields = original.split(":")
        console = _XEN_GETTY.search(fields[3]) if len(fields) >= 4 else None
        if console and fields[0].strip().isdigit() and fields[0].strip() not in active:
            restored.append(original.replace(console.group(0), "tty" + fields[0].strip(), 1))
            active.add(fields[0].strip())
    return restored


def fix_inittab(text):
    """Comment out the hvc0/xvc0 gettys, make sure one runs on ttyS0, and bring back the
    virtual-terminal gettys the Xen setup commented out."""
    out = []
    has_serial = False
    xen_getty = False
    used_ids = set()
    for line in text.splitlines(True):
        fields = line.split(":")
        if not line.lstrip().startswith("#") and len(fields) >= 4:
            used_ids.add(fields[0].strip())
            if _XEN_GETTY.search(fields[3]):
                out.append(_OURS + line)
                xen_getty = True
                continue
            if re.search(r"\bttyS0\b", fields[3]):
                has_serial = True
        out.append(line)
    if xen_getty:
        out = _restore_vt_gettys(out)
    text = "".join(out)
    if not has_serial:
        ident = "T0" if "T0" not in used_ids else "x2k0"
        text += ("" if text.endswith("\n") or not text else "\n") + \
            "%s:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n" % ident
    return text


def fix_securetty(text):
    lines = text.splitlines()
    if "ttyS0" in (line.strip() for line in lines):
        return text
    return text + ("" if text.endswith("\n") or not text else "\n") + "ttyS0\n"


def apply(guest, mapping=None, ifnames0=False):
    """Fixup entry point."""
    for path, transform in (("/etc/default/grub", lambda t: fix_default_grub(t, mapping, ifnames0)),
                            ("/boot/grub/menu.lst", lambda t: fix_menu_lst(t, mapping, ifnames0)),
                            ("/etc/inittab", fix_inittab),
                            ("/etc/securetty", fix_securetty)):
        text = guest.read(path)
        if text is not None:
            guest.write(path, transform(text), "Xen console -> tty0 + ttyS0")
    for path in grub_default_d_files(guest):
        text = guest.read(path)
        if text is not None:
            guest.write(path, fix_default_grub_d(text, mapping, ifnames0),
                        "Xen console -> tty0 + ttyS0 (read after /etc/default/grub)")
    for name in guest.listdir(GETTY_WANTS):
        if re.match(r"^(?:serial-)?getty@(?:hvc|xvc)\d+\.service$", name):
            guest.remove("%s/%s" % (GETTY_WANTS, name),
                         "no Xen console on KVM; systemd starts a getty on the console= device")
