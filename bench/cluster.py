"""Cluster work at scale: starting a trace on 8 nodes against 1, and collecting 3 nodes' files at once
against one after another. Real sandboxes (8 BEAMs) on loopback, taking turns in rounds.

    python bench/cluster.py [--nodes 8] [--rounds 5] [--mb 64]

Start: connect to every node at once, measure each clock, start each trace (lease armed
first), then stop and collect (not timed). The aim: 8 nodes within 1.5x the time of 1.
Collection: on loopback both ways are CPU-bound; the point is that concurrency is never slower.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import private_epmd

from kzbridge import sandbox
from kzbridge.kazoo import cluster
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.collect import collect_file


def cookie_of(boxes: dict[str, sandbox.Sandbox]):
    return lambda node: boxes[node].cookie


async def start_once(boxes: dict[str, sandbox.Sandbox], nodes: list[str], work: Path) -> float:
    out = work / secrets.token_hex(4)
    t0 = time.perf_counter()
    conns = await cluster.connect_all(nodes, cookie_of(boxes))
    run = cluster.ClusterTrace(conns, out, flt.module_filter("kz_json"), limits=cluster.ClusterLimits(duration=0.2))
    await run.start()
    elapsed = time.perf_counter() - t0
    async for _ in run.events():
        pass
    await run.finish()
    await conns.close()
    assert all(o.summary is not None for o in run.outcomes.values()), run.outcomes
    return elapsed


async def collect_round(boxes: dict[str, sandbox.Sandbox], files: dict[str, str], work: Path, together: bool) -> float:
    nodes = list(files)
    conns = await cluster.connect_all(nodes, cookie_of(boxes))
    kept: list[str] = []
    try:

        async def one(node: str) -> int:
            res = await collect_file(conns.nodes[node], files[node], work / f"{secrets.token_hex(4)}.log")
            # Removed at the end of the round, whichever way: one after another once removed each
            # file before writing the next, so the kernel never had more than one file's pages to
            # flush, while at once had all three (the difference was the disk, not the transfer).
            kept.append(res.local_path)
            return res.bytes

        t0 = time.perf_counter()
        if together:
            sizes = await asyncio.gather(*(one(n) for n in nodes))
        else:
            sizes = [await one(n) for n in nodes]
        elapsed = time.perf_counter() - t0
        assert all(s == os.path.getsize(files[n]) for s, n in zip(sizes, nodes, strict=True))
        return elapsed
    finally:
        await conns.close()
        for path in kept:
            os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=64, help="size of each node's file for the collection bench")
    ap.add_argument("--only", choices=["start", "collect"], help="run one of the two benchmarks")
    args = ap.parse_args()
    private_epmd()
    work = Path(tempfile.mkdtemp(prefix="kzb-bench-cluster-"))
    tag = secrets.token_hex(3)
    boxes: dict[str, sandbox.Sandbox] = {}
    files: dict[str, str] = {}
    try:
        t0 = time.perf_counter()
        count = 3 if args.only == "collect" else max(3, args.nodes)
        for i in range(count):
            box = sandbox.start(f"kzbc{i}_{tag}", rate=20)
            boxes[box.node] = box
        print(f"{count} sandboxes up in {time.perf_counter() - t0:.1f}s")
        nodes = list(boxes)
        if args.only != "collect":
            bench_start(boxes, nodes, work, args.rounds)
        if args.only != "start":
            bench_collect(boxes, nodes, work, args.rounds, args.mb, files)
    finally:
        for box in boxes.values():
            sandbox.stop(box.name)
        for f in files.values():
            Path(f).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x, rounds {min(values):.2f}-{max(values):.2f}"


def bench_start(boxes: dict[str, sandbox.Sandbox], nodes: list[str], work: Path, rounds: int) -> None:
    one: list[float] = []
    many: list[float] = []
    for single in (True, False):  # uncounted, as for the collection below
        asyncio.run(start_once(boxes, nodes[:1] if single else nodes, work))
    for r in range(rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        for single in order:
            t = asyncio.run(start_once(boxes, nodes[:1] if single else nodes, work))
            (one if single else many).append(t)
        print(f"round {r + 1}: start on 1 node {one[-1] * 1000:.0f} ms, on {len(nodes)} {many[-1] * 1000:.0f} ms")
    ratios = [m / o for m, o in zip(many, one, strict=True)]
    print(
        f"start: {len(nodes)} nodes take {spread(ratios)} the time of 1 (medians "
        f"{statistics.median(one) * 1000:.0f} ms vs {statistics.median(many) * 1000:.0f} ms; aim <= 1.5x)"
    )


def bench_collect(
    boxes: dict[str, sandbox.Sandbox], nodes: list[str], work: Path, rounds: int, mb: int, files: dict[str, str]
) -> None:
    chunk = os.urandom(1 << 20)
    for node in nodes[:3]:
        path = work / f"{boxes[node].name}-big.log"
        with open(path, "wb") as fh:
            for _ in range(mb):
                fh.write(chunk)
        files[node] = str(path)
    together: list[float] = []
    apart: list[float] = []
    # A first transfer in a fresh process pays for memory the kernel has not handed out yet
    # (see bench/collect.py); one uncounted round of each, so neither way carries it.
    for tog in (True, False):
        asyncio.run(collect_round(boxes, files, work, tog))
    for r in range(rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        for tog in order:
            t = asyncio.run(collect_round(boxes, files, work, tog))
            (together if tog else apart).append(t)
        print(f"round {r + 1}: 3 x {mb} MB at once {together[-1]:.2f}s, one after another {apart[-1]:.2f}s")
    ratios = [a / t for a, t in zip(apart, together, strict=True)]
    total = 3 * mb
    print(
        f"collection of 3 nodes: at once {total / statistics.median(together):.0f} MB/s, one after another "
        f"{total / statistics.median(apart):.0f} MB/s; at once is {spread(ratios)} as fast"
    )


if __name__ == "__main__":
    sys.exit(main())
