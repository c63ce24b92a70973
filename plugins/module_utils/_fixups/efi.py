# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixup "efi": a UEFI guest boots on KVM with a fresh OVMF NVRAM.

On XenServer the guest booted ``\\EFI\\debian\\grubx64.efi`` (or ``shimx64.efi``) through a boot
entry in XenServer's NVRAM.  The KVM domain starts with an NVRAM made from OVMF's template,
which holds no such entry, so OVMF falls back to the removable-media path
``\\EFI\\BOOT\\BOOTX64.EFI`` of the EFI system partition (ESP).  This fixup makes that path
boot the guest's own grub:

* grub-efi-amd64 is installed when missing (only -bin, or grub-pc, or nothing): it is the
  package whose maintainer scripts reinstall grub on upgrades;
* the debconf answer ``grub2/force_efi_extra_removable=true`` is set, so every later grub
  upgrade also refreshes the fallback copy (Debian's own mechanism, ``--force-extra-removable``);
* ``grub-install --no-nvram`` writes ``EFI/debian`` and ``grub-install --removable --no-nvram``
  writes ``EFI/BOOT``.  Neither touches the NVRAM (there is none to reach while the guest is
  offline; the guest's first grub upgrade on KVM adds its boot entry).  With shim (Secure
  Boot), ``--removable`` puts shim in as BOOTX64.EFI with grubx64.efi beside it, which is what
  shim loads; when grub-install left the fallback different from what ``EFI/debian`` boots
  (an older grub without the shim support), the files are copied the same way;
* ``update-grub`` when grub.cfg lacks KVM settings (the console fixup changed
  /etc/default/grub, a kernel is missing, a Xen console or disk name is in it).

Everything goes through the editor: commands run inside the guest (chroot) where its
filesystems, the ESP among them, are mounted at their fstab places.  When the fallback already
boots what ``EFI/debian`` boots and grub.cfg is fine, nothing runs: a second run changes
nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import posixpath

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bootloader
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import packages_needed

ESP_MOUNTPOINTS = ("/boot/efi", "/efi")
BOOTLOADER_ID = "debian"
DEBCONF_DB = "/var/cache/debconf/config.dat"
EXTRA_REMOVABLE = "grub2/force_efi_extra_removable"
EXTRA_REMOVABLE_PRESEED = "grub-efi-amd64 %s boolean true\n" % EXTRA_REMOVABLE
SHIM_COMPANIONS = ("grubx64.efi", "mmx64.efi")  # shim loads these from its own directory


class EfiError(RuntimeError):
    pass


def esp_mountpoint(facts):
    """Where the guest mounts its ESP, from its fstab: /boot/efi or /efi (a vfat entry first)."""
    entries = [e for e in facts.get("fstab") or []
               if posixpath.normpath(e.get("mountpoint") or "") in ESP_MOUNTPOINTS]
    entries.sort(key=lambda e: (e.get("fstype") != "vfat", ESP_MOUNTPOINTS.index(posixpath.normpath(e["mountpoint"]))))
    if not entries:
        raise EfiError("the guest boots with UEFI but its /etc/fstab mounts no EFI system partition at %s; "
                       "nothing was changed" % " or ".join(ESP_MOUNTPOINTS))
    return posixpath.normpath(entries[0]["mountpoint"])


def missing_packages(facts):
    """What to install: grub-efi-amd64 (which pulls in -bin) unless it is there."""
    required = packages_needed(facts, ("bootloader",), firmware="uefi")[0]
    return [name for name in required if name.startswith("grub-efi")]


def loader_paths(esp):
    return {"dir": "%s/EFI/%s" % (esp, BOOTLOADER_ID), "boot_dir": "%s/EFI/BOOT" % esp,
            "grub": "%s/EFI/%s/grubx64.efi" % (esp, BOOTLOADER_ID),
            "shim": "%s/EFI/%s/shimx64.efi" % (esp, BOOTLOADER_ID),
            "fallback": "%s/EFI/BOOT/BOOTX64.EFI" % esp}


def fallback_copies(guest, esp):
    """(source, target) pairs the fallback path must hold, as copies of ``EFI/debian``: shim as
    BOOTX64.EFI and its companions beside it, else grubx64.efi as BOOTX64.EFI.  None when
    ``EFI/debian`` holds no grubx64.efi."""
    paths = loader_paths(esp)
    if not guest.exists(paths["grub"]):
        return None
    if not guest.exists(paths["shim"]):
        return [(paths["grub"], paths["fallback"])]
    pairs = [(paths["shim"], paths["fallback"])]
    for name in SHIM_COMPANIONS:
        source = "%s/%s" % (paths["dir"], name)
        if guest.exists(source):
            pairs.append((source, "%s/%s" % (paths["boot_dir"], name)))
    return pairs


def fallback_matches(guest, esp):
    """True when \\EFI\\BOOT boots exactly what \\EFI\\debian boots."""
    pairs = fallback_copies(guest, esp)
    return bool(pairs) and all(guest.exists(target) and guest.read(target) == guest.read(source)
                               for source, target in pairs)


def debconf_value(text, name):
    """The Value of question ``name`` in a debconf config.dat, or None."""
    for stanza in (text or "").split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(" "):
                fields[key.strip()] = value.strip()
        if fields.get("Name") == name:
            return fields.get("Value")
    return None


def grub_cfg_problems(text):
    """bootloader's checks, and the disk names of the libguestfs appliance grub-mkconfig may see."""
    problems = bootloader.grub_cfg_problems(text)
    if "root=/dev/sd" in text:
        problems.append("names the root by a /dev/sd device of the conversion appliance")
    return problems


def needs_update_grub(guest, facts):
    text = guest.read(bootloader.GRUB_CFG)
    return text is None or bool(grub_cfg_problems(text)) or bootloader.needs_grub_mkconfig(guest, facts)


def _run_checked(guest, argv, why, env=None, input=None):
    result = guest.run(argv, why, env=env, input=input, check=False)
    if result is not None and result.returncode != 0:
        raise EfiError("%s failed: %s" % (" ".join(argv), ((result.stderr or "") + (result.stdout or "")).strip()[-2000:]))
    return result


def _copy(guest, source, target, why):
    data = guest.read(source)
    if data is None:
        raise EfiError("%s is missing after grub-install" % source)
    guest.write(target, data, why)


def install_loader(guest, esp):
    """grub-install into EFI/debian and into the fallback path, NVRAM untouched."""
    common = ["grub-install", "--target=x86_64-efi", "--efi-directory=%s" % esp, "--no-nvram"]
    _run_checked(guest, common + ["--bootloader-id=%s" % BOOTLOADER_ID],
                 "grub into \\EFI\\%s of the ESP (no NVRAM entry: KVM starts with a fresh NVRAM)" % BOOTLOADER_ID)
    _run_checked(guest, common + ["--removable"],
                 "grub (with shim when the guest boots through it) into the fallback path \\EFI\\BOOT\\BOOTX64.EFI, "
                 "which OVMF boots without a boot entry")
    if guest.check_mode:
        return
    pairs = fallback_copies(guest, esp)
    if pairs is None:
        raise EfiError("grub-install left no %s" % loader_paths(esp)["grub"])
    shim = guest.exists(loader_paths(esp)["shim"])
    for source, target in pairs:
        if guest.read(target) != guest.read(source):
            _copy(guest, source, target,
                  "the fallback path boots what \\EFI\\%s boots%s" % (
                      BOOTLOADER_ID, " (shim as BOOTX64.EFI, grub beside it)" if shim else ""))


def apply(guest, facts, apt):
    """Fixup entry point (UEFI guests)."""
    esp = esp_mountpoint(facts)
    if not guest.exists(esp):
        raise EfiError("the ESP mount point %s is not in the guest; nothing was changed" % esp)
    missing = missing_packages(facts)
    if missing and not apt.can_install(missing):
        raise EfiError("grub-efi-amd64 is needed to keep the fallback boot path current and cannot be "
                       "installed; nothing was changed")
    if debconf_value(guest.read(DEBCONF_DB), EXTRA_REMOVABLE) != "true":
        _run_checked(guest, ["debconf-set-selections"],
                     "grub upgrades also refresh \\EFI\\BOOT\\BOOTX64.EFI (grub-install --force-extra-removable)",
                     input=EXTRA_REMOVABLE_PRESEED)
    if missing:
        apt.install(missing, "the grub package that reinstalls grub on the ESP when grub is upgraded")
    reinstall = bool(missing) or not fallback_matches(guest, esp)
    if reinstall:
        install_loader(guest, esp)
    if reinstall or needs_update_grub(guest, facts):
        _run_checked(guest, ["update-grub"], "a grub.cfg with the KVM console and root for the new boot path",
                     env={"GRUB_DISABLE_OS_PROBER": "true"})
        if not guest.check_mode:
            problems = grub_cfg_problems(guest.read(bootloader.GRUB_CFG) or "")
            if problems:
                raise EfiError("the generated %s %s" % (bootloader.GRUB_CFG, "; ".join(problems)))
