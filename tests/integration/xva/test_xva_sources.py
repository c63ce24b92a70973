"""Network sources (issue 7): timeouts said as timeouts, credentials inside ``src`` never shown,
HTTPS against a self-signed certificate trusted through ``ca_path``.  XenServer is the XAPI test
double on 127.0.0.1; the XVA streams are real (tests/lib/xva_writer.py)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.urls import open_url

from xapi_double import XapiDouble, XapiVM
from xva_writer import Disk, VM, half_filled_disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva, xva_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import redacted_source

MiB = 1 << 20
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PASSWORD = "Zq7-not-in-any-output"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    work = tmp_path_factory.mktemp("sources")
    vm = VM(name="TestVM01", disks=[Disk(image=half_filled_disk(24 * MiB, 1), userdevice=0)])
    paths = {}
    for compression in (None, "gzip", "zstd"):
        paths[compression] = work / ("vm-%s.xva" % compression)
        write_xva(str(paths[compression]), vm, checksum="xxhash", compression=compression)
    return vm, paths


def export_url(xapi, **query):
    extra = "".join("&%s=%s" % item for item in query.items())
    return "%s/export?uuid=%s%s" % (xapi.url, xapi.vms[0].uuid, extra)


# ------------------------------------------------------------------ item 6: timeouts


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_a_stalled_export_is_reported_as_a_timeout(exports, tmp_path, compression):
    _vm, paths = exports
    xva = paths[compression]
    with XapiDouble([XapiVM("TestVM01", xva)], stall_after=os.path.getsize(xva) // 2) as xapi:
        dest = tmp_path / "o"
        dest.mkdir()
        started = time.monotonic()
        with pytest.raises(XvaError) as caught:
            convert_xva(export_url(xapi), str(dest), open_url_func=open_url,
                        url_options={"session_id": xapi.login(), "timeout": 2})
        host = xapi.url.split("//", 1)[1]
    message = str(caught.value)
    assert "no data from %s for 2 s" % host in message, message
    assert "corrupt" not in message
    assert time.monotonic() - started < 30
    assert os.listdir(dest) == []


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_reset_connection_is_reported_as_such(exports, tmp_path, compression):
    _vm, paths = exports
    xva = paths[compression]
    with XapiDouble([XapiVM("TestVM01", xva)], reset_after=os.path.getsize(xva) // 2) as xapi:
        dest = tmp_path / "o"
        dest.mkdir()
        with pytest.raises(XvaError) as caught:
            convert_xva(export_url(xapi), str(dest), open_url_func=open_url,
                        url_options={"session_id": xapi.login(), "timeout": 20})
        host = xapi.url.split("//", 1)[1]
    message = str(caught.value)
    assert re.search(r"connection to %s failed after \d+ bytes: .*reset" % re.escape(host), message), message
    assert "corrupt" not in message
    assert os.listdir(dest) == []


def test_default_timeout_is_documented_with_its_reason():
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.module import SOURCE_ARGUMENT_SPEC
    default = SOURCE_ARGUMENT_SPEC["timeout"]["default"]
    assert default >= 1800  # gzip --fast holds back ~350 keep-alives (29 min), see docs/sources.md
    docs = (Path(__file__).resolve().parents[3] / "docs" / "sources.md").read_text()
    assert "%d" % default in docs and "keep-alive" in docs


def test_timeout_before_the_answer_names_the_host(tmp_path):
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        url = "http://127.0.0.1:%d/export?uuid=x&session_id=OpaqueRef:abcdef123456" % listener.getsockname()[1]
        with pytest.raises(XvaError, match=r"no answer from 127\.0\.0\.1:\d+ for 1 s") as caught:
            xva_info(url, open_url, {"timeout": 1})
        assert "abcdef123456" not in str(caught.value)
    finally:
        listener.close()


# ------------------------------------------------------------------ item 7: ca_path


def test_https_with_a_self_signed_certificate_and_ca_path(exports, tmp_path):
    vm, paths = exports
    with XapiDouble([XapiVM("TestVM01", paths["zstd"])], tls=True) as xapi:
        url = export_url(xapi, session_id=xapi.login())
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(XvaError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            xva_info(url, open_url, {})
        result = convert_xva(url, str(tmp_path / "o"), open_url_func=open_url, url_options={"ca_path": xapi.ca_file})
        assert Path(result["disks"][0]["path"]).read_bytes() == vm.disks[0].image


# ------------------------------------------------------------------ item 7: secrets


def run_playbook(module, args, verbosity="-vvv"):
    """ansible-playbook at -vvv; returns (console output, registered result)."""
    with tempfile.TemporaryDirectory(prefix="x2k-secrets-") as work:
        out = Path(work) / "result.json"
        play = [{"name": "Secrets", "hosts": "localhost", "gather_facts": False,
                 "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
                 "tasks": [{"name": "The module", "xen2kvm.migration.%s" % module: args, "register": "result",
                            "ignore_errors": True},
                           {"name": "Save the result", "ansible.builtin.copy": {
                               "content": "{{ result | to_json }}", "dest": str(out), "mode": "0600"}}]}]
        playbook = Path(work) / "play.yml"
        playbook.write_text(yaml.safe_dump(play))
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_NOCOLOR="1")
        proc = subprocess.run([str(PLAYBOOK), verbosity, "-i", "localhost,", "-c", "local", str(playbook)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        assert proc.returncode == 0, proc.stdout
        return proc.stdout, json.loads(out.read_text())


def files_under(path):
    found = []
    for root, _dirs, names in os.walk(path):
        found += [Path(root) / name for name in names]
    return found


@pytest.mark.parametrize("outcome", ["converted", "failed"])
def test_credentials_in_src_never_leak(exports, tmp_path, outcome):
    vm, paths = exports
    xva = paths["gzip"]
    cut = os.path.getsize(xva) * 3 // 4 if outcome == "failed" else None  # after ova.xml and the first chunks
    with XapiDouble([XapiVM("TestVM01", xva)], password=PASSWORD, tls=True, cut_after=cut) as xapi:
        session = xapi.login()
        src = export_url(xapi, session_id=session).replace("https://", "https://root:%s@" % PASSWORD)
        dest, status = tmp_path / "images", tmp_path / "status.json"
        output, result = run_playbook("xva_convert", {"src": src, "dest": str(dest), "status_file": str(status),
                                                      "ca_path": xapi.ca_file, "timeout": 20})
    assert bool(result.get("failed")) == (outcome == "failed"), result
    secrets = (PASSWORD, session, session.split(":", 1)[1])
    shown = {"ansible-playbook -vvv output": output, "registered result": json.dumps(result),
             "status file": status.read_text()}
    for path in files_under(dest):
        shown[str(path)] = path.read_bytes().decode("latin-1") if path.stat().st_size < MiB else ""
    for what, text in shown.items():
        for secret in secrets:
            assert secret not in text, "%s shows %s" % (what, secret)
    # -vvv prints the module's invocation: the src is there, its secrets masked
    masked_src = r'"src": "https://root:\*+@127\.0\.0\.1:\d+/export\?uuid=[^"]*session_id=\*+"'
    assert '"module_args": {' in output and re.search(masked_src, output), output
    if outcome == "converted":
        manifests = [path for path in files_under(dest) if path.name.endswith(".xen2kvm.json")]
        assert manifests and "127.0.0.1" in manifests[0].read_text()
        assert Path(result["disks"][0]["path"]).read_bytes() == vm.disks[0].image
    else:
        assert "truncated" in result["msg"] and json.loads(status.read_text())["state"] == "failed"


def test_redacted_source_keeps_what_identifies_the_export():
    url = "https://root:p%40ss@xen1:443/export?uuid=0f5e&session_id=OpaqueRef:12ab&use_compression=zstd"
    assert redacted_source(url) == "https://xen1:443/export?uuid=0f5e&session_id=********&use_compression=zstd"
    assert redacted_source("/backup/vm.xva") == "/backup/vm.xva"


def test_the_targets_log_line_masks_credentials_in_src(monkeypatch):
    """AnsibleModule logs 'Invoked with ...' to the target's journal before the module's code
    runs; the credentials inside src must already be masked there."""
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes
    from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.module import (
        SOURCE_ARGUMENT_SPEC, XvaSourceModule)
    src = "https://root:%s@xen1/export?uuid=u1&session_id=OpaqueRef:5ec12e7-1d" % PASSWORD
    args = {"ANSIBLE_MODULE_ARGS": {"src": src, "_ansible_remote_tmp": "/tmp", "_ansible_keep_remote_files": False}}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(args)))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)  # ansible-core >= 2.19
    monkeypatch.setattr(basic, "_PARSED_MODULE_ARGS", None, raising=False)  # restored after the test
    logged = []
    monkeypatch.setattr(XvaSourceModule, "log", lambda self, msg, log_args=None: logged.append(msg))
    module = XvaSourceModule(argument_spec=SOURCE_ARGUMENT_SPEC)
    assert logged and "Invoked with" in logged[0] and "xen1/export" in logged[0]
    assert PASSWORD not in logged[0] and "5ec12e7-1d" not in logged[0], logged[0]
    assert {PASSWORD, "OpaqueRef:5ec12e7-1d"} <= module.no_log_values
