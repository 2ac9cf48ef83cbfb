#!/bin/sh
# Install what kzbridge needs on Debian (as root): Erlang/OTP and lager from apt, then a
# virtualenv in .venv with kzbridge and, with --test, its test dependencies (and, for the
# clock-skew and time-zone sandboxes the tests start, libfaketime and tzdata; for the report
# tests, a headless browser: chromium and chromium-driver).
set -eu
cd "$(dirname "$0")/.."
test_deps=""
[ "${1:-}" = "--test" ] && test_deps=1
need_apt=""
command -v erl >/dev/null 2>&1 || need_apt=1
[ -d /usr/lib/erlang/lib ] && ls /usr/lib/erlang/lib | grep -q '^lager-' || need_apt=1
command -v python3 >/dev/null 2>&1 || need_apt=1
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt=1
packages="erlang-nox erlang-lager python3 python3-venv python3-pip"
if [ -n "$test_deps" ]; then
  packages="$packages faketime tzdata"
  dpkg -L libfaketime 2>/dev/null | grep -q 'libfaketimeMT\.so\.1$' || need_apt=1
  [ -f /usr/share/zoneinfo/America/New_York ] || need_apt=1
  packages="$packages chromium chromium-driver"
  command -v chromium >/dev/null 2>&1 || need_apt=1
  command -v chromedriver >/dev/null 2>&1 || need_apt=1
fi
if [ -n "$need_apt" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $packages >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extras=""
[ -n "$test_deps" ] && extras="[test]"
# compat mode: a plain .pth entry instead of an import hook (faster start for one-shot commands)
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" --config-settings editable_mode=compat
# Byte-compile explicitly: PYTHONDONTWRITEBYTECODE may be set, and recompiling costs every start.
.venv/bin/python -m compileall -q kzbridge >/dev/null
