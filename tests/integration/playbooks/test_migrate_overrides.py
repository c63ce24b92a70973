"""The per-VM overrides of playbooks/migrate.yml, given as inventory host vars, through the real
ansible-playbook with this machine as the KVM host (domain type qemu). One run migrates two VMs:

* ``dhcp``: ``network: dhcp``, ``vcpus`` and ``memory_mib`` set; its NIC follows the KVM host's
  network_map (qemu user networking) and its images go to the KVM host's kvm_pool, a dir pool on
  images_dir;
* ``isolated``: its own ``network_map`` puts its NIC on an isolated libvirt network made by the
  test (no forward, no <ip>: no address on the host), its own ``kvm_pool`` is on another
  directory, and it keeps the Xen VM's vCPUs, memory and network configuration.

A rerun changes nothing; the images are then read back, read-only, with the domains stopped."""
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

from _play import KVM_HOST, guest_xva, play, recap, report
from ansible_run import run_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._guest.mount import GuestMount
from guest_variants import SPECS
from xva_writer import VM, Disk, write_xva

# second_lane: boots guests of its own; its checks look at its own VMs only
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.second_lane]

libvirt = pytest.importorskip("libvirt")

XEN_NETWORK = "Pool-wide network associated with eth0"  # the test guests' one VIF


@pytest.fixture(name="isolated_network")
def isolated_network_fixture(conn):
    """A transient libvirt network with no <forward> and no <ip>: a bridge without addresses,
    gone after the test."""
    tag = uuid.uuid4().hex[:8]
    name, bridge = "x2k-iso-%s" % tag, "x2k%s" % tag
    network = conn.networkCreateXML(
        "<network><name>%s</name><bridge name='%s' stp='off'/></network>" % (name, bridge))
    yield name, bridge
    network.destroy()


@pytest.fixture(name="make_pool")
def make_pool_fixture(conn, qemu_tmp):
    """make_pool(directory) -> name: a dir pool on ``directory``, made by the module kvm_pool as
    the role kvm_host does; stopped and undefined afterwards."""
    made = []

    def make(directory):
        made.append("x2k-ovr-pool-%s" % uuid.uuid4().hex[:8])
        result = run_module("kvm_pool", {"name": made[-1], "path": str(directory), "autostart": False})
        assert result["actions"][:2] == ["define", "build"], result
        return made[-1]

    yield make
    for name in made:
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            pool.destroy()
        pool.undefine()


def domain_of(conn, name):
    return ET.fromstring(conn.lookupByName(name).XMLDesc(0))


def nic_of(domain):
    nics = domain.findall("devices/interface")
    assert len(nics) == 1, ET.tostring(domain, encoding="unicode")
    return nics[0]


def guest_files(image, *paths):
    with GuestMount([image], readonly=True) as mount:
        def read(path):
            host = mount.guest_path(path)
            return open(host).read() if os.path.isfile(host) else None
        return {path: read(path) for path in paths}


def test_per_vm_overrides_reach_the_guest_and_the_domain(isolated_network, make_pool, vm_names, qemu_tmp, conn):
    network, bridge = isolated_network
    images, own_dir = qemu_tmp / "images", qemu_tmp / "own-pool"
    pools = {"host": make_pool(images), "own": make_pool(own_dir)}
    dhcp, isolated = vm_names("x2k-ovr"), vm_names("x2k-ovr")
    variants = {dhcp: "deb12-pv", isolated: "deb12-pv-sysvinit"}
    vm_vars = {"ansible_connection": "local", "kvm_host": "localhost", "kvm_domain_type": "qemu",
               "kvm_import_boot_wait_for": "login"}
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images), kvm_pool=pools["host"],
                                                  network_map={XEN_NETWORK: "user"})}},
        "xen_vms": {"hosts": {
            dhcp: dict(vm_vars, xva=guest_xva(qemu_tmp, dhcp, variants[dhcp]), network="dhcp", vcpus=1,
                       memory_mib=768),
            isolated: dict(vm_vars, xva=guest_xva(qemu_tmp, isolated, variants[isolated]),
                           network_map={XEN_NETWORK: {"network": network}}, kvm_pool=pools["own"]),
        }},
    }}}
    report_dir = qemu_tmp / "reports"

    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % report_dir, "--forks", "2")
    assert rc == 0, output
    entries, _markdown = report(report_dir)
    for name in (dhcp, isolated):
        assert entries[name]["status"] == "migrated" and entries[name]["login_seconds"] > 0, entries[name]
        assert "network" in entries[name]["fixups"], entries[name]

    # vcpus and memory_mib from the inventory; the other VM keeps the Xen VM's
    domains = {name: domain_of(conn, name) for name in (dhcp, isolated)}
    assert domains[dhcp].findtext("vcpu") == "1" and int(domains[dhcp].findtext("memory")) == 768 * 1024
    source = SPECS[variants[isolated]]
    assert domains[isolated].findtext("vcpu") == str(source.vcpus)
    assert int(domains[isolated].findtext("memory")) == source.memory_mib * 1024

    # the VM's network_map wins over the KVM host's; the MAC is the Xen VIF's
    nic = nic_of(domains[isolated])
    assert nic.get("type") == "network" and nic.find("source").get("network") == network
    assert nic.find("mac").get("address") == SPECS[variants[isolated]].mac
    nic = nic_of(domains[dhcp])
    assert nic.get("type") == "user" and nic.find("mac").get("address") == SPECS[variants[dhcp]].mac
    assert subprocess.run(["ip", "-o", "address", "show", "dev", bridge], stdout=subprocess.PIPE, text=True,
                          check=True).stdout == ""  # the isolated network gives the host no address

    # kvm_pool (the KVM host's, and the VM's own on another directory): the images are converted
    # in the pool's directory and are its volumes; the domains use them
    disks = {name: [d["path"] for d in entries[name]["disks"]] for name in (dhcp, isolated)}
    for name, pool_name, directory in ((dhcp, pools["host"], images), (isolated, pools["own"], own_dir)):
        volumes = conn.storagePoolLookupByName(pool_name).listVolumes()
        assert disks[name] and all(os.path.dirname(p) == str(directory) for p in disks[name]), disks[name]
        assert set(os.path.basename(p) for p in disks[name]) <= set(volumes), (disks[name], volumes)
        assert [d.find("source").get("file") for d in domains[name].findall("devices/disk")] == disks[name]
    assert not [f for f in os.listdir(images) if isolated in f]

    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % report_dir, "--forks", "2")
    assert rc == 0, output
    for host in (dhcp, isolated, "localhost"):
        assert recap(output, host)["changed"] == 0, output
    entries, _markdown = report(report_dir)
    assert [entries[name]["status"] for name in (dhcp, isolated)] == ["unchanged", "unchanged"], entries

    for name in (dhcp, isolated):
        conn.lookupByName(name).destroy()
    files = {name: guest_files(disks[name][0], "/etc/network/interfaces", "/boot/grub/grub.cfg")
             for name in (dhcp, isolated)}
    # network: dhcp: DHCP on eth0, the name the virtio NIC gets with net.ifnames=0
    interfaces = files[dhcp]["/etc/network/interfaces"]
    assert "iface eth0 inet dhcp" in interfaces and "address" not in interfaces, interfaces
    assert "net.ifnames=0" in files[dhcp]["/boot/grub/grub.cfg"]
    # network: keep (the default): the static address stays
    interfaces = files[isolated]["/etc/network/interfaces"]
    assert "iface eth0 inet static" in interfaces and "address %s/24" % source.static_ip in interfaces, interfaces


def test_a_missing_storage_pool_stops_the_vm_before_it_is_converted(qemu_tmp, vm_names):
    """kvm_pool names no pool of the KVM host: the VM fails in kvm_preflight, saying so, and
    nothing is written (its XVA holds a disk with no filesystem: converted, it would fail the fixup)."""
    name, pool = vm_names("x2k-ovr"), "x2k-ovr-nosuch-%s" % uuid.uuid4().hex[:8]
    xva = str(qemu_tmp / (name + ".xva"))
    write_xva(xva, VM(name=name, uuid=str(uuid.uuid4()), disks=[Disk(image=os.urandom(2 << 20), userdevice=0)]),
              checksum="sha1")
    images = qemu_tmp / "images"
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"localhost": dict(KVM_HOST, images_dir=str(images))}},
        "xen_vms": {"hosts": {name: {"ansible_connection": "local", "kvm_host": "localhost", "xva": xva,
                                     "kvm_domain_type": "qemu", "kvm_pool": pool}}},
    }}}
    rc, output = play(qemu_tmp, inventory, "-e", "report_dir=%s" % (qemu_tmp / "reports"))
    assert rc != 0, output
    entries, _markdown = report(qemu_tmp / "reports")
    assert entries[name]["failed_stage"] == "kvm_preflight", entries[name]
    assert "storage pool %s" % pool in entries[name]["error"] and "not found" in entries[name]["error"], entries[name]
    assert not images.exists() or not os.listdir(images)
