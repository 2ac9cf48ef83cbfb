"""The node's safety: the governor stops a trace that floods lager (kazoo.governor), on real fixture nodes.

Floods come from the fixture itself: ``kz_traffic:set_rate/1`` (paced traffic from 4 workers,
up to ~10 000 lines/s) and ``kz_fixture:flood/4`` (many processes logging as fast as lager
lets them). The fixture's data sink has lager's throttle at 100 queued messages
(config/sys.config), so a flood from a few hundred processes really turns it synchronous.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import governor, tracing
from kzbridge.kazoo.session import StoppedBy, TraceSession
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom
from tests.conftest import kzb, node_call, poll_until_async

FLOOD = [(Atom("request"), b"flood")]


async def nothing_left_running(n, remote_path: str) -> None:
    """kz_data_tracing knows no trace, and no lager file handler writes to remote_path."""
    assert await n.rpc("kz_data_tracing", "status", []) == []
    for sink in ("data_lager_event", "lager_event"):
        handlers = await n.rpc("gen_event", "which_handlers", [Atom(sink)])
        assert (Atom("lager_file_backend"), remote_path) not in handlers


async def sink_mode(n) -> str:
    return (await governor.read_state(n, "data")).mode


def test_the_fixtures_throttled_data_sink_goes_synchronous_under_a_flood(fresh_sandbox, node_tmp):
    async def body():
        n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
        try:
            before = await governor.read_state(n, "data")
            assert before.mode == "async" and 0 <= before.queue < 100, "normal traffic keeps the sink async"
            # Without a trace nothing reaches the data sink (no handler wants info): the flood must be traced.
            trace = await tracing.start_trace(n, FLOOD, remote_path=f"{node_tmp}/fixture-flood.log")
            try:
                await n.rpc("kz_fixture", "flood", [Atom("data"), 200, 3000, 20])

                async def synchronous():
                    state = await governor.read_state(n, "data")
                    return state if state.mode == "sync" else None

                seen = await poll_until_async(synchronous, timeout=10, interval=0.02)
                assert seen.queue > 0
                # and lager's throttle switches back once the flood is over
                await poll_until_async(lambda: _is(sink_mode(n), "async"), timeout=30, interval=0.1)
            finally:
                # (stopping goes through the sink's queue: after the flood, or kz_data_tracing's call times out)
                await trace.stop()
        finally:
            await n.close()

    asyncio.run(body())


def set_rate(box, rate: float) -> None:
    """kz_traffic's events per second on the sandbox (its flood of kz_json and kzs_perf)."""
    node_call(box, "kz_traffic", "set_rate", [rate])


async def _is(coro, value):
    return await coro == value


def test_a_flood_past_max_rate_is_stopped_by_safety_collected_whole_and_verified(fresh_sandbox, tmp_path):
    out = tmp_path / "flood.log"

    set_rate(fresh_sandbox, 6000)  # ~6 000 events/s on kz_json and kzs_perf, from 4 workers
    try:
        started = time.monotonic()
        r = kzb("trace-module", "kz_json", "-n", fresh_sandbox.node, "-d", "30", "--max-rate", "1000", "-o", str(out))
        took = time.monotonic() - started
    finally:
        set_rate(fresh_sandbox, 20)
    assert r.returncode == 0, r.stderr
    m = re.search(r"stopped by safety after ([\d.]+)s", r.stderr)
    assert m, r.stderr
    assert float(m.group(1)) < 3.5, "stopped within about two seconds of a 30 s trace"
    assert took < 20
    line = re.search(r"stopped by safety: (\d+) events/s > --max-rate 1000", r.stderr)
    assert line and int(line.group(1)) > 1000, r.stderr
    assert "size verified" in r.stderr
    size = int(re.search(r"(\d+) records \((\d+) lines\), (\d+) bytes", r.stderr).group(3))
    assert size > 0 and out.stat().st_size == size, "the collected file is whole"
    remote = re.search(r"remote: (\S+)", r.stderr).group(1)

    async def check():
        n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
        try:
            await nothing_left_running(n, remote)
        finally:
            await n.close()

    asyncio.run(check())


@pytest.mark.asyncio
async def test_a_flood_that_turns_the_sink_synchronous_is_stopped_by_safety(fresh_sandbox, tmp_path):
    n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
    try:
        # max_rate out of reach: only lager's switch to synchronous logging can stop this one.
        session = await TraceSession.start(n, FLOOD, local_path=tmp_path / "sync.log", duration=30, max_rate=1e12)
        started = time.monotonic()
        await n.rpc("kz_fixture", "flood", [Atom("data"), 150, 3000, 20])
        stops: list[StoppedBy] = []
        decided: list[float] = []

        def observe(e: object) -> None:
            if isinstance(e, StoppedBy):
                stops.append(e)
                decided.append(time.monotonic())

        summary = await session.run(observe)
        assert [s.reason for s in stops] == ["safety"]
        assert summary.reason == "safety" and summary.safety is not None
        assert "synchronous" in summary.safety.causes and "max-rate" not in summary.safety.causes
        assert "lager's data sink went synchronous" in str(summary.safety)
        # Decided long before the 30 s duration (the stop itself then waits for the flooded sink's
        # queue to drain, which under a loaded machine takes seconds more).
        assert decided[0] - started < 15, "decided long before the 30 s duration"
        assert summary.verified and not summary.partial and summary.lines > 0
        assert (tmp_path / "sync.log").stat().st_size == summary.bytes
        await nothing_left_running(n, session.trace.remote_path)
        await poll_until_async(lambda: _is(sink_mode(n), "async"), timeout=30, interval=0.1)
    finally:
        await n.close()


def test_no_governor_lets_the_same_flood_run_to_its_duration_with_a_warning(fresh_sandbox, tmp_path):
    out = tmp_path / "ungoverned.log"

    set_rate(fresh_sandbox, 6000)
    try:
        r = kzb(
            "trace-module", "kz_json", "-n", fresh_sandbox.node, "-d", "3", "--max-rate", "1000", "--no-governor",
            "-o", str(out),
        )  # fmt: skip
    finally:
        set_rate(fresh_sandbox, 20)
    assert r.returncode == 0, r.stderr
    assert "kzbridge: warning: the governor is off" in r.stderr and "(see --no-governor)" in r.stderr
    assert "stopped by duration" in r.stderr and "safety" not in r.stderr
    records = int(re.search(r"(\d+) records \((\d+) lines\), (\d+) bytes", r.stderr).group(1))
    assert records > 3 * 1000, "the flood ran past the rate the governor would have stopped"


@pytest.mark.asyncio
async def test_normal_traffic_is_not_stopped_and_the_governor_stays_in_the_rpc_budget(gen2_node, tmp_path):
    session = await TraceSession.start(
        gen2_node, flt.module_filter("kz_json"), local_path=tmp_path / "normal.log", duration=7
    )
    summary = await session.run()
    assert summary.reason == "duration" and summary.safety is None and summary.verified
    # The governor looked (a baseline, then every 5 s while the trace is quiet): it measured a rate ...
    assert summary.peak_rate is not None and 0 < summary.peak_rate < 1000
    # ... within the control-traffic budget, its rpcs counted.
    assert summary.rpc_calls / summary.seconds < 2
    assert (await governor.read_state(gen2_node, "data")).mode == "async"


@pytest.mark.asyncio
async def test_a_sink_synchronous_already_refuses_to_start(fresh_sandbox, tmp_path):
    from kzbridge.errors import KazooError

    n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
    try:
        # someone else's trace on a flood keeps the sink synchronous
        other = await tracing.start_trace(n, FLOOD)
        try:
            # 150 loggers: more than the threshold (100) stay blocked, so the sink stays synchronous.
            # (Many more starve the sink of CPU: it then takes seconds to handle the event that flips it.)
            await n.rpc("kz_fixture", "flood", [Atom("data"), 150, 8000, 20])
            await poll_until_async(lambda: _is(sink_mode(n), "sync"), timeout=10, interval=0.02)
            with pytest.raises(governor.NodeBusyError) as info:
                await TraceSession.start(n, flt.module_filter("kz_json"), local_path=tmp_path / "no.log", duration=5)
            assert isinstance(info.value, KazooError) and info.value.setting == "governor"
            assert "overloaded already" in info.value.message or "did not answer" in info.value.message
            status = await n.rpc("kz_data_tracing", "status", [])
            assert [s[0].decode() for s in status] == [other.ref], "nothing else was started"
            assert not (tmp_path / "no.log").exists()
            await poll_until_async(lambda: _is(sink_mode(n), "async"), timeout=30, interval=0.1)
        finally:
            await other.stop()
    finally:
        await n.close()


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan"])
def test_max_rate_is_validated_before_anything_reaches_a_node(value):
    # No node of that name exists: a validated option fails with a usage error, not a connection error.
    r = kzb("trace-module", "kz_json", "-n", "nobody@127.0.0.1", "--max-rate", value, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "maximum event rate" in r.stderr and "see --max-rate" in r.stderr


# Kazoo's own sys.config gives data_lager_event no throttle: lager then logs to it synchronously
# all the time, the mode never changes, and the queue (callers waiting) is what shows a flood.
UNTHROTTLE = r"""
ok = gen_event:delete_handler(data_lager_event, lager_backend_throttle, []),
persistent_term:erase({lager_config, {data_lager_event, async}}),
gen_event:which_handlers(data_lager_event).
"""


@pytest.mark.asyncio
async def test_an_unthrottled_sink_like_kazoos_is_watched_by_its_queue(fresh_sandbox, tmp_path):
    from kzbridge.kazoo import programs

    n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
    try:
        assert await programs.evaluate(n, UNTHROTTLE) == []
        assert (await governor.read_state(n, "data")).mode == "unthrottled"
        session = await TraceSession.start(n, FLOOD, local_path=tmp_path / "u.log", duration=30, max_rate=1e12)
        await n.rpc("kz_fixture", "flood", [Atom("data"), 100, 3000, 20])
        summary = await session.run()
        assert summary.reason == "safety" and summary.safety is not None
        assert summary.safety.causes == ("queue",) and summary.safety.queue > governor.QUEUE_LIMIT
        assert "callers waiting (no throttle" in str(summary.safety)
        assert summary.verified and summary.seconds < 15
        await nothing_left_running(n, session.trace.remote_path)
    finally:
        await n.close()
