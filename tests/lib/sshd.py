"""A real OpenSSH server on 127.0.0.1 for the ssh source and the transfer role's tests.

``LoopbackSshd(workdir)`` writes a host key, a client key authorised for root and a
known_hosts file holding the host key, then runs ``/usr/sbin/sshd -D`` on a free port of
127.0.0.1 with its own config and PidFile.  ``client_options`` are what the code under test
passes to ssh (``-o`` options); no test ever turns host key checking off.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path, comment):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


class LoopbackSshd:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "id_client"
        self.other_key = self.dir / "id_not_authorised"
        self.known_hosts = self.dir / "known_hosts"
        self.pidfile = self.dir / "sshd.pid"
        self.log = self.dir / "sshd.log"
        self.process = None

    @property
    def client_options(self):
        return ["UserKnownHostsFile=%s" % self.known_hosts, "GlobalKnownHostsFile=/dev/null"]

    def start(self):
        _keygen(self.host_key, "x2k-test-host")
        _keygen(self.client_key, "x2k-test-client")
        _keygen(self.other_key, "x2k-test-stranger")
        authorized = self.dir / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), authorized)
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text("[127.0.0.1]:%d %s %s\n" % (self.port, host_pub[0], host_pub[1]))
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            "HostKey %s" % self.host_key,
            "PidFile %s" % self.pidfile,
            "AuthorizedKeysFile %s" % authorized,
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the keys live under /tmp, which is world-writable
            "LogLevel ERROR",
            "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-p", str(self.port)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sshd exited: %s" % self.log.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("sshd did not listen on 127.0.0.1:%d: %s" % (self.port, self.log.read_text()))

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def url(self, path, user="root"):
        return "ssh://%s@127.0.0.1:%d%s" % (user, self.port, path)

    def ssh_argv(self, command):
        """A plain ssh to the server, for tests that look at the remote side."""
        argv = ["ssh", "-o", "BatchMode=yes", "-i", str(self.client_key), "-p", str(self.port)]
        for option in self.client_options:
            argv += ["-o", option]
        return argv + ["root@127.0.0.1", command]


def ssh_children_of(pid):
    """The pids of ssh processes whose parent is ``pid`` (from /proc, no ps needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            cmdline = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and cmdline and os.path.basename(cmdline[0]) == b"ssh":
            found.append(int(entry))
    return found
