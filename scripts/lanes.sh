#!/usr/bin/env bash
# `make test` after the install: the tests in two lanes at once, because a TCG guest or
# the libguestfs appliance keeps one core busy and the machines have two.
#   lane 1:              LANE1_FIRST (make test: unit, sanity, lint), then the integration tests
#                        not marked second_lane
#   lane 2 (beside it):  integration tests marked second_lane (the layout boots, the live-source
#                        boots, the XAPI module tests, the hostile guest in the appliance), then
#                        Molecule; its lines are prefixed "[lane 2]"
# Both lanes run to the end; the exit status is non-zero when either failed. Each lane runs in its
# own session; a signal to this script stops both sessions. Lane 2 has its own XDG_CACHE_HOME: the KVM
# host slots of its playbooks (Molecule) must not hold up the slot tests of lane 1.
# Before the lanes: stale test-guest cache entries are pruned and the free disk space is checked
# (MIN_FREE_GIB, default 20: the tests copy multi-GiB guest images; on a full disk qemu pauses its
# guests and the appliance, and the tests would wait for them). After LANES_TIMEOUT seconds
# (default 4800) both lanes are stopped and what was still running is printed: a hang ends as a
# named failure, not as CI's own timeout.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
MAKE_CMD=(make --no-print-directory SKIP_INSTALL=1)

# shellcheck source=scripts/disk-space.sh
source "$REPO/scripts/disk-space.sh"
"$REPO/.venv/bin/python" "$REPO/tests/lib/guest_factory.py" prune
check_free_space "${MIN_FREE_GIB:-20}" /tmp /var/tmp /var/cache || exit 1

"$REPO/scripts/libvirtd-up.sh"       # started once here, not raced by two pytest sessions
"${MAKE_CMD[@]}" collection-link

lane2_log=$(mktemp /tmp/xen2kvm-lane2.XXXXXX)
lane1_log=$(mktemp /tmp/xen2kvm-lane1.XXXXXX)
mkdir -p "$REPO/build/lane2-cache"
# shellcheck disable=SC2016  # the inner script expands its own variables
setsid -w bash -c '
  t0=$(date +%s)
  XDG_CACHE_HOME="$1/build/lane2-cache" "${@:2}" integration-lane2 || exit $?
  echo "==> integration lane 2 passed in $(( $(date +%s) - t0 ))s"
  t0=$(date +%s)
  XDG_CACHE_HOME="$1/build/lane2-cache" "${@:2}" molecule || exit $?
  echo "==> molecule passed in $(( $(date +%s) - t0 ))s"
' lane2 "$REPO" "${MAKE_CMD[@]}" > >(sed -u 's/^/[lane 2] /' | tee "$lane2_log") 2>&1 &
lane2=$!
t0=$(date +%s)
# in the background too, so a signal reaches the trap at once; with LANE1_FIRST (make test: unit
# sanity lint) those steps run first in this lane, beside lane 2's long appliance tests
# shellcheck disable=SC2016  # the inner script expands its own variables
setsid -w bash -c '
  for step in ${LANE1_FIRST:-} integration-lane1; do
    t0=$(date +%s)
    "$@" "$step" || exit $?
    [[ $step == integration-lane1 ]] || echo "==> $step passed in $(( $(date +%s) - t0 ))s"
  done
' lane1 "${MAKE_CMD[@]}" > >(tee "$lane1_log") 2>&1 &
lane1=$!
# shellcheck disable=SC2317  # called from the trap
stop_lanes() {
  [[ -n ${watchdog:-} ]] && kill -- "-$watchdog" 2>/dev/null
  kill -TERM -- "-$lane2" "-$lane1" 2>/dev/null
  for _ in $(seq 60); do          # 30 s to clean up, then whatever is left is killed
    kill -0 -- "-$lane1" 2>/dev/null || kill -0 -- "-$lane2" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$lane2" "-$lane1" 2>/dev/null
  wait 2>/dev/null
}
trap 'stop_lanes; rm -f "$lane1_log" "$lane2_log"; exit 130' INT TERM HUP

# shellcheck disable=SC2317  # called from the trap
lanes_timed_out() {
  echo "==> make test: the lanes ran past LANES_TIMEOUT=${LANES_TIMEOUT:-4800}s; still running:"
  for lane in "$lane1" "$lane2"; do
    ps -o pid=,etime=,args= -s "$lane" 2>/dev/null | cut -c1-240
  done
  stop_lanes
  sleep 0.2
  echo "==> lane 1, its last lines:"; tail -n 25 "$lane1_log"
  echo "==> lane 2, its last lines:"; tail -n 25 "$lane2_log"
  report_free_space /tmp /var/tmp /var/cache
  rm -f "$lane1_log" "$lane2_log"
  exit 124
}
trap lanes_timed_out USR1
# shellcheck disable=SC2016  # the inner script expands its own variables
setsid bash -c 'sleep "$1" && kill -USR1 "$2"' watchdog "${LANES_TIMEOUT:-4800}" $$ &
watchdog=$!

wait "$lane1"
rc1=$?
echo "==> lane 1 $([[ $rc1 -eq 0 ]] && echo passed || echo FAILED) in $(( $(date +%s) - t0 ))s"
wait "$lane2"
rc2=$?
trap - INT TERM HUP USR1
kill -- "-$watchdog" 2>/dev/null
sleep 0.2  # the prefixing sed flushes its last lines
if [[ $rc1 -ne 0 ]]; then
  echo "==> lane 1 FAILED (exit $rc1); its last lines:"
  tail -n 40 "$lane1_log"
fi
if [[ $rc2 -ne 0 ]]; then
  echo "==> lane 2 FAILED (exit $rc2); its last lines:"
  tail -n 60 "$lane2_log"
fi
# CI shows only the end of the output: the failures of both lanes (pytest's and Molecule
# verifiers' summary lines) come last.
failures=$(cat "$lane1_log" "$lane2_log" 2>/dev/null | sed -e 's/\x1b\[[0-9;]*m//g' \
  | grep -aE '(FAILED|ERROR) [^ ]+::' | cut -c1-300 | head -n 40)
if [[ -n $failures ]]; then
  echo "==> the failed tests of both lanes:"
  echo "$failures"
fi
report_free_space /tmp /var/tmp /var/cache
rm -f "$lane1_log" "$lane2_log"
exit $(( rc1 != 0 ? rc1 : rc2 ))
