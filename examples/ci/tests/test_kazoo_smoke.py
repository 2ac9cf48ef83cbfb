"""What a user's CI suite against the compose stack looks like (run by examples/ci/compose-ci.sh).

kzbridge's pytest plugin (installed with kzbridge) hands each test the node given with
--kazoo-node; the cookie comes from KZBRIDGE_COOKIE.
"""

from __future__ import annotations

import time

from kzbridge import Atom
from kzbridge.kazoo import filters


def test_the_node_runs_kazoos_tracing(kazoo_sync):
    assert kazoo_sync.rpc("erlang", "whereis", [Atom("kz_data_tracing")]) != Atom("undefined")


def test_kz_json_logs_while_traced(kazoo_sync, tmp_path):
    with kazoo_sync.start_trace(filters.module_filter("kz_json")) as trace:
        time.sleep(2)
        trace.stop()
        result = trace.collect(tmp_path / "kz_json.log")
    lines = (tmp_path / "kz_json.log").read_text().splitlines()
    assert result.verified and lines, "the node logged kz_json lines while traced"
