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
import asyncio, json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from kzbridge.kazoo.collect import collect_file
from kzbridge.wire.node import connect_node
async def main():
    n = await connect_node(sys.argv[1], sys.argv[2])
    t0 = time.perf_counter()
    res = await collect_file(n, sys.argv[3], sys.argv[5])
    dt = time.perf_counter() - t0
    await n.close()
    print(json.dumps({"seconds": dt, "bytes": res.bytes,
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
    base, ours, rss = [], [], []
    out = tempfile.mktemp(prefix="kzb-bench-out-")
    for _ in range(args.rounds):
        text = erl_eval(node, cookie,
                        f"T0 = erlang:monotonic_time(microsecond), "
                        f"{{ok, B}} = rpc:call(Node, file, read_file, [\"{path}\"], infinity), "
                        f"T = erlang:monotonic_time(microsecond) - T0, io:format(\"~p ~p~n\", [T, byte_size(B)])")
        us, n = map(int, text.split())
        assert n == size
        base.append(size / (us / 1e6) / 1e6)
        res = subprocess.run([sys.executable, "-c", CHILD, node, cookie, path, str(ROOT), out],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout)
        assert r["bytes"] == size == os.path.getsize(out)
        ours.append(size / r["seconds"] / 1e6)
        rss.append(r["maxrss_mb"])
        os.unlink(out)
    os.unlink(path)
    b, o = statistics.median(base), statistics.median(ours)
    print(f"collecting a {size / 1048576:.0f} MB file over loopback (median of {args.rounds} rounds)")
    print(f"  {'baseline: rpc:call(N, file, read_file, [F]) from a BEAM':<58} {b:8.0f} MB/s")
    print(f"  {'kzbridge collect_file (streamed, 32 x 1 MB in flight)':<58} {o:8.0f} MB/s  {o / b:5.2f}x baseline")
    print(f"  {'kzbridge process peak RSS':<58} {max(rss):8.0f} MB")


if __name__ == "__main__":
    main()
