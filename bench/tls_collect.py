"""Collecting a large file over TLS distribution, against Erlang's own rpc:call(N, file, read_file, [F])
between two TLS-distribution BEAMs.

    python bench/tls_collect.py [--mb 128] [--rounds 5]

One BEAM holds the file and runs ``-proto_dist inet_tls`` with mutual certificate checks
(verify_peer, fail_if_no_peer_cert; OTP 25's default TLS 1.2), certificates from a
throwaway CA (kzbridge.certs). Rounds alternate: a fresh hidden TLS BEAM makes three
``rpc:call(N, file, read_file, [F])``, then a fresh kzbridge process makes three
``collect_file`` over the same TLS distribution. As in bench/collect.py, the first transfer
of each process is reported apart from the later ones; ratios are of medians over all rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, collect_table, erl_node, private_epmd
from collect import CHILD

from kzbridge.certs import Pki, dist_optfile
from kzbridge.kazoo import programs
from kzbridge.wire.names import Route
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import ErlString
from kzbridge.wire.tls import TlsSettings, read_optfile

# The collecting process is bench/collect.py's, given the optfile as its last argument.


async def make_file(node: str, cookie: str, tls: TlsSettings, path: str, mb: int) -> None:
    n = await connect_node(node, cookie, route=Route(tls=tls))
    src = (
        "{ok, F} = file:open(Path, [write, raw, binary]), "
        'B = list_to_binary([io_lib:format("~8..0b line of trace text|with:separators~n", [I]) '
        "|| I <- lists:seq(1, 20000)]), "
        "Need = MB * 1048576, W = fun W(Done) when Done >= Need -> ok; "
        "W(Done) -> ok = file:write(F, B), W(Done + byte_size(B)) end, W(0), file:close(F)."
    )
    await programs.evaluate(n, src, timeout=600, Path=ErlString(path), MB=mb)
    await n.close()


def erl_eval_tls(node: str, cookie: str, optfile: str, expr: str, timeout: float = 600) -> str:
    """Run ``expr`` in a fresh hidden TLS-distribution BEAM connected to ``node`` (bound as Node)."""
    me = f"e{secrets.token_hex(3)}@127.0.0.1"
    code = f"Node = '{node}', true = net_kernel:hidden_connect_node(Node), {expr}, halt()."
    res = subprocess.run(
        ["erl", "-noinput", "-hidden", "-name", me, "-setcookie", cookie,
         "-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile, "-eval", code],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    private_epmd()
    with tempfile.TemporaryDirectory(prefix="kzb-bench-tls-") as tmp:
        pki = Pki.create(Path(tmp) / "ca")
        server = pki.issue("server", common_name="127.0.0.1", alt_names=("127.0.0.1", "localhost"))
        client = pki.issue("client", common_name="kzbridge", client=True)
        optfile = dist_optfile(Path(tmp) / "dist.conf", ca=pki.ca, server=server, client=client, mutual=True)
        tls, _ = read_optfile(optfile)
        node, cookie = erl_node("-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile)
        path = f"/tmp/kzbridge-bench-tls-{os.getpid()}.log"
        asyncio.run(make_file(node, cookie, tls, path, args.mb))
        size = os.path.getsize(path)
        base: list[list[float]] = []
        ours: list[list[float]] = []
        rss = []
        out = str(Path(tmp) / "out.log")
        try:
            for _ in range(args.rounds):
                text = erl_eval_tls(
                    node,
                    cookie,
                    optfile,
                    f"[begin T0 = erlang:monotonic_time(microsecond), "
                    f'{{ok, B}} = rpc:call(Node, file, read_file, ["{path}"], infinity), '
                    f'T = erlang:monotonic_time(microsecond) - T0, io:format("~p ~p~n", [T, byte_size(B)]) '
                    f"end || _ <- [1, 2, 3]]",
                )
                runs = [tuple(map(int, line.split())) for line in text.split("\n") if line.strip()]
                assert len(runs) == 3 and all(n == size for _, n in runs), text
                base.append([size / (us / 1e6) / 1e6 for us, _ in runs])
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, node, cookie, path, str(ROOT), out, optfile],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(res.stdout)
                assert r["bytes"] == size == os.path.getsize(out)
                ours.append([size / t / 1e6 for t in r["times"]])
                rss.append(r["maxrss_mb"])
                os.unlink(out)
        finally:
            os.unlink(path)
    collect_table(
        f"collecting a {size / 1048576:.0f} MB file over TLS distribution (mutual, TLS 1.2), loopback, MB/s "
        f"(median of {args.rounds} rounds, 3 transfers per process)",
        base,
        ours,
        rss,
    )


if __name__ == "__main__":
    main()
