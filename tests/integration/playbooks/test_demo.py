"""`make demo`'s playbook (playbooks/demo.yml) through the real ansible-playbook: the embedded
sample goes through playbooks/migrate.yml into this machine's libvirtd and its login banner is
shown. The sample XVA and images under build/demo are the demo's own (kept, as a demo run keeps
them); a domain this test created is removed afterwards, one that was there is left as found."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = pathlib.Path(__file__).resolve().parents[3]
DOMAIN = "deb12-pv"


@pytest.fixture(name="demo_domain")
def demo_domain_fixture(conn, remove_domain):
    existed = DOMAIN in conn.listDefinedDomains() + [d.name() for d in conn.listAllDomains()]
    yield
    if not existed:
        remove_domain(conn, DOMAIN)


def test_make_demo_migrates_the_sample_through_migrate_yml_and_shows_its_login(demo_domain, conn):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=str(REPO / "build" / "collections"))
    proc = subprocess.run([str(pathlib.Path(sys.executable).with_name("ansible-playbook")), "playbooks/demo.yml"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout
    assert "PLAY [Migrate each VM on its KVM host]" in proc.stdout  # migrate.yml ran, not a chain of its own
    record = {vm["vm"]: vm for vm in json.loads(
        (REPO / "build" / "demo" / "reports" / "migration-report.json").read_text())["vms"]}[DOMAIN]
    assert record["status"] in ("migrated", "unchanged") and record["error"] is None, record
    assert record["domain_type"] in ("kvm", "qemu")
    if record["status"] == "migrated":
        assert "deb12-pv login:" in proc.stdout, proc.stdout
    assert conn.lookupByName(DOMAIN).isActive()
