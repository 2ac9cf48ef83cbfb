#!/bin/sh
# Compile the fixtures with plain erlc (no rebar, no network) into OUTDIR:
#   OUTDIR/common  traffic, maintenance wrappers, app and supervisor
#   OUTDIR/gen1    kz_data_tracing, generation 1 API (Kazoo 4.0/4.1)
#   OUTDIR/gen2    kz_data_tracing, generation 2 API (Kazoo 4.2+)
# Traffic modules get the lager options Kazoo's data sink needs; a -compile attribute
# is not enough with lager 3.9.2, so the options go on the erlc command line.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build.sh OUTDIR}
lager=$(erl -noshell -eval 'io:format("~s", [code:lib_dir(lager)]), halt().')
case "$lager" in
  */lager*) ;;
  *) echo "lager not found: apt-get install -y erlang-lager" >&2; exit 3 ;;
esac
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/common" "$tmp/gen1" "$tmp/gen2"
lageropts="-pa $lager/ebin +{parse_transform,lager_transform} +{lager_extra_sinks,[data]}"
# shellcheck disable=SC2086
erlc $lageropts -o "$tmp/common" \
  "$here/src/kazoo_data_app.erl" "$here/src/kazoo_data_sup.erl" "$here/src/kazoo_data_maintenance.erl" \
  "$here/src/kz_json.erl" "$here/src/kzs_perf.erl" "$here/src/kz_traffic.erl" "$here/src/kz_fixture.erl" \
  "$here/src/kz_nodes.erl"
cp "$here/src/kazoo_data.app.src" "$tmp/common/kazoo_data.app"
# shellcheck disable=SC2086
erlc $lageropts -DKZ_GEN1 -o "$tmp/gen1" "$here/src/kz_data_tracing.erl"
# shellcheck disable=SC2086
erlc $lageropts -o "$tmp/gen2" "$here/src/kz_data_tracing.erl"
rm -rf "$out"
mv "$tmp" "$out"
