"""Collecting a large trace file over loopback, against Erlang's own rpc:call(N, file, read_file, [F]).

    python bench/collect.py [--mb 256] [--rounds 5]

Each round starts a fresh BEAM that makes three rpc:call read_file calls, then a
fresh kzbridge process that makes three collections (so its peak RSS, ru_maxrss,
is its own). On this kind of VM the first large write into memory the kernel has
not handed out recently can cost several times a warm one, on both sides, so the
first call of each process is reported apart from the later ones, and the ratios
are of medians over all rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile

from _common import ROOT, collect_table, erl_eval, erl_node, private_epmd

from kzbridge.kazoo import programs
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import ErlString

CHILD = r"""
import asyncio, json, os, resource, sys, time
sys.path.insert(0, sys.argv[4])
from kzbridge.kazoo.collect import collect_file
from kzbridge.wire.names import Route
from kzbridge.wire.node import connect_node
async def main():
    route = None
    if len(sys.argv) > 6:  # an ssl_dist_optfile: over TLS distribution (bench/tls_collect.py)
        from kzbridge.wire.tls import read_optfile
        route = Route(tls=read_optfile(sys.argv[6])[0])
    n = await connect_node(sys.argv[1], sys.argv[2], route=route)
    times = []
    for _ in range(3):  # a first collection in a fresh process, then two more
        t0 = time.perf_counter()
        res = await collect_file(n, sys.argv[3], sys.argv[5])
        times.append(time.perf_counter() - t0)
        if len(times) < 3:
            os.unlink(sys.argv[5])
    await n.close()
    print(json.dumps({"times": times, "bytes": res.bytes,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
asyncio.run(main())
"""


async def make_file(node: str, cookie: str, path: str, mb: int) -> None:
    n = await connect_node(node, cookie)
    src = (
        "{ok, F} = file:open(Path, [write, raw, binary]), "
        'B = list_to_binary([io_lib:format("~8..0b line of trace text|with:separators~n", [I]) '
        "|| I <- lists:seq(1, 20000)]), "
        "Need = MB * 1048576, W = fun W(Done) when Done >= Need -> ok; "
        "W(Done) -> ok = file:write(F, B), W(Done + byte_size(B)) end, W(0), file:close(F)."
    )
    await programs.evaluate(n, src, timeout=600, Path=ErlString(path), MB=mb)
    await n.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    private_epmd()
    node, cookie = erl_node()
    path = f"/tmp/kzbridge-bench-{os.getpid()}.log"
    asyncio.run(make_file(node, cookie, path, args.mb))
    size = os.path.getsize(path)
    base: list[list[float]] = []
    ours: list[list[float]] = []
    rss = []
    out = tempfile.mktemp(prefix="kzb-bench-out-")
    for _ in range(args.rounds):
        text = erl_eval(
            node,
            cookie,
            f"[begin T0 = erlang:monotonic_time(microsecond), "
            f'{{ok, B}} = rpc:call(Node, file, read_file, ["{path}"], infinity), '
            f'T = erlang:monotonic_time(microsecond) - T0, io:format("~p ~p~n", [T, byte_size(B)]) '
            f"end || _ <- [1, 2, 3]]",
        )
        runs = [tuple(map(int, line.split())) for line in text.split("\n") if line.strip()]
        assert len(runs) == 3 and all(n == size for _, n in runs), text
        base.append([size / (us / 1e6) / 1e6 for us, _ in runs])
        res = subprocess.run(
            [sys.executable, "-c", CHILD, node, cookie, path, str(ROOT), out],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(res.stdout)
        assert r["bytes"] == size == os.path.getsize(out)
        ours.append([size / t / 1e6 for t in r["times"]])
        rss.append(r["maxrss_mb"])
        os.unlink(out)
    os.unlink(path)
    collect_table(
        f"collecting a {size / 1048576:.0f} MB file over loopback, MB/s (median of {args.rounds} rounds, "
        "3 transfers per process)",
        base,
        ours,
        rss,
    )


if __name__ == "__main__":
    main()
