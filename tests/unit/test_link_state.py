"""NIC link state in the domain XML builder and its comparisons (kvm_domain's link_state)."""
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._libvirt import domain_xml as dx

UUID = "11111111-2222-3333-4444-555555555555"
SPEC = {
    "uuid": "0f5e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "name": "LinkVM",
    "vcpus": 1,
    "memory_mib": 256,
    "firmware": "bios",
    "disks": [{"ref": "Ref:1", "userdevice": 0, "bootable": True, "mode": "RW"}],
    "nics": [
        {"device": 0, "mac": "aa:bb:cc:dd:ee:01", "network": "LAN", "bridge": "xenbr0"},
        {"device": 1, "mac": "aa:bb:cc:dd:ee:02", "network": "DMZ", "bridge": "xapi1"},
    ],
}
NETMAP = {"LAN": {"network": "lan"}, "DMZ": {"bridge": "br-dmz"}}


def build(**kw):
    kw.setdefault("network_map", NETMAP)
    kw.setdefault("migrated_at", "2024-05-01T10:00:00Z")
    kw.setdefault("disks", ["/images/a.qcow2"])
    kw.setdefault("uuid", UUID)
    kw.setdefault("existing_machine", "pc-i440fx-7.2")
    return dx.build_domain_xml(SPEC, **kw)


def links(xml):
    return [(i.find("mac").get("address"), i.find("link").get("state") if i.find("link") is not None else None)
            for i in ET.fromstring(xml).findall("devices/interface")]


def as_stored(xml, link_up_written=False):
    """Imitate libvirt's stored form: addresses and a controller added; with ``link_up_written``
    each NIC says ``<link state='up'/>`` as after a live update that set it up."""
    root = ET.fromstring(xml)
    for dev in root.find("devices"):
        ET.SubElement(dev, "address", type="pci", slot="0x0%d" % len(dev))
    ET.SubElement(root.find("devices"), "controller", type="usb", index="0")
    if link_up_written:
        for interface in root.findall("devices/interface"):
            ET.SubElement(interface, "link", state="up")
    return ET.tostring(root, encoding="unicode")


def test_down_puts_a_down_link_on_every_nic_and_up_writes_none():
    assert links(build(link_state="down")) == [("aa:bb:cc:dd:ee:01", "down"), ("aa:bb:cc:dd:ee:02", "down")]
    assert links(build(link_state="up")) == [("aa:bb:cc:dd:ee:01", None), ("aa:bb:cc:dd:ee:02", None)]
    assert build(link_state=None) == build(link_state="up") == build()


def test_only_the_links_differ_between_up_and_down():
    down, up = build(link_state="down"), build()
    assert down != up
    assert dx.canonical(down, ignore_links=True) == dx.canonical(up, ignore_links=True)
    assert dx.canonical(down) != dx.canonical(up)


def test_bad_link_state_is_named():
    with pytest.raises(dx.DomainXMLError, match="link_state must be up or down, not 'sideways'"):
        build(link_state="sideways")


def test_a_written_up_link_equals_none():
    """After a live switch to up libvirt stores <link state='up'/>; a rerun defining no <link>
    must not count that as a change, neither on a real run (canonical) nor in check mode."""
    up = build()
    assert dx.canonical(as_stored(up, link_up_written=True)) == dx.canonical(as_stored(up))
    changed, before, after = dx.compare_with_stored(as_stored(up, link_up_written=True), up)
    assert not changed, (before, after)


def test_check_mode_sees_down_to_up_and_up_to_down_with_a_diff():
    down, up = build(link_state="down"), build()
    changed, before, after = dx.compare_with_stored(as_stored(down), up)
    assert changed
    assert before.count("<link state=\"down\" />") == 2 and "<link" not in after
    changed, before, after = dx.compare_with_stored(as_stored(up), down)
    assert changed
    assert "<link" not in before and after.count("<link state=\"down\" />") == 2


def test_check_mode_same_link_state_is_unchanged():
    for state in ("down", "up"):
        xml = build(link_state=state)
        changed, before, after = dx.compare_with_stored(as_stored(xml), xml)
        assert not changed, (state, before, after)


def test_with_link_state_changes_only_the_link():
    (mac, interface), _second = dx.interfaces(as_stored(build(link_state="down")))
    assert mac == "aa:bb:cc:dd:ee:01" and dx.link_state_of(interface) == "down"
    device = ET.fromstring(dx.with_link_state(interface, "up"))
    assert device.tag == "interface"
    assert [link.get("state") for link in device.findall("link")] == ["up"]
    assert device.find("mac").get("address") == mac
    assert device.find("source").get("network") == "lan"
    assert device.find("address") is not None  # the PCI slot stays: libvirt matches the device
    assert dx.link_state_of(interface) == "down"  # the parsed definition is not modified


def test_link_differences_lists_the_nics_to_switch():
    assert dx.link_differences(build(link_state="down"), "up") == ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"]
    assert dx.link_differences(build(link_state="down"), "down") == []
    assert dx.link_differences(as_stored(build(), link_up_written=True), "up") == []


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="virt-xml-validate missing "
                    "(Debian package libvirt-clients)")
def test_libvirt_schema_accepts_down_links(tmp_path):
    path = tmp_path / "down.xml"
    path.write_text(build(link_state="down"))
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout
