"""Run one of the collection's roles alone through real ansible-playbook.

``run_role("convert", {"convert_src": ...}, save=["convert_result"])`` plays the role on localhost
with exactly the given variables and returns ``(saved, output)``: the named variables as the role
left them (read back from a JSON file the play writes, not from the console), and the console
output, which tests read only for error messages.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from ansible_run import PLAYBOOK

FQCN = "xen2kvm.migration"


def run_role(role, role_vars, save=(), check=False, expect_fail=False, interpreter="/usr/bin/python3"):
    with tempfile.TemporaryDirectory(prefix="x2k-role-") as work:
        out = Path(work) / "saved.json"
        saved = "{{ {%s} | to_json }}" % ", ".join("%r: %s | default(None)" % (name, name) for name in save)
        play = [{
            "name": "Run the %s role alone" % role,
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": interpreter},
            "roles": [{"role": "%s.%s" % (FQCN, role), "vars": role_vars}],
            "post_tasks": [{"name": "Save what the role registered", "ansible.builtin.copy": {
                "content": saved, "dest": str(out), "mode": "0600"}, "check_mode": False, "diff": False}],
        }]
        playbook = Path(work) / "play.yml"
        playbook.write_text(yaml.safe_dump(play))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        cmd = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)] + (["--check"] if check else [])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if expect_fail:
            assert proc.returncode != 0 and not out.exists(), proc.stdout
            return None, proc.stdout
        assert proc.returncode == 0, proc.stdout
        return json.loads(out.read_text()), proc.stdout
