#!/bin/sh
# The whole test suite against real BEAM nodes (Debian's OTP) and py-interface.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --test
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
