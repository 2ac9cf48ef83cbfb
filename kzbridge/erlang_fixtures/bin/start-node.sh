#!/bin/sh
# Run the fixture node in the foreground (the container's entry point; also usable by hand).
#   NODE_NAME   default kazoo_apps@$(hostname)    (long name when it contains a dot)
#   ERLANG_COOKIE  required
#   KZ_GENERATION  1 or 2 (default 2)
#   KZ_RATE        data-sink events per second (default 20)
#   DIST_PORT_MIN / DIST_PORT_MAX  distribution port range (default 9100-9105)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
: "${ERLANG_COOKIE:?set ERLANG_COOKIE}"
name=${NODE_NAME:-kazoo_apps@$(hostname)}
gen=${KZ_GENERATION:-2}
rate=${KZ_RATE:-20}
build=${KZ_BUILD_DIR:-/tmp/kzbridge-fixtures}
case "$gen" in 1|2) ;; *) echo "KZ_GENERATION must be 1 or 2" >&2; exit 2 ;; esac
[ -d "$build/common" ] || "$here/bin/build.sh" "$build"
case "$name" in *@*.*) namearg=-name ;; *) namearg=-sname ;; esac
epmd -daemon
# The cookie goes in a private home directory, where erl reads it, not on the command
# line (which every user on the machine can read in ps).
home=$(mktemp -d "${TMPDIR:-/tmp}/kzfixture-home.XXXXXX")
(umask 077 && printf '%s' "$ERLANG_COOKIE" > "$home/.erlang.cookie")
chmod 400 "$home/.erlang.cookie"
HOME=$home exec erl -noinput $namearg "$name" \
  -pa "$build/common" -pa "$build/gen$gen" -config "$here/config/sys" \
  -kernel inet_dist_listen_min "${DIST_PORT_MIN:-9100}" inet_dist_listen_max "${DIST_PORT_MAX:-9105}" \
  -eval "kz_fixture:boot($rate)"
