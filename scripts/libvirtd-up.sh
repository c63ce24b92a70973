#!/usr/bin/env bash
# Start virtlogd and libvirtd when they are not running (these machines have no systemd), and
# wait until qemu:///system answers. Used by `make demo`; the tests start their own.
set -euo pipefail
running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# The daemons outlive this run, so they must not keep what it has open beyond stdio (a caller's
# lock file or pipe would stay held for as long as libvirtd runs).
detached() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    if (( fd > 2 )); then eval "exec ${fd}>&-"; fi
  done
  "$@"
}
running /run/virtlogd.pid || (detached virtlogd -d)
running /run/libvirtd.pid || (detached libvirtd -d)
for _ in $(seq 1 50); do
  if /usr/bin/python3 -c 'import libvirt; libvirt.open("qemu:///system").close()' 2>/dev/null; then
    exit 0
  fi
  sleep 0.2
done
echo "libvirtd did not come up (see /var/log/libvirt/libvirtd.log)" >&2
exit 1
