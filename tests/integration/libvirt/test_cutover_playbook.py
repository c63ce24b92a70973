"""playbooks/cutover.yml through the real ansible-playbook, with this machine as the KVM host:
two VMs imported with their links down; ``-e vm=NAME`` plugs in one, a run without ``vm`` the
rest of group xen_vms, a rerun changes nothing, and a VM outside the inventory is refused.

The domains are defined by kvm_domain from a spec named as the inventory host (as migrate.yml
does), one of them with a name libvirt does not take as it is.  One runs (from an empty image:
no guest OS needed) so the cut-over reaches a running domain too."""
import json
import os
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "playbooks" / "cutover.yml"


def spec(name, mac):
    return {"uuid": str(uuid.uuid4()), "name": name, "vcpus": 1, "memory_mib": 64, "firmware": "bios",
            "disks": [{"ref": "Ref:1", "userdevice": 0, "bootable": True, "mode": "RW"}],
            "nics": [{"device": 0, "mac": mac, "network": "LAN", "bridge": "xenbr0"}]}


def links(conn, name, flags):
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(flags))
    return [i.find("link").get("state") if i.find("link") is not None else "up"
            for i in root.findall("devices/interface")]


def cutover(inventory, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0")
    proc = subprocess.run([exe, "-i", str(inventory), str(PLAYBOOK)] + list(extra), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    return proc.returncode, proc.stdout


def recap_changed(output):
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP", 1)[-1]))


@pytest.fixture(name="vms")
def vms_fixture(conn, qemu_tmp, run_module, remove_domain):
    """Two VMs ``{inventory name: domain name}`` imported with their links down; the second runs."""
    tag = uuid.uuid4().hex[:8]
    names = {"x2k-it-cut-%s@a" % tag: "x2k-it-cut-%s-a" % tag, "x2k-it-cut-%s-b" % tag: "x2k-it-cut-%s-b" % tag}
    try:
        for index, (vm, domain) in enumerate(names.items()):
            image = qemu_tmp / ("%s.qcow2" % domain)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
            r = run_module("kvm_domain", {
                "spec": spec(vm, "aa:00:5e:00:53:%02x" % (0x31 + index)), "disks": [str(image)],
                "network_map": {"LAN": "user"}, "domain_type": "qemu", "link_state": "down",
                "state": "running" if index else "defined"})
            assert not r.get("failed"), r
            assert r["domain"]["name"] == domain
        yield names
    finally:
        for domain in names.values():
            remove_domain(conn, domain, logs=True)


@pytest.fixture(name="inventory")
def inventory_fixture(vms, tmp_path):
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm-test": {"ansible_connection": "local",
                                             "ansible_python_interpreter": "/usr/bin/python3"}}},
        "xen_vms": {"vars": {"ansible_connection": "local", "kvm_host": "kvm-test"},
                    "hosts": {vm: {} for vm in vms}},
    }}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def test_cutover_one_vm_then_the_group(conn, vms, inventory):
    (vm_a, dom_a), (vm_b, dom_b) = vms.items()
    inactive, live = libvirt.VIR_DOMAIN_XML_INACTIVE, 0
    assert links(conn, dom_a, inactive) == links(conn, dom_b, live) == ["down"]

    rc, out = cutover(inventory, "-e", json.dumps({"vm": vm_b}))
    assert rc == 0, out
    assert recap_changed(out) == 1, out
    assert links(conn, dom_b, live) == links(conn, dom_b, inactive) == ["up"]
    assert links(conn, dom_a, inactive) == ["down"]  # not this one
    assert "links up on aa:00:5e:00:53:32" in out

    rc, out = cutover(inventory)
    assert rc == 0, out
    assert recap_changed(out) == 1, out
    assert links(conn, dom_a, inactive) == ["up"]
    assert conn.lookupByName(dom_b).isActive()

    rc, out = cutover(inventory)
    assert rc == 0, out
    assert recap_changed(out) == 0, out
    assert "links were up already" in out


def test_cutover_refuses_a_vm_outside_the_inventory(inventory):
    rc, out = cutover(inventory, "-e", "vm=no-such-vm")
    assert rc != 0
    assert "VM no-such-vm is not in the inventory group xen_vms" in out


# ---------------------------------------------------------------- a VM exported live (snapshot mode)

POOL_PASSWORD = "cutover-pool-secret"


@pytest.fixture(name="pool_xva", scope="module")
def pool_xva_fixture(tmp_path_factory):
    """A small plain XVA: the records of the pool's VM (no export happens at cut-over)."""
    from xva_writer import VM, Disk, write_xva
    xva = tmp_path_factory.mktemp("cutover-pool") / "vm.xva"
    write_xva(str(xva), VM(name="cutlive", disks=[Disk(image=b"\x01" * 4096, userdevice=0, bootable=True)]))
    return xva


@pytest.fixture(name="live_vm")
def live_vm_fixture(conn, qemu_tmp, run_module, remove_domain, pool_xva):
    """A VM still running on its pool and its migrated domain with the links down:
    ``(XapiVM, domain name, define(uuid))``; ``define`` makes the domain with that uuid."""
    from xapi_double import XapiVM
    name = "x2k-it-cutlive-%s" % uuid.uuid4().hex[:8]
    xen_vm = XapiVM(name, pool_xva, power_state="Running")

    def define(domain_uuid):
        image = qemu_tmp / ("%s.qcow2" % name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        vm_spec = dict(spec(name, "aa:00:5e:00:53:41"), uuid=domain_uuid)
        r = run_module("kvm_domain", {"spec": vm_spec, "disks": [str(image)], "network_map": {"LAN": "user"},
                                      "domain_type": "qemu", "link_state": "down", "state": "defined"})
        assert not r.get("failed"), r

    try:
        yield xen_vm, name, define
    finally:
        remove_domain(conn, name, logs=True)


def live_inventory(tmp_path, xapi, vm_name):
    inventory = {"all": {"children": {
        "kvm_hosts": {"hosts": {"kvm-test": {"ansible_connection": "local",
                                             "ansible_python_interpreter": "/usr/bin/python3"}}},
        "xen_hosts": {"hosts": {"pool1": {"xapi_url": xapi.url, "xapi_ca_path": xapi.ca_file,
                                          "xapi_password": POOL_PASSWORD}}},
        "xen_vms": {"vars": {"ansible_connection": "local", "kvm_host": "kvm-test"},
                    "hosts": {vm_name: {"xen_host": "pool1"}}},
    }}}
    path = tmp_path / "live-inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def test_a_live_vm_is_shut_down_and_marked_before_its_links_come_up(conn, live_vm, tmp_path):
    from xapi_double import XapiDouble
    xen_vm, domain, define = live_vm
    define(xen_vm.uuid)
    with XapiDouble([xen_vm], password=POOL_PASSWORD, tls=True) as xapi:
        inventory = live_inventory(tmp_path, xapi, domain)
        rc, out = cutover(inventory, "-e", "vm=%s" % domain)
        assert rc == 0, out
        assert xen_vm.power_state == "Halted"
        assert xen_vm.other_config.get("xen2kvm_migrated_to") == "kvm-test/%s" % domain
        assert "xen2kvm-migrated-to:kvm-test/%s" % domain in xen_vm.tags
        assert links(conn, domain, libvirt.VIR_DOMAIN_XML_INACTIVE) == ["up"]
        assert "source VM on pool1 shut down and marked" in out
        assert POOL_PASSWORD not in out

        rc, out = cutover(inventory, "-e", "vm=%s" % domain)
        assert rc == 0, out
        assert recap_changed(out) == 0, out
        assert "links were up already; source VM on pool1 halted already and marked" in out
        assert xapi.live_sessions() == 0


@pytest.mark.parametrize("domain_is", ["another VM's", "missing"])
def test_a_live_vm_keeps_running_when_its_domain_is_not_its_copy(conn, live_vm, tmp_path, domain_is):
    from xapi_double import XapiDouble
    xen_vm, domain, define = live_vm
    if domain_is == "another VM's":
        define(str(uuid.uuid4()))
    with XapiDouble([xen_vm], password=POOL_PASSWORD, tls=True) as xapi:
        rc, out = cutover(live_inventory(tmp_path, xapi, domain), "-e", "vm=%s" % domain)
        assert rc != 0, out
        assert ("not its migrated copy; nothing was changed" if domain_is == "another VM's"
                else "domain %s does not exist" % domain) in out, out
        assert xen_vm.power_state == "Running" and not xen_vm.tags and "xen2kvm_migrated_to" not in xen_vm.other_config
        if domain_is == "another VM's":
            assert links(conn, domain, libvirt.VIR_DOMAIN_XML_INACTIVE) == ["down"]
