"""Each guest fixup as a unit: its text transforms and its effect on a small guest tree
(GuestEditor over tmp_path), idempotence included.  The whole chain is proven by booting in
tests/integration/guests/test_guest_fixup_boot.py."""

import os
import subprocess

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bare_fs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import bootloader
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import console
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import devices
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import firstboot
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import initramfs
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import network
from ansible_collections.xen2kvm.migration.plugins.module_utils._disk_names import disk_letters
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest import chroot
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest import edit
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest import inspect
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GUEST_LOG, GuestEditor
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.partition_table import read_partition_table

FSTAB = """# /etc/fstab
/dev/xvda1\t/\text4\terrors=remount-ro\t0\t1
/dev/xvda2   none   swap   sw   0 0
UUID=1234-abcd /srv xfs defaults 0 2
/dev/xvdb1 /data ext4 defaults 0 2
"""


def tree(tmp_path, files):
    for path, text in files.items():
        host = tmp_path / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
    (tmp_path / "var/log").mkdir(parents=True, exist_ok=True)
    return GuestEditor(str(tmp_path))


def test_disk_letters_follow_the_kernel():
    assert [disk_letters(i) for i in (0, 1, 25, 26, 27, 701)] == ["a", "b", "z", "aa", "ab", "zz"]


def test_device_map_renames_partitions_whole_disks_and_bare_filesystems():
    plain = devices.DeviceMap(["xvda", "xvdb"])
    assert plain.rename("/dev/xvda1") == "/dev/vda1" and plain.rename("/dev/sdb2") == "/dev/vdb2"
    assert plain.rename("/dev/hda3") == "/dev/vda3" and plain.rename("UUID=x") == "UUID=x"
    assert plain.rename("/dev/mapper/vg-root") == "/dev/mapper/vg-root"
    bare = devices.DeviceMap(["xvda1", "xvda2"], repartitioned={0})
    assert bare.rename("/dev/xvda1") == "/dev/vda1"  # the bare root got a partition table
    assert bare.rename("/dev/xvda2") == "/dev/vdb"   # the bare swap disk stays whole
    with_uuid = devices.DeviceMap(["xvda"], uuids={"/dev/vda2": "5a5a-swap"})
    assert with_uuid.stable("/dev/xvda2") == "UUID=5a5a-swap" and with_uuid.stable("/dev/xvda1") == "/dev/vda1"


def test_fstab_keeps_layout_and_comments():
    mapping = devices.DeviceMap(["xvda", "xvdb"], uuids={"/dev/vda2": "swap-uuid"})
    fixed = devices.fix_fstab(FSTAB, mapping)
    assert fixed.splitlines()[0] == "# /etc/fstab"
    assert "/dev/vda1\t/\text4\terrors=remount-ro\t0\t1" in fixed
    assert "UUID=swap-uuid   none   swap" in fixed and "/dev/vdb1 /data" in fixed
    assert "UUID=1234-abcd /srv" in fixed
    assert devices.fix_fstab(fixed, mapping) == fixed


def test_crypttab_and_resume():
    mapping = devices.DeviceMap(["xvda"])
    assert devices.fix_crypttab("crypt /dev/xvda3 none luks\n", mapping) == "crypt /dev/vda3 none luks\n"
    assert devices.fix_resume_conf("RESUME=/dev/xvda2\n", mapping) == "RESUME=/dev/vda2\n"


def test_devices_fixup_edits_with_backup_and_log(tmp_path):
    guest = tree(tmp_path, {"/etc/fstab": FSTAB, "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/xvda2\n"})
    guest.fixup = "devices"
    devices.apply(guest, devices.DeviceMap(["xvda", "xvdb"]))
    assert (tmp_path / "var/backups/xen2kvm/etc/fstab").read_text() == FSTAB
    assert not (tmp_path / "etc/fstab.xen2kvm").exists()
    assert os.listdir(str(tmp_path / "etc/initramfs-tools/conf.d")) == ["resume"]
    assert "/dev/vda1" in (tmp_path / "etc/fstab").read_text()
    assert [c["path"] for c in guest.changes] == ["/etc/fstab", "/etc/initramfs-tools/conf.d/resume"]
    assert "[devices] edited /etc/fstab" in (tmp_path / GUEST_LOG.lstrip("/")).read_text()
    again = GuestEditor(str(tmp_path))
    devices.apply(again, devices.DeviceMap(["xvda", "xvdb"]))
    assert again.changes == [] and (tmp_path / "var/backups/xen2kvm/etc/fstab").read_text() == FSTAB


def test_check_mode_records_without_writing(tmp_path):
    guest = tree(tmp_path, {"/etc/fstab": FSTAB})
    guest.check_mode = True
    devices.apply(guest, devices.DeviceMap(["xvda"]))
    assert guest.changes and guest.diffs[0]["before"] == FSTAB and "/dev/vda1" in guest.diffs[0]["after"]
    assert (tmp_path / "etc/fstab").read_text() == FSTAB and not (tmp_path / "var/backups").exists()


def test_kernel_args_get_serial_console():
    mapping = devices.DeviceMap(["xvda"])
    args = console.fix_kernel_args("root=/dev/xvda1 ro console=hvc0 xencons=tty quiet", mapping, ifnames0=True)
    assert args == "root=/dev/vda1 ro quiet console=tty0 console=ttyS0,115200 net.ifnames=0"
    assert console.fix_kernel_args(args, mapping, ifnames0=True) == args


def test_default_grub_fixes_both_variables():
    text = ('GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet console=hvc0"\n'
            'GRUB_CMDLINE_LINUX="console=xvc0 root=/dev/xvda1"\n')
    fixed = console.fix_default_grub(text, devices.DeviceMap(["xvda"]))
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in fixed
    assert 'GRUB_CMDLINE_LINUX="root=/dev/vda1 console=tty0 console=ttyS0,115200"' in fixed
    assert 'GRUB_TERMINAL="console serial"' in fixed and "GRUB_SERIAL_COMMAND=" in fixed
    assert console.fix_default_grub(fixed, devices.DeviceMap(["xvda"])) == fixed


def test_menu_lst_kernel_lines_and_kopt():
    text = ("# kopt=root=/dev/xvda1 ro console=hvc0\n"
            "title Debian\nroot (hd0,0)\nkernel /boot/vmlinuz root=/dev/xvda1 ro console=hvc0\n")
    fixed = console.fix_menu_lst(text, devices.DeviceMap(["xvda"]))
    assert "# kopt=root=/dev/vda1 ro console=tty0 console=ttyS0,115200" in fixed
    assert "kernel /boot/vmlinuz root=/dev/vda1 ro console=tty0 console=ttyS0,115200" in fixed


def test_inittab_hvc_getty_becomes_ttys0():
    text = "id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\nh0:12345:respawn:/sbin/getty 38400 hvc0\n"
    fixed = console.fix_inittab(text)
    assert "#xen2kvm: h0:12345:respawn:/sbin/getty 38400 hvc0" in fixed
    assert "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100" in fixed
    assert console.fix_inittab(fixed) == fixed
    assert console.fix_securetty("console\nhvc0\n") == "console\nhvc0\nttyS0\n"


def test_console_fixup_removes_hvc_getty_links(tmp_path):
    guest = tree(tmp_path, {"/etc/inittab": "h0:12345:respawn:/sbin/getty 38400 hvc0\n"})
    wants = tmp_path / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True)
    os.symlink("/lib/systemd/system/serial-getty@.service", str(wants / "serial-getty@hvc0.service"))
    os.symlink("/lib/systemd/system/getty@.service", str(wants / "getty@tty1.service"))
    console.apply(guest)
    assert sorted(os.listdir(str(wants))) == ["getty@tty1.service"]
    assert "ttyS0" in (tmp_path / "etc/inittab").read_text()


def test_initramfs_module_list_and_dep():
    assert initramfs.add_modules("# list\nxen-blkfront\n").endswith(
        "virtio_pci\nvirtio_blk\nvirtio_scsi\nvirtio_net\nvirtio_console\n")
    done = initramfs.add_modules("")
    assert initramfs.add_modules(done) == done
    assert initramfs.modules_most("MODULES=dep\nBUSYBOX=auto\n") == "MODULES=most\nBUSYBOX=auto\n"
    assert initramfs.modules_most("MODULES=list\n") == "MODULES=list\n"


def test_network_names_and_dhcp():
    interfaces = ("auto lo\niface lo inet loopback\n\nallow-hotplug enX0\niface enX0 inet static\n"
                  "    address 192.0.2.10/24\n    gateway 192.0.2.1\n    dns-nameservers 192.0.2.53\n")
    renamed = network.rename_xen_interfaces(interfaces)
    assert "iface eth0 inet static" in renamed and "enX0" not in renamed
    dhcp = network.ifupdown_to_dhcp(renamed)
    assert "iface eth0 inet dhcp" in dhcp and "address" not in dhcp and "iface lo inet loopback" in dhcp
    assert network.networkd_to_dhcp("[Match]\nName=eth0\n[Network]\nAddress=192.0.2.5/24\n") == \
        "[Match]\nName=eth0\n[Network]\nDHCP=yes\n"


def test_network_fixup_keeps_static_and_drops_persistent_rules(tmp_path):
    rules = "/etc/udev/rules.d/70-persistent-net.rules"
    guest = tree(tmp_path, {"/etc/network/interfaces": "iface eth0 inet static\n  address 192.0.2.9/24\n",
                            rules: 'SUBSYSTEM=="net", ATTR{address}=="aa:00:00:00:00:01", NAME="eth0"\n'})
    facts = {"network": {"persistent_net_rules": rules,
                         "ifupdown": {"files": ["/etc/network/interfaces"]}}}
    network.apply(guest, facts)
    assert not (tmp_path / rules.lstrip("/")).exists() and (tmp_path / "var/backups/xen2kvm" / rules.lstrip("/")).exists()
    assert os.listdir(str(tmp_path / "etc/udev/rules.d")) == []
    assert "inet static" in (tmp_path / "etc/network/interfaces").read_text()


def table_row(path="/", device="/dev/vda1", fs="ext2", uuid="0cd0f5b3-3795-5558-9376-3e6871320782"):
    return {"guest_path": path, "device": device, "disk": "/dev/vda", "drive": "(hd0,msdos1)", "hint": "hd0,msdos1",
            "partmap": "msdos", "fs": fs, "uuid": uuid, "label": "", "partuuid": "", "loop": "/dev/loop1",
            "whole_loop": "/dev/loop0"}


def probe(script_path, *args):
    proc = subprocess.run(["sh", str(script_path)] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    return proc.returncode, proc.stdout.strip()


def test_grub_probe_stand_in_answers_for_kvm_devices(tmp_path):
    script = tmp_path / "grub-probe"
    boot = table_row("/boot", "/dev/vda1", uuid="b00b")
    root = table_row("/", "/dev/vda2", uuid="7007")
    script.write_text(chroot.grub_probe_script([root, boot]))
    assert probe(script, "--target=device", "/") == (0, "/dev/vda2")
    assert probe(script, "--target=device", "/boot") == (0, "/dev/vda1")
    assert probe(script, "--device", "/dev/vda2", "--target=fs_uuid") == (0, "7007")
    assert probe(script, "-t", "fs_uuid", "/boot/grub") == (0, "b00b")
    assert probe(script, "--target=hints_string", "/") == (0, "--hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 "
                                                              "--hint-baremetal=ahci0,msdos1")
    assert probe(script, "--target=abstraction", "/") == (0, "")
    assert probe(script, "--target=bogus", "/")[0] == 1


def test_grub_cfg_checks_and_core_modules():
    made = "### BEGIN /etc/grub.d/10_linux ###\nlinux /boot/vmlinuz root=UUID=abc ro console=ttyS0,115200\n"
    assert bootloader.grub_cfg_problems(made) == []
    assert "mentions /dev/loop" in bootloader.grub_cfg_problems(made.replace("UUID=abc", "/dev/loop1"))
    assert "was not made by grub-mkconfig (a pygrub menu)" in bootloader.grub_cfg_problems(
        "menuentry x {\n linux /vmlinuz root=/dev/xvda1 console=hvc0\n}\n")
    assert chroot.core_modules([table_row("/"), table_row("/boot", fs="xfs")]) == \
        "biosdisk part_msdos xfs search_fs_uuid"


def test_firstboot_job_for_systemd_and_sysvinit(tmp_path):
    commands = ["grub-install /dev/vda", "update-grub"]
    script = firstboot.script_text(commands)
    assert "grub-install /dev/vda || echo 'failed: grub-install /dev/vda'" in script
    assert "rm -f %s" % firstboot.SCRIPT in script
    systemd = tree(tmp_path / "s", {})
    firstboot.apply(systemd, {"init": {"init": "systemd"}}, commands)
    assert os.readlink(str(tmp_path / "s" / firstboot.UNIT_LINK.lstrip("/"))).endswith("xen2kvm-firstboot.service")
    assert os.stat(str(tmp_path / "s" / firstboot.SCRIPT.lstrip("/"))).st_mode & 0o777 == 0o755
    sysv = tree(tmp_path / "v", {})
    firstboot.apply(sysv, {"init": {"init": "sysvinit"}}, commands)
    assert os.path.islink(str(tmp_path / "v/etc/rc2.d/S99xen2kvm-firstboot"))
    nothing = tree(tmp_path / "n", {})
    firstboot.apply(nothing, {"init": {"init": "systemd"}}, [])
    assert nothing.changes == []


def test_guest_paths_never_leave_the_root(tmp_path):
    guest = tree(tmp_path, {})
    os.symlink("/", str(tmp_path / "etc"))  # a hostile guest: /etc -> /
    guest.write("/etc/x2k-probe", "inside\n", "test")
    assert (tmp_path / "x2k-probe").read_text() == "inside\n"
    assert not os.path.exists("/x2k-probe")


@pytest.mark.skipif(os.geteuid() != 0 and not os.access("/sbin/mkfs.ext4", os.X_OK), reason="needs mkfs.ext4")
def test_bare_filesystem_gets_a_partition_table(tmp_path):
    image = tmp_path / "bare.raw"
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("bare\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), "-U", "11111111-2222-3333-4444-555555555555",
                    str(image), "32M"], check=True)
    before = image.read_bytes()
    planned = bare_fs.repartition(str(image), check_mode=True)
    assert planned["new_size"] == 33 << 20 and image.read_bytes() == before
    done = bare_fs.repartition(str(image))
    assert done["uuid"] == "11111111-2222-3333-4444-555555555555"
    layout = read_partition_table(str(image))
    assert layout.scheme == "mbr" and layout.partitions[0].start == 1 << 20 and layout.partitions[0].bootable
    assert image.read_bytes()[1 << 20:(1 << 20) + len(before)] == before
    assert bare_fs.repartition(str(image)) is None  # partitioned now: nothing to do
    assert not [p for p in os.listdir(str(tmp_path)) if ".xen2kvm-part" in p]


# --------------------------------------------------------------------------- issue 7, item 15

XEN_TOOLS_STATUS = """Package: xe-guest-utilities
Status: install ok installed
Version: 7.30.0-11

Package: xe-guest-utilities-xenstore
Status: install ok installed
Version: 7.30.0-11

Package: xen-guest-agent
Status: install ok installed
Version: 0.4.0

Package: xe-guest-utilities-latest
Status: deinstall ok config-files
Version: 6.2.0

Package: xenstore-utils
Status: install ok installed
Version: 4.17.0

Package: xe-guest-utilities-old
Status: purge ok not-installed
Version: 1.0
"""


def test_every_xen_tool_package_is_purged(tmp_path):
    from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import guest_tools
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import inspect_guest
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.packages import GuestApt
    tree(tmp_path, {"/var/lib/dpkg/status": XEN_TOOLS_STATUS, "/usr/sbin/xen-guest-agent": "ELF"})
    facts = inspect_guest(str(tmp_path))
    assert facts["xen_tools_packages"] == ["xe-guest-utilities", "xe-guest-utilities-latest",
                                           "xe-guest-utilities-xenstore", "xen-guest-agent"]
    guest = GuestEditor(str(tmp_path), check_mode=True)
    with GuestApt(guest, None) as apt:
        guest_tools.remove_xen_tools(guest, facts, apt)
    assert [c["path"] for c in guest.changes] == [
        "dpkg --purge xe-guest-utilities xe-guest-utilities-latest xe-guest-utilities-xenstore xen-guest-agent"]
    assert guest.warnings == []


def test_xen_tools_without_a_package_are_named_in_a_warning(tmp_path):
    from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import guest_tools
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.inspect import inspect_guest
    tree(tmp_path, {"/usr/sbin/xe-daemon": "#!/bin/sh\n", "/var/lib/dpkg/status": ""})
    facts = inspect_guest(str(tmp_path))
    guest = GuestEditor(str(tmp_path), check_mode=True)
    guest_tools.remove_xen_tools(guest, facts, apt=None)
    assert guest.changes == []
    assert len(guest.warnings) == 1 and "/usr/sbin/xe-daemon" in guest.warnings[0]


INITTAB_XEN_TOOLS = """id:2:initdefault:
1:2345:respawn:/sbin/getty 38400 hvc0
#2:23:respawn:/sbin/getty 38400 tty2
# 3:23:respawn:/sbin/getty 38400 tty3
#T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100
# Example how to put a getty on a modem line.
#T3:23:respawn:/sbin/mgetty -x0 -s 57600 ttyS3
"""


def test_inittab_gettys_commented_out_for_xen_come_back():
    fixed = console.fix_inittab(INITTAB_XEN_TOOLS)
    lines = fixed.splitlines()
    assert "#xen2kvm: 1:2345:respawn:/sbin/getty 38400 hvc0" in lines
    assert lines[lines.index("#xen2kvm: 1:2345:respawn:/sbin/getty 38400 hvc0") + 1] == \
        "1:2345:respawn:/sbin/getty 38400 tty1"
    assert "2:23:respawn:/sbin/getty 38400 tty2" in lines and "3:23:respawn:/sbin/getty 38400 tty3" in lines
    # serial lines and modem examples stay commented: only virtual terminals are restored
    assert "#T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100" in lines
    assert "#T3:23:respawn:/sbin/mgetty -x0 -s 57600 ttyS3" in lines
    assert "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100" in lines
    assert console.fix_inittab(fixed) == fixed


def test_inittab_without_xen_getty_keeps_commented_gettys():
    text = "1:2345:respawn:/sbin/getty 38400 tty1\n#2:23:respawn:/sbin/getty 38400 tty2\n"
    assert "#2:23:respawn:/sbin/getty 38400 tty2" in console.fix_inittab(text)


def test_grub_default_d_snippets_are_fixed_too(tmp_path):
    guest = tree(tmp_path, {
        "/boot/grub/grub.cfg": "### BEGIN /etc/grub.d/10_linux ###\nlinux /vmlinuz root=UUID=abc console=ttyS0,115200\n",
        "/etc/default/grub.d/40-xen.cfg": 'GRUB_CMDLINE_LINUX="console=hvc0 root=/dev/xvda1"\n',
        "/etc/default/grub.d/50-extra.cfg": ('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX xencons=tty"\n'
                                             'GRUB_CMDLINE_LINUX_DEFAULT="quiet console=hvc0"\n'),
        "/etc/default/grub.d/README": "GRUB_CMDLINE_LINUX=console=hvc0\n",
    })
    mapping = devices.DeviceMap(["xvda"])
    console.apply(guest, mapping, ifnames0=True)
    d = tmp_path / "etc/default/grub.d"
    assert (d / "40-xen.cfg").read_text() == \
        'GRUB_CMDLINE_LINUX="root=/dev/vda1 console=tty0 console=ttyS0,115200 net.ifnames=0"\n'
    assert (d / "50-extra.cfg").read_text() == \
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
    assert (d / "README").read_text() == "GRUB_CMDLINE_LINUX=console=hvc0\n"  # not a .cfg: grub ignores it
    assert guest.changed_path("/etc/default/grub.d/40-xen.cfg")
    assert bootloader.needs_grub_mkconfig(guest, {"kernels": []})  # a changed snippet means a new grub.cfg
    again = GuestEditor(str(tmp_path))
    console.apply(again, mapping, ifnames0=True)
    assert again.changes == []


def test_first_boot_updates_package_lists_before_installing():
    script = firstboot.script_text(["grub-install /dev/vda", "apt-get install -y qemu-guest-agent",
                                    "apt-get install -y other"]).splitlines()
    runs = [line for line in script if line.endswith("|| echo 'failed: %s'" % line.split(" ||")[0])]
    assert [line.split(" ||")[0] for line in runs] == [
        "grub-install /dev/vda", "apt-get update", "apt-get install -y qemu-guest-agent", "apt-get install -y other"]
    assert firstboot.with_fresh_package_lists(["apt-get update", "apt-get install -y x"]) == \
        ["apt-get update", "apt-get install -y x"]


def test_backups_never_sit_in_directories_read_as_a_whole(tmp_path):
    """Issue 7 item 10: conf.d/resume.xen2kvm kept RESUME=/dev/xvda2 alive; interfaces.d/*.xen2kvm
    was sourced by ifupdown and backed up again on every run."""
    stanza = "auto enX0\niface enX0 inet static\n  address 192.0.2.9/24\n"
    guest = tree(tmp_path, {
        "/etc/network/interfaces": "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n",
        "/etc/network/interfaces.d/eth0": stanza,
        "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/xvda2\n",
        # what an earlier version left beside the files
        "/etc/network/interfaces.d/eth0.xen2kvm": stanza,
        "/etc/initramfs-tools/conf.d/resume.xen2kvm": "RESUME=/dev/xvda2\n",
    })
    mapping = devices.DeviceMap(["xvda"], uuids={"/dev/vda2": "5a5a-swap"})
    for run in range(2):
        guest = GuestEditor(str(tmp_path))
        devices.apply(guest, mapping)
        network.apply(guest, {"network": inspect.detect_network(str(tmp_path))})
        if run == 1:
            assert guest.changes == []  # nothing piles up
    assert os.listdir(str(tmp_path / "etc/network/interfaces.d")) == ["eth0"]
    assert os.listdir(str(tmp_path / "etc/initramfs-tools/conf.d")) == ["resume"]
    assert (tmp_path / "etc/initramfs-tools/conf.d/resume").read_text() == "RESUME=UUID=5a5a-swap\n"
    backups = tmp_path / "var/backups/xen2kvm/etc"
    assert (backups / "network/interfaces.d/eth0").read_text() == stanza
    assert (backups / "initramfs-tools/conf.d/resume").read_text() == "RESUME=/dev/xvda2\n"
    assert "iface eth0 inet static" in (tmp_path / "etc/network/interfaces.d/eth0").read_text()
    everything = [os.path.join(d, f) for d, _dirs, files in os.walk(str(tmp_path / "etc")) for f in files]
    assert not [path for path in everything if "xen2kvm" in path]


def test_backup_comes_back_and_temp_files_are_hidden(tmp_path):
    guest = tree(tmp_path, {"/boot/grub/grub.cfg": "pygrub menu\n"})
    assert os.path.basename(edit.temp_path("/x/interfaces.d/eth0")) == ".eth0.xen2kvm-tmp"
    guest.remove("/boot/grub/grub.cfg", "test")
    assert guest.restore_backup("/boot/grub/grub.cfg", "test")
    assert (tmp_path / "boot/grub/grub.cfg").read_text() == "pygrub menu\n"
    assert os.listdir(str(tmp_path / "boot/grub")) == ["grub.cfg"]


# --------------------------------------------------------------------------- issue 7, item 14

def test_xen_disk_names_come_from_the_spec_then_userdevice():
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import FixupError, xen_disk_names
    spec = {"disks": [{"userdevice": 0, "device": "xvda"}, {"userdevice": 2, "device": ""},
                      {"userdevice": 3, "device": "/dev/xvdd"}]}
    assert xen_disk_names(spec, 3) == ["xvda", "xvdc", "xvdd"]  # userdevice 2 is xvdc, not position 1
    assert xen_disk_names(spec, 4) == ["xvda", "xvdc", "xvdd", "xvdb"]  # an extra image: first free letter
    assert xen_disk_names({"disks": [{"userdevice": 0, "device": "xvda1"}, {"userdevice": 1, "device": "xvda2"}]},
                          3) == ["xvda1", "xvda2", "xvdb"]
    assert xen_disk_names(None, 2) == ["xvda", "xvdb"]
    with pytest.raises(FixupError, match="several disks the device name xvda"):
        xen_disk_names({"disks": [{"device": "xvda"}, {"userdevice": 0}]}, 2)


def test_device_map_leaves_kvm_names_alone():
    swapped = devices.DeviceMap(["xvdb", "xvda"])  # the boot disk was xvdb under Xen
    assert swapped.rename("/dev/xvda1") == "/dev/vdb1"
    assert swapped.rename("/dev/vdb1") == "/dev/vdb1"  # our own result stays as it is on a rerun
    bare = devices.DeviceMap(["xvda"], repartitioned={0})
    assert bare.rename("/dev/vda") == "/dev/vda" and bare.rename("/dev/xvda") == "/dev/vda1"


def test_disk_record_is_validated(tmp_path):
    from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.fixup import DISK_RECORD, read_disk_record
    record = tmp_path / DISK_RECORD.lstrip("/")
    record.parent.mkdir(parents=True)
    record.write_text('{"xen_names": ["xvda1", "xvda2"], "repartitioned": [0]}\n')
    assert read_disk_record(str(tmp_path), 2) == {"xen_names": ["xvda1", "xvda2"], "repartitioned": {0}}
    assert read_disk_record(str(tmp_path), 3) is None  # recorded for another set of disks
    for bad in ('{"xen_names": ["xvda", "eth0"], "repartitioned": []}', '{"xen_names": ["xvda", "xvdb"], '
                '"repartitioned": [5]}', "[]", "not json"):
        record.write_text(bad)
        assert read_disk_record(str(tmp_path), 2) is None, bad
