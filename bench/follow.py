"""Follow latency and the load a running trace puts on the node.

    python bench/follow.py [--events 100] [--overhead-seconds 60]

Latency: an event is logged on the node with its wall-clock time; we note when its
line reaches us. A watcher process on the node polls the file size every millisecond,
so we also know when the bytes reached the file (lager's own ~1 s buffering); the
difference is what kzbridge adds. Overhead: rpc calls and messages per second that
a running trace session sends to the node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import time

from _common import pct, private_epmd

from kzbridge import sandbox
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import programs, tracing
from kzbridge.kazoo.collect import RemoteReader
from kzbridge.kazoo.session import run_trace
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, ErlString

WATCH = r"""
MRef = erlang:monitor(process, Owner),
Loop = fun Loop(Last) ->
    Size = filelib:file_size(Path),
    case Size =/= Last of
        true -> Owner ! {grown, os:system_time(microsecond), Size};
        false -> ok
    end,
    receive {'DOWN', MRef, _, _, _} -> ok; stop -> ok after 1 -> Loop(Size) end
end,
Loop(-1).
"""


async def latency(box, events: int) -> None:
    n = await connect_node(box.node, box.cookie)
    await n.rpc("kz_traffic", "set_rate", [0])
    trace = await tracing.start_trace(n, [(Atom("request"), b"stamp")])
    reader = await RemoteReader(n, trace.remote_path, mode="follow", poll_ms=50).start()
    watch_box = n.mailbox()
    watcher = await programs.spawn(n, WATCH, Owner=watch_box.pid, Path=ErlString(trace.remote_path))
    grown: list[tuple[int, int]] = []
    seen: dict[int, tuple[int, int]] = {}  # log time -> (receive time, end offset)
    done = asyncio.Event()

    async def read() -> None:
        buf, offset = b"", 0
        while not done.is_set():
            ev = await reader.next_event(timeout=0.2)
            if ev is None or ev.kind != "data":
                continue
            now = int(time.time() * 1e6)
            buf += ev.data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                offset += len(line) + 1
                m = re.search(rb"stamp (\d+)$", line)
                if m:
                    seen[int(m.group(1))] = (now, offset)

    async def watch() -> None:
        while not done.is_set():
            try:
                msg = await watch_box.receive(0.2)
            except Exception:
                continue
            grown.append((msg[1], msg[2]))

    tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(watch())]
    for _ in range(events):
        await n.rpc("kz_fixture", "stamp", [])
        await asyncio.sleep(random.uniform(0.05, 0.3))
    deadline = time.monotonic() + 5
    while len(seen) < events and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    done.set()
    await asyncio.gather(*tasks)
    n.send(watcher, Atom("stop"))
    await trace.stop()
    reader.abandon()
    total, added, to_disk = [], [], []
    for logged, (received, end) in seen.items():
        disk = next((t for t, size in grown if size >= end), None)
        total.append((received - logged) / 1000)
        if disk is not None:
            added.append((received - disk) / 1000)
            to_disk.append((disk - logged) / 1000)
    print(f"follow latency over {len(seen)} events (ms; node and client share a clock)")
    print(f"  {'log call -> line here (total)':<44} p50 {pct(total, 50):7.1f}  p99 {pct(total, 99):7.1f}")
    print(f"  {'baseline: log call -> bytes in the file':<44} p50 {pct(to_disk, 50):7.1f}  p99 {pct(to_disk, 99):7.1f}")
    print(f"  {'added by kzbridge: file -> line here':<44} p50 {pct(added, 50):7.1f}  p99 {pct(added, 99):7.1f}")
    await n.close()


async def overhead(box, seconds: float) -> None:
    n = await connect_node(box.node, box.cookie)
    await n.rpc("kz_traffic", "set_rate", [100])
    trace = await tracing.start_trace(n, flt.module_filter("kz_json"), lease=60)
    local = f"/tmp/kzb-bench-overhead-{box.name}.log"
    s = await run_trace(trace, local, duration=seconds)
    os.unlink(local)
    await n.rpc("file", "delete", [trace.remote_path])
    print(f"load on the node during a {s.seconds:.0f} s trace ({s.lines} lines, {s.bytes} bytes, lease 60 s)")
    print(
        f"  rpc calls {s.rpc_calls} ({s.rpc_calls / s.seconds:.3f}/s, of which {s.lease_renewals} lease renewals "
        f"and the stop), reader acks {s.messages_sent} ({s.messages_sent / s.seconds:.3f}/s), "
        f"total {(s.rpc_calls + s.messages_sent) / s.seconds:.3f}/s"
    )
    await n.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--overhead-seconds", type=float, default=60)
    args = ap.parse_args()
    private_epmd()
    box = sandbox.start(f"kzbench{random.randrange(10**6)}", rate=0)
    try:
        asyncio.run(latency(box, args.events))
        asyncio.run(overhead(box, args.overhead_seconds))
    finally:
        sandbox.stop(box.name)


if __name__ == "__main__":
    main()
