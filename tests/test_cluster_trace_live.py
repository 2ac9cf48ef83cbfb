"""Cluster tracing against three real sandboxes whose clocks disagree (libfaketime) and zones differ.

A call crosses the nodes (kz_fixture:chain: each node logs its step, then hands the call
to the next); the merged timeline must show the steps in causal order, while a naive sort
by printed time must not (which proves the correction matters).
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kzbridge import sandbox
from kzbridge.cookie import cookie_for_node
from kzbridge.errors import KzBridgeError
from kzbridge.kazoo import cluster
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.merge import write_merged
from kzbridge.kazoo.session import Record
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

pytestmark = pytest.mark.live

SKEWS = {"a": ("+3.5s", None), "b": ("-2s", "America/New_York"), "c": (None, None)}


@pytest.fixture(scope="module")
def skewed(private_epmd: int) -> Iterator[dict[str, sandbox.Sandbox]]:
    tag = secrets.token_hex(3)
    boxes: dict[str, sandbox.Sandbox] = {}
    try:
        for key, (fake, tz) in SKEWS.items():
            boxes[key] = sandbox.start(f"kzcl{key}_{tag}", rate=0, faketime=fake, tz=tz)
        yield boxes
    finally:
        for box in boxes.values():
            sandbox.stop(box.name)


def chain_hops(boxes: list[sandbox.Sandbox]) -> list[tuple[Atom, Atom]]:
    return [(Atom(b.node), Atom(b.cookie)) for b in boxes]


async def run_chain_trace(
    seed: sandbox.Sandbox, route: list[sandbox.Sandbox], callid: str, out: Path, *, known: list[str]
) -> cluster.ClusterSummary:
    """Discover the cluster from ``seed``, trace callid on every node, run the chain, stop when all steps are in."""
    node = await connect_node(seed.node, seed.cookie)
    try:
        await node.rpc("kz_nodes", "join", [[Atom(n) for n in known]])
        found = await cluster.discover(node)
    finally:
        await node.close()
    assert found.source == "kz_nodes" and sorted(found.nodes) == sorted(known)
    conns = await cluster.connect_all(found.nodes, cookie_for_node)
    async with conns:
        run = cluster.ClusterTrace(
            conns, out, [flt.parse_filter(f"callid={callid}")], limits=cluster.ClusterLimits(duration=30)
        )
        await run.start()
        first = conns.nodes[route[0].node]
        await first.rpc("kz_fixture", "chain", [callid.encode(), chain_hops(route[1:]), 1])
        await wait_written(run, " step ", len(route))
        run.request_stop("test")
        async for _name, _event in run.events():
            pass
        return await run.finish()


async def wait_written(run: cluster.ClusterTrace, needle: str, count: int, timeout: float = 15) -> None:
    """Until the nodes' trace files hold ``count`` lines with ``needle`` (lager flushes about once a second).

    The last record of a file is only known complete when the next one starts or the trace
    stops, so a test that waits for Record events would wait for the stop itself."""
    deadline = time.monotonic() + timeout
    while True:
        seen = 0
        for name, session in run.sessions.items():
            data = await run.conns.nodes[name].rpc("file", "read_file", [session.trace.remote_path])
            if isinstance(data, tuple) and data[0] == Atom("ok"):
                seen += data[1].count(needle.encode())
        if seen >= count:
            return
        assert time.monotonic() < deadline, f"{seen} of {count} lines with {needle!r} written"
        await asyncio.sleep(0.2)


def steps_in(text: str) -> list[int]:
    return [int(line.rsplit("step ", 1)[1]) for line in text.splitlines() if " step " in line]


def test_causal_chain_across_skewed_nodes_merges_in_true_order(skewed: dict[str, sandbox.Sandbox], tmp_path: Path):
    a, b, c = skewed["a"], skewed["b"], skewed["c"]
    route = [a, b, c, a, b, c, b, a]  # 8 hops, bouncing between the skewed clocks
    callid = f"chain-{secrets.token_hex(4)}"
    out = tmp_path / "run"
    summary = asyncio.run(run_chain_trace(a, route, callid, out, known=[a.node, b.node, c.node]))

    assert summary.complete, [(o.node, o.error, o.summary) for o in summary.outcomes]
    merged = (out / "merged.log").read_text()
    assert steps_in(merged) == list(range(1, len(route) + 1))
    # Each node's file holds its own steps; sorting all lines by the time each node printed gets it wrong.
    printed = []
    for box in (a, b, c):
        printed += [line for line in (out / f"{box.node}.log").read_text().splitlines() if " step " in line]
    naive = sorted(printed, key=lambda line: line[:12])
    assert steps_in("\n".join(naive)) != list(range(1, len(route) + 1))

    desc = json.loads((out / "cluster.json").read_text())
    by_node = {n["node"]: n for n in desc["nodes"]}
    offsets = {box.node: by_node[box.node]["clock"]["start"]["offset"] for box in (a, b, c)}
    assert offsets[a.node] == pytest.approx(3.5, abs=0.3)
    assert offsets[b.node] == pytest.approx(-2.0, abs=0.3)
    assert offsets[c.node] == pytest.approx(0.0, abs=0.3)
    assert by_node[b.node]["utc_offset"] == -5 * 3600  # New York in November
    for box in (a, b, c):
        entry = by_node[box.node]
        assert entry["verified"] and not entry["partial"] and entry["records"] >= 2
        assert entry["clock"]["stop"] is not None and entry["clock"]["uncertainty"] < 0.05
    assert desc["failed"] == {} and desc["stopped_by"] == "test"

    # The offline merge reproduces merged.log byte for byte from the files and cluster.json.
    again = io.BytesIO()
    write_merged(cluster.merge_sources(out, cluster.read_cluster_json(out)), again)
    assert again.getvalue() == (out / "merged.log").read_bytes()


def test_midnight_on_one_node(private_epmd: int, skewed: dict[str, sandbox.Sandbox], tmp_path: Path):
    """A node whose clock crosses midnight during the trace (UTC, starts at 23:59:56)."""
    late = sandbox.start(f"kzmid_{secrets.token_hex(3)}", rate=0, faketime="@2026-11-25 23:59:56", tz="UTC")
    try:
        c = skewed["c"]

        async def body() -> cluster.ClusterSummary:
            node = await connect_node(late.node, late.cookie)
            try:  # wait until the fake clock has passed midnight minus a second
                while (await node.rpc("erlang", "universaltime", []))[1] < (23, 59, 59):
                    await asyncio.sleep(0.2)
            finally:
                await node.close()
            # The chain goes back and forth for ~3 s, crossing the late node's midnight.
            route = [late, c] * 6
            callid = f"mid-{secrets.token_hex(4)}"
            conns = await cluster.connect_all([late.node, c.node], cookie_for_node)
            async with conns:
                run = cluster.ClusterTrace(conns, tmp_path / "mid", [flt.parse_filter(f"callid={callid}")])
                await run.start()

                async def follow() -> None:  # read while the node writes, so its midnight rotation is followed
                    async for _ in run.events():
                        pass

                reading = asyncio.ensure_future(follow())
                for i, box in enumerate(route):  # one step at a time, 250 ms apart
                    await conns.nodes[box.node].rpc("kz_fixture", "chain", [callid.encode(), [], i + 1])
                    await asyncio.sleep(0.25)
                run.request_stop("test")
                await reading
                return await run.finish()

        summary = asyncio.run(body())
        merged = (tmp_path / "mid" / "merged.log").read_text()
        assert steps_in(merged) == list(range(1, 13))
        late_lines = [ln for ln in merged.splitlines() if ln.startswith(late.name)]
        printed_days = {ln.split()[1][:10] for ln in late_lines}
        assert len(printed_days) == 1  # corrected to our clock: all today, though the node printed both sides of 00:00
        raw = (tmp_path / "mid" / f"{late.node}.log").read_text()
        assert "23:59:5" in raw and "00:00:0" in raw
        assert summary.complete
    finally:
        sandbox.stop(late.name)


def test_unreachable_node_is_reported_and_require_all_stops_the_others(
    skewed: dict[str, sandbox.Sandbox], tmp_path: Path
):
    a, c = skewed["a"], skewed["c"]
    ghost = "kzghost@127.0.0.1"

    async def body(require_all: bool) -> tuple[cluster.ClusterTrace, BaseException | None]:
        conns = await cluster.connect_all([a.node, c.node, ghost], cookie_for_node, timeout=3)
        async with conns:
            assert set(conns.failed) == {ghost}
            run = cluster.ClusterTrace(
                conns,
                tmp_path / f"req{require_all}",
                flt.module_filter("kz_json"),
                limits=cluster.ClusterLimits(duration=1),
                require_all=require_all,
            )
            try:
                await run.start()
            except KzBridgeError as exc:
                return run, exc
            async for _ in run.events():
                pass
            await run.finish()
            return run, None

    _, err = asyncio.run(body(require_all=True))
    assert err is not None and ghost in str(err) and "stopped the traces started" in str(err)
    assert err.exit_code == 3

    async def running(box: sandbox.Sandbox) -> list[object]:
        n = await connect_node(box.node, box.cookie)
        try:
            return list(await n.rpc("kz_data_tracing", "status", []))
        finally:
            await n.close()

    assert asyncio.run(running(a)) == [] and asyncio.run(running(c)) == []

    _run, err = asyncio.run(body(require_all=False))
    assert err is None
    desc = json.loads((tmp_path / "reqFalse" / "cluster.json").read_text())
    assert ghost in desc["failed"] and {a.node, c.node} <= {n["node"] for n in desc["nodes"] if n["verified"]}
    assert (tmp_path / "reqFalse" / "merged.log").exists() and not (tmp_path / "reqFalse" / f"{ghost}.log").exists()


def test_python_api_async_and_sync(skewed: dict[str, sandbox.Sandbox], tmp_path: Path) -> None:
    import kzbridge

    a, b = skewed["a"], skewed["b"]
    callid = f"api-{secrets.token_hex(4)}"
    filters = [flt.parse_filter(f"callid={callid}")]

    async def body() -> kzbridge.SyncClusterTrace | cluster.ClusterTrace:
        async with kzbridge.trace_cluster([a.node, b.node], filters, tmp_path / "async") as run:
            first = run.conns.nodes[a.node]
            await first.rpc("kz_fixture", "chain", [callid.encode(), chain_hops([b, a]), 1])
            await wait_written(run, " step ", 3)
            run.request_stop("script")
            records = [e for _, e in [item async for item in run.events()] if isinstance(e, Record)]
            assert {r.node for r in records} == {a.node, b.node} and len(records) == 3
        return run

    run = asyncio.run(body())
    assert run.summary is not None and run.summary.complete and run.summary.stopped_by == "script"
    records = list(run.merged_records())
    steps = [r for r in records if r.record is not None and " step " in r.record.message]
    assert [r.node for r in steps] == [a.node, b.node, a.node]
    assert [r.record.message.rsplit(" ", 1)[1] for r in steps if r.record] == ["1", "2", "3"]
    assert all(r.when.tzinfo is not None for r in steps) and steps == sorted(steps, key=lambda r: r.instant)

    with kzbridge.trace_cluster_sync([a.node, b.node], filters, tmp_path / "sync", duration=1.5) as srun:
        summary = srun.wait()
    assert summary.complete and {o.node for o in summary.outcomes} == {a.node, b.node}
    assert all(o.summary is not None and o.summary.reason == "duration" for o in summary.outcomes)
    assert (tmp_path / "sync" / "merged.log").exists()
