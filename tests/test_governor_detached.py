"""The node's safety for detached traces: a governor on the node itself (governor.guard_detached).

A detached trace (``kzbridge start``) runs with no kzbridge process, so a small erl_eval process on
the node watches it as the session's governor would, and stops it under a flood. Real fixture
nodes: floods from ``kz_fixture:flood/4`` (a few hundred loggers; the fixture's data sink has
lager's throttle at 100) and ``kz_traffic:set_rate/1`` (paced traffic).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import BadRpcError, UsageError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import governor, journal, programs, tracing
from kzbridge.wire.terms import Atom, ErlString
from tests.conftest import poll_until_async
from tests.test_governor import _is, kzb, sink_mode

# The node-side governors running on a node: [{Pid, Ref}] (each carries {kzb_governor, Ref}).
GOVERNORS = r"""
[{P, R} || P <- erlang:processes(), {dictionary, D} <- [erlang:process_info(P, dictionary)],
           {kzb_governor, R} <- [lists:keyfind(kzb_governor, 1, D)]].
"""


async def governors(n: Any) -> list[str]:
    return [ref.decode() for _, ref in await programs.evaluate(n, GOVERNORS)]


async def handler_there(n: Any, path: str) -> bool:
    return (Atom("lager_file_backend"), path) in await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])


async def running(n: Any, trace: tracing.Trace) -> bool:
    """kz_data_tracing knows the trace and the sink still has its file handler."""
    known = await n.rpc("kz_data_tracing", "status", [trace.ref.encode()]) != Atom("false")
    return known and await handler_there(n, trace.remote_path)


async def left_clean(n: Any, ref: str, path: str) -> bool:
    """No trace, no handler, no governor process left for it."""
    known = await n.rpc("kz_data_tracing", "status", [ref.encode()]) != Atom("false")
    return not known and not await handler_there(n, path) and ref not in await governors(n)


async def note_exists(n: Any, path: str) -> bool:
    reply = await n.rpc("file", "read_file_info", [ErlString(governor.note_path(path))])
    return type(reply) is tuple and reply[0] == Atom("ok")


@pytest.mark.asyncio
async def test_a_detached_trace_under_a_flood_is_stopped_by_the_node_side_governor(
    fresh_sandbox: Any, open_node: Any, node_tmp: Path, tmp_path: Path
) -> None:
    path = f"{node_tmp}/detached-flood.log"
    # As operators start one; the governor is on by default. kzbridge exits: nobody on our side watches.
    res = await asyncio.to_thread(
        kzb, "start", "--filter", "request=flood", "-n", fresh_sandbox.node, "-d", "120", "--remote-path", path
    )
    assert res.returncode == 0, res.stderr
    ref = res.stdout.strip()
    n = await open_node(fresh_sandbox)
    assert ref in await governors(n), "the governor runs on the node"
    started = time.monotonic()
    await n.rpc("kz_fixture", "flood", [Atom("data"), 200, 3000, 20])
    await poll_until_async(lambda: note_exists(n, path), timeout=15, interval=0.1)
    decided = time.monotonic() - started
    # Within a second of lager's throttle switching the sink to synchronous; that switch itself comes
    # late under this flood (the starved sink handles the event that flips it after 3-5 s here).
    assert decided < 10, f"the governor decided {decided:.1f} s into the flood"
    why = await governor.detached_stop(n, path, ref=ref)
    assert why is not None and why.sink == "data" and set(why.causes) <= {"max-rate", "synchronous"}, why
    if "max-rate" in why.causes:
        assert why.rate > governor.DEFAULT_MAX_RATE and why.max_rate == governor.DEFAULT_MAX_RATE
    entry = journal.find(fresh_sandbox.node, ref)
    assert entry is not None and entry.extra["stopped_by"] == "safety", entry
    assert entry.extra["safety"]["text"] == why.describe()
    # Stopping goes through the sink's queue: it is done once the flood has drained (kz_data_tracing,
    # waiting for lager meanwhile, may not answer within its 5 s).
    await poll_until_async(lambda: left_clean(n, ref, path), timeout=60, interval=0.2, retry_on=(BadRpcError,))
    assert await n.rpc("kz_data_tracing", "status", []) == []
    assert await n.rpc("erlang", "whereis", [Atom("kz_data_tracing")]) != Atom("undefined")
    await poll_until_async(lambda: _is(sink_mode(n), "async"), timeout=30, interval=0.1)
    # kzbridge stop, later: the trace is gone already, the file comes back whole.
    res = await asyncio.to_thread(kzb, "stop", ref, "-n", fresh_sandbox.node, "-o", str(tmp_path / "flood.log"))
    assert res.returncode == 0, res.stderr
    parts = [p for p in [path, *(f"{path}.{i}" for i in range(5))] if os.path.exists(p)]
    assert (tmp_path / "flood.log").stat().st_size == sum(os.path.getsize(p) for p in parts) > 0


@pytest.mark.asyncio
async def test_a_detached_start_on_a_synchronous_sink_is_refused(
    fresh_sandbox: Any, open_node: Any, node_tmp: Path
) -> None:
    n = await open_node(fresh_sandbox)
    # someone else's trace on a flood keeps the sink synchronous (150 loggers > its threshold of 100)
    other = await tracing.start_trace(n, [(Atom("request"), b"flood")], remote_path=f"{node_tmp}/other.log")
    try:
        await n.rpc("kz_fixture", "flood", [Atom("data"), 150, 8000, 20])
        await poll_until_async(lambda: _is(sink_mode(n), "sync"), timeout=10, interval=0.02)
        with pytest.raises(governor.NodeBusyError) as info:
            await tracing.start_trace(
                n, flt.module_filter("kz_json"), remote_path=f"{node_tmp}/refused.log", lease=60, detached=True
            )
        assert info.value.setting == "governor"
        status = await n.rpc("kz_data_tracing", "status", [])
        assert [s[0].decode() for s in status] == [other.ref], "nothing else was started"
        assert not os.path.exists(f"{node_tmp}/refused.log") and await governors(n) == []
        await poll_until_async(lambda: _is(sink_mode(n), "async"), timeout=30, interval=0.1)
    finally:
        await other.stop()


@pytest.mark.asyncio
async def test_a_detached_trace_past_max_rate_is_stopped_and_says_why(
    fresh_sandbox: Any, open_node: Any, node_tmp: Path
) -> None:
    n = await open_node(fresh_sandbox)
    await n.rpc("kz_traffic", "set_rate", [6000])  # paced, ~6 000 events/s: the sink stays async
    try:
        trace = await tracing.start_trace(
            n,
            flt.module_filter("kz_json"),
            remote_path=f"{node_tmp}/detached-rate.log",
            lease=120,
            detached=True,
            max_rate=1000,
        )
        started = time.monotonic()
        await poll_until_async(lambda: left_clean(n, trace.ref, trace.remote_path), timeout=15, interval=0.1)
        took = time.monotonic() - started
    finally:
        await n.rpc("kz_traffic", "set_rate", [20])
    assert took < 6, f"stopped {took:.1f} s after it started"
    why = await governor.detached_stop(n, trace.remote_path, ref=trace.ref)
    assert why is not None and why.causes == ("max-rate",), why
    assert why.rate > 1000 and why.max_rate == 1000
    assert why.describe("--max-rate").startswith(f"{why.rate:.0f} events/s > --max-rate 1000")
    # kzbridge stop, later: the trace is gone already (invalid_trace is fine), the file comes back.
    again = await tracing.attach(n, trace.ref)
    await again.stop()
    assert await n.rpc("kz_data_tracing", "status", []) == []


@pytest.mark.asyncio
async def test_a_quiet_detached_trace_runs_and_its_governor_ends_with_it(
    sandbox_gen2: Any, gen2_node: Any, node_tmp: Path
) -> None:
    n = gen2_node
    # Ended by the lease: the governor never outlives it.
    by_lease = await tracing.start_trace(
        n, flt.module_filter("kz_json"), remote_path=f"{node_tmp}/quiet-lease.log", lease=4, detached=True
    )
    # Ended by stop (kzbridge stop / clear remove the handler the same way).
    by_stop = await tracing.start_trace(
        n, flt.module_filter("kz_json"), remote_path=f"{node_tmp}/quiet-stop.log", lease=60, detached=True
    )
    started = time.monotonic()
    assert {by_lease.ref, by_stop.ref} <= set(await governors(n))
    await poll_until_async(lambda: time.monotonic() - started > 2.5, timeout=5)
    assert await running(n, by_lease) and await running(n, by_stop), "normal traffic is not stopped"
    assert {by_lease.ref, by_stop.ref} <= set(await governors(n))
    await (await tracing.attach(n, by_stop.ref)).stop()
    await poll_until_async(lambda: left_clean(n, by_stop.ref, by_stop.remote_path), timeout=5, interval=0.1)
    assert by_lease.ref in await governors(n)
    await poll_until_async(lambda: left_clean(n, by_lease.ref, by_lease.remote_path), timeout=10, interval=0.1)
    # Ended by clear (clear_all_traces on the node).
    by_clear = await tracing.start_trace(
        n, flt.module_filter("kz_json"), remote_path=f"{node_tmp}/quiet-clear.log", lease=60, detached=True
    )
    assert by_clear.ref in await governors(n)
    assert by_clear.ref in await tracing.clear_all(n)
    await poll_until_async(lambda: left_clean(n, by_clear.ref, by_clear.remote_path), timeout=5, interval=0.1)
    for trace in (by_lease, by_stop, by_clear):
        assert not await note_exists(n, trace.remote_path)
        assert await governor.detached_stop(n, trace.remote_path) is None
        assert trace.remote_path not in [f for _, f in await tracing.lager_file_traces(n)]


# A file handler lager keeps no watcher for (added to the sink directly): the governor asks the sink.
ADD_BARE_HANDLER = r"""
gen_event:add_handler(data_lager_event, {lager_file_backend, File}, [{file, File}, {level, none}]).
"""
DELETE_BARE_HANDLER = r"""
gen_event:delete_handler(data_lager_event, {lager_file_backend, File}, []).
"""


@pytest.mark.asyncio
async def test_without_a_lager_watcher_the_governor_asks_the_sink_and_still_ends(
    gen2_node: Any, node_tmp: Path
) -> None:
    n = gen2_node
    path = f"{node_tmp}/bare-handler.log"
    assert await programs.evaluate(n, ADD_BARE_HANDLER, File=ErlString(path)) == Atom("ok")
    try:
        # Never longer than its lifetime (what is left of the lease), handler or not.
        started = time.monotonic()
        await governor.guard_detached(
            n, ref="short0000000", sink="data", path=path, max_rate=None, lifetime=2, stop_bindings=[]
        )
        assert "short0000000" in await governors(n)
        await poll_until_async(lambda: _absent(n, "short0000000"), timeout=5, interval=0.1)
        assert 1.5 < time.monotonic() - started < 4.5
        pid = await governor.guard_detached(
            n, ref="bare00000000", sink="data", path=path, max_rate=None, lifetime=60, stop_bindings=[]
        )
        assert "bare00000000" in await governors(n)
        # the watchdog and its helper (which asks the sink)
        assert len([r for r in await governors(n) if r == "bare00000000"]) == 2
        await asyncio.sleep(1.5)
        assert await n.rpc("erlang", "is_process_alive", [pid]) == Atom("true")
    finally:
        assert await programs.evaluate(n, DELETE_BARE_HANDLER, File=ErlString(path)) == Atom("ok")

    await poll_until_async(lambda: _absent(n, "bare00000000"), timeout=5, interval=0.1)
    assert not await note_exists(n, path)


@pytest.mark.asyncio
async def test_no_governor_starts_none_and_says_so(gen2_node: Any, node_tmp: Path) -> None:
    calls = gen2_node.calls_made
    with pytest.raises(UsageError, match="maximum event rate") as info:
        await tracing.start_trace(gen2_node, flt.module_filter("kz_json"), detached=True, max_rate=float("nan"))
    assert info.value.setting == "max_rate" and gen2_node.calls_made == calls, "refused before any call"
    trace = await tracing.start_trace(
        gen2_node,
        flt.module_filter("kz_json"),
        remote_path=f"{node_tmp}/ungoverned.log",
        lease=30,
        detached=True,
        governor=False,
    )
    try:
        assert trace.ref not in await governors(gen2_node)
        (warning,) = [w for w in trace.warnings if w.setting == "governor"]
        assert warning.startswith("the governor is off: nothing on the node watches")
    finally:
        await (await tracing.attach(gen2_node, trace.ref)).stop()


async def _absent(n: Any, ref: str) -> bool:
    return ref not in await governors(n)


def test_start_takes_max_rate_and_no_governor_and_stop_says_what_the_governor_did(
    fresh_sandbox: Any, node_tmp: Path, tmp_path: Path
) -> None:
    node = fresh_sandbox.node
    res = kzb("start", "--module", "kz_json", "-n", node, "-d", "60", "--no-governor")
    assert res.returncode == 0, res.stderr
    assert "kzbridge: warning: the governor is off: nothing on the node watches" in res.stderr
    assert "(see --no-governor)" in res.stderr
    res = kzb("stop", res.stdout.strip(), "-n", node, "--no-collect")
    assert res.returncode == 0 and "governor" not in res.stdout, res

    path = f"{node_tmp}/cli-rate.log"
    kzb("rpc", "-n", node, "kz_traffic", "set_rate", "6000")  # paced, ~6 000 events/s
    try:
        res = kzb("start", "--module", "kz_json", "-n", node, "-d", "60", "--max-rate", "1000", "--remote-path", path)
        assert res.returncode == 0, res.stderr
        ref = res.stdout.strip()
        deadline = time.monotonic() + 15
        while not os.path.exists(governor.note_path(path)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        kzb("rpc", "-n", node, "kz_traffic", "set_rate", "20")
    res = kzb("stop", ref, "-n", node, "-o", str(tmp_path / "rate.log"))
    assert res.returncode == 0, res.stderr
    assert "; the node's governor had stopped it: " in res.stdout and "events/s > --max-rate 1000" in res.stdout, res
    # validated before connecting: no node of that name exists
    res = kzb("start", "--module", "kz_json", "-n", "nobody@127.0.0.1", "--max-rate", "nan")
    assert res.returncode == 2 and "see --max-rate" in res.stderr, res.stderr
