"""The trace session's event stream against real sandbox nodes: order, stop reasons, loss."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta, timezone

from kzbridge.errors import TraceLostError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.session import Collected, Lost, Progress, Record, Rotated, StoppedBy, TraceSession
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom


def run(coro):
    return asyncio.run(coro)


async def collect_events(session):
    return [event async for event in session.events()]


def test_events_come_in_order_and_records_carry_node_and_instant(sandbox_gen2, tmp_path):
    out = tmp_path / "order.log"

    async def body():
        n = await connect_node(sandbox_gen2.node, sandbox_gen2.cookie)
        before = datetime.now(timezone.utc)
        session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=out, duration=2)
        events = await collect_events(session)
        after = datetime.now(timezone.utc)
        stopped = await n.rpc("kz_data_tracing", "status", [session.trace.ref.encode()])
        verified = await session.verify()
        await n.close()
        return session, events, before, after, stopped, verified

    session, events, before, after, stopped, verified = run(body())
    kinds = [type(e) for e in events]
    assert kinds.count(StoppedBy) == 1 and kinds[-1] is Collected and kinds.count(Collected) == 1
    cut = kinds.index(StoppedBy)
    assert events[cut] == StoppedBy("duration")
    running = {Progress, Record, Rotated}  # Rotated: the reader saw the file replaced under its name
    assert set(kinds[:cut]) <= running and set(kinds[cut + 1 : -1]) <= running
    summary = events[-1].summary
    assert summary is session.summary and summary.reason == "duration" and summary.verified and not summary.partial
    records = [e for e in events if isinstance(e, Record)]
    assert len(records) == summary.records > 0 and out.stat().st_size == summary.bytes
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].bytes == summary.bytes and progress[-1].records == summary.records
    assert [p.bytes for p in progress] == sorted(p.bytes for p in progress)
    for rec in records:
        assert rec.node == sandbox_gen2.node and rec.printed == rec.record.time
        assert rec.instant.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=2) <= rec.instant <= after + timedelta(seconds=2), (rec.printed, before)
    assert stopped == Atom("false") and verified


def test_max_size_stops_the_session(sandbox_gen1, tmp_path):
    async def body():
        n = await connect_node(sandbox_gen1.node, sandbox_gen1.cookie)
        session = await TraceSession.start(
            n, flt.module_filter("kz_json"), local_path=tmp_path / "m.log", duration=60, max_size=1500
        )
        events = await collect_events(session)
        await n.close()
        return events

    events = run(body())
    stops = [e for e in events if isinstance(e, StoppedBy)]
    assert stops == [StoppedBy("max-size")]
    summary = events[-1].summary
    assert summary.reason == "max-size" and summary.bytes >= 1500 and summary.seconds < 30


def test_a_stop_request_from_elsewhere_says_who_asked_and_still_collects(sandbox_gen2, tmp_path):
    async def body():
        n = await connect_node(sandbox_gen2.node, sandbox_gen2.cookie)
        session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=tmp_path / "r.log", duration=60)
        seen = []

        def observer(event):
            seen.append(event)
            if isinstance(event, Record) and sum(isinstance(e, Record) for e in seen) == 3:
                session.request_stop("the test")

        t0 = time.monotonic()
        summary = await session.run(observer)
        took = time.monotonic() - t0
        await n.close()
        return seen, summary, took

    seen, summary, took = run(body())
    assert [e for e in seen if isinstance(e, StoppedBy)] == [StoppedBy("requested", "the test")]
    assert summary.reason == "the test" and summary.verified and summary.lines >= 3 and took < 30
    assert seen[-1] == Collected(summary)


def test_a_killed_node_ends_the_stream_with_lost_naming_the_partial_file(fresh_sandbox, tmp_path):
    from kzbridge import sandbox

    out = tmp_path / "lost.log"

    async def body():
        n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
        session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=out, duration=60)
        events = []
        async for event in session.events():
            events.append(event)
            if isinstance(event, Record) and sum(isinstance(e, Record) for e in events) == 5:
                os.kill(fresh_sandbox.os_pid, 9)
        return session, events

    try:
        session, events = run(body())
    finally:
        sandbox.stop(fresh_sandbox.name)
    assert isinstance(events[-1], Lost) and not any(isinstance(e, (Collected, StoppedBy)) for e in events)
    lost = events[-1]
    partial = tmp_path / "lost.log.partial"
    assert lost.partial_path == str(partial) and partial.exists() and not out.exists()
    err = lost.error
    assert isinstance(err, TraceLostError) and err.kept_bytes == partial.stat().st_size > 0
    assert err.__cause__ is not None, "the connection's own error stays attached"
    assert (err.ref, err.node, err.remote_path, err.lease) == (
        session.trace.ref,
        fresh_sandbox.node,
        session.trace.remote_path,
        session.trace.lease,
    )
    assert session.summary is None
