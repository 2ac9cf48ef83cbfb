#!/bin/sh
# Install what kzbridge needs on Debian (as root): Erlang/OTP and lager from apt, then a
# virtualenv in .venv with kzbridge and, with --test, its test dependencies.
set -eu
cd "$(dirname "$0")/.."
need_apt=""
command -v erl >/dev/null 2>&1 || need_apt=1
[ -d /usr/lib/erlang/lib ] && ls /usr/lib/erlang/lib | grep -q '^lager-' || need_apt=1
command -v python3 >/dev/null 2>&1 || need_apt=1
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt=1
if [ -n "$need_apt" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq erlang-nox erlang-lager python3 python3-venv python3-pip >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
# compat mode: a plain .pth entry instead of an import hook (faster start for one-shot commands)
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" --config-settings editable_mode=compat
# Byte-compile explicitly: PYTHONDONTWRITEBYTECODE may be set, and recompiling costs every start.
.venv/bin/python -m compileall -q kzbridge >/dev/null
