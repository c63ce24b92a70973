"""Unit tests for the domain XML builder (plugins/module_utils/_libvirt/domain_xml.py)."""
import copy
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt import domain_xml as dx

NS = {"x2k": dx.X2K_NS}

SPEC = {
    "uuid": "0f5e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "name": "TestVM01",
    "description": "web server",
    "vcpus": 4,
    "vcpus_max": 4,
    "cores_per_socket": 2,
    "memory_mib": 1024,
    "xen_domain_type": "hvm",
    "firmware": "bios",
    "actions_after_reboot": "restart",
    "actions_after_crash": "coredump_and_restart",
    "actions_after_shutdown": "destroy",
    "has_nvram": False,
    "source": {"hostname": "xenserver1", "product_brand": "XCP-ng", "product_version": "8.2.1"},
    "disks": [
        {"ref": "Ref:12", "userdevice": 0, "device": "xvda", "bootable": True, "mode": "RW"},
        {"ref": "Ref:13", "userdevice": 1, "device": "xvdb", "bootable": False, "mode": "RW"},
        {"ref": "Ref:14", "userdevice": 2, "device": "xvdc", "bootable": False, "mode": "RO"},
    ],
    "nics": [
        {"device": 0, "mac": "aa:bb:cc:dd:ee:01", "mtu": 1500,
         "network": "Pool-wide network associated with eth0", "bridge": "xenbr0"},
        {"device": 1, "mac": "aa:bb:cc:dd:ee:02", "mtu": 1500, "network": "DMZ",
         "bridge": "xapi1"},
    ],
}
NETMAP = {"Pool-wide network associated with eth0": {"network": "lan"}, "xapi1": {"bridge": "br-dmz"}}
WHEN = "2024-05-01T10:00:00Z"


def build_root(spec=None, **kw):
    return build(spec, **kw)[1]


def build(spec=None, **kw):
    kw.setdefault("network_map", NETMAP)
    kw.setdefault("migrated_at", WHEN)
    kw.setdefault("disks", ["/images/a.qcow2", "/images/b.raw", "/images/c.qcow2"])
    xml = dx.build_domain_xml(spec if spec is not None else SPEC, **kw)
    return xml, ET.fromstring(xml)


def test_basic_elements():
    root = build_root()
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "TestVM01"
    assert root.findtext("description") == "web server"
    assert root.find("memory").get("unit") == "KiB"
    assert root.findtext("memory") == str(1024 * 1024)
    assert root.findtext("currentMemory") == str(1024 * 1024)
    assert root.findtext("vcpu") == "4"
    assert root.find("uuid") is None
    t = root.find("os/type")
    assert (t.text, t.get("arch"), t.get("machine")) == ("hvm", "x86_64", "pc")
    assert root.find("os").get("firmware") is None
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("devices/rng").get("model") == "virtio"
    assert root.findtext("devices/rng/backend") == "/dev/urandom"
    assert root.find("devices/memballoon").get("model") == "virtio"
    assert root.find("devices/emulator") is None  # libvirt picks it


def test_overrides_and_qemu_type():
    root = build_root(domain_type="qemu", name="web-01", vcpus=3, memory_mib=2048, machine="q35",
                      uuid="11111111-2222-3333-4444-555555555555")
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "web-01"
    assert root.findtext("uuid") == "11111111-2222-3333-4444-555555555555"
    assert root.findtext("vcpu") == "3"
    assert root.findtext("memory") == str(2048 * 1024)
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("cpu").get("mode") is None  # TCG: no host-passthrough


def test_disks_in_userdevice_order_with_formats():
    disks = [{"path": "/img/d2.qcow2", "userdevice": 2, "ref": "Ref:14"},
             {"path": "/img/d0.img", "userdevice": 0, "format": "raw", "ref": "Ref:12"},
             {"path": "/img/d1.raw", "userdevice": "1"}]
    root = build_root(disks=disks)
    found = [(d.find("target").get("dev"), d.find("source").get("file"), d.find("driver").get("type"))
             for d in root.findall("devices/disk")]
    assert found == [("vda", "/img/d0.img", "raw"), ("vdb", "/img/d1.raw", "raw"),
                     ("vdc", "/img/d2.qcow2", "qcow2")]
    for d in root.findall("devices/disk"):
        assert d.get("device") == "disk"
        assert d.find("target").get("bus") == "virtio"
        assert d.find("driver").get("discard") == "unmap"
        assert d.find("driver").get("cache") is None
    disks_el = root.findall("devices/disk")
    assert disks_el[0].find("boot").get("order") == "1"
    assert disks_el[1].find("boot") is None
    assert disks_el[2].find("readonly") is not None  # spec mode RO
    assert disks_el[0].find("readonly") is None


def test_disks_given_order_kept_without_userdevice():
    root = build_root(disks=["/i/z.qcow2", "/i/a.qcow2"])
    assert [d.find("source").get("file") for d in root.findall("devices/disk")] == \
        ["/i/z.qcow2", "/i/a.qcow2"]


def test_bootable_disk_not_first_gets_boot_order():
    spec = copy.deepcopy(SPEC)
    spec["disks"][0]["bootable"] = False
    spec["disks"][1]["bootable"] = True
    root = build_root(spec, disks=[{"path": "/i/a.qcow2", "userdevice": 0},
                                   {"path": "/i/b.qcow2", "userdevice": 1}])
    boots = [d.find("boot") is not None for d in root.findall("devices/disk")]
    assert boots == [False, True]


def test_block_device_disk():
    root = build_root(disks=[{"path": "/dev/vg0/web", "format": "raw"}])
    d = root.find("devices/disk")
    assert d.get("type") == "block" and d.find("source").get("dev") == "/dev/vg0/web"


@pytest.mark.parametrize("disk, msg", [
    ("/i/disk.vhd", "cannot tell the format"),
    ({"path": "/i/d.qcow2", "format": "vmdk"}, "not one of"),
    ("relative.qcow2", "absolute"),
    ({"format": "raw"}, "path"),
])
def test_bad_disks(disk, msg):
    with pytest.raises(dx.DomainXMLError, match=msg):
        build(disks=[disk])


def test_target_dev_names():
    assert [dx.target_dev(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


def test_macs_lowercased_in_device_order():
    spec = copy.deepcopy(SPEC)
    spec["nics"] = [
        {"device": 2, "mac": "AA:BB:CC:00:00:03", "network": "n3", "bridge": "b3"},
        {"device": 0, "mac": "AA:BB:CC:00:00:01", "network": "n1", "bridge": "b1"},
        {"device": 10, "mac": "aa:bb:cc:00:00:0A", "network": "n1", "bridge": "b1"},
        {"device": 1, "mac": "Aa:bB:cc:00:00:02", "network": "n2", "bridge": "b2"},
    ]
    root = build_root(spec, network_map={"n1": "user", "n2": "user", "n3": "user"})
    macs = [i.find("mac").get("address") for i in root.findall("devices/interface")]
    assert macs == ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02", "aa:bb:cc:00:00:03",
                    "aa:bb:cc:00:00:0a"]
    for i in root.findall("devices/interface"):
        assert i.find("model").get("type") == "virtio"


def test_network_map_network_bridge_user():
    spec = copy.deepcopy(SPEC)
    spec["nics"].append({"device": 2, "mac": "aa:bb:cc:dd:ee:03", "network": "Backup",
                         "bridge": "xenbr2"})
    netmap = dict(NETMAP, xenbr2="user")  # mapped by bridge
    root = build_root(spec, network_map=netmap)
    ifaces = root.findall("devices/interface")
    assert ifaces[0].get("type") == "network"
    assert ifaces[0].find("source").get("network") == "lan"
    assert ifaces[1].get("type") == "bridge"
    assert ifaces[1].find("source").get("bridge") == "br-dmz"
    assert ifaces[2].get("type") == "user"
    assert ifaces[2].find("source") is None


def test_name_label_wins_over_bridge():
    root = build_root(network_map={"Pool-wide network associated with eth0": "user",
                                   "xenbr0": {"network": "other"}, "DMZ": "user"})
    assert root.findall("devices/interface")[0].get("type") == "user"


def test_unmapped_networks_listed():
    with pytest.raises(dx.DomainXMLError) as err:
        build(network_map={})
    msg = str(err.value)
    assert "Pool-wide network associated with eth0" in msg and "DMZ" in msg
    assert "default_network" in msg


def test_default_network_for_unmapped():
    root = build_root(network_map={"DMZ": {"bridge": "br1"}}, default_network="lan2")
    ifaces = root.findall("devices/interface")
    assert ifaces[0].get("type") == "network" and ifaces[0].find("source").get("network") == "lan2"
    assert ifaces[1].get("type") == "bridge"
    root = build_root(network_map={}, default_network="user")
    assert {i.get("type") for i in root.findall("devices/interface")} == {"user"}


def test_bad_network_map_value():
    with pytest.raises(dx.DomainXMLError, match="expected"):
        build(network_map={"DMZ": {"vlan": 3}}, default_network="user")


def test_bad_mac():
    spec = copy.deepcopy(SPEC)
    spec["nics"][0]["mac"] = "zz:bb:cc:dd:ee:01"
    with pytest.raises(dx.DomainXMLError, match="MAC"):
        build(spec)


@pytest.mark.parametrize("vcpus, cps, expected", [
    (4, 2, (2, 2, 1)), (4, 1, (4, 1, 1)), (6, 4, (6, 1, 1)), (8, 8, (1, 8, 1)),
    (3, 0, (3, 1, 1)), (2, "x", (2, 1, 1)), (1, None, (1, 1, 1)),
])
def test_topology(vcpus, cps, expected):
    assert dx.topology(vcpus, cps) == expected
    spec = dict(SPEC, vcpus=vcpus, cores_per_socket=cps)
    root = build_root(spec)
    top = root.find("cpu/topology")
    assert (int(top.get("sockets")), int(top.get("cores")), int(top.get("threads"))) == expected
    assert int(top.get("sockets")) * int(top.get("cores")) == vcpus


def test_uefi():
    root = build_root(dict(SPEC, firmware="uefi"))
    os_el = root.find("os")
    assert os_el.get("firmware") == "efi"
    assert os_el.find("type").get("machine") == "q35"
    feature = os_el.find("firmware/feature[@name='secure-boot']")
    assert feature.get("enabled") == "no"
    assert os_el.find("loader") is None  # libvirt's firmware autoselection
    root = build_root(dict(SPEC, firmware="uefi"), machine="pc")
    assert root.find("os/type").get("machine") == "pc"
    root = build_root(SPEC, firmware="uefi")
    assert root.find("os").get("firmware") == "efi"


def test_machine_keeps_existing_version():
    assert dx.resolve_machine(None, "bios", "pc-i440fx-7.2") == "pc-i440fx-7.2"
    assert dx.resolve_machine(None, "uefi", "pc-i440fx-7.2") == "q35"
    assert dx.resolve_machine("q35", "bios", "pc-q35-7.2") == "pc-q35-7.2"
    assert dx.resolve_machine("pc-i440fx-6.2", "bios", "pc-i440fx-7.2") == "pc-i440fx-6.2"
    root = build_root(existing_machine="pc-i440fx-7.2")
    assert root.find("os/type").get("machine") == "pc-i440fx-7.2"


@pytest.mark.parametrize("name", ["a", "TestVM01", "web-01.example_com", "x+y", "a" * 64])
def test_valid_names(name):
    assert dx.validate_name(name) == name
    root = build_root(name=name)
    assert root.findtext("name") == name


@pytest.mark.parametrize("name", ["", "a" * 65, "with space", "-lead", "slash/x", "quo'te",
                                  "ünï", "semi;colon"])
def test_invalid_names(name):
    with pytest.raises(dx.DomainXMLError):
        dx.validate_name(name)
    if name:  # an empty override means "derive it from the spec"
        with pytest.raises(dx.DomainXMLError):
            build(name=name)


def test_name_from_spec_is_sanitized():
    root = build_root(dict(SPEC, name="Web server (prod) #1"))
    assert root.findtext("name") == "Web-server-prod-1"
    assert dx.sanitize_name("  ..x..  ") == "x"
    with pytest.raises(dx.DomainXMLError):
        build(dict(SPEC, name="(((  )))"))


def test_metadata():
    root = build_root()
    mig = root.find("metadata/x2k:migration", NS)
    assert mig is not None
    assert mig.findtext("x2k:source-uuid", namespaces=NS) == SPEC["uuid"]
    assert mig.findtext("x2k:source-name", namespaces=NS) == "TestVM01"
    assert mig.findtext("x2k:source-host", namespaces=NS) == "xenserver1"
    assert mig.findtext("x2k:product", namespaces=NS) == "XCP-ng 8.2.1"
    assert mig.findtext("x2k:migrated-at", namespaces=NS) == WHEN
    assert dx.read_metadata(root) == {"source-uuid": SPEC["uuid"], "source-name": "TestVM01",
                                      "source-host": "xenserver1", "product": "XCP-ng 8.2.1",
                                      "migrated-at": WHEN}
    assert dx.read_metadata(ET.fromstring("<domain><metadata/></domain>")) is None


def test_metadata_prefix_in_text():
    xml = build()[0]
    assert 'xmlns:x2k="urn:xen2kvm:migration:1"' in xml
    assert "<x2k:migration>" in xml


def test_same_input_same_xml():
    assert build()[0] == build()[0]


@pytest.mark.parametrize("xen, libvirt_poweroff, libvirt_crash", [
    ("restart", "restart", "restart"),
    ("destroy", "destroy", "destroy"),
    ("preserve", "preserve", "preserve"),
    ("rename_restart", "rename-restart", "rename-restart"),
    ("coredump_and_restart", "restart", "coredump-restart"),
    ("coredump_and_destroy", "destroy", "coredump-destroy"),
])
def test_actions(xen, libvirt_poweroff, libvirt_crash):
    spec = dict(SPEC, actions_after_shutdown=xen, actions_after_reboot=xen, actions_after_crash=xen)
    root = build_root(spec)
    assert root.findtext("on_poweroff") == libvirt_poweroff
    assert root.findtext("on_reboot") == libvirt_poweroff
    assert root.findtext("on_crash") == libvirt_crash


def test_actions_defaults_and_unknown():
    spec = {k: v for k, v in SPEC.items() if not k.startswith("actions_after")}
    root = build_root(spec)
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == \
        ["destroy", "restart", "restart"]
    with pytest.raises(dx.DomainXMLError, match="unknown Xen action"):
        build(dict(SPEC, actions_after_crash="explode"))


def test_graphics_none():
    root = build_root()
    assert root.find("devices/graphics") is None
    assert root.find("devices/video") is None


def test_graphics_vnc_localhost_only():
    root = build_root(graphics="vnc")
    g = root.find("devices/graphics")
    assert g.get("type") == "vnc"
    assert g.get("listen") == "127.0.0.1"
    assert [el.get("address") for el in g.findall("listen")] == ["127.0.0.1"]
    assert g.get("autoport") == "yes"
    assert root.find("devices/video/model") is not None


def test_serial_console_and_agent():
    root = build_root()
    serial = root.find("devices/serial")
    assert serial.get("type") == "pty"
    log = serial.find("log")
    assert log.get("file") == "/var/log/libvirt/qemu/TestVM01-serial.log"
    assert log.get("append") == "off"
    console = root.find("devices/console")
    assert console.get("type") == "pty" and console.find("target").get("type") == "serial"
    chan = root.find("devices/channel")
    assert chan.get("type") == "unix"
    assert chan.find("target").get("type") == "virtio"
    assert chan.find("target").get("name") == "org.qemu.guest_agent.0"


@pytest.mark.parametrize("bad", [dict(memory_mib=0), dict(graphics="spice"),
                                 dict(domain_type="xen"), dict(firmware="coreboot")])
def test_bad_options(bad):
    spec = dict(SPEC, memory_mib=0) if "memory_mib" in bad else SPEC
    bad = {k: v for k, v in bad.items() if k != "memory_mib"}
    with pytest.raises(dx.DomainXMLError):
        build(spec, **bad)


def test_no_disks_no_nics():
    root = build_root(dict(SPEC, nics=[]), disks=[])
    assert root.findall("devices/disk") == [] and root.findall("devices/interface") == []


# ------------------------------------------------------------------ check-mode comparison

STORED_EXTRA = """
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='piix3-uhci'/>
  </devices>"""


def _as_stored(xml):
    """Imitate libvirt: add a uuid, addresses, a controller, expand the machine alias."""
    root = ET.fromstring(xml)
    uuid = ET.Element("uuid")
    uuid.text = "11111111-2222-3333-4444-555555555555"
    root.insert(1, uuid)
    root.find("os/type").set("machine", "pc-i440fx-7.2")
    root.find("cpu/topology").set("dies", "1")
    for dev in root.find("devices"):
        ET.SubElement(dev, "address", type="pci", slot="0x0%d" % len(dev))
    ET.SubElement(root.find("devices"), "controller", type="usb", index="0")
    ET.SubElement(root.find("devices"), "input", type="mouse", bus="ps2")
    return ET.tostring(root, encoding="unicode")


def test_compare_unchanged():
    xml = build(uuid="11111111-2222-3333-4444-555555555555", existing_machine="pc-i440fx-7.2")[0]
    changed, before, after = dx.compare_with_stored(_as_stored(xml), xml)
    assert not changed and before == after


def test_compare_memory_change():
    xml = build(uuid="11111111-2222-3333-4444-555555555555", existing_machine="pc-i440fx-7.2")[0]
    new = build(uuid="11111111-2222-3333-4444-555555555555", existing_machine="pc-i440fx-7.2",
                memory_mib=2048)[0]
    changed, before, after = dx.compare_with_stored(_as_stored(xml), new)
    assert changed
    assert ">1048576<" in before and ">2097152<" in after


def test_compare_removed_nic_and_graphics_are_changes():
    xml = build(uuid="11111111-2222-3333-4444-555555555555", existing_machine="pc-i440fx-7.2",
                graphics="vnc")[0]
    spec = dict(SPEC, nics=SPEC["nics"][:1])
    new = build(spec, uuid="11111111-2222-3333-4444-555555555555",
                existing_machine="pc-i440fx-7.2")[0]
    changed, before, after = dx.compare_with_stored(_as_stored(xml), new)
    assert changed
    assert "aa:bb:cc:dd:ee:02" in before and "aa:bb:cc:dd:ee:02" not in after
    assert "vnc" in before and "vnc" not in after


# ------------------------------------------------------------------ schema validation


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="virt-xml-validate missing "
                    "(Debian package libvirt-clients)")
@pytest.mark.parametrize("kw", [
    {},
    {"graphics": "vnc", "domain_type": "qemu"},
    {"firmware": "uefi", "uuid": "11111111-2222-3333-4444-555555555555"},
    {"disks": [{"path": "/dev/sdb", "format": "raw"}], "default_network": "user",
     "network_map": {}},
])
def test_virt_xml_validate(tmp_path, kw):
    xml = build(**kw)[0]
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout + xml


# ------------------------------------------------------------------ Secure Boot and vTPM (issue 7)


def test_secure_boot_selects_enrolled_secure_ovmf_with_smm_on_q35():
    root = build_root(dict(SPEC, firmware="uefi", secure_boot=True))
    os_el = root.find("os")
    assert os_el.get("firmware") == "efi"
    assert os_el.find("type").get("machine") == "q35"
    features = {f.get("name"): f.get("enabled") for f in os_el.findall("firmware/feature")}
    assert features == {"secure-boot": "yes", "enrolled-keys": "yes"}
    assert root.find("features/smm").get("state") == "on"
    assert os_el.find("loader") is None  # libvirt's firmware autoselection picks the build


def test_secure_boot_only_with_uefi_and_never_on_pc():
    root = build_root(dict(SPEC, firmware="uefi", secure_boot=False))
    assert root.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "no"
    assert root.find("features/smm") is None
    bios = build_root(dict(SPEC, firmware="bios", secure_boot=True))  # Xen only enforces it with UEFI
    assert bios.find("os/firmware") is None and bios.find("features/smm") is None
    with pytest.raises(dx.DomainXMLError, match="Secure Boot, which needs a q35 machine"):
        build(dict(SPEC, firmware="uefi", secure_boot=True), machine="pc")
    kept = build_root(dict(SPEC, firmware="uefi", secure_boot=True), existing_machine="pc-q35-7.2")
    assert kept.find("os/type").get("machine") == "pc-q35-7.2"


def test_secure_boot_firmware_descriptor_exists_on_this_host():
    """The autoselection above needs a descriptor with both features for q35 (Debian: ovmf)."""
    import glob
    import json
    found = []
    for path in glob.glob("/usr/share/qemu/firmware/*.json"):
        with open(path) as handle:
            descriptor = json.load(handle)
        if {"secure-boot", "enrolled-keys", "requires-smm"} <= set(descriptor.get("features", [])):
            found.append(path)
    if not glob.glob("/usr/share/qemu/firmware/*.json"):
        pytest.skip("no firmware descriptors (Debian package ovmf)")
    assert found


def test_vtpm_is_named_as_not_carried_over():
    assert dx.not_carried_over(SPEC) == []
    (warning,) = dx.not_carried_over(dict(SPEC, vtpm=True))
    assert "vTPM" in warning and "not carried over" in warning and "TestVM01" in warning
    assert "BitLocker" in warning


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="virt-xml-validate missing")
def test_virt_xml_validate_secure_boot(tmp_path):
    xml = build(dict(SPEC, firmware="uefi", secure_boot=True), uuid="11111111-2222-3333-4444-555555555555")[0]
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout + xml


# ------------------------------------------------------------------ the UEFI NVRAM's lifetime


UEFI = dict(SPEC, firmware="uefi")


def uefi_xml(spec=None, images=("1201", "1202", "1203"), **kw):
    spec = UEFI if spec is None else spec
    return build(spec, uuid="11111111-2222-3333-4444-555555555555", nvram_images=list(images), **kw)[0]


def test_the_images_the_nvram_is_for_are_recorded_for_uefi_only():
    root = ET.fromstring(uefi_xml(images=("1201", "-", "1203")))
    assert root.findtext("metadata/x2k:migration/x2k:nvram-images", namespaces=NS) == "1201 - 1203"
    assert dx.recorded_images(root) == ["1201", "-", "1203"]
    bios = build_root(SPEC, nvram_images=["1201"])
    assert bios.find("metadata/x2k:migration/x2k:nvram-images", namespaces=NS) is None
    assert dx.recorded_images(bios) is None


def test_a_plain_rerun_keeps_the_nvram():
    stored = _as_stored(uefi_xml())
    assert dx.nvram_reset_reason(stored, uefi_xml(), owned=True) is None
    # The same files named again in another order, a block device among them: still the same guest.
    assert dx.nvram_reset_reason(stored, uefi_xml(images=("1203", "1201", "-")), owned=True) is None
    # A domain defined before the record existed: nothing tells the images apart, so it is kept.
    older = _as_stored(build(UEFI, uuid="11111111-2222-3333-4444-555555555555")[0])
    assert dx.nvram_reset_reason(older, uefi_xml(images=("9", "9", "9")), owned=True) is None


def test_replaced_images_reset_the_nvram():
    stored = _as_stored(uefi_xml())
    reason = dx.nvram_reset_reason(stored, uefi_xml(images=("7301", "1202", "1203")), owned=True)
    assert reason and "disk images were replaced" in reason


@pytest.mark.parametrize("stored_kw, owned, new_kw, forced, expected", [
    (None, False, {}, False, "a new domain"),
    ({}, False, {}, False, "not migrated from this VM"),
    ({"firmware": "bios"}, True, {}, False, "booted with BIOS before"),
    ({}, True, {"spec": dict(UEFI, secure_boot=True)}, False, "Secure Boot is now on"),
    ({}, True, {}, True, "reset_nvram is true"),
])
def test_other_reasons_for_a_fresh_nvram(stored_kw, owned, new_kw, forced, expected):
    stored = None
    if stored_kw is not None:
        stored = _as_stored(build(dict(UEFI, **stored_kw), uuid="11111111-2222-3333-4444-555555555555",
                                  existing_machine="pc-q35-7.2")[0])
    reason = dx.nvram_reset_reason(stored, uefi_xml(**new_kw), owned=owned, forced=forced)
    assert reason and expected in reason, reason


def test_a_bios_domain_has_no_nvram_to_reset():
    bios = build(SPEC)[0]
    assert dx.nvram_reset_reason(None, bios, owned=False, forced=True) is None
    assert dx.nvram_reset_reason(_as_stored(uefi_xml()), bios, owned=True) is None


def test_an_explicit_pflash_loader_counts_as_uefi():
    stored = ET.fromstring(_as_stored(build(SPEC, uuid="11111111-2222-3333-4444-555555555555")[0]))
    loader = ET.SubElement(stored.find("os"), "loader", type="pflash", readonly="yes")
    loader.text = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert dx.nvram_reset_reason(ET.tostring(stored, encoding="unicode"), uefi_xml(), owned=True) is None


def test_canonical_ignores_the_order_libvirt_stores_controllers_in():
    defined = _as_stored(build()[0])
    root = ET.fromstring(defined)
    devices = root.find("devices")
    ET.SubElement(devices, "controller", type="virtio-serial", index="0")
    ET.SubElement(devices, "controller", type="pci", index="1", model="pcie-root-port")
    after_start = ET.fromstring(defined)
    moved = after_start.find("devices")
    moved.insert(0, ET.Element("controller", type="virtio-serial", index="0"))
    ET.SubElement(moved, "controller", type="pci", index="1", model="pcie-root-port")
    assert ET.tostring(root) != ET.tostring(after_start)
    assert dx.canonical(ET.tostring(root, encoding="unicode")) == dx.canonical(ET.tostring(after_start, encoding="unicode"))
    ET.SubElement(moved, "controller", type="pci", index="2", model="pcie-root-port")
    assert dx.canonical(ET.tostring(root, encoding="unicode")) != dx.canonical(ET.tostring(after_start, encoding="unicode"))
