"""The "efi" fixup over a guest tree (GuestEditor over tmp_path) with the real GuestApt.

The chroot runner records every command and does to the tree what the real command does to the
files this fixup looks at: grub-install writes the EFI images (shim-signed ones when the guest
has shim-signed, as Debian's grub-install does), debconf-set-selections the debconf database,
apt-get the dpkg status, update-grub grub.cfg.  The boot of such a guest under OVMF is the
integration test's part."""

import os
import subprocess

import pytest

from fake_tree import fake_guest_root

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import efi
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import inspect_guest
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt

ROOT_UUID = "0cd0f5b3-3795-5558-9376-3e6871320782"
FSTAB = ("UUID=%s / ext4 errors=remount-ro 0 1\n"
         "UUID=7A3B-11C2 %s vfat umask=0077 0 1\n")
XEN_GRUB_CFG = ("### BEGIN /etc/grub.d/10_linux ###\n"
                "linux /boot/vmlinuz-6.1.0-28-amd64 root=UUID=%s ro console=hvc0\n" % ROOT_UUID)
KVM_GRUB_CFG = ("### BEGIN /etc/grub.d/10_linux ###\n"
                "linux /boot/vmlinuz-6.1.0-28-amd64 root=UUID=%s ro console=tty0 console=ttyS0,115200\n" % ROOT_UUID)
STATUS = "Package: %s\nStatus: install ok installed\nVersion: 2.06-13+deb12u1\nArchitecture: amd64\n\n"
# What the images grub-install writes hold: their kind and where they look for grub.cfg.
UNSIGNED_GRUB = b"\x4d\x5aunsigned grub core image, prefix (UUID=" + ROOT_UUID.encode() + b")/boot/grub\x00\xff"
SIGNED_GRUB = b"\x4d\x5agrubx64.efi.signed, prefix /EFI/debian\x00\xfe"
SHIM = b"\x4d\x5ashimx64.efi.signed\x00\x80"
MOK = b"\x4d\x5amms64.efi.signed\x00\x81"
XEN_ERA_GRUB = b"\x4d\x5aan older grub core image\x00"


def guest_tree(tmp_path, esp="/boot/efi", packages=("grub-efi-amd64-bin",), esp_files=None, grub_cfg=XEN_GRUB_CFG):
    files = {"/etc/fstab": (FSTAB % (ROOT_UUID, esp)).encode(),
             "/etc/os-release": b"ID=debian\nVERSION_CODENAME=bookworm\n",
             "/var/lib/dpkg/status": "".join(STATUS % name for name in packages).encode(),
             "/boot/grub/grub.cfg": grub_cfg.encode()}
    for name, data in (esp_files or {"EFI/debian/grubx64.efi": XEN_ERA_GRUB}).items():
        files["%s/%s" % (esp, name)] = data
    return fake_guest_root(tmp_path, files, ("var/log", "usr/sbin", "var/cache/debconf"))


class Chroot:
    """Records each command run in the guest and does what it would do to the tree."""

    def __init__(self, root, old_grub_install=False, fail=None):
        self.root = root
        self.calls = []
        self.old_grub_install = old_grub_install  # a grub-install without shim support
        self.fail = fail or {}  # command -> its error message

    def host(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def installed(self, name):
        with open(self.host("/var/lib/dpkg/status")) as handle:
            return ("Package: %s\n" % name) in handle.read()

    def put(self, path, data):
        os.makedirs(os.path.dirname(self.host(path)), exist_ok=True)
        with open(self.host(path), "wb") as handle:
            handle.write(data)

    def __call__(self, argv, env=None, input=None, check=True):
        self.calls.append((list(argv), input))
        if argv[0] in self.fail:
            return subprocess.CompletedProcess(argv, 1, "", self.fail[argv[0]])
        handler = getattr(self, "_" + argv[0].replace("-", "_"), None)
        if handler is not None:
            handler(argv, input)
        return subprocess.CompletedProcess(argv, 0, "", "")

    def _apt_get(self, argv, _input):
        if "install" in argv and "--download-only" not in argv:
            with open(self.host("/var/lib/dpkg/status"), "a") as handle:
                for name in ("grub-efi-amd64", "grub-efi-amd64-bin"):
                    if not self.installed(name):
                        handle.write(STATUS % name)

    def _debconf_set_selections(self, _argv, text):
        owner, name, kind, value = text.split()
        with open(self.host(efi.DEBCONF_DB), "a") as handle:
            handle.write("Name: %s\nTemplate: %s\nValue: %s\nOwners: %s\nFlags: seen\n\n" % (name, name, value, owner))

    def _grub_install(self, argv, _input):
        esp = next(a.split("=", 1)[1] for a in argv if a.startswith("--efi-directory="))
        signed = self.installed("shim-signed") and not self.old_grub_install
        if "--removable" in argv:
            if signed:
                self.put(esp + "/EFI/BOOT/BOOTX64.EFI", SHIM)
                self.put(esp + "/EFI/BOOT/grubx64.efi", SIGNED_GRUB)
                self.put(esp + "/EFI/BOOT/mmx64.efi", MOK)
            else:
                self.put(esp + "/EFI/BOOT/BOOTX64.EFI", UNSIGNED_GRUB)
        elif signed:
            self.put(esp + "/EFI/debian/shimx64.efi", SHIM)
            self.put(esp + "/EFI/debian/grubx64.efi", SIGNED_GRUB)
            self.put(esp + "/EFI/debian/mmx64.efi", MOK)
        else:
            self.put(esp + "/EFI/debian/grubx64.efi", UNSIGNED_GRUB)

    def _update_grub(self, _argv, _input):
        self.put("/boot/grub/grub.cfg", KVM_GRUB_CFG.encode())


def fix(root, chroot, check_mode=False):
    """One run of the fixup with a fresh editor and GuestApt, as guest_fixup runs it."""
    facts = inspect_guest(root)
    guest = GuestEditor(root, check_mode=check_mode, run=chroot)
    guest.fixup = "efi"
    with GuestApt(guest, chroot, resolv_conf="guest") as apt:
        efi.apply(guest, facts, apt)
    return guest


def commands(chroot):
    """The commands run, apt-get's options left out."""
    result = []
    for argv, _input in chroot.calls:
        if argv[0] == "apt-get":
            argv = ["apt-get"] + [a for a in argv[1:] if a in ("update", "install", "--download-only")
                                  or not a.startswith("-") and "=" not in a and "::" not in a]
        result.append(" ".join(argv))
    return result


def read(root, path):
    with open(os.path.join(root, path.lstrip("/")), "rb") as handle:
        return handle.read()


def test_grub_efi_and_the_fallback_path_then_a_rerun_runs_nothing(tmp_path):
    root = guest_tree(tmp_path)
    chroot = Chroot(root)
    guest = fix(root, chroot)
    assert commands(chroot) == [
        "apt-get update",
        "apt-get install --download-only grub-efi-amd64",
        "debconf-set-selections",
        "apt-get install grub-efi-amd64",
        "grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --bootloader-id=debian",
        "grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --removable",
        "update-grub",
    ]
    assert chroot.calls[2][1] == "grub-efi-amd64 grub2/force_efi_extra_removable boolean true\n"
    assert read(root, "/boot/efi/EFI/BOOT/BOOTX64.EFI") == read(root, "/boot/efi/EFI/debian/grubx64.efi") == UNSIGNED_GRUB
    assert efi.debconf_value(read(root, efi.DEBCONF_DB).decode(), efi.EXTRA_REMOVABLE) == "true"
    assert "console=ttyS0" in read(root, "/boot/grub/grub.cfg").decode()
    assert [c["action"] for c in guest.changes] == ["run"] * 5  # apt's install is a run too

    again = Chroot(root)
    guest = fix(root, again)
    assert again.calls == [] and guest.changes == []


def test_a_guest_booting_through_shim_gets_shim_as_bootx64_with_grub_beside_it(tmp_path):
    root = guest_tree(tmp_path, esp="/efi",
                      packages=("grub-efi-amd64", "grub-efi-amd64-bin", "grub-efi-amd64-signed", "shim-signed"),
                      esp_files={"EFI/debian/shimx64.efi": SHIM, "EFI/debian/grubx64.efi": SIGNED_GRUB,
                                 "EFI/debian/mmx64.efi": MOK},
                      grub_cfg=KVM_GRUB_CFG)
    chroot = Chroot(root)
    guest = fix(root, chroot)
    assert commands(chroot) == [
        "debconf-set-selections",
        "grub-install --target=x86_64-efi --efi-directory=/efi --no-nvram --bootloader-id=debian",
        "grub-install --target=x86_64-efi --efi-directory=/efi --no-nvram --removable",
        "update-grub",
    ]
    assert read(root, "/efi/EFI/BOOT/BOOTX64.EFI") == SHIM
    assert read(root, "/efi/EFI/BOOT/grubx64.efi") == SIGNED_GRUB and read(root, "/efi/EFI/BOOT/mmx64.efi") == MOK
    assert not any(c["action"] in ("create", "edit") for c in guest.changes)  # grub-install did it all

    again = Chroot(root)
    assert fix(root, again).changes == [] and again.calls == []


def test_shim_is_copied_into_the_fallback_when_grub_install_cannot(tmp_path):
    root = guest_tree(tmp_path, packages=("grub-efi-amd64", "grub-efi-amd64-bin", "shim-signed"),
                      esp_files={"EFI/debian/shimx64.efi": SHIM, "EFI/debian/grubx64.efi": SIGNED_GRUB},
                      grub_cfg=KVM_GRUB_CFG)
    chroot = Chroot(root, old_grub_install=True)
    # An older grub-install rewrites only grubx64.efi and puts an unsigned grub at the fallback.
    guest = fix(root, chroot)
    assert read(root, "/boot/efi/EFI/BOOT/BOOTX64.EFI") == SHIM
    assert read(root, "/boot/efi/EFI/BOOT/grubx64.efi") == UNSIGNED_GRUB == read(root, "/boot/efi/EFI/debian/grubx64.efi")
    copies = [c for c in guest.changes if c["action"] in ("create", "edit")]
    assert [c["path"] for c in copies] == ["/boot/efi/EFI/BOOT/BOOTX64.EFI", "/boot/efi/EFI/BOOT/grubx64.efi"]
    assert "shim as BOOTX64.EFI" in copies[0]["why"]
    again = Chroot(root, old_grub_install=True)
    assert fix(root, again).changes == [] and again.calls == []


def test_check_mode_plans_without_running_or_writing(tmp_path):
    root = guest_tree(tmp_path)
    before = read(root, "/var/lib/dpkg/status")
    chroot = Chroot(root)
    guest = fix(root, chroot, check_mode=True)
    assert chroot.calls == []
    assert [c["path"].split()[0] for c in guest.changes] == [
        "debconf-set-selections", "apt-get", "grub-install", "grub-install", "update-grub"]
    assert not os.path.exists(os.path.join(root, "boot/efi/EFI/BOOT"))
    assert read(root, "/var/lib/dpkg/status") == before


def test_a_changed_default_grub_alone_runs_only_update_grub(tmp_path):
    root = guest_tree(tmp_path, packages=("grub-efi-amd64", "grub-efi-amd64-bin"),
                      esp_files={"EFI/debian/grubx64.efi": UNSIGNED_GRUB, "EFI/BOOT/BOOTX64.EFI": UNSIGNED_GRUB},
                      grub_cfg=KVM_GRUB_CFG)
    with open(os.path.join(root, efi.DEBCONF_DB.lstrip("/")), "w") as handle:
        handle.write("Name: grub2/force_efi_extra_removable\nTemplate: grub2/force_efi_extra_removable\n"
                     "Value: true\nOwners: grub-efi-amd64\n\n")
    chroot = Chroot(root)
    facts = inspect_guest(root)
    guest = GuestEditor(root, run=chroot)
    guest.write("/etc/default/grub", 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"\n', "console fixup")
    with GuestApt(guest, chroot, resolv_conf="guest") as apt:
        efi.apply(guest, facts, apt)
    assert commands(chroot) == ["update-grub"]


def test_grub_install_failing_names_its_error(tmp_path):
    root = guest_tree(tmp_path, packages=("grub-efi-amd64", "grub-efi-amd64-bin"))
    with pytest.raises(efi.EfiError, match="grub-install .*--bootloader-id=debian failed: grub-install: error: "
                                           "cannot find EFI directory"):
        fix(root, Chroot(root, fail={"grub-install": "grub-install: error: cannot find EFI directory.\n"}))


def test_no_esp_in_fstab_is_refused_before_any_change(tmp_path):
    root = guest_tree(tmp_path)
    with open(os.path.join(root, "etc/fstab"), "w") as handle:
        handle.write("UUID=%s / ext4 defaults 0 1\n" % ROOT_UUID)
    chroot = Chroot(root)
    with pytest.raises(efi.EfiError, match="mounts no EFI system partition at /boot/efi or /efi; nothing was changed"):
        fix(root, chroot)
    assert chroot.calls == []


def test_grub_efi_that_cannot_be_downloaded_changes_nothing(tmp_path):
    root = guest_tree(tmp_path, packages=())
    chroot = Chroot(root, fail={"apt-get": "E: Unable to locate package grub-efi-amd64\n"})
    with pytest.raises(efi.EfiError, match="cannot be installed; nothing was changed"):
        fix(root, chroot)
    assert [argv[0] for argv, _input in chroot.calls] == ["apt-get", "apt-get"]  # update, download
    assert not os.path.exists(os.path.join(root, efi.DEBCONF_DB.lstrip("/")))


def test_esp_mountpoint_prefers_vfat_and_boot_efi():
    entries = [{"mountpoint": "/efi", "fstype": "vfat"}, {"mountpoint": "/boot/efi/", "fstype": "vfat"}]
    assert efi.esp_mountpoint({"fstab": entries}) == "/boot/efi"
    assert efi.esp_mountpoint({"fstab": [{"mountpoint": "/boot/efi", "fstype": "auto"},
                                         {"mountpoint": "/efi", "fstype": "vfat"}]}) == "/efi"


def test_debconf_value_reads_the_named_question_only():
    text = ("Name: grub2/update_nvram\nTemplate: grub2/update_nvram\nValue: true\n\n"
            "Name: grub2/force_efi_extra_removable\nTemplate: grub2/force_efi_extra_removable\nValue: false\n"
            "Owners: grub-efi-amd64\n\n")
    assert efi.debconf_value(text, "grub2/force_efi_extra_removable") == "false"
    assert efi.debconf_value(text, "grub-pc/install_devices") is None
    assert efi.debconf_value(None, "x") is None


def test_missing_packages_only_when_grub_efi_amd64_is_not_there():
    assert efi.missing_packages({"bootloader": {"grub_packages": ["grub-efi-amd64-bin"]}}) == ["grub-efi-amd64"]
    assert efi.missing_packages({"bootloader": {"grub_packages": ["grub-pc"]}}) == ["grub-efi-amd64"]
    assert efi.missing_packages({"bootloader": {"grub_packages": ["grub-efi-amd64", "grub-efi-amd64-bin"]}}) == []
