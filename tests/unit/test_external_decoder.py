"""The external decoder path (zstd -dc, igzip -dc, pigz -dc fed by our reader): the same disks as
the in-process library, clear errors when the decoder dies, finds damaged or cut-off data, or the
source fails under it, the library when the host has no decoder, and no child process left behind."""
import gzip
import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from ansible.module_utils.urls import open_url

from processes import alive
from xva_writer import VM, Disk, write_xva

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.decoders import ExternalDecoder
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.reader import XvaError
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva import stream as stream_module
from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.stream import SourceError, open_xva_stream

MiB = 1 << 20
# The decoder, the compression it reads, and the command it runs as.
DECODERS = [("zstd", "zstd"), ("igzip", "gzip"), ("pigz", "gzip")]


def our_children():
    """Pids of our child processes (zombies included: an unreaped child is a leftover too)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % task) as handle:
                pids += [int(pid) for pid in handle.read().split()]
        except OSError:
            pass
    return pids


def command_of(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return None


@pytest.fixture(autouse=True)
def no_child_left_behind():
    assert our_children() == [], "children before the test"
    yield
    deadline = time.monotonic() + 5
    while our_children() and time.monotonic() < deadline:
        time.sleep(0.05)  # only a helper thread of the test itself may still be ending
    assert [(pid, command_of(pid)) for pid in our_children()] == []


def only_on_path(monkeypatch, tmp_path, *tools):
    """PATH holds ``tools`` and nothing else, so the decoder chosen is the one the test names."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.skip("%s is not installed" % tool)
        os.symlink(found, bindir / tool)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("XEN2KVM_DECODER", "external")  # auto keeps zstd in the library


def disk_bytes(size_mib, seed=1):
    """A disk with random, repeated and zero chunks (the zeros are left out of the XVA)."""
    data = bytearray(size_mib * MiB)
    for index in range(size_mib):
        if index % 3 == 0:
            data[index * MiB:(index + 1) * MiB] = hashlib.shake_256(b"%d-%d" % (seed, index)).digest(MiB)
        elif index % 3 == 1:
            data[index * MiB:(index + 1) * MiB] = bytes([index % 251]) * MiB
    return bytes(data)


def image_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def leftovers(dest):
    return sorted(os.listdir(dest)) if os.path.isdir(dest) else []


def decoder_in_use(xva):
    """The decoder command the stream of ``xva`` goes through, or None for the library."""
    raw, stream, _compression = open_xva_stream(str(xva))
    try:
        return stream.raw.command if isinstance(stream.raw, ExternalDecoder) else None
    finally:
        stream.close()
        raw.close()


def converted(xva, dest):
    result = convert_xva(str(xva), str(dest))
    return [image_bytes(disk["path"]) for disk in result["disks"]]


def multi_member_gzip(plain, out):
    """gzip in three members, as ``cat a.gz b.gz c.gz`` or a parallel compressor writes it."""
    data = plain.read_bytes()
    third = len(data) // 3
    parts = (data[:third], data[third:2 * third], data[2 * third:])
    out.write_bytes(b"".join(gzip.compress(part, 1) for part in parts))


@pytest.fixture
def vm():
    return VM(disks=[Disk(image=disk_bytes(7), userdevice=0), Disk(image=disk_bytes(4, seed=2), userdevice=1)])


@pytest.mark.parametrize("tool, compression", DECODERS)
def test_each_decoder_gives_the_disks_the_library_gives(tmp_path, monkeypatch, vm, tool, compression):
    xva = tmp_path / "x.xva"
    write_xva(str(xva), vm, compression=compression)
    only_on_path(monkeypatch, tmp_path, tool)
    monkeypatch.setenv("XEN2KVM_DECODER", "library")
    assert decoder_in_use(xva) is None
    by_library = converted(xva, tmp_path / "library")
    monkeypatch.setenv("XEN2KVM_DECODER", "external")
    assert decoder_in_use(xva) == "%s -dc" % tool
    assert converted(xva, tmp_path / "external") == by_library == [d.image for d in vm.disks]


@pytest.mark.parametrize("tool", ["igzip", "pigz"])
@pytest.mark.parametrize("writer", ["members", "pigz"])
def test_gzip_as_parallel_compressors_write_it(tmp_path, monkeypatch, vm, tool, writer):
    plain = tmp_path / "plain.xva"
    write_xva(str(plain), vm)
    xva = tmp_path / "x.xva"
    if writer == "members":
        multi_member_gzip(plain, xva)
    else:
        if shutil.which("pigz") is None:
            pytest.skip("pigz is not installed")
        with open(plain, "rb") as src, open(xva, "wb") as out:
            subprocess.run(["pigz", "-c", "-b", "128", "-p", "2"], stdin=src, stdout=out, check=True)
    xva.write_bytes(xva.read_bytes() + bytes(4096))  # zero padding after the last member, as tape-era tools wrote
    only_on_path(monkeypatch, tmp_path, tool)
    assert decoder_in_use(xva) == "%s -dc" % tool
    by_external = converted(xva, tmp_path / "external")
    monkeypatch.setenv("XEN2KVM_DECODER", "library")
    assert converted(xva, tmp_path / "library") == by_external == [d.image for d in vm.disks]


def test_auto_takes_igzip_for_gzip_and_the_library_for_zstd_unless_it_is_missing(tmp_path, monkeypatch, vm):
    only_on_path(monkeypatch, tmp_path, "igzip", "zstd")
    monkeypatch.setenv("XEN2KVM_DECODER", "auto")
    for compression in ("gzip", "zstd"):
        write_xva(str(tmp_path / ("%s.xva" % compression)), vm, compression=compression)
    assert decoder_in_use(tmp_path / "gzip.xva") == "igzip -dc"
    assert decoder_in_use(tmp_path / "zstd.xva") is None
    monkeypatch.setattr(stream_module, "HAS_ZSTANDARD", False)  # a host without python3-zstandard
    assert decoder_in_use(tmp_path / "zstd.xva") == "zstd -dc"
    assert converted(tmp_path / "zstd.xva", tmp_path / "o") == [d.image for d in vm.disks]


def test_no_decoder_on_the_host_uses_the_library(tmp_path, monkeypatch, vm):
    for compression in ("gzip", "zstd"):
        xva = tmp_path / ("%s.xva" % compression)
        write_xva(str(xva), vm, compression=compression)
        only_on_path(monkeypatch, tmp_path)
        for choice in ("auto", "external"):
            monkeypatch.setenv("XEN2KVM_DECODER", choice)
            assert decoder_in_use(xva) is None
            assert converted(xva, tmp_path / compression / choice) == [d.image for d in vm.disks]


def test_an_unknown_choice_is_named(tmp_path, monkeypatch, vm):
    xva = tmp_path / "x.xva"
    write_xva(str(xva), vm, compression="zstd")
    monkeypatch.setenv("XEN2KVM_DECODER", "fastest")
    with pytest.raises(XvaError, match="XEN2KVM_DECODER must be one of auto, external, library, not 'fastest'"):
        convert_xva(str(xva), str(tmp_path / "o"))
    assert leftovers(tmp_path / "o") == []


def compressed_with_tool(tmp_path, vm, tool):
    """A plain XVA compressed by the tool itself (zstd with a content checksum to catch damage)."""
    plain = tmp_path / "plain.xva"
    write_xva(str(plain), vm)
    argv = {"zstd": ["zstd", "-q", "-c", "--check"], "igzip": ["gzip", "-c", "-1"], "pigz": ["gzip", "-c", "-1"]}[tool]
    xva = tmp_path / "x.xva"
    with open(plain, "rb") as src, open(xva, "wb") as out:
        subprocess.run(argv, stdin=src, stdout=out, check=True)
    return xva


@pytest.mark.parametrize("tool, compression", DECODERS)
def test_a_damaged_checksum_is_the_decoders_word(tmp_path, monkeypatch, vm, tool, compression):
    """The data decodes whole, the stream's own checksum at its end does not match.  (The
    converter stops at the tar's end-of-archive marker, so the stream is read here to its end.)"""
    xva = compressed_with_tool(tmp_path, vm, tool)
    data = bytearray(xva.read_bytes())
    data[-1 if compression == "zstd" else -6] ^= 0xFF  # zstd's XXH64 / gzip's CRC32
    xva.write_bytes(bytes(data))
    only_on_path(monkeypatch, tmp_path, tool)
    raw, stream, _compression = open_xva_stream(str(xva))
    try:
        with pytest.raises(SourceError) as caught:
            while stream.read(MiB):
                pass
    finally:
        stream.close()
        raw.close()
    message = str(caught.value)
    assert message.startswith("%s stream is corrupt: %s -dc failed (exit 1): " % (compression, tool)), message
    assert len(message) > len("%s stream is corrupt: %s -dc failed (exit 1): " % (compression, tool)) + 5


@pytest.mark.parametrize("tool, compression", DECODERS)
def test_damage_in_the_middle_fails_clearly(tmp_path, monkeypatch, vm, tool, compression):
    xva = compressed_with_tool(tmp_path, vm, tool)
    data = bytearray(xva.read_bytes())
    for at in range(len(data) // 3, len(data) // 2, 997):
        data[at] ^= 0x5A
    xva.write_bytes(bytes(data))
    only_on_path(monkeypatch, tmp_path, tool)
    with pytest.raises(XvaError, match="corrupt|checksum|truncated|tar header"):
        convert_xva(str(xva), str(tmp_path / "o"))
    assert leftovers(tmp_path / "o") == []


@pytest.mark.parametrize("tool, compression", DECODERS)
def test_a_cut_off_stream_is_truncated(tmp_path, monkeypatch, vm, tool, compression):
    xva = tmp_path / "x.xva"
    write_xva(str(xva), vm, compression=compression)
    xva.write_bytes(xva.read_bytes()[:xva.stat().st_size * 2 // 3])
    only_on_path(monkeypatch, tmp_path, tool)
    with pytest.raises(XvaError) as caught:
        convert_xva(str(xva), str(tmp_path / "o"))
    assert "truncated" in str(caught.value) and "%s -dc failed (exit 1)" % tool in str(caught.value)
    assert leftovers(tmp_path / "o") == []


def zstd_export_and_a_fifo(tmp_path, monkeypatch, vm):
    """A zstd XVA's bytes and a FIFO to pipe them through, with zstd the only decoder on PATH."""
    only_on_path(monkeypatch, tmp_path, "zstd")
    xva = tmp_path / "x.xva"
    write_xva(str(xva), vm, compression="zstd")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return xva.read_bytes(), fifo


def test_a_killed_decoder_fails_cleanly(tmp_path, monkeypatch, vm):
    """zstd dies (SIGKILL) while it waits for the rest of a piped export."""
    data, fifo = zstd_export_and_a_fifo(tmp_path, monkeypatch, vm)
    half_sent, killed = threading.Event(), threading.Event()

    def send():
        with open(fifo, "wb") as out:
            out.write(data[:len(data) // 2])
            out.flush()
            half_sent.set()
            killed.wait(30)
            try:
                out.write(data[len(data) // 2:])
            except BrokenPipeError:
                pass  # the converter gave up and closed its end

    def kill_the_decoder():
        half_sent.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            decoders = [pid for pid in our_children() if command_of(pid) == "zstd"]
            if decoders:
                time.sleep(0.3)  # let it decode what it has
                os.kill(decoders[0], signal.SIGKILL)
                break
            time.sleep(0.02)
        killed.set()

    threads = [threading.Thread(target=send), threading.Thread(target=kill_the_decoder)]
    for thread in threads:
        thread.start()
    dest = tmp_path / "o"
    try:
        with pytest.raises(XvaError, match=r"cannot decompress the zstd stream: zstd -dc failed "
                                           r"\(killed by signal 9, SIGKILL\)"):
            convert_xva(str(fifo), str(dest))
    finally:
        killed.set()
        for thread in threads:
            thread.join(30)
    assert leftovers(dest) == []


def test_closing_early_ends_a_busy_decoder(tmp_path, monkeypatch):
    """Our parsing gives up while the decoder still has a lot to write: close kills and reaps it."""
    only_on_path(monkeypatch, tmp_path, "zstd")
    zeros_but_kept = VM(disks=[Disk(image=bytes([1]) * (64 * MiB))])  # compresses to little, decodes to 64 MiB
    xva = tmp_path / "x.xva"
    write_xva(str(xva), zeros_but_kept, compression="zstd")
    raw, stream, _compression = open_xva_stream(str(xva))
    decoder = stream.raw
    assert isinstance(decoder, ExternalDecoder)
    assert len(stream.read(MiB)) == MiB
    started = time.monotonic()
    stream.close()
    raw.close()
    assert time.monotonic() - started < 3
    assert not decoder._feeder.is_alive()


class FallsSilent(http.server.BaseHTTPRequestHandler):
    """An export streamed without Content-Length (as XAPI sends it) that stops halfway: the
    host went away and the read times out."""

    body = b""
    release = None

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body[:len(self.body) // 2])
        self.wfile.flush()
        self.release.wait(30)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_source_error_under_the_decoder_stays_a_source_error(tmp_path, monkeypatch, vm):
    """The feeder's read times out: the reader gets that timeout, not the decoder's "premature end"."""
    only_on_path(monkeypatch, tmp_path, "zstd")
    xva = tmp_path / "x.xva"
    write_xva(str(xva), vm, compression="zstd")
    release = threading.Event()
    handler = type("Handler", (FallsSilent,), {"body": xva.read_bytes(), "release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    url = "http://127.0.0.1:%d/export" % server.server_address[1]
    try:
        with pytest.raises(XvaError) as caught:
            convert_xva(url, str(tmp_path / "o"), open_url_func=open_url, url_options={"timeout": 2})
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        serving.join()
    assert str(caught.value).startswith("no data from 127.0.0.1:%d for 2 s (timeout; after " % server.server_address[1])
    assert "-dc failed" not in str(caught.value)
    assert leftovers(tmp_path / "o") == []


def children_of(pid):
    pids = []
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as handle:
                pids += [int(child) for child in handle.read().split()]
        except OSError:
            pass
    return pids


def test_sigterm_during_a_conversion_leaves_no_decoder(tmp_path, monkeypatch, vm):
    """The module's SignalGuard raises in the main thread: the conversion ends with that message,
    nothing is left in dest, and no decoder outlives the converter."""
    data, fifo = zstd_export_and_a_fifo(tmp_path, monkeypatch, vm)
    dest = tmp_path / "o"
    code = ("import sys; sys.path[:0] = %r;"
            "from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.convert import convert_xva\n"
            "try:\n    convert_xva(%r, %r)\nexcept Exception as exc:\n    print(exc); sys.exit(3)"
            % ([p for p in sys.path if p.endswith("collections")], str(fifo), str(dest)))
    converter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        with open(fifo, "wb") as out:
            out.write(data[:len(data) // 2])
            out.flush()
            deadline = time.monotonic() + 30
            decoders = []
            while not decoders and time.monotonic() < deadline:
                decoders = [pid for pid in children_of(converter.pid) if command_of(pid) == "zstd"]
                time.sleep(0.05)
            assert decoders, "no zstd under the converter"
            time.sleep(0.3)
            converter.send_signal(signal.SIGTERM)
            said = converter.communicate(timeout=30)[0]
    except BrokenPipeError:
        said = converter.communicate(timeout=30)[0]
    finally:
        if converter.poll() is None:
            converter.kill()
            converter.wait()
    assert converter.returncode == 3 and "SIGTERM" in said, said
    assert not alive(decoders[0])
    assert leftovers(dest) == []
