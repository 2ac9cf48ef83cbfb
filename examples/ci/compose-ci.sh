#!/bin/sh
# A CI job against the compose stack, as a plain script (github-actions.yml beside it runs the
# same steps; kzbridge's own CI runs this very script under podman: scripts/containers.sh).
#
#   build      the fixture node's image and the kzbridge tools image (in parallel)
#   up         the kazoo service, detached
#   wait       until kazoo_apps@kazoo answers and kz_data_tracing is registered
#   trace-host kzbridge trace-module kz_json from this machine, through the published ports
#   trace-tools  the same from the `tools` profile's container, on the compose network
#   pytest     a test suite with kzbridge's pytest plugin against the node (--kazoo-node)
#   down       always, even when a step failed
# Each trace must come back with lines, verified. Traces and reports land in TRACE_DIR, the
# directory a CI job uploads as an artifact. Prints "compose-ci: STEP N.Ns" per step, and
# exits non-zero when any step failed.
#
# Environment (all optional):
#   COMPOSE            compose command, split on spaces (default "docker compose"; our CI:
#                      "podman-compose", with --podman-build-args when builds need a CA)
#   COMPOSE_FILE_PATH  the compose file (default: docker-compose.yml two levels up)
#   PROJECT            compose project name (default kzbridge-ci)
#   KZBRIDGE_COOKIE    the node's cookie (default: a random one for this run)
#   KZBRIDGE_EPMD_PORT host port for the node's EPMD (default 4369)
#   KZBRIDGE_DIST_PORT_MIN, KZBRIDGE_DIST_PORT_MAX  distribution ports (default 9100, 9105)
#   TRACE_DIR          default ./kzbridge-traces
#   TESTS              what pytest runs (default: the tests/ directory beside this script)
#   KZBRIDGE, PYTHON   the host's kzbridge and python (default: kzbridge, python3)
#   WAIT_TIMEOUT       seconds to wait for the node (default 60)
#   TRACE_SECONDS      length of each smoke trace (default 3)
#   SKIP_BUILD=1       use images built before (e.g. by a cached CI step)
#   AFTER_PYTEST       a shell command run after the pytest step, before down
#
# The node is kazoo_apps@kazoo. The host needs no /etc/hosts line: kzbridge connects to
# 127.0.0.1 (--address, and --kazoo-address for the pytest plugin) and still handshakes with
# the node's real name; EPMD is found on the published port (ERL_EPMD_PORT).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
COMPOSE=${COMPOSE:-docker compose}
COMPOSE_FILE_PATH=${COMPOSE_FILE_PATH:-$root/docker-compose.yml}
PROJECT=${PROJECT:-kzbridge-ci}
KZBRIDGE=${KZBRIDGE:-kzbridge}
PYTHON=${PYTHON:-python3}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
TRACE_SECONDS=${TRACE_SECONDS:-3}
TESTS=${TESTS:-$here/tests}
TRACE_DIR=${TRACE_DIR:-$PWD/kzbridge-traces}
NODE=kazoo_apps@kazoo
export KZBRIDGE_EPMD_PORT="${KZBRIDGE_EPMD_PORT:-4369}"
export KZBRIDGE_DIST_PORT_MIN="${KZBRIDGE_DIST_PORT_MIN:-9100}"
export KZBRIDGE_DIST_PORT_MAX="${KZBRIDGE_DIST_PORT_MAX:-9105}"
if [ -z "${KZBRIDGE_COOKIE:-}" ]; then
  KZBRIDGE_COOKIE=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
fi
export KZBRIDGE_COOKIE
mkdir -p "$TRACE_DIR"
TRACE_DIR=$(cd "$TRACE_DIR" && pwd)
export KZBRIDGE_TRACE_DIR="$TRACE_DIR"   # the tools container's /traces
# The host side finds the node's EPMD on the published port (kzbridge honours ERL_EPMD_PORT
# as erl does; a kzbridge with --epmd-port takes that too).
export ERL_EPMD_PORT="$KZBRIDGE_EPMD_PORT"

say() { printf 'compose-ci: %s\n' "$*"; }
now() { date +%s.%N; }
# shellcheck disable=SC2086  # COMPOSE is a command line, split on purpose
compose() { $COMPOSE -p "$PROJECT" -f "$COMPOSE_FILE_PATH" "$@"; }
failed=""
step() {  # step NAME COMMAND...: run it, time it, remember a failure
  name=$1
  shift
  t0=$(now)
  if "$@"; then rc=0; else rc=$?; fi
  say "$name $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s$([ "$rc" -eq 0 ] || echo " FAILED (exit $rc)")"
  [ "$rc" -eq 0 ] || failed="$failed $name"
  return "$rc"
}

# kzbridge CLI steps, from this machine through the published ports.
kz() {
  sub=$1
  shift
  "$KZBRIDGE" "$sub" --address 127.0.0.1 "$@"
}

# ---------------------------------------------------------------- the steps
do_build() {  # both images, built in parallel by compose
  compose --profile tools build kazoo kzbridge
}

do_up() {
  compose up -d kazoo
}

do_wait() {
  kz wait --node "$NODE" --timeout "$WAIT_TIMEOUT"
}

check_trace() {  # check_trace JSON_FILE LOCAL_FILE: lines came back, verified, and are on disk
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
with open(sys.argv[2], "rb") as f:
    on_disk = sum(1 for _ in f)
ok = summary["lines"] > 0 and summary["verified"] and on_disk > 0
print(f"compose-ci: {sys.argv[2]}: {summary['lines']} lines ({on_disk} on disk), "
      f"{'size verified' if summary['verified'] else 'NOT verified'}")
sys.exit(0 if ok else 1)
EOF
}

do_trace_host() {
  rm -f "$TRACE_DIR/host-kz_json.log"
  kz trace-module kz_json --node "$NODE" --duration "$TRACE_SECONDS" --json \
    -o "$TRACE_DIR/host-kz_json.log" > "$TRACE_DIR/host-kz_json.json" \
    && check_trace "$TRACE_DIR/host-kz_json.json" "$TRACE_DIR/host-kz_json.log"
}

do_trace_tools() {
  rm -f "$TRACE_DIR/tools-kz_json.log"
  # The image's kzbridge waits too (compose's depends_on only orders starts).
  compose --profile tools run --rm --no-deps -T kzbridge wait --timeout "$WAIT_TIMEOUT" || return 1
  compose --profile tools run --rm --no-deps -T kzbridge trace-module kz_json --duration "$TRACE_SECONDS" \
    --json -o /traces/tools-kz_json.log > "$TRACE_DIR/tools-kz_json.json" \
    && check_trace "$TRACE_DIR/tools-kz_json.json" "$TRACE_DIR/tools-kz_json.log"
}

do_pytest() {
  # --kazoo-trace-dir: each failing test's trace file, kept for the artifact.
  # shellcheck disable=SC2086  # TESTS may name several paths
  "$PYTHON" -m pytest --kazoo-node "$NODE" --kazoo-address 127.0.0.1 --kazoo-epmd-port "$KZBRIDGE_EPMD_PORT" \
    --kazoo-trace-dir "$TRACE_DIR/pytest" -p no:cacheprovider --junitxml "$TRACE_DIR/pytest-junit.xml" $TESTS
}

do_down() {
  # Without the tools profile: its run containers are --rm, and any left over is an orphan.
  compose down -v -t 10 --remove-orphans >/dev/null
}
teardown() {
  step down do_down
}
trap 'teardown; trap - EXIT; [ -z "$failed" ] || { say "failed:$failed"; exit 1; }' EXIT
trap 'exit 130' INT TERM

if [ -z "${SKIP_BUILD:-}" ]; then
  step build do_build || exit 1
fi
step up do_up || exit 1
step wait do_wait || exit 1
step trace-host do_trace_host || true
step trace-tools do_trace_tools || true
step pytest do_pytest || true
# AFTER_PYTEST: a command of yours run while the stack is still up (kzbridge's own lane checks
# there that a failing test's report carries its trace: scripts/lane_failing_test.py).
if [ -n "${AFTER_PYTEST:-}" ]; then
  step after-pytest sh -c "$AFTER_PYTEST" || true
fi
[ -n "$failed" ] || say "all steps passed; traces in $TRACE_DIR"
