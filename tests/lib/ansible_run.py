"""Run a collection module through real ansible-core (ansible-playbook) and get its result.

The result is written by the play itself (``copy`` of ``result | to_json``), so tests never parse
ansible's console output.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def run_module(module, args, check=False, diff=False, expect_fail=False, interpreter="/usr/bin/python3",
               extra_env=None):
    with tempfile.TemporaryDirectory(prefix="x2k-ansible-") as work:
        out = Path(work) / "result.json"
        play = [{
            "name": "run %s" % module,
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": interpreter},
            "tasks": [
                {"name": "the module", "xen2kvm.migration.%s" % module: args, "register": "result",
                 "ignore_errors": True},
                {"name": "save the result", "ansible.builtin.copy": {
                    "content": "{{ result | to_json }}", "dest": str(out)}, "check_mode": False,
                 "diff": False},
            ],
        }]
        playbook = Path(work) / "play.yml"
        playbook.write_text(yaml.safe_dump(play))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_NOCOLOR="1", **(extra_env or {}))
        cmd = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)]
        cmd += (["--check"] if check else []) + (["--diff"] if diff else [])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        assert proc.returncode == 0, proc.stdout
        result = json.loads(out.read_text())
    assert bool(result.get("failed")) == expect_fail, result
    return result
