"""Helpers shared by the tests that run playbooks/migrate.yml through the real ansible-playbook,
with this machine as the KVM host: run the play, read its recap and its report, build a test
guest's XVA."""
import json
import os
import re
import subprocess
import time
import uuid

import pytest
import yaml

import guest_factory
from ansible_run import PLAYBOOK

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MIGRATE = os.path.join(REPO, "playbooks", "migrate.yml")
COLLECTIONS = os.path.join(REPO, "build", "collections")
KVM_HOST = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
# Settings that keep the host's networks untouched and make the boot check wait for login:.
QUIET_HOST = {"kvm_domain_type": "qemu", "kvm_import_default_network": "user", "kvm_import_boot_wait_for": "login"}


def guest_xva(workdir, name, variant="deb12-pv"):
    """The XVA of the test guest ``variant``, renamed ``name`` with a fresh uuid."""
    try:
        guest = guest_factory.build_variant(variant, workdir / ("build-" + name))
    except guest_factory.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    guest.vm.name = name
    guest.vm.uuid = str(uuid.uuid4())
    xva = guest.xva(workdir / (name + ".xva"), checksum="sha1")
    for disk in guest.disks:
        os.unlink(disk)  # the XVA holds them now
    return str(xva)


def _playbook_run(workdir, inventory, extra):
    """The command line and environment of ansible-playbook migrate.yml on ``inventory``."""
    inventory_path = workdir / "inventory.yml"
    inventory_path.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_HOST_KEY_CHECKING="0", PWD=str(workdir))  # as a shell sets it
    return [str(PLAYBOOK), "-i", str(inventory_path), MIGRATE] + list(extra), env


def play(workdir, inventory, *extra):
    cmd, env = _playbook_run(workdir, inventory, extra)
    proc = subprocess.run(cmd, cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    return proc.returncode, proc.stdout


def play_streaming(workdir, inventory, *extra):
    """[(seconds since the start, line)] as the lines arrived, the last one ``rc N``."""
    cmd, env = _playbook_run(workdir, inventory, extra)
    started = time.monotonic()
    lines = []
    with subprocess.Popen(cmd, cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line))
    lines.append((time.monotonic() - started, "rc %d\n" % proc.returncode))
    return lines


def recap(output, host):
    match = re.search(r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % re.escape(host),
                      output, re.M)
    assert match, output
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def report(report_dir):
    data = json.loads((report_dir / "migration-report.json").read_text())
    return {entry["vm"]: entry for entry in data["vms"]}, (report_dir / "migration-report.md").read_text()
