"""Collecting a large trace file over loopback, against Erlang's own rpc:call(N, file, read_file, [F]).

    python bench/collect.py [--mb 256] [--rounds 3]

kzbridge runs in a fresh subprocess per round so its peak RSS (ru_maxrss) is its own.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import ROOT, erl_eval, erl_node, private_epmd

from kzbridge.kazoo import remote
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import ErlString

CHILD = r"""
import asyncio, json, os, resource, sys, time
sys.path.insert(0, sys.argv[4])
from kzbridge.kazoo.collect import collect_file
from kzbridge.wire.node import connect_node
async def main():
    n = await connect_node(sys.argv[1], sys.argv[2])
    times = []
    for _ in range(3):  # a cold first collection in a fresh process, then warm ones
        t0 = time.perf_counter()
        res = await collect_file(n, sys.argv[3], sys.argv[5])
        times.append(time.perf_counter() - t0)
        if len(times) < 3:
            os.unlink(sys.argv[5])
    await n.close()
    print(json.dumps({"cold": times[0], "warm": min(times[1:]), "bytes": res.bytes,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
asyncio.run(main())
"""


async def make_file(node: str, cookie: str, path: str, mb: int) -> None:
    n = await connect_node(node, cookie)
    src = ("{ok, F} = file:open(Path, [write, raw, binary]), "
           "B = list_to_binary([io_lib:format(\"~8..0b line of trace text|with:separators~n\", [I]) "
           "|| I <- lists:seq(1, 20000)]), "
           "Need = MB * 1048576, W = fun W(Done) when Done >= Need -> ok; "
           "W(Done) -> ok = file:write(F, B), W(Done + byte_size(B)) end, W(0), file:close(F).")
    await remote.evaluate(n, src, timeout=600, Path=ErlString(path), MB=mb)
    await n.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    private_epmd()
    node, cookie = erl_node()
    path = f"/tmp/kzbridge-bench-{os.getpid()}.log"
    asyncio.run(make_file(node, cookie, path, args.mb))
    size = os.path.getsize(path)
    base_cold, base_warm, cold, warm, rss = [], [], [], [], []
    out = tempfile.mktemp(prefix="kzb-bench-out-")
    for _ in range(args.rounds):
        text = erl_eval(node, cookie,
                        f"[begin T0 = erlang:monotonic_time(microsecond), "
                        f"{{ok, B}} = rpc:call(Node, file, read_file, [\"{path}\"], infinity), "
                        f"T = erlang:monotonic_time(microsecond) - T0, io:format(\"~p ~p~n\", [T, byte_size(B)]) "
                        f"end || _ <- [1, 2, 3]]")
        runs = [tuple(map(int, line.split())) for line in text.split("\n") if line.strip()]
        assert all(n == size for _, n in runs)
        base_cold.append(size / (runs[0][0] / 1e6) / 1e6)
        base_warm.append(size / (min(us for us, _ in runs[1:]) / 1e6) / 1e6)
        res = subprocess.run([sys.executable, "-c", CHILD, node, cookie, path, str(ROOT), out],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout)
        assert r["bytes"] == size == os.path.getsize(out)
        cold.append(size / r["cold"] / 1e6)
        warm.append(size / r["warm"] / 1e6)
        rss.append(r["maxrss_mb"])
        os.unlink(out)
    os.unlink(path)
    bc, bw = statistics.median(base_cold), statistics.median(base_warm)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"collecting a {size / 1048576:.0f} MB file over loopback (median of {args.rounds} rounds; "
          "first call in a fresh process, then the best of the next two)")
    print(f"  {'baseline: rpc:call(N, file, read_file, [F]), first call':<62} {bc:8.0f} MB/s")
    print(f"  {'kzbridge collect_file, first collection':<62} {c:8.0f} MB/s  {c / bc:5.2f}x baseline")
    print(f"  {'baseline: rpc:call(N, file, read_file, [F]), warm':<62} {bw:8.0f} MB/s")
    print(f"  {'kzbridge collect_file, warm':<62} {w:8.0f} MB/s  {w / bw:5.2f}x baseline")
    print(f"  {'kzbridge process peak RSS':<58} {max(rss):8.0f} MB")


if __name__ == "__main__":
    main()
