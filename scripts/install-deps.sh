#!/usr/bin/env bash
# The one place that installs what this collection needs on a Debian 12 machine (run as root):
#   1. Debian packages (apt-get update runs once, and only when something is missing);
#   2. a virtualenv at .venv (from /usr/bin/python3, --system-site-packages so that Debian's
#      python3-libvirt, python3-xxhash and python3-zstandard are importable) with requirements-dev.txt.
# Idempotent and fast (well under a second) when everything is already there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
REQ="$REPO/requirements-dev.txt"
export DEBIAN_FRONTEND=noninteractive

DEB_PACKAGES=(
  qemu-utils qemu-system-x86 zstd pigz
  # igzip, the fastest gzip decoder xva_convert runs for gzip exports (pigz -dc otherwise)
  isal
  python3-xxhash python3-zstandard python3-libvirt python3-venv
  xva-img debootstrap fdisk
  libvirt-daemon-system libvirt-clients ovmf
  # guest_fixup's default engine: the guest opened in the libguestfs appliance; netplan edits need yaml
  python3-guestfs libguestfs-tools python3-yaml
  # the comparison in bench/fixup_compare.py (virt-v2v copies its output with nbdcopy, from libnbd-bin,
  # which Debian's virt-v2v package does not pull in)
  virt-v2v nbdkit libnbd-bin
  e2fsprogs dosfstools libxml2-utils util-linux rsync openssh-client
  # used by the test suites (guest file systems, initramfs listing) and by make sanity
  xfsprogs btrfs-progs initramfs-tools-core busybox-static
  # a real sshd on 127.0.0.1 for the ssh:// source and the transfer role's tests
  openssh-server
  # the apt module (kvm_host role test) needs the python3 apt binding
  python3-apt
  git make shellcheck
)

log() { printf '[install-deps] %s\n' "$*" >&2; }

# One dpkg-query for all: prints "name ii " for each installed package (unknown ones go to stderr).
declare -A installed=()
while read -r name status; do
  if [[ "$status" == ii* ]]; then installed[$name]=1; fi
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${DEB_PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  [[ -n "${installed[$pkg]:-}" ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]} -- run this script as root"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # Recommends stay on: libvirt needs dnsmasq-base/iproute2 for its default network, qemu
  # recommends ovmf/qemu-block-extra. Keep this in line with developers' machines.
  apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >/dev/null
  log "Debian packages installed"
fi

# The venv is rebuilt only when it is broken or requirements-dev.txt changed (hash stamp).
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
stamp="$VENV/.requirements-dev.sha256"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null \
   && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

if ! [[ -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "creating virtualenv $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
log "installing $REQ into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
# Debian's bindings must be visible through --system-site-packages.
"$VENV/bin/python" -c 'import libvirt, xxhash, zstandard' \
  || { log "Debian python3-libvirt/xxhash/zstandard are not importable from $VENV"; exit 1; }
printf '%s\n' "$want" >"$stamp"
log "virtualenv ready"
