"""Boot disk images under qemu (TCG, user-mode network without host access) and talk to the
guest over its serial console: wait for ``login:``, log in, run a command, read the answer.

The serial port is a unix socket with a log file, so the test both drives the console and keeps
a transcript to show when something fails.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time


class BootFailed(AssertionError):
    pass


class QemuGuest:
    def __init__(self, disks, memory_mib=1024, timeout=240, workdir=None):
        self.disks = list(disks)
        self.memory_mib = memory_mib
        self.timeout = timeout
        self.workdir = workdir or tempfile.mkdtemp(prefix="x2k-qemu-")
        self.console_log = os.path.join(self.workdir, "console.log")
        self.socket_path = os.path.join(self.workdir, "serial.sock")
        self.proc = None
        self.sock = None
        self.transcript = b""
        self.started = None

    def command(self):
        cmd = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-machine", "pc,accel=tcg",
               "-m", str(self.memory_mib), "-smp", "1", "-display", "none", "-monitor", "none",
               "-nodefaults", "-vga", "none",
               "-chardev", "socket,id=s0,path=%s,server=on,wait=on,logfile=%s" % (self.socket_path, self.console_log),
               "-serial", "chardev:s0",
               # restrict=on: the guest reaches nothing outside qemu, the host included.
               "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]
        for index, disk in enumerate(self.disks):
            cmd += ["-drive", "file=%s,format=raw,if=virtio,index=%d" % (disk, index)]
        return cmd

    def __enter__(self):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BootFailed("qemu did not start: %s" % self.proc.stderr.read().decode(errors="replace"))
            time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)
        self.sock.settimeout(1.0)
        return self

    def __exit__(self, *exc):
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return False

    def tail(self, lines=40):
        text = self.transcript.decode("utf-8", "replace")
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        return "\n".join(text.splitlines()[-lines:])

    def expect(self, pattern, timeout=None):
        """Read the console until ``pattern`` (a regex on bytes) appears; returns the match."""
        deadline = time.monotonic() + (timeout or self.timeout)
        regex = re.compile(pattern)
        start = len(self.transcript)
        while time.monotonic() < deadline:
            match = regex.search(self.transcript, start)
            if match:
                return match
            if self.proc.poll() is not None:
                raise BootFailed("qemu exited (%s) before %r appeared:\n%s" % (self.proc.returncode, pattern,
                                                                               self.tail()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise BootFailed("console closed before %r appeared:\n%s" % (pattern, self.tail()))
            self.transcript += data
        waited = timeout or self.timeout
        raise BootFailed("no %r on the serial console within %ss:\n%s" % (pattern, waited, self.tail()))

    def send(self, text):
        self.sock.sendall(text.encode())

    def wait_for_login(self):
        """Seconds from power-on to the login prompt on ttyS0."""
        self.expect(rb"login: ")
        return time.monotonic() - self.started

    def login_and_run(self, user, password, command, timeout=90):
        """Log in on the serial console and return the output of ``command``."""
        self.send(user + "\n")
        self.expect(rb"[Pp]assword: ", timeout)
        self.send(password + "\n")
        self.expect(rb"[#$] ", timeout)
        start = len(self.transcript)
        # The shell echoes what we type; only the command's own output spells the marker out.
        self.send("%s; echo X2K$((40+2))END\n" % command)
        match = self.expect(rb"X2K42END", timeout)
        echoed_and_output = self.transcript[start:match.start()].decode("utf-8", "replace").replace("\r", "")
        echoed_and_output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", echoed_and_output)  # bash's bracketed paste
        return echoed_and_output.split("\n", 1)[1] if "\n" in echoed_and_output else ""
