"""The trace session's event stream against real sandbox nodes: order, stop reasons, loss."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from kzbridge.errors import TraceLostError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.session import Collected, Lost, Progress, Record, Rotated, StoppedBy, TraceSession
from kzbridge.wire.terms import Atom


async def collect_events(session):
    return [event async for event in session.events()]


@pytest.mark.asyncio
async def test_events_come_in_order_and_records_carry_node_and_instant(sandbox_gen2, gen2_node, tmp_path):
    out = tmp_path / "order.log"

    n = gen2_node
    before = datetime.now(timezone.utc)
    session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=out, duration=2)
    events = await collect_events(session)
    after = datetime.now(timezone.utc)
    stopped = await n.rpc("kz_data_tracing", "status", [session.trace.ref.encode()])
    verified = await session.verify()

    kinds = [type(e) for e in events]
    assert kinds.count(StoppedBy) == 1 and kinds[-1] is Collected and kinds.count(Collected) == 1
    cut = kinds.index(StoppedBy)
    assert events[cut] == StoppedBy("duration")
    running = {Progress, Record, Rotated}  # Rotated: the reader saw the file replaced under its name
    assert set(kinds[:cut]) <= running and set(kinds[cut + 1 : -1]) <= running
    summary = events[-1].summary
    assert summary is session.summary
    assert summary is not None and summary.reason == "duration" and summary.verified and not summary.partial
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


@pytest.mark.asyncio
async def test_max_size_stops_the_session(gen1_node, tmp_path):
    n = gen1_node
    session = await TraceSession.start(
        n, flt.module_filter("kz_json"), local_path=tmp_path / "m.log", duration=60, max_size=1500
    )
    events = await collect_events(session)

    stops = [e for e in events if isinstance(e, StoppedBy)]
    assert stops == [StoppedBy("max-size")]
    summary = events[-1].summary
    assert summary.reason == "max-size" and summary.bytes >= 1500 and summary.seconds < 30


@pytest.mark.asyncio
async def test_a_stop_request_from_elsewhere_says_who_asked_and_still_collects(gen2_node, tmp_path):
    n = gen2_node
    session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=tmp_path / "r.log", duration=60)
    seen = []

    def observer(event):
        seen.append(event)
        if isinstance(event, Record) and sum(isinstance(e, Record) for e in seen) == 3:
            session.request_stop("the test")

    t0 = time.monotonic()
    summary = await session.run(observer)
    took = time.monotonic() - t0

    assert [e for e in seen if isinstance(e, StoppedBy)] == [StoppedBy("requested", "the test")]
    assert summary.reason == "the test" and summary.verified and summary.lines >= 3 and took < 30
    assert seen[-1] == Collected(summary)


@pytest.mark.asyncio
async def test_a_killed_node_ends_the_stream_with_lost_naming_the_partial_file(fresh_sandbox, open_node, tmp_path):
    from kzbridge import sandbox

    out = tmp_path / "lost.log"

    n = await open_node(fresh_sandbox)
    session = await TraceSession.start(n, flt.module_filter("kz_json"), local_path=out, duration=60)
    events = []
    async for event in session.events():
        events.append(event)
        if isinstance(event, Record) and sum(isinstance(e, Record) for e in events) == 5:
            os.kill(fresh_sandbox.os_pid, 9)

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
