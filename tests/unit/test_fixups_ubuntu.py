"""Ubuntu-style guests: netplan files for the virtio NIC and cloud-init kept from taking the
first KVM boot for a new instance.  Netplan texts are what Ubuntu writes (cloud-init's 4-space
rendering, NetworkManager's export) with Xen's ``enX<n>``/``eth<n>`` NICs; every result is
compared whole and run a second time."""

import os
import re
import stat

import pytest

from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import cloud_init
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import netplan
from ansible_collections.xen2kvm.migration.plugins.module_utils._fixups import network
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.edit import GuestEditor

CLOUD_INIT_HEADER = """\
# This file is generated from information provided by the datasource.  Changes
# to it will not persist across an instance reboot.  To disable cloud-init's
# network configuration capabilities, write a file
# /etc/cloud/cloud.cfg.d/99-disable-network-config.cfg with the following:
# network: {config: disabled}
"""

# Ubuntu 22.04's /etc/netplan/50-cloud-init.yaml from a NoCloud v2 network-config, on a Xen
# guest whose netfront is enX0 (cloud-init sorts the keys and indents by 4).
CLOUD_INIT_ENX0 = CLOUD_INIT_HEADER + """\
network:
    ethernets:
        enX0:
            addresses:
            - 192.0.2.10/24
            nameservers:
                addresses:
                - 192.0.2.53
                - 192.0.2.54
                search:
                - example.test
            routes:
            -   to: default
                via: 192.0.2.1
    version: 2
"""

# cloud-init's rendering of a v1 config on an old-kernel guest: matched by MAC, set-name eth0.
CLOUD_INIT_ETH0_MAC = CLOUD_INIT_HEADER + """\
network:
    ethernets:
        eth0:
            addresses:
            - 192.0.2.11/24
            gateway4: 192.0.2.1
            match:
                macaddress: 52:54:00:12:34:56
            nameservers:
                addresses:
                - 192.0.2.53
            set-name: eth0
    version: 2
"""

# A Xen NIC matched by MAC and named enX0 by set-name: valid on KVM as it is.
ENX0_BY_MAC = """\
network:
  version: 2
  ethernets:
    xen-nic:
      match:
        macaddress: "00:16:3e:5a:8b:01"
      set-name: enX0
      addresses: [192.0.2.12/24]
"""

# The guest factory's ubuntu-like variant (tests/lib/guestfs_build.py): cloud-init's rendering of
# a config drive's network data, matched by MAC, set-name enX0, renderer networkd.
UBUNTU_LIKE = CLOUD_INIT_HEADER + """\
network:
    ethernets:
        enX0:
            addresses:
            - 192.0.2.41/24
            match:
                macaddress: aa:00:00:22:00:01
            nameservers:
                addresses:
                - 192.0.2.1
            routes:
            -   to: default
                via: 192.0.2.1
            set-name: enX0
    renderer: networkd
    version: 2
"""

NM_RENDERER = """\
# Ubuntu Server with NetworkManager
network:
  version: 2
  renderer: NetworkManager
  ethernets:
    enX0:   # Xen netfront
      dhcp4: no
      addresses: [192.0.2.20/24, "2001:db8::20/64"]
      routes:
        - to: default
          via: 192.0.2.1
        - to: "::/0"
          via: "2001:db8::1"
      nameservers:
        addresses: [192.0.2.53, "2001:db8::53"]
"""

# What NetworkManager exports to /etc/netplan/90-NM-<uuid>.yaml (Ubuntu 23.10 and later).
NM_EXPORTED = """\
network:
  version: 2
  ethernets:
    NM-0f7a9c4e-3b8d-4c7e-9d6a-2b1e5f8c7a10:
      renderer: NetworkManager
      match:
        name: "enX0"
      addresses:
      - "192.0.2.21/24"
      nameservers:
        addresses:
        - 192.0.2.53
      networkmanager:
        uuid: "0f7a9c4e-3b8d-4c7e-9d6a-2b1e5f8c7a10"
        name: "netplan-enX0"
        passthrough:
          connection.interface-name: "enX0"
          ipv4.address1: "192.0.2.21/24,192.0.2.1"
          ipv4.method: "manual"
          ipv6.method: "auto"
"""

MULTI_NIC = """\
network:
  version: 2
  renderer: networkd
  ethernets:
    # front end
    enX0:
      addresses: [192.0.2.30/24]
      routes:
        - to: default
          via: 192.0.2.1
    # storage network, MTU 9000
    enX1:
      mtu: 9000
      addresses: [198.51.100.30/24]
    enX10:
      dhcp4: true
    enX2: {}
  vlans:
    enX2.100:
      id: 100
      link: enX2
      addresses: [203.0.113.30/24]
  bridges:
    br0:
      interfaces: [enX10]
"""


def fixed(text, dhcp=False):
    """The fixed text, after checking that a second run changes nothing."""
    new, warnings = netplan.fix_netplan(text, dhcp)
    assert warnings == []
    assert netplan.fix_netplan(new, dhcp) == (new, [])
    return new


def guest_tree(tmp_path, files, check_mode=False):
    for path, text in files.items():
        host = tmp_path / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)
        if path.startswith("/etc/netplan/"):
            host.chmod(0o600)  # netplan refuses to read world-readable files
    (tmp_path / "var/log").mkdir(parents=True, exist_ok=True)
    return GuestEditor(str(tmp_path), check_mode=check_mode)


def netplan_facts(*paths):
    return {"network": {"styles": ["netplan"], "netplan": list(paths), "ifupdown": {"files": []},
                        "systemd_networkd": [], "persistent_net_rules": None}}


# ----------------------------------------------------------------------------------- netplan


def test_cloud_init_enx0_keeps_its_address_on_eth0_with_comments_and_layout():
    assert fixed(CLOUD_INIT_ENX0) == CLOUD_INIT_ENX0.replace("        enX0:\n", "        eth0:\n")


def test_cloud_init_enx0_on_dhcp_drops_address_routes_and_name_servers():
    assert fixed(CLOUD_INIT_ENX0, dhcp=True) == CLOUD_INIT_HEADER + """\
network:
    ethernets:
        eth0:
            dhcp4: true
    version: 2
"""


def test_a_stanza_matched_by_mac_is_left_with_its_name():
    assert fixed(CLOUD_INIT_ETH0_MAC) == CLOUD_INIT_ETH0_MAC
    assert fixed(ENX0_BY_MAC) == ENX0_BY_MAC


def test_a_stanza_matched_by_mac_goes_on_dhcp_and_its_mac_stays_a_string():
    # Unquoted, 52:54:00:12:34:56 is a base-60 number to YAML 1.1 readers: written back quoted.
    assert fixed(CLOUD_INIT_ETH0_MAC, dhcp=True) == CLOUD_INIT_HEADER + """\
network:
    ethernets:
        eth0:
            dhcp4: true
            match:
                macaddress: '52:54:00:12:34:56'
            set-name: eth0
    version: 2
"""
    assert fixed(ENX0_BY_MAC, dhcp=True) == """\
network:
  version: 2
  ethernets:
    xen-nic:
      match:
        macaddress: 00:16:3e:5a:8b:01
      set-name: enX0
      dhcp4: true
"""


def test_the_factory_ubuntu_like_guest_keeps_its_file_or_goes_on_dhcp_with_networkd():
    assert fixed(UBUNTU_LIKE) == UBUNTU_LIKE
    assert fixed(UBUNTU_LIKE, dhcp=True) == CLOUD_INIT_HEADER + """\
network:
    ethernets:
        enX0:
            dhcp4: true
            match:
                macaddress: aa:00:00:22:00:01
            set-name: enX0
    renderer: networkd
    version: 2
"""


def test_networkmanager_renderer_is_kept():
    assert fixed(NM_RENDERER) == NM_RENDERER.replace("    enX0:   # Xen netfront", "    eth0:   # Xen netfront")
    assert fixed(NM_RENDERER, dhcp=True) == """\
# Ubuntu Server with NetworkManager
network:
  version: 2
  renderer: NetworkManager
  ethernets:
    eth0:
      dhcp4: true
      addresses:
      - 2001:db8::20/64
      routes:
      - to: ::/0
        via: 2001:db8::1
      nameservers:
        addresses:
        - 2001:db8::53
"""


def test_networkmanager_export_matched_by_name():
    """The stanza's id and NetworkManager's connection name stay; the name it matches changes.
    On DHCP, the raw IPv4 keyfile settings that would bring the static address back go."""
    assert fixed(NM_EXPORTED) == NM_EXPORTED.replace('name: "enX0"', 'name: "eth0"').replace(
        'connection.interface-name: "enX0"', 'connection.interface-name: "eth0"')
    assert fixed(NM_EXPORTED, dhcp=True) == """\
network:
  version: 2
  ethernets:
    NM-0f7a9c4e-3b8d-4c7e-9d6a-2b1e5f8c7a10:
      renderer: NetworkManager
      match:
        name: eth0
      dhcp4: true
      networkmanager:
        uuid: 0f7a9c4e-3b8d-4c7e-9d6a-2b1e5f8c7a10
        name: netplan-enX0
        passthrough:
          connection.interface-name: eth0
          ipv6.method: auto
"""


def test_multi_nic_renames_members_and_links_but_not_vlan_names():
    assert fixed(MULTI_NIC) == """\
network:
  version: 2
  renderer: networkd
  ethernets:
    # front end
    eth0:
      addresses: [192.0.2.30/24]
      routes:
        - to: default
          via: 192.0.2.1
    # storage network, MTU 9000
    eth1:
      mtu: 9000
      addresses: [198.51.100.30/24]
    eth10:
      dhcp4: true
    eth2: {}
  vlans:
    enX2.100:
      id: 100
      link: eth2
      addresses: [203.0.113.30/24]
  bridges:
    br0:
      interfaces: [eth10]
"""


def test_multi_nic_on_dhcp():
    assert fixed(MULTI_NIC, dhcp=True) == """\
network:
  version: 2
  renderer: networkd
  ethernets:
    eth0:
      dhcp4: true
    eth1:
      mtu: 9000
      dhcp4: true
    eth10:
      dhcp4: true
    eth2: {}
  vlans:
    enX2.100:
      id: 100
      link: eth2
      dhcp4: true
  bridges:
    br0:
      interfaces:
      - eth10
"""


def test_a_name_that_must_stay_somewhere_makes_the_file_rebuilt_not_mangled():
    """A textual rename would also change the MAC-matched stanza's set-name: rebuilt instead."""
    text = """\
network:
  ethernets:
    enX0: {dhcp4: true}   # the Xen NIC
    lab:
      match: {macaddress: "00:16:3e:00:00:02"}
      set-name: enX0
"""
    assert fixed(text) == """\
network:
  ethernets:
    eth0:
      dhcp4: true
    lab:
      match:
        macaddress: 00:16:3e:00:00:02
      set-name: enX0
"""


def test_renderers_are_kept_and_never_added():
    def renderers(text):
        return re.findall(r"(?m)^\s*renderer:\s*(\S+)", text)
    for text in (CLOUD_INIT_ENX0, CLOUD_INIT_ETH0_MAC, ENX0_BY_MAC, UBUNTU_LIKE, NM_RENDERER, NM_EXPORTED, MULTI_NIC):
        for dhcp in (False, True):
            assert renderers(fixed(text, dhcp)) == renderers(text)
    assert renderers(CLOUD_INIT_ENX0) == [] and renderers(NM_EXPORTED) == ["NetworkManager"]


def test_a_file_already_right_is_left_byte_for_byte():
    desktop = "# Let NetworkManager manage all devices on this system\nnetwork:\n  version: 2\n  renderer: NetworkManager\n"
    for text in (desktop, "", "# only a comment\n", "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: yes\n"):
        assert netplan.fix_netplan(text, dhcp=True) == (text, [])


@pytest.mark.parametrize("text, warning", [
    ("network:\n  ethernets:\n    enX0: {dhcp4: true\n", "not valid YAML"),
    ("a: &a [x, x]\nb: &b [*a, *a]\nnetwork:\n  ethernets:\n    enX0: {addresses: *b}\n", "uses YAML aliases"),
    ("- network\n", "no network: mapping"),
    ("network:\n  ethernets:\n    enX0: {dhcp4: true}\n" + "#" * netplan.MAX_NETPLAN_BYTES, "larger than"),
])
def test_untrusted_files_are_left_with_a_warning(text, warning):
    new, warnings = netplan.fix_netplan(text, dhcp=True)
    assert new == text and len(warnings) == 1 and warning in warnings[0] and "left as it is" in warnings[0]


def test_stanzas_that_cannot_be_renamed_are_named_in_a_warning():
    both = "network:\n  ethernets:\n    eth0: {dhcp4: true}\n    enX0: {addresses: [192.0.2.5/24]}\n"
    assert netplan.fix_netplan(both) == (both, [
        "ethernets enX0 would become eth0, which the file already has; left as it is"])
    mac_and_name = "network:\n  ethernets:\n    nic:\n      match: {macaddress: '00:16:3e:00:00:01', name: enX0}\n"
    assert netplan.fix_netplan(mac_and_name) == (mac_and_name, [
        "ethernets nic matches its MAC and the Xen name enX0, which the virtio NIC does not have; left as it is"])
    driver = "network:\n  ethernets:\n    enX0:\n      match: {driver: vif}\n      set-name: enX0\n"
    assert netplan.fix_netplan(driver) == (driver, [
        "ethernets enX0 matches the Xen driver vif, which no KVM NIC has; left as it is"])


def test_network_fixup_edits_netplan_files_with_backups_and_keeps_their_mode(tmp_path):
    files = {"/etc/netplan/50-cloud-init.yaml": CLOUD_INIT_ENX0, "/etc/netplan/60-storage.yaml": MULTI_NIC,
             "/etc/netplan/01-network-manager-all.yaml": NM_RENDERER}
    paths = sorted(files)
    guest = guest_tree(tmp_path, files)
    network.apply(guest, netplan_facts(*paths), "dhcp")
    assert guest.warnings == []
    assert [c["path"] for c in guest.changes] == paths
    for path in paths:
        host = tmp_path / path.lstrip("/")
        assert host.read_text() == fixed(files[path], dhcp=True)
        assert stat.S_IMODE(host.stat().st_mode) == 0o600
        assert (tmp_path / "var/backups/xen2kvm" / path.lstrip("/")).read_text() == files[path]
    again = GuestEditor(str(tmp_path))
    network.apply(again, netplan_facts(*paths), "dhcp")
    assert again.changes == [] and again.warnings == []


def test_network_fixup_warns_about_a_broken_netplan_file_by_path(tmp_path):
    guest = guest_tree(tmp_path, {"/etc/netplan/50-broken.yaml": "network: [\n"})
    network.apply(guest, netplan_facts("/etc/netplan/50-broken.yaml"), "dhcp")
    assert guest.changes == []
    assert len(guest.warnings) == 1 and guest.warnings[0].startswith("/etc/netplan/50-broken.yaml: not valid YAML")


def test_check_mode_changes_nothing_on_disk(tmp_path):
    files = {"/etc/netplan/50-cloud-init.yaml": CLOUD_INIT_ENX0, "/etc/cloud/cloud.cfg": "users: [default]\n"}
    guest = guest_tree(tmp_path, files, check_mode=True)
    before = sorted(os.path.relpath(os.path.join(d, f), str(tmp_path))
                    for d, _dirs, names in os.walk(str(tmp_path)) for f in names)
    network.apply(guest, netplan_facts("/etc/netplan/50-cloud-init.yaml"), "dhcp")
    cloud_init.apply(guest, {})
    after = sorted(os.path.relpath(os.path.join(d, f), str(tmp_path))
                   for d, _dirs, names in os.walk(str(tmp_path)) for f in names)
    assert after == before
    assert (tmp_path / "etc/netplan/50-cloud-init.yaml").read_text() == CLOUD_INIT_ENX0
    assert [(c["action"], c["path"]) for c in guest.changes] == [
        ("edit", "/etc/netplan/50-cloud-init.yaml"), ("create", cloud_init.DISABLED), ("create", cloud_init.CONFIG)]
    assert guest.diffs[0]["after"] == fixed(CLOUD_INIT_ENX0, dhcp=True)


def test_without_pyyaml_the_network_fixup_fails_before_changing_anything(tmp_path, monkeypatch):
    rules = "/etc/udev/rules.d/70-persistent-net.rules"
    guest = guest_tree(tmp_path, {"/etc/netplan/50-cloud-init.yaml": CLOUD_INIT_ENX0,
                                  rules: 'SUBSYSTEM=="net", ATTR{address}=="00:16:3e:00:00:01", NAME="eth0"\n'})
    facts = netplan_facts("/etc/netplan/50-cloud-init.yaml")
    facts["network"]["persistent_net_rules"] = rules
    monkeypatch.setattr(netplan, "HAS_YAML", False)
    with pytest.raises(RuntimeError, match=r"PyYAML .*\(Debian: python3-yaml\)"):
        network.apply(guest, facts)
    assert guest.changes == [] and (tmp_path / rules.lstrip("/")).exists()
    network.apply(guest, {"network": dict(facts["network"], netplan=[])})  # no netplan: no PyYAML needed
    assert not (tmp_path / rules.lstrip("/")).exists()


# -------------------------------------------------------------------------------- cloud-init


@pytest.mark.parametrize("marker", ["/etc/cloud/cloud.cfg", "/usr/bin/cloud-init"])
def test_cloud_init_is_switched_off_and_kept_from_reinstancing(tmp_path, marker):
    instance = "/var/lib/cloud/instances/iid-xen-0001/obj.pkl"
    guest = guest_tree(tmp_path, {marker: "x\n", instance: "cached datasource\n"})
    cloud_init.apply(guest, {})
    assert (tmp_path / "etc/cloud/cloud-init.disabled").read_text() == cloud_init.DISABLED_TEXT
    assert (tmp_path / "etc/cloud/cloud.cfg.d/99-xen2kvm.cfg").read_text() == cloud_init.CONFIG_TEXT
    assert stat.S_IMODE((tmp_path / "etc/cloud/cloud.cfg.d/99-xen2kvm.cfg").stat().st_mode) == 0o644
    assert (tmp_path / instance.lstrip("/")).read_text() == "cached datasource\n"
    again = GuestEditor(str(tmp_path))
    cloud_init.apply(again, {})
    assert again.changes == []


def test_cloud_init_settings_are_what_cloud_init_reads():
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(cloud_init.CONFIG_TEXT) == {
        "manual_cache_clean": True, "datasource_list": ["None"], "network": {"config": "disabled"},
        "ssh_deletekeys": False, "preserve_hostname": True}


def test_no_cloud_init_no_files(tmp_path):
    guest = guest_tree(tmp_path, {"/etc/hostname": "web1\n"})
    cloud_init.apply(guest, {})
    assert guest.changes == [] and not (tmp_path / "etc/cloud").exists()
