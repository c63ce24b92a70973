"""The ssh source (issue 8): an XVA on another host read through the system ssh client, against a
real OpenSSH server on 127.0.0.1 (tests/lib/sshd.py) with a throwaway host key and client key."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ansible_run import run_module
from sshd import free_port, ssh_children_of
from xva_writer import Disk, VM, half_filled_disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva, xva_info
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import (
    SourceError, describe_source, is_ssh_source, open_raw, parse_ssh_source, redacted_source)

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
MODULES = REPO / "build" / "collections" / "ansible_collections" / "xen2kvm" / "migration" / "plugins" / "modules"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    work = tmp_path_factory.mktemp("exports")
    vm = VM(name="TestVM01", disks=[Disk(image=half_filled_disk(12 * MiB, 1), userdevice=0),
                                    Disk(image=half_filled_disk(4 * MiB, 2), userdevice=1)])
    paths = {}
    for compression in (None, "gzip", "zstd"):
        paths[compression] = work / ("vm-%s.xva" % compression)
        write_xva(str(paths[compression]), vm, checksum="xxhash", compression=compression)
    return paths


def options(sshd, key=None):
    return {"ssh_options": sshd.client_options, "ssh_private_key": str(key or sshd.client_key), "timeout": 20}


def images(dest):
    return {name: hashlib.sha256((dest / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(dest)) if name.endswith(".raw")}


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_conversion_over_ssh_equals_a_local_one(sshd, exports, tmp_path, compression):
    local, remote = tmp_path / "local", tmp_path / "remote"
    convert_xva(str(exports[compression]), str(local))
    result = convert_xva(sshd.url(str(exports[compression])), str(remote), url_options=options(sshd))
    assert images(remote) == images(local) and len(images(local)) == 2
    assert all(disk["checksums_verified"] for disk in result["disks"])
    manifest = json.loads(next(p for p in remote.iterdir() if p.name.endswith(".json")).read_text())
    assert manifest["source"]["src"] == sshd.url(str(exports[compression]))


def test_scp_spelling_is_a_remote_file_only_when_no_local_file_has_that_name(sshd, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scp = "root@127.0.0.1:%s" % exports["gzip"]
    assert is_ssh_source(scp) and not is_ssh_source("./vm:1.xva") and not is_ssh_source("vm:1.xva")
    assert not is_ssh_source("http://127.0.0.1:8080/export") and not is_ssh_source("ftp://h/x.xva")
    assert is_ssh_source("backup:/x.xva")
    (tmp_path / "backup:").mkdir()
    (tmp_path / "backup:" / "x.xva").write_bytes(b"")
    assert not is_ssh_source("backup:/x.xva")  # a local file of that name wins
    source = parse_ssh_source(scp)
    assert (source.user, source.host, source.path, source.port) == ("root", "127.0.0.1", str(exports["gzip"]), None)
    # ssh's port for the scp spelling comes from ssh_options (Port=), as with scp itself.
    info = xva_info(scp, url_options=dict(options(sshd), ssh_options=sshd.client_options + ["Port=%d" % sshd.port]))
    assert info["compression"] == "gzip" and info["spec"]["name"] == "TestVM01"


def test_xva_info_module_over_ssh(sshd, exports):
    result = run_module("xva_info", dict(src=sshd.url(str(exports["zstd"])), **options(sshd)))
    assert result["compression"] == "zstd" and result["spec"]["name"] == "TestVM01"
    assert len(result["spec"]["disks"]) == 2


def test_a_missing_remote_file_is_named(sshd, tmp_path):
    src = sshd.url("/srv/no such dir/vm.xva")
    result = run_module("xva_convert", dict(src=src, dest=str(tmp_path / "o"), **options(sshd)), expect_fail=True)
    assert "cannot read %s" % redacted_source(src) in result["msg"], result["msg"]
    assert "No such file or directory" in result["msg"] and "Traceback" not in result["msg"]
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_a_refused_key_is_said_as_such(sshd, exports):
    key = sshd.other_key
    result = run_module("xva_info", dict(src=sshd.url(str(exports[None])), **options(sshd, key)), expect_fail=True)
    assert "cannot reach 127.0.0.1 over ssh" in result["msg"] and "the key was refused" in result["msg"]
    assert "Permission denied" in result["msg"]
    # the key's path may be shown, its content never
    secret = key.read_text().splitlines()[1]
    assert secret not in json.dumps(result)


def test_a_closed_port_is_said_as_such(exports):
    src = "ssh://root@127.0.0.1:%d%s" % (free_port(), exports[None])
    with pytest.raises(XvaError) as caught:
        xva_info(src, url_options={"timeout": 5})
    assert "nothing listens on the ssh port" in str(caught.value) and "Connection refused" in str(caught.value)


def test_an_unknown_host_key_fails_clearly(sshd, exports, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(XvaError) as caught:
        xva_info(sshd.url(str(exports[None])), url_options={
            "ssh_options": ["UserKnownHostsFile=%s" % empty, "GlobalKnownHostsFile=/dev/null",
                            "StrictHostKeyChecking=yes"], "ssh_private_key": str(sshd.client_key)})
    assert "the host key is unknown or changed" in str(caught.value), caught.value


def test_bad_ssh_sources_and_options_are_refused_before_connecting(sshd):
    for src, said in (("ssh://root:pw@127.0.0.1/x.xva", "takes no password"),
                      ("ssh://127.0.0.1/", "/absolute/path to the XVA"), ("ssh://127.0.0.1:99999/x", "port")):
        with pytest.raises(XvaError) as caught:
            xva_info(src)
        assert said in str(caught.value)
    with pytest.raises(XvaError) as caught:
        xva_info(sshd.url("/x.xva"), url_options={"ssh_options": ["-oProxyCommand=sh"]})
    assert "ssh_options takes ssh -o options" in str(caught.value)
    assert describe_source(sshd.url("/x.xva")) == {"src": sshd.url("/x.xva")}
    assert redacted_source("ssh://root:pw@127.0.0.1/x") == "ssh://127.0.0.1"


class HalfFeed(threading.Thread):
    """Writes the first half of ``data`` into ``fifo`` (which the remote ``cat`` reads), then
    holds it open without writing until stopped."""

    def __init__(self, fifo, data):
        threading.Thread.__init__(self, daemon=True)
        self.fifo, self.data, self.done = fifo, data, threading.Event()
        self.start()

    def run(self):
        try:
            with open(self.fifo, "wb") as pipe:
                pipe.write(self.data[:len(self.data) // 2])
                pipe.flush()
                self.done.wait(120)
        except BrokenPipeError:
            pass  # the reader went away: what the tests make happen

    def stop(self):
        self.done.set()
        self.join(30)


def test_an_interrupted_conversion_leaves_no_ssh_process(sshd, exports, tmp_path):
    fifo = tmp_path / "export.pipe"
    os.mkfifo(fifo)
    args = dict(src=sshd.url(str(fifo)), dest=str(tmp_path / "o"), status_file=str(tmp_path / "s.json"),
                **options(sshd))
    (tmp_path / "args.json").write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.Popen([sys.executable, str(MODULES / "xva_convert.py"), str(tmp_path / "args.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(MODULES.parents[4])))
    feed = HalfFeed(fifo, exports[None].read_bytes())
    try:
        deadline = time.monotonic() + 30
        children = []
        while time.monotonic() < deadline:
            children = ssh_children_of(proc.pid)
            status = json.loads((tmp_path / "s.json").read_text()) if (tmp_path / "s.json").exists() else {}
            if children and status.get("bytes_done", 0) > 0:
                break
            time.sleep(0.1)
        assert children, "ssh never started"
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
    finally:
        feed.stop()
    assert json.loads(out)["failed"] is True
    for pid in children:
        assert not os.path.exists("/proc/%d" % pid), "ssh %d outlived the module" % pid


def test_closing_a_source_early_kills_and_reaps_ssh(sshd, exports, tmp_path):
    """No zombie while this process lives: the ssh child's /proc entry is gone after close()."""
    fifo = tmp_path / "slow.pipe"
    os.mkfifo(fifo)
    feed = HalfFeed(fifo, exports[None].read_bytes())
    try:
        raw = open_raw(sshd.url(str(fifo)), ssh_options=sshd.client_options, ssh_private_key=str(sshd.client_key))
        assert raw.read(512)  # the stream is flowing
        children = ssh_children_of(os.getpid())
        assert children
        raw.close()
        for pid in children:
            assert not os.path.exists("/proc/%d" % pid), Path("/proc/%d/status" % pid).read_text()
    finally:
        feed.stop()


def remote_cat_of(path):
    """The pid of the ``cat -- PATH`` our sshd started for a test (found in /proc)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path("/proc", entry, "cmdline").read_bytes().split(b"\0")[:3] == [b"cat", b"--", os.fsencode(path)]:
                    return int(entry)
            except OSError:
                continue
    return None


def test_a_stream_that_dies_midway_says_how_far_it_got(sshd, exports, tmp_path):
    fifo = tmp_path / "dying.pipe"
    os.mkfifo(fifo)
    feed = HalfFeed(fifo, exports[None].read_bytes())
    try:
        raw = open_raw(sshd.url(str(fifo)), ssh_options=sshd.client_options, ssh_private_key=str(sshd.client_key))
        got = raw.read(4096)
        assert got
        os.kill(remote_cat_of(fifo), signal.SIGKILL)  # the remote side dies, as a rebooted host would
        with pytest.raises(SourceError) as caught:
            while raw.read(1 << 20):
                pass
        raw.close()
    finally:
        feed.stop()
    message = str(caught.value)
    assert "reading %s over ssh broke off after " % sshd.url(str(fifo)) in message, message


def test_a_password_in_an_ssh_url_is_masked(sshd):
    result = run_module("xva_info", {"src": "ssh://root:Zq7-ssh-secret@127.0.0.1:%d/x.xva" % sshd.port},
                        expect_fail=True)
    assert "takes no password" in result["msg"]
    assert "Zq7-ssh-secret" not in json.dumps(result)
