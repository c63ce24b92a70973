# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about a guest operating system, read from its files.

Everything here is a pure function over a tree (``_guest.access``: the libguestfs appliance, or
a host directory for the chroot engine and small fake trees in tests): no mounts, no guest
binaries run. That keeps inspection safe on a guest we do not trust yet.  A host directory
path is accepted wherever a tree is.
"""

import os
import re

from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.access import as_tree, guest_glob, read_text
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import mbr_boot_loader, mbr_has_boot_code

DEBIAN_CODENAMES = {
    "5": "lenny", "6": "squeeze", "7": "wheezy", "8": "jessie", "9": "stretch",
    "10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie", "14": "forky",
}
DEBIAN_LIKE = ("debian", "ubuntu", "devuan", "raspbian", "linuxmint", "kali", "pop")
RHEL_LIKE = ("rhel", "centos", "fedora", "rocky", "almalinux", "ol", "scientific", "amzn",
             "cloudlinux", "eurolinux", "xenenterprise")
# /etc/redhat-release names, in the order they are looked for, and the os-release ID of each.
REDHAT_RELEASE_NAMES = (("centos", "centos"), ("red hat", "rhel"), ("fedora", "fedora"), ("rocky", "rocky"),
                        ("alma", "almalinux"), ("scientific", "scientific"), ("oracle", "ol"))
SUSE_LIKE = ("suse", "sles", "sled", "opensuse", "opensuse-leap", "opensuse-tumbleweed")

# The drivers a guest needs to find its disk and network on KVM, with the kernel config
# symbol that builds each one (used when modules.builtin is missing).
VIRTIO_MODULES = {
    "virtio_pci": "CONFIG_VIRTIO_PCI",
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_scsi": "CONFIG_SCSI_VIRTIO",
    "virtio_net": "CONFIG_VIRTIO_NET",
    "virtio_console": "CONFIG_VIRTIO_CONSOLE",
}

GRUB2_PACKAGES = ("grub-pc", "grub-pc-bin", "grub2-common", "grub-efi-amd64",
                  "grub-efi-amd64-bin", "grub-efi-amd64-signed", "grub-efi-ia32", "grub2")
GRUB_LEGACY_PACKAGES = ("grub-legacy", "grub")  # "grub" was grub-legacy up to squeeze

XE_GUEST_UTILITIES_FILES = ("/usr/sbin/xe-daemon", "/usr/sbin/xe-linux-distribution",
                            "/etc/init.d/xe-linux-distribution")
# Citrix/XenServer's xe-guest-utilities (and its -xenstore, -latest ... siblings) and XCP-ng's
# Rust xen-guest-agent: all talk to xenstore, which KVM does not have.
XEN_TOOL_PACKAGE_PREFIX = "xe-guest-utilities"
XEN_TOOL_PACKAGES = ("xen-guest-agent",)
XEN_TOOL_FILES = XE_GUEST_UTILITIES_FILES + ("/usr/sbin/xen-guest-agent", "/usr/bin/xen-guest-agent")
QEMU_GUEST_AGENT_FILES = ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga")


# --------------------------------------------------------------------------- guest paths


def _read_text(root, path, limit=4 * 1024 * 1024):
    """Content of the guest file ``path`` or None when it is absent or not a regular file."""
    return read_text(as_tree(root), path, limit)


def _exists(root, path):
    return as_tree(root).exists(path)


def _guest_glob(root, pattern):
    """Guest paths matching ``pattern`` (the directory part is resolved in the guest)."""
    return guest_glob(as_tree(root), pattern)


# --------------------------------------------------------------------------- OS


def parse_os_release(text):
    """KEY=value pairs of an os-release file (shell quoting, comments)."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            # Inside double quotes os-release allows \" \\ \$ \` escapes.
            value = re.sub(r'\\([\\"$`])', r"\1", value)
        result[key.strip()] = value
    return result


def os_family(os_id, id_like=""):
    names = [os_id] + id_like.split()
    if any(n in DEBIAN_LIKE for n in names):
        return "debian"
    if any(n in RHEL_LIKE for n in names):
        return "rhel"
    if any(n in SUSE_LIKE or n.startswith("opensuse") or n.startswith("sles") for n in names):
        return "suse"
    return "other"


def _parse_redhat_release(text):
    # "CentOS release 6.10 (Final)", "Red Hat Enterprise Linux Server release 7.9 (Maipo)"
    match = re.match(r"\s*(.*?)\s+release\s+([\d.]+)\s*(?:\((.*)\))?", text)
    if not match:
        return {}
    name, version, codename = match.group(1), match.group(2), match.group(3) or ""
    lowered = name.lower()
    os_id = next((os_id for marker, os_id in REDHAT_RELEASE_NAMES if marker in lowered),
                 lowered.split()[0] if lowered else "unknown")
    return {"id": os_id, "version_id": version, "codename": codename.lower(),
            "pretty_name": text.strip()}


def detect_os(root):
    """id, version_id, codename, pretty_name, id_like, family and the file it came from."""
    text = _read_text(root, "/etc/os-release") or _read_text(root, "/usr/lib/os-release")
    if text:
        fields = parse_os_release(text)
        if fields.get("ID"):
            os_id = fields["ID"].lower()
            codename = fields.get("VERSION_CODENAME", "")
            version_id = fields.get("VERSION_ID", "")
            debian_version = (_read_text(root, "/etc/debian_version") or "").strip()
            # Debian testing/sid os-release has no VERSION_ID; debian_version says more.
            if os_id == "debian" and not version_id and debian_version:
                version_id = debian_version
            if not codename and os_id == "debian":
                codename = DEBIAN_CODENAMES.get(version_id.split(".")[0], "")
            return {
                "id": os_id, "version_id": version_id, "codename": codename,
                "pretty_name": fields.get("PRETTY_NAME", ""),
                "id_like": fields.get("ID_LIKE", ""),
                "family": os_family(os_id, fields.get("ID_LIKE", "")),
                "source": "/etc/os-release",
            }
    text = _read_text(root, "/etc/debian_version")
    if text:
        version = text.strip()
        major = version.split(".")[0]
        codename = DEBIAN_CODENAMES.get(major, "")
        if not codename and "/" in version:
            codename = version.split("/")[0]  # "bookworm/sid" on testing
        return {"id": "debian", "version_id": version, "codename": codename,
                "pretty_name": "Debian GNU/Linux %s" % version, "id_like": "",
                "family": "debian", "source": "/etc/debian_version"}
    for release_file in ("/etc/redhat-release", "/etc/centos-release", "/etc/system-release"):
        text = _read_text(root, release_file)
        if text:
            fields = _parse_redhat_release(text)
            if fields:
                fields.update({"id_like": "", "family": os_family(fields["id"]),
                               "source": release_file})
                return fields
    return {"id": "unknown", "version_id": "", "codename": "", "pretty_name": "",
            "id_like": "", "family": "other", "source": ""}


# --------------------------------------------------------------------------- packages


def parse_dpkg_status(text):
    """Package name -> {version, status, arch, installed} from /var/lib/dpkg/status.

    Multi-arch packages appear once per architecture; the installed one wins.
    """
    packages = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t"):
                continue  # continuation of a long field (Description, Conffiles)
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
        name = fields.get("package")
        if not name:
            continue
        status = fields.get("status", "")
        entry = {
            "version": fields.get("version", ""),
            "status": status,
            "arch": fields.get("architecture", ""),
            # "install ok installed"; "deinstall ok config-files" is a removed package.
            "installed": status.split()[-1:] == ["installed"],
        }
        if name not in packages or (entry["installed"] and not packages[name]["installed"]):
            packages[name] = entry
    return packages


def read_dpkg_status(root):
    text = _read_text(root, "/var/lib/dpkg/status", limit=64 * 1024 * 1024)
    return parse_dpkg_status(text) if text else {}


def _installed(packages, *names):
    return any(packages.get(n, {}).get("installed") for n in names)


# --------------------------------------------------------------------------- init


def detect_init(root, packages=None):
    """'systemd', 'sysvinit', 'upstart', 'busybox' or 'unknown', and the init's guest path."""
    packages = read_dpkg_status(root) if packages is None else packages
    tree = as_tree(root)
    if tree.is_file("/sbin/init"):
        init_guest = tree.realpath("/sbin/init")
        name = os.path.basename(init_guest)
        if name == "systemd":
            return {"init": "systemd", "path": init_guest}
        if name == "busybox":
            return {"init": "busybox", "path": init_guest}
        if _installed(packages, "upstart") or (name == "upstart"):
            return {"init": "upstart", "path": init_guest}
        if _installed(packages, "systemd-sysv"):
            return {"init": "systemd", "path": init_guest}
        if _installed(packages, "sysvinit-core", "sysvinit") or _exists(root, "/etc/inittab"):
            return {"init": "sysvinit", "path": init_guest}
        return {"init": "unknown", "path": init_guest}
    # No /sbin/init at all: the boot loader may pass init=/lib/systemd/systemd.
    for candidate in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd"):
        if tree.is_file(candidate):
            return {"init": "systemd", "path": candidate}
    return {"init": "unknown", "path": ""}


# --------------------------------------------------------------------------- kernels


def _version_key(version):
    # "5.10.0-28-amd64" < "6.1.0-18-amd64" < "6.1.0-9-amd64" must come out numerically.
    return [(int(tok), "") if tok.isdigit() else (-1, tok) for tok in re.split(r"(\d+)", version)]


def parse_kernel_config(text):
    """CONFIG_* -> value ('y', 'm', '"string"') of a /boot/config-* file."""
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            config[key] = value.strip()
    return config


def _module_names_in_list(text):
    """Module names from modules.builtin / modules.dep lines ('kernel/x/virtio_blk.ko[.xz]: ...')."""
    names = set()
    for line in text.splitlines():
        path = line.split(":", 1)[0].strip()
        if not path:
            continue
        base = os.path.basename(path)
        base = base.split(".ko", 1)[0]
        names.add(base.replace("-", "_"))
    return names


def _modules_on_disk(tree, modules_dir):
    return {name.split(".ko", 1)[0].replace("-", "_") for name in tree.files_under(modules_dir) if ".ko" in name}


def kernel_driver_states(root, version, config=None):
    """For each VIRTIO_MODULES driver: 'builtin', 'module', 'missing' or 'unknown'."""
    tree = as_tree(root)
    modules_dir = "/lib/modules/%s" % version
    builtin = set()
    loadable = set()
    have_modules = tree.is_dir(modules_dir)
    if have_modules:
        builtin_text = _read_text(root, "/lib/modules/%s/modules.builtin" % version)
        dep_text = _read_text(root, "/lib/modules/%s/modules.dep" % version)
        if builtin_text is not None:
            builtin = _module_names_in_list(builtin_text)
        if dep_text is not None:
            loadable = _module_names_in_list(dep_text)
        # modules.dep can be stale or absent (depmod never ran): trust the .ko files too.
        loadable |= _modules_on_disk(tree, modules_dir)
    states = {}
    for module, symbol in VIRTIO_MODULES.items():
        configured = (config or {}).get(symbol)
        if module in builtin or configured == "y":
            states[module] = "builtin"
        elif module in loadable:
            states[module] = "module"
        elif have_modules or config:
            states[module] = "missing"
        else:
            states[module] = "unknown"
    return states


def _initramfs_for(root, version):
    for pattern in ("/boot/initrd.img-%s", "/boot/initramfs-%s.img", "/boot/initrd-%s",
                    "/boot/initrd-%s.img"):
        guest = pattern % version
        tree = as_tree(root)
        if tree.is_file(guest):
            return {"path": guest, "size": tree.size(guest)}
    return None


def list_kernels(root):
    """Installed kernels, oldest first, with what a KVM boot needs to know about each."""
    versions = set()
    for prefix in ("vmlinuz-", "vmlinux-"):
        for guest in _guest_glob(root, "/boot/%s*" % prefix):
            version = os.path.basename(guest)[len(prefix):]
            # Skip backup copies dpkg/rpm or admins leave behind.
            if version and not version.endswith((".bak", ".old", ".dpkg-old", ".dpkg-new")):
                versions.add((version, guest))
    kernels = []
    for version, guest in sorted(versions, key=lambda v: _version_key(v[0])):
        config_text = _read_text(root, "/boot/config-%s" % version)
        config = parse_kernel_config(config_text) if config_text else {}
        if config:
            # Xenified (non-pvops) kernels cannot run outside Xen; pvops ones can.
            xen_only = config.get("CONFIG_X86_XEN") == "y" or config.get("CONFIG_X86_64_XEN") == "y"
        else:
            xen_only = None  # unknown without the config
        modules_dir = "/lib/modules/%s" % version
        drivers = kernel_driver_states(root, version, config)
        kernels.append({
            "version": version,
            "image": guest,
            "config": "/boot/config-%s" % version if config else None,
            "modules_dir": modules_dir if as_tree(root).is_dir(modules_dir) else None,
            "xen_only": xen_only,
            "drivers": drivers,
            "virtio_blk": drivers["virtio_blk"],
            "initramfs": _initramfs_for(root, version),
            "usable_on_kvm": xen_only is not True and drivers["virtio_blk"] in ("builtin", "module"),
        })
    return kernels


# --------------------------------------------------------------------------- boot loader


def detect_bootloader(root, packages=None, disk=None):
    """Boot loader configs and packages present; with ``disk``, whether its MBR has code."""
    packages = read_dpkg_status(root) if packages is None else packages
    grub2_cfg = next((p for p in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
                      if as_tree(root).is_file(p)), None)
    legacy_cfg = next((p for p in ("/boot/grub/menu.lst", "/boot/grub/grub.conf")
                       if as_tree(root).is_file(p)), None)
    installed = sorted(n for n in GRUB2_PACKAGES + GRUB_LEGACY_PACKAGES if _installed(packages, n))
    # dpkg "grub" was the legacy package until squeeze; later it is a transitional grub-pc.
    grub_legacy_pkg = _installed(packages, "grub-legacy") or (
        _installed(packages, "grub")
        and packages["grub"]["version"].startswith("0.")
    )
    mbr_code = mbr_has_boot_code(disk) if disk else None
    if grub2_cfg:
        kind = "grub2"
    elif legacy_cfg:
        kind = "grub-legacy"
    elif _exists(root, "/boot/extlinux/extlinux.conf") or _exists(root, "/extlinux.conf"):
        kind = "extlinux"
    else:
        kind = "none"
    return {
        "config_kind": kind,
        "grub2_cfg": grub2_cfg,
        "grub_legacy_menu": legacy_cfg,
        "etc_default_grub": _exists(root, "/etc/default/grub"),
        "device_map": "/boot/grub/device.map" if _exists(root, "/boot/grub/device.map") else None,
        "grub_packages": installed,
        "grub_pc_installed": _installed(packages, "grub-pc"),
        "grub2_installed": bool(set(installed) & set(GRUB2_PACKAGES)) or (
            _installed(packages, "grub") and not grub_legacy_pkg),
        "grub_legacy_installed": grub_legacy_pkg,
        "grub_efi_installed": any(n.startswith("grub-efi") for n in installed),
        "mbr_boot_code": mbr_code,
        "mbr_boot_loader": mbr_boot_loader(disk) if disk and mbr_code else None,
        # grub-install leaves its core image here; with GRUB's boot.img in the MBR this is the
        # guest's own BIOS boot loader, as its installer wrote it.
        "grub_pc_core": _exists(root, "/boot/grub/i386-pc/core.img"),
        # PV guests are booted by pygrub from dom0 and never got boot code in the MBR.
        "boot_style": None if mbr_code is None else ("mbr" if mbr_code else "pv-no-mbr-code"),
        "efi_fallback": _exists(root, "/boot/efi/EFI/BOOT/BOOTX64.EFI"),
    }


# --------------------------------------------------------------------------- network


def _parse_interfaces_file(root, guest_file, seen, result):
    if guest_file in seen:
        return
    seen.add(guest_file)
    text = _read_text(root, guest_file)
    if text is None:
        return
    result["files"].append(guest_file)
    auto = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        keyword = words[0]
        if keyword == "auto" or keyword.startswith("allow-"):
            auto.update(words[1:])
        elif keyword == "iface" and len(words) >= 4:
            result["interfaces"].append({"name": words[1], "family": words[2],
                                         "method": words[3], "file": guest_file})
        elif keyword == "source" and len(words) >= 2:
            pattern = words[1]
            if not pattern.startswith("/"):
                pattern = os.path.join(os.path.dirname(guest_file), pattern)
            for path in _guest_glob(root, pattern):
                _parse_interfaces_file(root, path, seen, result)
        elif keyword == "source-directory" and len(words) >= 2:
            directory = words[1]
            if not directory.startswith("/"):
                directory = os.path.join(os.path.dirname(guest_file), directory)
            for path in _guest_glob(root, directory.rstrip("/") + "/*"):
                # run-parts naming: ignore editor backups and dpkg leftovers.
                if re.match(r"^[A-Za-z0-9_-]+$", os.path.basename(path)):
                    _parse_interfaces_file(root, path, seen, result)
    result["auto"].extend(sorted(auto - set(result["auto"])))


def detect_network(root):
    """Which network configuration systems the guest uses and their files."""
    ifupdown = {"files": [], "interfaces": [], "auto": []}
    _parse_interfaces_file(root, "/etc/network/interfaces", set(), ifupdown)
    netplan = _guest_glob(root, "/etc/netplan/*.yaml") + _guest_glob(root, "/etc/netplan/*.yml")
    networkd = _guest_glob(root, "/etc/systemd/network/*.network")
    nm = _guest_glob(root, "/etc/NetworkManager/system-connections/*")
    ifcfg = [p for p in _guest_glob(root, "/etc/sysconfig/network-scripts/ifcfg-*")
             if not p.endswith("ifcfg-lo")]
    wicked = [p for p in _guest_glob(root, "/etc/sysconfig/network/ifcfg-*")
              if not p.endswith("ifcfg-lo")]
    styles = []
    if any(i["name"] != "lo" for i in ifupdown["interfaces"]):
        styles.append("ifupdown")
    for name, files in (("netplan", netplan), ("systemd-networkd", networkd),
                        ("networkmanager", nm), ("ifcfg", ifcfg), ("suse-ifcfg", wicked)):
        if files:
            styles.append(name)
    rules = "/etc/udev/rules.d/70-persistent-net.rules"
    return {
        "styles": styles,
        "ifupdown": ifupdown,
        "netplan": sorted(netplan),
        "systemd_networkd": networkd,
        "networkmanager": nm,
        "ifcfg": ifcfg + wicked,
        "persistent_net_rules": rules if _exists(root, rules) else None,
    }


# --------------------------------------------------------------------------- fstab


def _unescape_fstab(field):
    # fstab encodes blanks and backslashes in paths as octal escapes (\040, \011, \134).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_fstab(text):
    """Entries of an fstab: source, mountpoint, fstype, options, dump, passno, line (1-based)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            continue  # malformed; mount(8) skips it too
        fields += [""] * (6 - len(fields))
        entries.append({
            "source": _unescape_fstab(fields[0]),
            "mountpoint": _unescape_fstab(fields[1]),
            "fstype": fields[2] or "auto",
            "options": fields[3] or "defaults",
            "dump": int(fields[4]) if fields[4].isdigit() else 0,
            "passno": int(fields[5]) if fields[5].isdigit() else 0,
            "line": number,
        })
    return entries


def read_fstab(root):
    text = _read_text(root, "/etc/fstab")
    return parse_fstab(text) if text is not None else []


# --------------------------------------------------------------------------- all together


def looks_like_root(root):
    """True when ``root`` holds a Linux root filesystem we can work on."""
    return _exists(root, "/etc/fstab") and (
        _exists(root, "/etc/os-release") or _exists(root, "/usr/lib/os-release")
        or _exists(root, "/etc/debian_version") or _exists(root, "/etc/redhat-release"))


def _tool_installed(root, packages, package, files):
    if _installed(packages, package):
        return True
    return any(as_tree(root).is_file(f) for f in files)


def xen_tool_packages(packages):
    """Xen guest tool packages dpkg knows, installed or with configuration files left."""
    return sorted(name for name, package in packages.items()
                  if (name.startswith(XEN_TOOL_PACKAGE_PREFIX) or name in XEN_TOOL_PACKAGES)
                  and package["status"].split()[-1:] != ["not-installed"])


def inspect_guest(root, disk=None):
    """All facts about the guest mounted at ``root`` as one JSON-friendly dict.

    ``disk`` (the image or device holding the boot disk) adds the MBR boot code check.
    """
    root = as_tree(root)
    packages = read_dpkg_status(root)
    kernels = list_kernels(root)
    usable = [k["version"] for k in kernels if k["usable_on_kvm"]]
    return {
        "os": detect_os(root),
        "init": detect_init(root, packages),
        "kernels": kernels,
        "usable_kernels": usable,
        "bootloader": detect_bootloader(root, packages, disk),
        "network": detect_network(root),
        "fstab": read_fstab(root),
        "package_manager": "dpkg" if packages else (
            "rpm" if _exists(root, "/var/lib/rpm") or _exists(root, "/usr/lib/sysimage/rpm")
            else "unknown"),
        "xe_guest_utilities": _tool_installed(root, packages, "xe-guest-utilities",
                                              XE_GUEST_UTILITIES_FILES),
        "xen_tools_packages": xen_tool_packages(packages),
        "xen_tools_files": [f for f in XEN_TOOL_FILES if root.exists(f)],
        "qemu_guest_agent": _tool_installed(root, packages, "qemu-guest-agent",
                                            QEMU_GUEST_AGENT_FILES),
        "kernel_packages": sorted(n for n, p in packages.items()
                                  if p["installed"] and n.startswith("linux-image-")),
    }
