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
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
MAKE_CMD=(make --no-print-directory SKIP_INSTALL=1)

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
  kill -TERM -- "-$lane2" 2>/dev/null
  kill -TERM -- "-$lane1" 2>/dev/null
  wait 2>/dev/null
}
trap 'stop_lanes; rm -f "$lane1_log" "$lane2_log"; exit 130' INT TERM HUP

wait "$lane1"
rc1=$?
echo "==> lane 1 $([[ $rc1 -eq 0 ]] && echo passed || echo FAILED) in $(( $(date +%s) - t0 ))s"
wait "$lane2"
rc2=$?
trap - INT TERM HUP
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
rm -f "$lane1_log" "$lane2_log"
exit $(( rc1 != 0 ? rc1 : rc2 ))
