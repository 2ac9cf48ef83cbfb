"""Issue 11, rule 8: orphans are really cleared, and success is printed only once verified.

A trace_file call with a pid value in a filter (kzbridge refuses it; ``sup -e`` and scripts can
send it) crashes the real server after lager installed the file handler, and lager keeps no
trace record of it: clear_trace_by_destination cannot remove it. ``clear --orphans`` deletes
the handler from the sink itself, reads the handlers again, and says "removed" only for what
is gone; a handler that something on the node puts back is "still there", with exit 6.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kzbridge.kazoo import tracing
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

from .conftest import kzb, poll_until


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


# Something on the node puts the handler back whenever it goes: a process holding it with
# gen_event:add_sup_handler is told at once (inside the sink's delete_handler, before the deleter
# gets its reply) and re-adds it, at high priority, long before kzbridge reads the handlers again.
# (Whatever an operator's own supervision does; lager's own watcher gives up on a normal delete.)
KEEP_HANDLER = r"""
process_flag(priority, high),
Id = {lager_file_backend, File},
Keep = fun Keep(N) ->
    ok = gen_event:add_sup_handler(data_lager_event, Id, [{file, File}, {level, none}]),
    receive
        {gen_event_EXIT, Id, _} -> Keep(N + 1);
        {stop, From} -> From ! {stopped, N, gen_event:delete_handler(data_lager_event, Id, [])}
    end
end,
Keep(0).
"""


def test_a_handler_that_comes_back_is_reported_still_there_with_exit_6(sandbox_gen2, node_tmp):
    from kzbridge.kazoo import programs
    from kzbridge.wire.terms import ErlString

    path = f"{node_tmp}/orphan-comes-back.log"

    async def keeper() -> object:
        n = await connect_node(sandbox_gen2.node, sandbox_gen2.cookie)
        try:
            return await programs.spawn(n, KEEP_HANDLER, File=ErlString(path))
        finally:
            await n.close()

    async def release(pid: object) -> tuple[object, list[str]]:
        n = await connect_node(sandbox_gen2.node, sandbox_gen2.cookie)
        try:
            # The keeper answers to a process of the node's: an rpc'd receive stands in for one.
            reply = await programs.evaluate(
                n, "Keeper ! {stop, self()}, receive R -> R after 5000 -> timeout end.", Keeper=pid
            )
            return reply, [str(h[1]) for h in await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
                           if type(h) is tuple and h[0] == Atom("lager_file_backend")]  # fmt: skip
        finally:
            await n.close()

    pid = asyncio.run(keeper())
    try:
        poll_until(lambda: path in handlers(sandbox_gen2), timeout=10)
        res = kzb("clear", "--orphans", "--node", sandbox_gen2.node)
        assert res.returncode == 6, (res.returncode, res.stdout, res.stderr)
        assert f"still there {path} (still there)" in res.stdout.splitlines(), res.stdout
        assert f"removed {path}" not in res.stdout
        (error,) = [line for line in res.stderr.splitlines() if line.startswith("kzbridge: error: ")]
        assert "orphaned handler(s) still installed after removal" in error and "Traceback" not in res.stderr
        res = kzb("clear", "--orphans", "--node", sandbox_gen2.node, "--json")
        assert res.returncode == 6, (res.returncode, res.stdout, res.stderr)
        data = json.loads(res.stdout)
        assert path in data["still_there"] and path not in data["stopped"], data
        assert all(r["file"] != path for r in data["removed"]), data
    finally:
        reply, left = asyncio.run(release(pid))
    assert type(reply) is tuple and reply[0] == Atom("stopped") and reply[1] >= 2, reply  # deleted twice, came back
    assert path not in left
