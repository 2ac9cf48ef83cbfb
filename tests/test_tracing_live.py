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
    BadRpcError,
    ConnectionLostError,
    ProgramError,
    RemoteFileError,
    TraceLostError,
    TracingUnavailableError,
)
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import tracing
from kzbridge.kazoo.collect import collect_file
from kzbridge.kazoo.logparse import LogRecord, parse_lines
from kzbridge.kazoo.session import Rotated, TraceSession, run_trace
from kzbridge.wire.terms import Atom, ErlString

from .conftest import poll_until_async


def records(path):
    with open(path, encoding="utf-8") as fh:
        return list(parse_lines(fh))


@pytest.mark.asyncio
async def test_run_trace_collects_parsed_events_on_both_generations(any_sandbox, tmp_path, open_node):
    out = str(tmp_path / "t.log")

    n = await open_node(any_sandbox)
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

    recs = records(out)
    assert len(recs) == summary.records
    assert all(r.callid and r.callid.startswith("call-") for r in recs)
    assert any("second line of the same message" in r.message for r in recs), "multi-line messages kept whole"


@pytest.mark.asyncio
async def test_trace_object_follow_and_context_manager(sandbox_gen2, open_node):
    n = await open_node(sandbox_gen2)
    got: list[LogRecord] = []
    async with await tracing.start_trace(n, [flt.parse_filter("request=req-2")]) as trace:

        async def stopper():
            await poll_until_async(lambda: got, message="records followed")
            await trace.stop()

        task = asyncio.ensure_future(stopper())
        async for rec in trace.follow():
            got.append(rec)
        await task
    assert got and all(r.callid is not None and r.callid.startswith("call-2-") for r in got)
    assert await n.rpc("kz_data_tracing", "status", []) == []


@pytest.mark.asyncio
async def test_a_held_trace_outlives_its_lease_and_a_forgotten_one_does_not(sandbox_gen2, open_node):
    """The lease is renewed in the background while the Trace object lives, not only inside run_trace."""
    import gc

    n = await open_node(sandbox_gen2)
    held = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=1.5)
    forgotten = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=1.5)
    gone = forgotten.ref.encode()
    del forgotten
    gc.collect()
    await asyncio.sleep(4)  # the sleep is the test: more than twice the lease goes by
    assert await n.rpc("kz_data_tracing", "status", [held.ref.encode()]) != Atom("false")
    assert held.lease_renewals >= 4 and held.keeper_error is None
    from kzbridge.kazoo import journal

    entry = journal.find(n.peer_name, held.ref)
    assert entry is not None and entry.lease_until > time.time(), "status shows the renewed lease"
    assert await n.rpc("kz_data_tracing", "status", [gone]) == Atom("false"), "its lease ran out"
    await held.stop()
    assert await n.rpc("kz_data_tracing", "status", []) == []


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


@pytest.mark.asyncio
async def test_lager_event_sink_traces_the_main_log(sandbox_gen1, tmp_path, open_node):
    out = str(tmp_path / "main.log")

    n = await open_node(sandbox_gen1)
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"), sink=tracing.LAGER_SINK, level="info")
    summary = await run_trace(trace, out, duration=2.5)
    handlers = await n.rpc("gen_event", "which_handlers", [Atom("lager_event")])
    assert (Atom("lager_file_backend"), trace.remote_path) not in handlers

    recs = records(out)
    assert summary.records == len(recs) > 0
    assert {r.module for r in recs} == {"kz_json"} and {r.severity for r in recs} <= {"info", "notice"}


@pytest.mark.asyncio
async def test_crashing_filters_are_refused_before_anything_is_sent(sandbox_gen2, open_node):
    n = await open_node(sandbox_gen2)
    server = await n.rpc("erlang", "whereis", [Atom("kz_data_tracing")])
    some_pid = await n.rpc("erlang", "whereis", [Atom("init")])
    calls = n.calls_made
    for bad in ([], [(Atom("pid"), some_pid)], [(Atom("any"), [(Atom("module"), Atom("kz_json"))])]):
        with pytest.raises(BadFilterError):
            await tracing.start_trace(n, bad)
    assert n.calls_made == calls, "nothing reached the node"
    assert await n.rpc("erlang", "whereis", [Atom("kz_data_tracing")]) == server


@pytest.mark.asyncio
async def test_abandoned_run_stops_the_trace_without_collecting(sandbox_gen2, tmp_path, open_node):
    out = tmp_path / "abandoned.log"

    n = await open_node(sandbox_gen2)
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"))
    session = TraceSession(trace, str(out), duration=60)
    session.request_stop()
    session.abandon()
    summary = await session.run()
    assert await n.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false")

    assert summary.reason == "abandoned" and summary.partial and not out.exists()
    assert summary.local_path.endswith(".partial")


@pytest.mark.asyncio
async def test_empty_trace_says_so_and_suggests_the_main_sink(sandbox_gen2, tmp_path, open_node):
    n = await open_node(sandbox_gen2)
    trace = await tracing.start_trace(n, flt.module_filter("no_such_module"))
    summary = await run_trace(trace, str(tmp_path / "e.log"), duration=1.5)

    assert summary.lines == 0 and any("lager_event sink" in w and w.setting == "sink" for w in summary.warnings)


@pytest.mark.asyncio
async def test_lease_stops_the_trace_when_the_client_vanishes(fresh_sandbox, open_node):
    n = await open_node(fresh_sandbox)
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=3)
    await n.close()  # vanish without stopping
    m = await open_node(fresh_sandbox)
    assert await m.rpc("kz_data_tracing", "status", [trace.ref.encode()]) != Atom("false")
    await asyncio.sleep(4)  # the sleep is the test: the 3 s lease runs out with nobody renewing it
    assert await m.rpc("kz_data_tracing", "status", [trace.ref.encode()]) == Atom("false")
    handlers = await m.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
    assert (Atom("lager_file_backend"), trace.remote_path) not in handlers
    size = await m.rpc("filelib", "file_size", [trace.remote_path])
    await asyncio.sleep(1.5)  # the sleep is the test: traffic goes on, and nothing more reaches the file
    assert await m.rpc("filelib", "file_size", [trace.remote_path]) == size


@pytest.mark.asyncio
async def test_the_lease_armed_before_the_ref_came_back_also_clears_kz_data_tracing(fresh_sandbox, open_node, node_tmp):
    # start_trace arms a lease keyed by file, starts the trace, then re-arms it with the ref. A client
    # killed in between leaves only the first lease: it must find the ref by file, or status() keeps
    # listing a trace nobody can stop.
    path = f"{node_tmp}/kzb-early-lease.log"
    n = await open_node(fresh_sandbox)
    await tracing._arm_lease(n, 1.5, None, path, None)
    ok, ref = await n.rpc(
        "kz_data_tracing",
        "trace_file",
        [[(Atom("module"), Atom("kz_json"))], path.encode(), [Atom("message")], Atom("debug")],
    )
    assert ok == Atom("ok") and await n.rpc("kz_data_tracing", "status", [ref]) != Atom("false")

    async def stopped():
        return await n.rpc("kz_data_tracing", "status", [ref]) == Atom("false")

    await poll_until_async(stopped, timeout=6)
    handlers = await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
    assert (Atom("lager_file_backend"), path) not in handlers


@pytest.mark.asyncio
async def test_orphans_after_a_server_crash_are_found_and_cleared(fresh_sandbox, open_node, node_tmp):
    orphan = f"{node_tmp}/kzb-orphan.log"
    n = await open_node(fresh_sandbox)
    ok, _ref = await n.rpc(
        "kz_data_tracing",
        "trace_file",
        [
            [(Atom("module"), Atom("kz_json"))],
            orphan.encode(),
            [Atom("message"), ErlString("\n")],
            Atom("debug"),
        ],
    )
    assert ok == Atom("ok")
    with pytest.raises(BadRpcError):  # someone else's crash (not ours: kzbridge refuses this input)
        await n.rpc("kz_data_tracing", "trace_file", [[], f"{node_tmp}/kzb-x.log".encode(), [Atom("message")]])

    async def orphaned():
        try:
            return ("data_lager_event", orphan) in await tracing.orphans(n)
        except TracingUnavailableError:  # caught between the crash and the supervisor's restart
            return False

    await poll_until_async(orphaned)  # the supervisor restarts the crashed server
    assert orphan in await tracing.clear_orphans(n)
    assert await tracing.orphans(n) == []


@pytest.mark.asyncio
async def test_file_past_lagers_rotation_size_comes_back_whole_and_in_order(fresh_sandbox, tmp_path, open_node):
    out = str(tmp_path / "big.log")

    n = await open_node(fresh_sandbox)
    await n.rpc("kz_traffic", "set_rate", [0])
    trace = await tracing.start_trace(n, [(Atom("request"), b"burst")])

    async def flood():
        # lager checks the size at most once a second, on a write: pause, then write more.
        # These sleeps are the test's input (lager's timing), not synchronisation.
        await asyncio.sleep(0.5)
        await n.rpc("kz_fixture", "burst", [Atom("data"), 10000, 1000], timeout=120)
        await asyncio.sleep(1.5)
        await n.rpc("kz_fixture", "burst", [Atom("data"), 2000, 1000], timeout=120)

    task = asyncio.ensure_future(flood())
    # The flood is the point here (and it makes the throttled sink synchronous): no governor.
    session = TraceSession(trace, out, duration=120, max_size=1 << 30, governor=False)

    async def stop_after_flood():
        await task
        await poll_until_async(lambda: rotations, timeout=30, message="the session seeing the rotation")
        session.request_stop()

    rotations = []
    stopper = asyncio.ensure_future(stop_after_flood())
    summary = await session.run(lambda event: rotations.append(event) if isinstance(event, Rotated) else None)
    assert rotations, "the session reported lager's rotation"
    await stopper
    parts = await n.rpc("filelib", "wildcard", [trace.remote_path + ".*"])
    # and the same file collected after the fact, rotated parts first
    collected = await collect_file(n, trace.remote_path, str(tmp_path / "again.log"), rotated=True)

    assert parts, "lager rotated the file at 10 MB"
    assert summary.verified and summary.bytes > 10 * 1024 * 1024
    seq = [int(m.group(1)) for m in re.finditer(r"burst (\d+) ", Path(out).read_text())]
    assert seq == list(range(1, 10001)) + list(range(1, 2001)), "every event once, in order, across the rotation"
    assert collected.bytes == summary.bytes and len(collected.parts) == len(parts) + 1
    assert (tmp_path / "again.log").read_bytes() == Path(out).read_bytes()


@pytest.mark.asyncio
async def test_node_killed_during_collection_keeps_a_marked_partial_file(fresh_sandbox, tmp_path, open_node, node_tmp):
    from kzbridge import sandbox

    out = tmp_path / "dying.log"
    path = f"{node_tmp}/kzb-big-{time.time_ns()}.bin"  # node_tmp goes at the end of the run

    n = await open_node(fresh_sandbox)
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

    with pytest.raises((ConnectionLostError, RemoteFileError)) as raised:
        await collect_file(n, path, str(out), progress=progress, chunk=1 << 20, window=4)
    err = raised.value

    partial = tmp_path / "dying.log.partial"
    assert "partial" in str(err) and str(partial) in str(err)
    assert partial.exists() and partial.stat().st_size >= 20 * 1048576 and not out.exists()
    sandbox.stop(fresh_sandbox.name)


@pytest.mark.asyncio
async def test_node_without_tracing_gives_a_clear_error(erl_node, open_node):
    n = await open_node(erl_node)
    with pytest.raises(TracingUnavailableError):
        await tracing.start_trace(n, flt.module_filter("kz_json"))


@pytest.mark.asyncio
async def test_lager_sink_trace_is_also_stopped_by_its_lease(fresh_sandbox, open_node):
    n = await open_node(fresh_sandbox)
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"), sink=tracing.LAGER_SINK, lease=3)
    handler = (Atom("lager_file_backend"), trace.remote_path)
    assert handler in await n.rpc("gen_event", "which_handlers", [Atom("lager_event")])
    await n.close()  # vanish
    m = await open_node(fresh_sandbox)
    await asyncio.sleep(4)  # the sleep is the test: the 3 s lease runs out with nobody renewing it
    assert handler not in await m.rpc("gen_event", "which_handlers", [Atom("lager_event")])


@pytest.mark.asyncio
async def test_max_size_stops_the_run_and_format_and_level_apply(sandbox_gen2, tmp_path, open_node):
    out = str(tmp_path / "small.log")

    n = await open_node(sandbox_gen2)
    fmt = [Atom("severity"), ErlString(" "), Atom("message"), ErlString("\n")]
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"), level="info", format_list=fmt)
    summary = await run_trace(trace, out, duration=60, max_size=2000)

    assert summary.reason == "max-size" and summary.seconds < 30 and summary.bytes >= 2000
    lines = Path(out).read_text().splitlines()
    heads = [line.split(" ", 1)[0] for line in lines]
    assert "info" in heads and "notice" in heads and "debug" not in heads, "level info, custom format"
    assert not any(line[:2].isdigit() for line in lines), "our format, not Kazoo's (which starts with the time)"


@pytest.mark.asyncio
async def test_unwritable_remote_path_is_accepted_by_the_node_like_kazoo(sandbox_gen2, open_node):
    n = await open_node(sandbox_gen2)
    reply = await n.rpc(
        "kz_data_tracing",
        "trace_file",
        [[(Atom("module"), Atom("kz_json"))], b"/nonexistent-dir/x.log", [Atom("message")], Atom("debug")],
    )
    assert reply[0] == Atom("ok"), "a path that cannot be written still answers {ok, Ref}"
    assert await n.rpc("kz_data_tracing", "stop_trace", [reply[1]]) == (Atom("ok"), b"/nonexistent-dir/x.log")


@pytest.mark.asyncio
async def test_node_dying_during_a_run_keeps_the_partial_file_and_says_so(fresh_sandbox, tmp_path, open_node):
    from kzbridge import sandbox

    out = tmp_path / "run.log"

    n = await open_node(fresh_sandbox)
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"))

    partial = tmp_path / "run.log.partial"

    async def kill_later():
        await poll_until_async(lambda: partial.exists() and partial.stat().st_size > 0, timeout=30)
        os.kill(fresh_sandbox.os_pid, 9)

    killer = asyncio.ensure_future(kill_later())
    with pytest.raises(TraceLostError) as raised:
        await run_trace(trace, str(out), duration=60)
    await killer
    err = raised.value

    assert str(partial) in str(err) and "partial" in str(err) and trace.remote_path in str(err)
    assert (err.ref, err.remote_path, err.partial_path) == (trace.ref, trace.remote_path, str(partial))
    assert err.kept_bytes == partial.stat().st_size and err.lease == trace.lease
    assert partial.exists() and partial.stat().st_size > 0 and not out.exists()
    sandbox.stop(fresh_sandbox.name)


@pytest.mark.asyncio
async def test_programs_are_parsed_once_on_the_node_and_bad_ones_are_a_clear_error(erl_node, open_node):
    from kzbridge.kazoo import programs
    from kzbridge.wire.terms import Encoded

    n = await open_node(erl_node)
    first = await programs.forms(n, "A + B.")
    assert type(first) is Encoded and await programs.forms(n, "A + B.") is first  # cached per connection
    assert await programs.evaluate(n, "A + B.", A=40, B=2) == 42
    assert await programs.evaluate(n, "lists:reverse(P).", P=ErlString("abc")) == ErlString("cba")
    with pytest.raises(ProgramError, match="could not parse a kzbridge program") as err:
        await programs.forms(n, "X = .")
    assert err.value.__cause__ is not None, "the node's own answer stays attached"


@pytest.mark.asyncio
async def test_following_from_the_start_takes_parts_rotated_before_reading_began(fresh_sandbox, tmp_path, open_node):
    """The session reads nothing until its events are read; lager may have rotated by then
    (a flood right after the start, or a midnight start): those parts are this trace's."""
    n = await open_node(fresh_sandbox)
    await n.rpc("kz_traffic", "set_rate", [0])
    trace = await tracing.start_trace(n, [(Atom("request"), b"burst")])
    await n.rpc("kz_fixture", "burst", [Atom("data"), 10000, 1000], timeout=120)
    await asyncio.sleep(1.5)  # lager checks the size once a second, on a write: the test's input
    await n.rpc("kz_fixture", "burst", [Atom("data"), 500, 1000], timeout=120)

    async def rotated() -> bool:
        return bool(await n.rpc("filelib", "is_file", [trace.remote_path + ".0"]) == Atom("true"))

    await poll_until_async(rotated, timeout=30, message="lager rotating the trace file")
    session = TraceSession(trace, str(tmp_path / "late.log"), duration=120, max_size=1 << 30, governor=False)
    session.request_stop("test")  # everything is written: stop at once and read it all
    summary = await session.run()
    seq = [int(m.group(1)) for m in re.finditer(r"burst (\d+) ", (tmp_path / "late.log").read_text())]
    assert seq == list(range(1, 10001)) + list(range(1, 501))
    assert summary.verified
