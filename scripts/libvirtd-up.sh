#!/usr/bin/env bash
# Start virtlogd and libvirtd when they are not running (these machines have no systemd), and
# wait until qemu:///system answers. Used by `make demo`; the tests start their own.
set -euo pipefail
running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/virtlogd.pid || virtlogd -d
running /run/libvirtd.pid || libvirtd -d
for _ in $(seq 1 50); do
  if /usr/bin/python3 -c 'import libvirt; libvirt.open("qemu:///system").close()' 2>/dev/null; then
    exit 0
  fi
  sleep 0.2
done
echo "libvirtd did not come up (see /var/log/libvirt/libvirtd.log)" >&2
exit 1
