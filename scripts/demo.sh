#!/bin/sh
# The main job against the embedded default: a local fixture node is started, traced
# (trace-module kz_json), collected, parsed and stopped.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
exec .venv/bin/kzbridge demo "$@"
