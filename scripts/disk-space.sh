# shellcheck shell=bash
# Sourced by scripts/lanes.sh: the free space the tests need, checked before they start and
# reported after them.

# Each distinct filesystem holding one of the paths, once: "<mount point> <free bytes>".
_free_space_by_filesystem() {
  df --output=target,avail -B1 "$@" 2>/dev/null | tail -n +2 | sort -u
}

# check_free_space MIN_GIB PATH...: fails, naming the filesystem and the test leftovers that take
# the most room, when a filesystem has less than MIN_GIB GiB free.
check_free_space() {
  local min_gib=$1 short=0 target avail
  shift
  while read -r target avail; do
    if (( avail < min_gib * 1024 * 1024 * 1024 )); then
      echo "==> make test: only $(( avail / 1024 / 1024 / 1024 )) GiB free on $target; the tests need" \
           "${min_gib} GiB there (they copy multi-GiB guest images, and on a full disk qemu pauses" \
           "its guests). Largest leftovers of earlier test runs:" >&2
      du -sh /tmp/pytest-of-* /var/tmp/x2k-* /var/tmp/xen2kvm-* /var/cache/xen2kvm-test-guests/* \
        2>/dev/null | sort -h | tail -n 8 >&2
      short=1
    fi
  done < <(_free_space_by_filesystem "$@")
  (( short == 0 )) || echo "==> free some space or set MIN_FREE_GIB (default 20) to go on anyway" >&2
  return "$short"
}

# report_free_space PATH...: one line per filesystem, for the end of the log.
report_free_space() {
  local target avail
  while read -r target avail; do
    echo "==> free disk space on $target: $(( avail / 1024 / 1024 / 1024 )) GiB"
  done < <(_free_space_by_filesystem "$@")
}
