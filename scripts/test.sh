#!/bin/sh
# The whole test suite against real BEAM nodes (Debian's OTP) and py-interface, then the
# linters: ruff (lint and format) and mypy (strict on kzbridge/). Fails if any of them fails.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --test
set +e
# Most of the suite waits on real nodes (leases, lager's flushes, BEAMs starting), so three
# workers on two cores cut the wall time by more than half; each worker is a pytest session
# of its own (own epmd, cache, sandboxes). A file runs whole in one worker (module fixtures).
# KZBRIDGE_TEST_WORKERS=0 runs everything in one process.
workers="${KZBRIDGE_TEST_WORKERS:-3}"
if [ "$workers" -gt 0 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  rc=1
fi
failed=""
[ "$rc" -eq 0 ] || failed=" pytest"
.venv/bin/ruff check . || failed="$failed ruff-check"
.venv/bin/ruff format --check . || failed="$failed ruff-format"
.venv/bin/mypy || failed="$failed mypy"
set -e
if [ -n "$failed" ]; then
  echo "scripts/test.sh: failed:$failed" >&2
  [ "$rc" -ne 0 ] && exit "$rc"
  exit 1
fi
echo "scripts/test.sh: pytest, ruff check, ruff format --check and mypy passed"
