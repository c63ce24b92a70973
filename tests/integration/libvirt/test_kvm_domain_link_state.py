"""kvm_domain's link_state against the real libvirtd: NICs defined with their links down, a rerun
unchanged, and a running domain switched up (the cut-over) in the running guest and in its
definition, without a restart.

The running domains boot from empty images (no guest OS: SeaBIOS finds nothing to boot and waits),
which is enough for libvirt and QEMU to hold the NICs; their link state is read back from the
live and the inactive XML, and the qemu process is the same before and after the switch.  NICs are user-mode (``<interface type='user'>``).
"""
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.root]

MACS = ["aa:00:5e:00:53:21", "aa:00:5e:00:53:22"]
NETMAP = {"LAN": "user", "DMZ": "user"}


def make_spec(name):
    return {
        "uuid": str(uuid.uuid4()), "name": name, "description": "", "vcpus": 1, "vcpus_max": 1,
        "cores_per_socket": 1, "memory_mib": 64, "xen_domain_type": "hvm", "firmware": "bios",
        "actions_after_reboot": "restart", "actions_after_crash": "destroy", "actions_after_shutdown": "destroy",
        "source": {"hostname": "xenserver1", "product_brand": "XCP-ng", "product_version": "8.2.1"},
        "disks": [{"ref": "Ref:12", "userdevice": 0, "device": "xvda", "virtual_size": 16 << 20,
                   "bootable": True, "mode": "RW"}],
        "nics": [{"device": i, "mac": mac, "network": net, "bridge": "xenbr%d" % i}
                 for i, (mac, net) in enumerate(zip(MACS, ["LAN", "DMZ"]))],
    }


def make_image(directory, name):
    image = directory / ("%s-disk0.qcow2" % name)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return [{"path": str(image), "userdevice": 0, "ref": "Ref:12"}]


def args_for(name, qemu_tmp, **extra):
    args = {"spec": make_spec("Link VM"), "disks": make_image(qemu_tmp, name), "network_map": NETMAP,
            "domain_type": "qemu", "name": name}
    args.update(extra)
    return args


def link_states(xml):
    """{mac: state} of a domain XML, a NIC without <link> being up."""
    states = {}
    for interface in ET.fromstring(xml).findall("devices/interface"):
        link = interface.find("link")
        states[interface.find("mac").get("address")] = link.get("state") if link is not None else "up"
    return states


def inactive(conn, name):
    return link_states(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def live(conn, name):
    dom = conn.lookupByName(name)
    assert dom.isActive()
    return link_states(dom.XMLDesc(0))


def all_links(state):
    return {mac: state for mac in MACS}


def qemu_pid(name):
    with open("/run/libvirt/qemu/%s.pid" % name) as f:
        return int(f.read().strip())


# ------------------------------------------------------------------------------ defined


def test_defined_down_rerun_unchanged_then_up_with_diff(conn, domain_name, qemu_tmp, run_module):
    args = args_for(domain_name, qemu_tmp, link_state="down")

    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["changed"]
    assert inactive(conn, domain_name) == all_links("down")
    assert link_states(r["xml"]) == all_links("down")
    defined = conn.lookupByName(domain_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    r = run_module("kvm_domain", args, diff=True)
    assert not r.get("failed"), r
    assert not r["changed"] and not r["xml_changed"] and r["link_changes"] == []
    r = run_module("kvm_domain", args, check=True)
    assert not r["changed"], r
    assert conn.lookupByName(domain_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == defined

    up = dict(args, link_state="up")
    r = run_module("kvm_domain", up, check=True, diff=True)
    assert r["changed"], r
    assert r["diff"]["before"].count("<link state=\"down\" />") == 2
    assert "<link" not in r["diff"]["after"]
    assert [c["mac"] for c in r["link_changes"]] == MACS
    assert inactive(conn, domain_name) == all_links("down")  # check mode changed nothing

    r = run_module("kvm_domain", up, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["xml_changed"] and not r["restart_needed"]
    assert r["link_changes"] == [{"mac": mac, "live": False, "config": True} for mac in MACS]
    assert r["diff"]["before"].count("<link state='down'/>") == 2
    assert "<link" not in r["diff"]["after"]
    assert inactive(conn, domain_name) == all_links("up")

    unset = dict(args)
    del unset["link_state"]
    r = run_module("kvm_domain", unset)  # unset: up
    assert not r.get("failed"), r
    assert not r["changed"], r


def test_kvm_import_role_passes_link_state(conn, domain_name, qemu_tmp):
    from role_run import run_role
    role_vars = {"kvm_import_spec": make_spec("Link VM"), "kvm_import_disks": make_image(qemu_tmp, domain_name),
                 "kvm_import_network_map": NETMAP, "kvm_import_domain_type": "qemu",
                 "kvm_import_name": domain_name, "kvm_import_boot_check": False}
    saved, _output = run_role("kvm_import", dict(role_vars, kvm_import_link_state="down"), save=["kvm_import_domain"])
    assert saved["kvm_import_domain"]["changed"]
    assert inactive(conn, domain_name) == all_links("down")

    saved, _output = run_role("kvm_import", dict(role_vars, kvm_import_link_state="down"), save=["kvm_import_domain"])
    assert not saved["kvm_import_domain"]["changed"]

    saved, _output = run_role("kvm_import", role_vars, save=["kvm_import_domain"])  # the default: up
    assert saved["kvm_import_domain"]["changed"]
    assert inactive(conn, domain_name) == all_links("up")

    _saved, output = run_role("kvm_import", dict(role_vars, kvm_import_link_state="off"), expect_fail=True)
    assert "kvm_import_link_state" in output and "up, down" in output


# ------------------------------------------------------------------------------ running


@pytest.mark.slow
def test_running_domain_switched_up_live_without_restart(conn, domain_name, qemu_tmp, run_module):
    args = args_for(domain_name, qemu_tmp, link_state="down", state="running")
    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert r["started"]
    assert live(conn, domain_name) == all_links("down") == inactive(conn, domain_name)
    pid = qemu_pid(domain_name)

    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    assert not r["changed"], r

    # the cut-over through the spec run: definition and running NICs up, the same qemu process
    r = run_module("kvm_domain", dict(args, link_state="up"), diff=True)
    assert not r.get("failed"), r
    assert r["changed"] and not r["restart_needed"] and not r["started"]
    assert r["link_changes"] == [{"mac": mac, "live": True, "config": True} for mac in MACS]
    assert live(conn, domain_name) == all_links("up") == inactive(conn, domain_name)
    assert qemu_pid(domain_name) == pid

    r = run_module("kvm_domain", dict(args, link_state="up"))
    assert not r.get("failed"), r
    assert not r["changed"], r
    assert qemu_pid(domain_name) == pid


@pytest.mark.slow
def test_links_only_without_spec(conn, domain_name, qemu_tmp, run_module):
    """What playbooks/cutover.yml runs: name and link_state, no spec."""
    args = args_for(domain_name, qemu_tmp, link_state="down", state="running")
    r = run_module("kvm_domain", args)
    assert not r.get("failed"), r
    pid = qemu_pid(domain_name)
    cut_over = {"name": domain_name, "link_state": "up", "domain_type": "qemu"}

    r = run_module("kvm_domain", cut_over, check=True, diff=True)
    assert not r.get("failed"), r
    assert r["changed"]
    assert r["link_changes"] == [{"mac": mac, "live": True, "config": True} for mac in MACS]
    assert r["diff"]["after"].count("<link state=\"up\" />") == 2
    assert live(conn, domain_name) == all_links("down") == inactive(conn, domain_name)

    r = run_module("kvm_domain", cut_over, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] and r["xml_changed"] and not r["restart_needed"]
    assert r["diff"]["before"] != r["diff"]["after"]
    assert live(conn, domain_name) == all_links("up") == inactive(conn, domain_name)
    assert qemu_pid(domain_name) == pid

    r = run_module("kvm_domain", cut_over)
    assert not r.get("failed"), r
    assert not r["changed"], r

    # the spec run after the cut-over (a rerun of the migration with link_state up) agrees
    r = run_module("kvm_domain", dict(args, link_state="up"))
    assert not r.get("failed"), r
    assert not r["changed"], r

    # and back down (a cut-over undone): live and in the definition
    r = run_module("kvm_domain", dict(cut_over, link_state="down"))
    assert not r.get("failed"), r
    assert r["changed"]
    assert live(conn, domain_name) == all_links("down") == inactive(conn, domain_name)
    assert qemu_pid(domain_name) == pid

    # a shut-off domain: only its definition
    conn.lookupByName(domain_name).destroy()
    r = run_module("kvm_domain", cut_over)
    assert not r.get("failed"), r
    assert r["changed"]
    assert r["link_changes"] == [{"mac": mac, "live": False, "config": True} for mac in MACS]
    assert inactive(conn, domain_name) == all_links("up")


def test_links_only_refuses_missing_and_foreign_domains(conn, domain_name, run_module):
    r = run_module("kvm_domain", {"name": domain_name, "link_state": "up"})
    assert r.get("failed")
    assert "domain %s does not exist" % domain_name in r["msg"]

    r = run_module("kvm_domain", {"name": domain_name})
    assert r.get("failed")
    assert "spec is required" in r["msg"] and "link_state" in r["msg"]

    foreign = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>"
               "<os><type arch='x86_64'>hvm</type></os><devices><interface type='user'>"
               "<mac address='%s'/><link state='down'/></interface></devices></domain>"
               % (domain_name, MACS[0]))
    conn.defineXML(foreign)
    r = run_module("kvm_domain", {"name": domain_name, "link_state": "up"})
    assert r.get("failed")
    assert "no xen2kvm metadata" in r["msg"] and "force" in r["msg"]
    assert inactive(conn, domain_name) == {MACS[0]: "down"}


# ------------------------------------------------------------------------------ in the guest

# The guest's virtio NIC driver and its PCI transport (kernel_with_modules adds what they need,
# in load order).
NIC_MODULES = ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/net/virtio_net.ko")

# The guest brings its NIC up, prints the carrier it sees, shows a login prompt (what the boot check
# waits for) and then prints the carrier again each time it changes.
CARRIER_INIT = """#!/bin/sh
bb=/bin/busybox
$bb mount -t devtmpfs dev /dev
$bb mount -t sysfs sys /sys
for m in {modules}; do $bb insmod /$m || echo "x2k-insmod-failed $m"; done
nic=$($bb ls /sys/class/net | $bb grep -v '^lo$' | $bb head -n 1)
$bb ip link set "$nic" up
$bb sleep 1
last=$($bb cat /sys/class/net/$nic/carrier)
echo "x2k-carrier=$last ($nic)"
printf "x2k-link login: \\n"
while :; do
  now=$($bb cat /sys/class/net/$nic/carrier)
  if [ "$now" != "$last" ]; then echo "x2k-carrier=$now ($nic)"; last=$now; fi
  $bb sleep 0.3
done
"""

X2K_METADATA = ("<metadata><x2k:migration xmlns:x2k='urn:xen2kvm:migration:1'><x2k:source-name>Link VM"
                "</x2k:source-name></x2k:migration></metadata>")


def _carrier_lines(name):
    with open("/var/log/libvirt/qemu/%s-serial.log" % name, errors="replace") as f:
        return [line.strip() for line in f if line.startswith("x2k-carrier=") or "x2k-insmod-failed" in line]


@pytest.mark.slow
def test_guest_boots_with_links_down_and_sees_the_cable_plugged_in_live(conn, domain_name, qemu_tmp,
                                                                        boot_kit, kernel_with_modules,
                                                                        run_module):
    """The boot check proves the boot with the links down (serial console, no network), the guest
    sees no carrier, and the cut-over (links-only kvm_domain) gives it one without a restart."""
    local_kernel, modules = kernel_with_modules(NIC_MODULES, qemu_tmp)
    initramfs = boot_kit["make_initramfs"](domain_name, CARRIER_INIT.replace("{modules}", " ".join(modules)),
                                           files=modules)
    xml = """<domain type='qemu'>
  <name>{name}</name>
  {metadata}
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 tsc=unstable</cmdline></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <interface type='user'><mac address='{mac}'/><model type='virtio'/><link state='down'/></interface>
    <serial type='pty'><log file='/var/log/libvirt/qemu/{name}-serial.log' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>""".format(name=domain_name, metadata=X2K_METADATA, kernel=local_kernel, initrd=initramfs, mac=MACS[0])
    conn.defineXML(xml)

    r = run_module("kvm_boot_check", {"name": domain_name, "timeout": 300, "wait_for": "login",
                                      "poll_interval": 0.5})
    assert not r.get("failed"), r
    assert r["method"] == "login" and r["started"]
    assert not any("x2k-insmod-failed" in line for line in _carrier_lines(domain_name)), _carrier_lines(domain_name)
    assert [line.split()[0] for line in _carrier_lines(domain_name)] == ["x2k-carrier=0"]
    pid = qemu_pid(domain_name)

    r = run_module("kvm_domain", {"name": domain_name, "link_state": "up"})
    assert not r.get("failed"), r
    assert r["changed"] and r["link_changes"] == [{"mac": MACS[0], "live": True, "config": True}]
    deadline = time.monotonic() + 60
    while [line.split()[0] for line in _carrier_lines(domain_name)] != ["x2k-carrier=0", "x2k-carrier=1"]:
        assert time.monotonic() < deadline, _carrier_lines(domain_name)
        time.sleep(0.5)
    assert qemu_pid(domain_name) == pid
    assert live(conn, domain_name) == {MACS[0]: "up"} == inactive(conn, domain_name)

    r = run_module("kvm_domain", {"name": domain_name, "link_state": "down"})  # and pulled again
    assert not r.get("failed"), r
    deadline = time.monotonic() + 60
    while [line.split()[0] for line in _carrier_lines(domain_name)][-1:] != ["x2k-carrier=0"]:
        assert time.monotonic() < deadline, _carrier_lines(domain_name)
        time.sleep(0.5)
