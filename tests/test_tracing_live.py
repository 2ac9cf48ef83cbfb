"""Tracing end to end against sandbox nodes of both generations: API, guarantees, faults."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from kzbridge.errors import (
    BadFilterError,
    ConnectionLostError,
    ProgramError,
    RemoteFileError,
    TraceLostError,
    TracingUnavailableError,
)
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import tracing
from kzbridge.kazoo.collect import collect_file
from kzbridge.kazoo.logparse import parse_lines
from kzbridge.kazoo.session import Rotated, TraceSession, run_trace
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, ErlString


def run(coro):
    return asyncio.run(coro)


async def node_of(box, **kw):
    return await connect_node(box.node, box.cookie, **kw)


def records(path):
    with open(path, encoding="utf-8") as fh:
        return list(parse_lines(fh))


async def poll_until(condition, timeout=10.0, interval=0.05):
    """Await ``condition()`` (a coroutine function) until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {condition.__name__}")
        await asyncio.sleep(interval)


def test_run_trace_collects_parsed_events_on_both_generations(any_sandbox, tmp_path):
    out = str(tmp_path / "t.log")

    async def body():
        n = await node_of(any_sandbox)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"))
        assert trace.generation == any_sandbox.generation and re.fullmatch(r"[0-9a-f]{12}", trace.ref)
        summary = await run_trace(trace, out, duration=3)
        assert trace.stopped and summary.verified and not summary.partial
        assert summary.lines > 10 and summary.bytes == os.path.getsize(out)
        if any_sandbox.generation == 2:
            assert await n.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false")
        handlers = await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
        assert (Atom("lager_file_backend"), trace.remote_path) not in handlers
        # Control traffic stays low: lease renewals only, no per-second polling.
        assert summary.rpc_calls / summary.seconds < 2
        await n.close()
        return summary

    summary = run(body())
    recs = records(out)
    assert len(recs) == summary.records
    assert all(r.callid and r.callid.startswith("call-") for r in recs)
    assert any("second line of the same message" in r.message for r in recs), "multi-line messages kept whole"


def test_trace_object_follow_and_context_manager(sandbox_gen2):
    async def body():
        n = await node_of(sandbox_gen2)
        got = []
        async with await tracing.start_trace(n, [flt.parse_filter("request=req-2")]) as trace:

            async def stopper():
                await asyncio.sleep(2.5)
                await trace.stop()

            task = asyncio.ensure_future(stopper())
            async for rec in trace.follow():
                got.append(rec)
            await task
        assert got and all(r.callid.startswith("call-2-") for r in got)
        assert await n.rpc("kz_data_tracing", "status", []) == []
        await n.close()

    run(body())


def test_a_held_trace_outlives_its_lease_and_a_forgotten_one_does_not(sandbox_gen2):
    """The lease is renewed in the background while the Trace object lives, not only inside run_trace."""
    import gc

    async def body():
        n = await node_of(sandbox_gen2)
        held = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=1.5)
        forgotten = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=1.5)
        gone = forgotten.ref.encode()
        del forgotten
        gc.collect()
        await asyncio.sleep(4)  # more than twice the lease
        assert await n.rpc("kz_data_tracing", "status", [held.ref.encode()]) != Atom("false")
        assert held.lease_renewals >= 4 and held.keeper_error is None
        from kzbridge.kazoo import journal

        assert journal.find(n.peer_name, held.ref).lease_until > time.time(), "status shows the renewed lease"
        assert await n.rpc("kz_data_tracing", "status", [gone]) == Atom("false"), "its lease ran out"
        await held.stop()
        assert await n.rpc("kz_data_tracing", "status", []) == []
        await n.close()

    run(body())


def test_sync_api_follow_run_collect_and_with_always_stops(sandbox_gen2, tmp_path):
    import kzbridge

    with kzbridge.connect_sync(sandbox_gen2.node) as kz:  # a local sandbox supplies its own cookie
        with kz.start_trace([flt.parse_filter("request=req-2")], lease=1.5) as trace:
            assert len(trace.ref) == 12 and trace.generation == 2
            got = list(trace.follow(duration=3.5))  # longer than the lease: renewed meanwhile
            assert trace.stopped
            res = trace.collect(tmp_path / "sync.log")
        assert got and all(r.callid.startswith("call-2-") for r in got)
        assert res.verified and res.bytes == (tmp_path / "sync.log").stat().st_size
        assert len(records(tmp_path / "sync.log")) >= len(got)

        with kz.start_trace(flt.module_filter("kz_json")) as trace:
            summary = trace.run(str(tmp_path / "run.log"), duration=1.5)
        assert summary.verified and summary.lines > 0

        with pytest.raises(RuntimeError), kz.start_trace(flt.module_filter("kz_json")) as trace:
            raise RuntimeError("the script fails")
        assert kz.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false"), "with stopped it"
        assert kz.rpc("kz_data_tracing", "status", []) == []


def test_lager_event_sink_traces_the_main_log(sandbox_gen1, tmp_path):
    out = str(tmp_path / "main.log")

    async def body():
        n = await node_of(sandbox_gen1)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"), sink=tracing.LAGER_SINK, level="info")
        summary = await run_trace(trace, out, duration=2.5)
        handlers = await n.rpc("gen_event", "which_handlers", [Atom("lager_event")])
        assert (Atom("lager_file_backend"), trace.remote_path) not in handlers
        await n.close()
        return summary

    summary = run(body())
    recs = records(out)
    assert summary.records == len(recs) > 0
    assert {r.module for r in recs} == {"kz_json"} and {r.severity for r in recs} <= {"info", "notice"}


def test_crashing_filters_are_refused_before_anything_is_sent(sandbox_gen2):
    async def body():
        n = await node_of(sandbox_gen2)
        server = await n.rpc("erlang", "whereis", [Atom("kz_data_tracing")])
        some_pid = await n.rpc("erlang", "whereis", [Atom("init")])
        calls = n.calls_made
        for bad in ([], [(Atom("pid"), some_pid)], [(Atom("any"), [(Atom("module"), Atom("kz_json"))])]):
            with pytest.raises(BadFilterError):
                await tracing.start_trace(n, bad)
        assert n.calls_made == calls, "nothing reached the node"
        assert await n.rpc("erlang", "whereis", [Atom("kz_data_tracing")]) == server
        await n.close()

    run(body())


def test_abandoned_run_stops_the_trace_without_collecting(sandbox_gen2, tmp_path):
    out = tmp_path / "abandoned.log"

    async def body():
        n = await node_of(sandbox_gen2)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"))
        session = TraceSession(trace, str(out), duration=60)
        session.request_stop()
        session.abandon()
        summary = await session.run()
        assert await n.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false")
        await n.close()
        return summary

    summary = run(body())
    assert summary.reason == "abandoned" and summary.partial and not out.exists()
    assert summary.local_path.endswith(".partial")


def test_empty_trace_says_so_and_suggests_the_main_sink(sandbox_gen2, tmp_path):
    async def body():
        n = await node_of(sandbox_gen2)
        trace = await tracing.start_trace(n, flt.module_filter("no_such_module"))
        summary = await run_trace(trace, str(tmp_path / "e.log"), duration=1.5)
        await n.close()
        return summary

    summary = run(body())
    assert summary.lines == 0 and any("lager_event sink" in w and w.setting == "sink" for w in summary.warnings)


def test_lease_stops_the_trace_when_the_client_vanishes(fresh_sandbox):
    async def body():
        n = await node_of(fresh_sandbox)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=3)
        await n.close()  # vanish without stopping
        m = await node_of(fresh_sandbox)
        assert await m.rpc("kz_data_tracing", "status", [trace.ref.encode()]) != Atom("false")
        await asyncio.sleep(4)
        assert await m.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false")
        handlers = await m.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
        assert (Atom("lager_file_backend"), trace.remote_path) not in handlers
        size = await m.rpc("filelib", "file_size", [trace.remote_path])
        await asyncio.sleep(1.5)
        assert await m.rpc("filelib", "file_size", [trace.remote_path]) == size
        await m.close()

    run(body())


def test_orphans_after_a_server_crash_are_found_and_cleared(fresh_sandbox):
    async def body():
        n = await node_of(fresh_sandbox)
        ok, _ref = await n.rpc(
            "kz_data_tracing",
            "trace_file",
            [
                [(Atom("module"), Atom("kz_json"))],
                b"/tmp/kzb-orphan.log",
                [Atom("message"), ErlString("\n")],
                Atom("debug"),
            ],
        )
        assert ok == Atom("ok")
        try:  # someone else's crash (not ours: kzbridge refuses this input)
            await n.rpc("kz_data_tracing", "trace_file", [[], b"/tmp/kzb-x.log", [Atom("message")]])
        except Exception:
            pass

        async def orphaned():
            return ("data_lager_event", "/tmp/kzb-orphan.log") in await tracing.orphans(n)

        await poll_until(orphaned)  # the supervisor restarts the crashed server
        assert "/tmp/kzb-orphan.log" in await tracing.clear_orphans(n)
        assert await tracing.orphans(n) == []
        await n.close()

    run(body())


def test_file_past_lagers_rotation_size_comes_back_whole_and_in_order(fresh_sandbox, tmp_path):
    out = str(tmp_path / "big.log")

    async def body():
        n = await node_of(fresh_sandbox)
        await n.rpc("kz_traffic", "set_rate", [0])
        trace = await tracing.start_trace(n, [(Atom("request"), b"burst")])

        async def flood():
            # lager checks the size at most once a second, on a write: pause, then write more.
            await asyncio.sleep(0.5)
            await n.rpc("kz_fixture", "burst", [Atom("data"), 10000, 1000], timeout=120)
            await asyncio.sleep(1.5)
            await n.rpc("kz_fixture", "burst", [Atom("data"), 2000, 1000], timeout=120)

        task = asyncio.ensure_future(flood())
        session = TraceSession(trace, out, duration=120, max_size=1 << 30)

        async def stop_after_flood():
            await task
            await asyncio.sleep(2)
            session.request_stop()

        stopper = asyncio.ensure_future(stop_after_flood())
        rotations = []
        summary = await session.run(lambda event: rotations.append(event) if isinstance(event, Rotated) else None)
        assert rotations, "the session reported lager's rotation"
        await stopper
        parts = await n.rpc("filelib", "wildcard", [trace.remote_path + ".*"])
        # and the same file collected after the fact, rotated parts first
        collected = await collect_file(n, trace.remote_path, str(tmp_path / "again.log"), rotated=True)
        await n.close()
        return summary, parts, collected

    summary, parts, collected = run(body())
    assert parts, "lager rotated the file at 10 MB"
    assert summary.verified and summary.bytes > 10 * 1024 * 1024
    seq = [int(m.group(1)) for m in re.finditer(r"burst (\d+) ", Path(out).read_text())]
    assert seq == list(range(1, 10001)) + list(range(1, 2001)), "every event once, in order, across the rotation"
    assert collected.bytes == summary.bytes and len(collected.parts) == len(parts) + 1
    assert (tmp_path / "again.log").read_bytes() == Path(out).read_bytes()


def test_node_killed_during_collection_keeps_a_marked_partial_file(fresh_sandbox, tmp_path):
    from kzbridge import sandbox

    out = tmp_path / "dying.log"
    path = f"/tmp/kzb-big-{time.time_ns()}.bin"

    async def body():
        n = await node_of(fresh_sandbox)
        write = (
            '{ok, F} = file:open(Path, [write, raw, binary]), B = binary:copy(<<"x">>, 1048576), '
            "[ok = file:write(F, B) || _ <- lists:seq(1, 150)], file:close(F)."
        )
        from kzbridge.kazoo import programs

        await programs.evaluate(n, write, timeout=60, Path=ErlString(path))
        got = {"n": 0}

        def progress(done, total):
            got["n"] = done
            if done >= 20 * 1048576 and not got.get("killed"):
                got["killed"] = True
                os.kill(fresh_sandbox.os_pid, 9)

        with pytest.raises((ConnectionLostError, RemoteFileError)) as err:
            await collect_file(n, path, str(out), progress=progress, chunk=1 << 20, window=4)
        return err.value

    try:
        err = run(body())
    finally:
        if os.path.exists(path):  # written by the node we killed, on this machine
            os.unlink(path)
    partial = tmp_path / "dying.log.partial"
    assert "partial" in str(err) and str(partial) in str(err)
    assert partial.exists() and partial.stat().st_size >= 20 * 1048576 and not out.exists()
    sandbox.stop(fresh_sandbox.name)


def test_node_without_tracing_gives_a_clear_error(erl_node):
    async def body():
        n = await connect_node(erl_node.node, erl_node.cookie)
        with pytest.raises(TracingUnavailableError):
            await tracing.start_trace(n, flt.module_filter("kz_json"))
        await n.close()

    run(body())


def test_lager_sink_trace_is_also_stopped_by_its_lease(fresh_sandbox):
    async def body():
        n = await node_of(fresh_sandbox)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"), sink=tracing.LAGER_SINK, lease=3)
        handler = (Atom("lager_file_backend"), trace.remote_path)
        assert handler in await n.rpc("gen_event", "which_handlers", [Atom("lager_event")])
        await n.close()  # vanish
        m = await node_of(fresh_sandbox)
        await asyncio.sleep(4)
        assert handler not in await m.rpc("gen_event", "which_handlers", [Atom("lager_event")])
        await m.close()

    run(body())


def test_max_size_stops_the_run_and_format_and_level_apply(sandbox_gen2, tmp_path):
    out = str(tmp_path / "small.log")

    async def body():
        n = await node_of(sandbox_gen2)
        fmt = [Atom("severity"), ErlString(" "), Atom("message"), ErlString("\n")]
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"), level="info", format_list=fmt)
        summary = await run_trace(trace, out, duration=60, max_size=2000)
        await n.close()
        return summary

    summary = run(body())
    assert summary.reason == "max-size" and summary.seconds < 30 and summary.bytes >= 2000
    lines = Path(out).read_text().splitlines()
    heads = [line.split(" ", 1)[0] for line in lines]
    assert "info" in heads and "notice" in heads and "debug" not in heads, "level info, custom format"
    assert not any(line[:2].isdigit() for line in lines), "our format, not Kazoo's (which starts with the time)"


def test_unwritable_remote_path_is_accepted_by_the_node_like_kazoo(sandbox_gen2):
    async def body():
        n = await node_of(sandbox_gen2)
        reply = await n.rpc(
            "kz_data_tracing",
            "trace_file",
            [[(Atom("module"), Atom("kz_json"))], b"/nonexistent-dir/x.log", [Atom("message")], Atom("debug")],
        )
        assert reply[0] == Atom("ok"), "a path that cannot be written still answers {ok, Ref}"
        assert await n.rpc("kz_data_tracing", "stop_trace", [reply[1]]) == (Atom("ok"), b"/nonexistent-dir/x.log")
        await n.close()

    run(body())


def test_node_dying_during_a_run_keeps_the_partial_file_and_says_so(fresh_sandbox, tmp_path):
    from kzbridge import sandbox

    out = tmp_path / "run.log"

    async def body():
        n = await node_of(fresh_sandbox)
        trace = await tracing.start_trace(n, flt.module_filter("kz_json"))

        async def kill_later():
            await asyncio.sleep(2.5)
            os.kill(fresh_sandbox.os_pid, 9)

        killer = asyncio.ensure_future(kill_later())
        with pytest.raises(TraceLostError) as err:
            await run_trace(trace, str(out), duration=60)
        await killer
        return err.value, trace

    err, trace = run(body())
    partial = tmp_path / "run.log.partial"
    assert str(partial) in str(err) and "partial" in str(err) and trace.remote_path in str(err)
    assert (err.ref, err.remote_path, err.partial_path) == (trace.ref, trace.remote_path, str(partial))
    assert err.kept_bytes == partial.stat().st_size and err.lease == trace.lease
    assert partial.exists() and partial.stat().st_size > 0 and not out.exists()
    sandbox.stop(fresh_sandbox.name)


def test_programs_are_parsed_once_on_the_node_and_bad_ones_are_a_clear_error(erl_node):
    from kzbridge.kazoo import programs
    from kzbridge.wire.terms import Encoded

    async def body():
        n = await connect_node(erl_node.node, erl_node.cookie)
        first = await programs.forms(n, "A + B.")
        assert type(first) is Encoded and await programs.forms(n, "A + B.") is first  # cached per connection
        assert await programs.evaluate(n, "A + B.", A=40, B=2) == 42
        assert await programs.evaluate(n, "lists:reverse(P).", P=ErlString("abc")) == ErlString("cba")
        with pytest.raises(ProgramError, match="could not parse a kzbridge program") as err:
            await programs.forms(n, "X = .")
        assert err.value.__cause__ is not None, "the node's own answer stays attached"
        await n.close()

    run(body())
