"""The transfer role (issue 8) through real ansible-playbook, against a real sshd on 127.0.0.1:
stream mode hands the convert role an ssh:// source (nothing copied), stage mode copies with
resumable rsync, verifies, and changes nothing on a rerun."""

import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from ansible_run import PLAYBOOK
from role_run import run_role
from xva_writer import VM, Disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva

MiB = 1 << 20


@pytest.fixture(scope="module")
def remote_xva(tmp_path_factory):
    data = bytearray(6 * MiB)
    data[:2 * MiB] = hashlib.shake_256(b"transfer").digest(2 * MiB)
    path = tmp_path_factory.mktemp("remote dir") / "Web 01.xva"
    write_xva(str(path), VM(name="Web 01", disks=[Disk(image=bytes(data), userdevice=0)]), compression="zstd")
    return path


def ssh_vars(sshd):
    return {"transfer_ssh_options": sshd.client_options, "transfer_ssh_private_key": str(sshd.client_key)}


def play(plays):
    """Run ``plays`` on localhost; returns (rc, console output)."""
    with tempfile.TemporaryDirectory(prefix="x2k-transfer-") as work:
        playbook = Path(work) / "play.yml"
        playbook.write_text(yaml.safe_dump(plays))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return proc.returncode, proc.stdout


def stage_play(sshd, src, stage_dir):
    return [{"hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
             "roles": [{"role": "xen2kvm.migration.transfer",
                        "vars": dict(ssh_vars(sshd), transfer_source=src, transfer_mode="stage",
                                     transfer_stage_dir=str(stage_dir))}]}]


def changed_tasks(output):
    """The tasks the default callback reported as ``changed``; the recap must agree."""
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):line.rindex("]")].split(" : ", 1)[-1]
        elif line.startswith("changed: [localhost]"):
            changed.append(task)
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", output)
    assert recap and int(recap.group(1)) == len(changed), output
    return changed


def test_stream_mode_gives_the_convert_role_an_ssh_source(sshd, remote_xva, tmp_path):
    scp = "root@127.0.0.1:%s" % remote_xva
    dest = tmp_path / "images"
    # ssh's port for the scp spelling comes from an ssh option, as with scp; the convert role
    # gets the same ssh options.
    options = sshd.client_options + ["Port=%d" % sshd.port]
    out = tmp_path / "saved.json"
    rc, output = play([{
        "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
        "tasks": [
            {"name": "transfer", "ansible.builtin.include_role": {"name": "xen2kvm.migration.transfer"},
             "vars": {"transfer_source": scp, "transfer_ssh_options": options,
                      "transfer_ssh_private_key": str(sshd.client_key)}},
            {"name": "convert", "ansible.builtin.include_role": {"name": "xen2kvm.migration.convert"},
             "vars": {"convert_src": "{{ transfer_xva_src }}", "convert_dest": str(dest),
                      "convert_ssh_options": options, "convert_ssh_private_key": str(sshd.client_key)}},
            {"name": "save", "ansible.builtin.copy": {
                "content": "{{ {'src': transfer_xva_src, 'result': convert_result} | to_json }}", "dest": str(out),
                "mode": "0600"}},
        ]}])
    assert rc == 0, output
    saved = json.loads(out.read_text())
    assert saved["src"] == "ssh://root@127.0.0.1%s" % str(remote_xva).replace(" ", "%20")
    local = tmp_path / "local"
    convert_xva(str(remote_xva), str(local))
    disk = saved["result"]["disks"][0]
    assert hashlib.sha256(Path(disk["path"]).read_bytes()).digest() == \
        hashlib.sha256((local / os.path.basename(disk["path"])).read_bytes()).digest()
    assert not any(name.endswith(".xva") for name in os.listdir(tmp_path))  # nothing staged


def test_stage_mode_copies_verifies_and_a_rerun_changes_nothing(sshd, remote_xva, tmp_path):
    stage = tmp_path / "stage"
    rc, output = play(stage_play(sshd, sshd.url(str(remote_xva)).replace(" ", "%20"), stage))
    assert rc == 0, output
    staged = stage / "Web 01.xva"
    assert staged.read_bytes() == remote_xva.read_bytes()
    assert os.listdir(stage) == ["Web 01.xva"]  # no .part left
    assert "Put the verified copy in place" in changed_tasks(output)
    rc, output = play(stage_play(sshd, sshd.url(str(remote_xva)).replace(" ", "%20"), stage))
    assert rc == 0, output
    assert changed_tasks(output) == [], output


def test_stage_mode_resumes_a_partial_copy(sshd, remote_xva, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    data = remote_xva.read_bytes()
    (stage / ".Web 01.xva.part").write_bytes(data[:len(data) // 2])
    saved, _output = run_role("transfer", dict(ssh_vars(sshd), transfer_source="root@127.0.0.1:%s" % remote_xva,
                                               transfer_mode="stage", transfer_stage_dir=str(stage),
                                               transfer_ssh_options=sshd.client_options + ["Port=%d" % sshd.port]),
                              save=["transfer_xva_src"])
    assert saved["transfer_xva_src"] == str(stage / "Web 01.xva")
    assert (stage / "Web 01.xva").read_bytes() == data and os.listdir(stage) == ["Web 01.xva"]


def test_a_changed_remote_file_is_staged_again(sshd, remote_xva, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    stale = bytearray(remote_xva.read_bytes())
    stale[-1000] ^= 0xFF  # same size, different content
    (stage / "Web 01.xva").write_bytes(bytes(stale))
    rc, output = play(stage_play(sshd, sshd.url(str(remote_xva)).replace(" ", "%20"), stage))
    assert rc == 0, output
    assert (stage / "Web 01.xva").read_bytes() == remote_xva.read_bytes()


def test_bad_sources_fail_clearly(sshd, tmp_path):
    _saved, output = run_role("transfer", {"transfer_source": "ssh://root:pw@127.0.0.1/x.xva"}, expect_fail=True)
    assert "the ssh:// source is not ssh://[user@]host[:port]/absolute/path" in output and ":pw@" not in output
    _saved, output = run_role("transfer", {"transfer_source": str(tmp_path / "missing.xva")}, expect_fail=True)
    assert "missing.xva does not exist on the target host" in output
    _saved, output = run_role("transfer", {"transfer_source": "h:/x.xva", "transfer_mode": "stage"}, expect_fail=True)
    assert "transfer_stage_dir when transfer_mode is stage" in output
    _saved, output = run_role("transfer", dict(ssh_vars(sshd), transfer_source=sshd.url("/nonexistent/x.xva"),
                                               transfer_mode="stage", transfer_stage_dir=str(tmp_path / "s")),
                              expect_fail=True)
    assert "No such file or directory" in output and not list((tmp_path / "s").iterdir())


@pytest.mark.parametrize("url", ["https://root:pw@xenhost1:443/export?uuid=5d1c0b2e", "http://127.0.0.1:8080/export?ref=OpaqueRef:1"])
def test_an_http_export_is_handed_to_the_converter_as_it_is(url):
    # "http://host:..." also reads as the host:/path spelling; a URL is never an ssh source.
    saved, _output = run_role("transfer", {"transfer_source": url}, save=["transfer_xva_src"])
    assert saved["transfer_xva_src"] == url
