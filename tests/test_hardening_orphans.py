"""Issue 11, rule 8: orphans are really cleared, and success is printed only once verified.

A trace_file call with a pid value in a filter (kzbridge refuses it; ``sup -e`` and scripts can
send it) crashes the real server after lager installed the file handler, and lager keeps no
trace record of it: clear_trace_by_destination cannot remove it. ``clear --orphans`` deletes
the handler from the sink itself, reads the handlers again, and says "removed" only for what
is gone.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kzbridge.kazoo import tracing
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

from .conftest import poll_until
from .test_cli import kzb


def handlers(box: Any) -> list[str]:
    """The data sink's file handlers, read straight from gen_event (not through kzbridge's code)."""

    async def body() -> list[str]:
        n = await connect_node(box.node, box.cookie)
        try:
            found = await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
        finally:
            await n.close()
        return [str(h[1]) for h in found if type(h) is tuple and h[0] == Atom("lager_file_backend")]

    return asyncio.run(body())


def crash_with_a_pid_filter(box: Any, path: str) -> None:
    """What `sup -e` sends: a real pid in a filter (the pid literal is made a pid by the node)."""
    worker = kzb("rpc", "--node", box.node, "erlang", "whereis", "kz_data_tracing").stdout.strip()
    assert worker.startswith("<"), worker
    res = kzb(
        "sup", "-e", "--node", box.node, "kz_data_tracing", "trace_file", f"[{{pid, {worker}}}]", f'"{path}"',
        '[message, "\\n"]', "debug",
    )  # fmt: skip
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)  # the server crashed: a badrpc


def test_a_handler_lager_has_no_trace_of_is_removed_and_verified(fresh_sandbox, node_tmp):
    path = f"{node_tmp}/orphan-pid-filter.log"
    crash_with_a_pid_filter(fresh_sandbox, path)
    assert path in handlers(fresh_sandbox), "the crash leaked the handler, as on the real server"

    def listed() -> bool:  # once the supervisor has restarted kz_data_tracing
        res = kzb("status", "--orphans", "--node", fresh_sandbox.node, "--json")
        return res.returncode == 0 and {"sink": "data_lager_event", "file": path} in json.loads(res.stdout)

    poll_until(listed, timeout=20)
    res = kzb("clear", "--orphans", "--node", fresh_sandbox.node)
    assert res.returncode == 0, res.stderr
    assert f"removed {path} (handler deleted)" in res.stdout.splitlines()
    assert path not in handlers(fresh_sandbox), "removed means gone from the sink"
    again = kzb("status", "--orphans", "--node", fresh_sandbox.node, "--json")
    assert json.loads(again.stdout) == []


def test_the_python_api_reports_each_orphan_with_what_became_of_it(fresh_sandbox, node_tmp):
    path = f"{node_tmp}/orphan-api.log"
    crash_with_a_pid_filter(fresh_sandbox, path)

    async def body() -> list[tracing.OrphanCleared]:
        n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
        try:
            for _ in range(100):
                if ("data_lager_event", path) in await tracing.orphans(n):
                    break
                await asyncio.sleep(0.2)
            return await tracing.clear_orphans(n)
        finally:
            await n.close()

    results = asyncio.run(body())
    mine = [r for r in results if r.file == path]
    assert mine and mine[0].removed and mine[0].how == "handler deleted" and mine[0].sink == "data_lager_event"
    assert path in results, "still usable as the list of file names it used to be"
    assert path not in handlers(fresh_sandbox)
    res = kzb("clear", "--orphans", "--node", fresh_sandbox.node, "--json")
    assert json.loads(res.stdout) == {"stopped": [], "removed": [], "still_there": []}
