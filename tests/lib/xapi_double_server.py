"""The XAPI double (xapi_double.py) as a background process, for tests that span several
ansible-playbook runs (the Molecule scenario live-export: create starts it, converge and the
verifier use it, destroy stops it).

    xapi_double_server.py start --dir DIR --vm NAME=XVA [--vm ...] [--power Running] [--password PW]
    xapi_double_server.py stop --dir DIR

``start`` serves HTTPS on 127.0.0.1 (a fresh self-signed certificate) and writes into DIR:
``url`` (https://127.0.0.1:PORT), ``ca.pem`` (the certificate to trust), ``pid``, ``log`` and
``state.json``, rewritten every 0.2 s and at exit: the live sessions, snapshots and tasks, every
VM's power state, tags and other_config, and the exports streamed, so a verifier in another
process sees what the pool looks like. It prints ``started``, or ``running`` when a server of DIR
is already up (nothing is changed then). ``stop`` ends that server (only when the pid file names
this script's process), prints ``stopped`` or ``not running``.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xapi_double import XapiDouble, XapiVM  # noqa: E402  (after the path is set)

STATE_EVERY = 0.2


def _server_pid(directory):
    """The pid of DIR's running server, or None (no pid file, dead, or not this script)."""
    try:
        with open(os.path.join(directory, "pid")) as handle:
            pid = int(handle.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if any(part.endswith(b"xapi_double_server.py") for part in cmdline) else None


def _write_atomically(path, text):
    temp = path + ".tmp"
    with open(temp, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def _state(xapi):
    with xapi.lock:
        return {
            "sessions": xapi.live_sessions(),
            "tasks": xapi.live_tasks(),
            "snapshots": [{"uuid": snap["uuid"], "name_label": snap["name_label"]} for snap in xapi.snapshots()],
            "vms": {vm.name: {"uuid": vm.uuid, "power_state": vm.power_state, "tags": list(vm.tags),
                              "other_config": dict(vm.other_config)}
                    for vm in xapi.vms if not vm.is_a_snapshot},
            "exports": [list(export) for export in xapi.exports],
            "updated": time.time(),
        }


def serve(args):
    """Run the double until SIGTERM, keeping DIR/state.json current."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    vms = []
    for item in args.vm:
        name, _sep, xva = item.partition("=")
        vms.append(XapiVM(name, os.path.abspath(xva), power_state=args.power))
    state_path = os.path.join(args.dir, "state.json")
    with XapiDouble(vms, username=args.username, password=args.password, tls=True) as xapi:
        shutil.copyfile(xapi.ca_file, os.path.join(args.dir, "ca.pem"))
        _write_atomically(state_path, json.dumps(_state(xapi)))
        _write_atomically(os.path.join(args.dir, "url"), xapi.url + "\n")
        while not stop:
            time.sleep(STATE_EVERY)
            _write_atomically(state_path, json.dumps(_state(xapi)))
        _write_atomically(state_path, json.dumps(_state(xapi)))
    os.unlink(os.path.join(args.dir, "url"))


def start(args):
    os.makedirs(args.dir, exist_ok=True)
    if _server_pid(args.dir):
        print("running")
        return 0
    for stale in ("url", "pid"):
        if os.path.exists(os.path.join(args.dir, stale)):
            os.unlink(os.path.join(args.dir, stale))
    child = os.fork()
    if child == 0:  # the server: a session of its own, outliving the ansible task that started it
        os.setsid()
        log = os.open(os.path.join(args.dir, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        _write_atomically(os.path.join(args.dir, "pid"), "%d\n" % os.getpid())
        code = 0
        try:
            serve(args)
        except BaseException:  # pylint: disable=broad-except
            # logged: the parent shows the log
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)  # never return into the parent's code
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(args.dir, "url")):
            print("started")
            return 0
        finished, _status = os.waitpid(child, os.WNOHANG)
        if finished:
            break
        time.sleep(0.1)
    with open(os.path.join(args.dir, "log")) as handle:
        sys.stderr.write("the XAPI double did not start:\n" + handle.read()[-3000:])
    return 1


def stop_server(args):
    pid = _server_pid(args.dir)
    if pid is None:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _server_pid(args.dir) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _server_pid(args.dir) == pid:
        sys.stderr.write("the XAPI double (pid %d) did not stop\n" % pid)
        return 1
    print("stopped")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start")
    start_cmd.add_argument("--dir", required=True)
    start_cmd.add_argument("--vm", action="append", required=True, help="NAME=XVA (repeatable)")
    start_cmd.add_argument("--power", default="Running", choices=["Running", "Halted"])
    start_cmd.add_argument("--username", default="root")
    start_cmd.add_argument("--password", default=os.environ.get("XAPI_DOUBLE_PASSWORD", "secret"))
    stop_cmd = sub.add_parser("stop")
    stop_cmd.add_argument("--dir", required=True)
    args = parser.parse_args()
    return start(args) if args.command == "start" else stop_server(args)


if __name__ == "__main__":
    sys.exit(main())
