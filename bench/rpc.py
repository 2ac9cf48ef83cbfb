"""RPC latency, throughput and one-shot CLI cost, each against a baseline measured in the same run.

    python bench/rpc.py [--calls 5000] [--rounds 5]
    python bench/rpc.py --baseline /path/to/older/checkout [--calls 5000] [--rounds 10]
    python bench/rpc.py --one-shot [--baseline /path/to/older/checkout] [--rounds 5]

With ``--baseline`` it compares two kzbridge trees instead: each round runs the asyncio
and the blocking rpc latency once with the baseline tree's wire and once with this
tree's, in fresh interpreters (the same Python) taking turns against the same node,
and prints p50 of both with the per-round range and the median per-round ratio.

The latency and throughput measurements alternate between Erlang and kzbridge in
short rounds (the machine's speed swings by a third from minute to minute), and the
ratios are medians of the per-round ratios, with their range.

Baselines: Erlang-to-Erlang rpc:call between two BEAM nodes on this machine (and the
same gen_server call to rex that kzbridge makes), erl_call, and booting a hidden BEAM
for one rpc (what Kazoo's sup does). kzbridge is measured both ways it can call an
OTP 23+ node, in the same rounds: the gen_server call to rex (its default) and the
distribution's spawn_request of erpc:execute_call/4 (``Session.rpc_via = "spawn"``).
The asyncio floor, in the same rounds: the same connection resending one real request's
frame, each reply only waking a future, which is what the event loop and the kernel cost any
asyncio client before any work of its own. Python peers in the same rounds: erldistpy (PyPI,
the ``bench`` extra; a synchronous client, the same gen_server call to rex) and
py-interface 2.3 (a test dependency; it speaks only the old handshake and is reported
"n/a" when the node refuses it, as OTP 25.0-25.2 do).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _common import ROOT, erl_eval, erl_node, line, pct, private_epmd


def erlang_baseline(node: str, cookie: str, calls: int) -> dict:
    expr = (
        f"[rpc:call(Node, erlang, node, []) || _ <- lists:seq(1, 2000)], "
        f"T1 = [begin T0 = erlang:monotonic_time(nanosecond), rpc:call(Node, erlang, node, []), "
        f"erlang:monotonic_time(nanosecond) - T0 end || _ <- lists:seq(1, {calls})], "
        f"T2 = [begin T0 = erlang:monotonic_time(nanosecond), "
        f"gen_server:call({{rex, Node}}, {{call, erlang, node, [], user}}), "
        f"erlang:monotonic_time(nanosecond) - T0 end || _ <- lists:seq(1, {calls})], "
        f"Self = self(), C0 = erlang:monotonic_time(nanosecond), "
        f"[spawn(fun() -> [rpc:call(Node, erlang, node, []) || _ <- lists:seq(1, 100)], Self ! done end) "
        f"|| _ <- lists:seq(1, 100)], "
        f"[receive done -> ok end || _ <- lists:seq(1, 100)], "
        f"C = erlang:monotonic_time(nanosecond) - C0, "
        f'io:format("~w~n~w~n~w~n", [T1, T2, C])'
    )
    out = erl_eval(node, cookie, expr).strip().splitlines()
    t1 = [x / 1000 for x in eval(out[0])]
    t2 = [x / 1000 for x in eval(out[1])]
    return {"rpc_call": t1, "rex_call": t2, "throughput": 10000 / (int(out[2]) / 1e9)}


async def kzbridge_side(node: str, cookie: str, calls: int, via: str | None = None) -> dict:
    from kzbridge.wire.node import connect_node

    n = await connect_node(node, cookie)
    if via is not None:
        n.session.rpc_via = via
    for _ in range(2000):
        await n.rpc("erlang", "node", [])
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        await n.rpc("erlang", "node", [])
        times.append((time.perf_counter_ns() - t0) / 1000)

    async def worker() -> None:
        for _ in range(100):
            await n.rpc("erlang", "node", [])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(100)))
    thr = 10000 / (time.perf_counter() - t0)
    if via is not None:
        assert getattr(n.session, f"{via}_calls") == 2000 + calls + 10000, "the calls went the other way"
    await n.close()
    return {"rpc": times, "throughput": thr}


async def asyncio_floor(node: str, cookie: str, calls: int) -> list[float]:
    """What any asyncio client pays here: one real request's frame sent again and again on the
    same kind of connection, each reply only waking a future (no call state, no decoding)."""
    from kzbridge.wire.node import connect_node
    from kzbridge.wire.terms import Atom

    n = await connect_node(node, cookie)
    protocol = n.conn.protocol
    _, _, _, frame = n.session.start_call(Atom("erlang"), Atom("node"), [])  # rex answers each (same ref)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[None]] = []

    def on_frame(_: object) -> None:
        if waiting and not waiting[0].done():
            waiting[0].set_result(None)

    protocol.on_frame = on_frame
    times = []
    for i in range(2000 + calls):
        waiting[:] = [loop.create_future()]
        t0 = time.perf_counter_ns()
        protocol.send_now(frame)
        await waiting[0]
        if i >= 2000:
            times.append((time.perf_counter_ns() - t0) / 1000)
    await n.close()
    return times


def blocking_side(node: str, cookie: str, calls: int, via: str | None = None) -> list[float]:
    from kzbridge.wire.blocking import BlockingNode

    with BlockingNode(node, cookie) as n:
        if via is not None:
            n.session.rpc_via = via
        for _ in range(2000):
            n.rpc("erlang", "node", [])
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            n.rpc("erlang", "node", [])
            times.append((time.perf_counter_ns() - t0) / 1000)
    return times


def erldistpy_side(node: str, cookie: str, calls: int) -> list[float]:
    """erldistpy (PyPI): the same gen_server call to rex, its group leader the node's ``user``."""
    import functools

    import erldistpy.node as edp
    from erldistpy import Atom

    # erldistpy's Node asks EPMD on its default port; the benchmark's EPMD is private.
    edp.lookup = functools.partial(edp.lookup, port=int(os.environ["ERL_EPMD_PORT"]))
    request = (Atom("call"), Atom("erlang"), Atom("node"), [], Atom("user"))
    n = edp.Node(
        our_name=f"edp{os.getpid()}@127.0.0.1", peer_name=node.split("@")[0], cookie=cookie, peer_host="127.0.0.1"
    )
    try:
        for _ in range(2000):
            n.call("rex", request)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            reply = n.call("rex", request)
            times.append((time.perf_counter_ns() - t0) / 1000)
        assert reply == Atom(node), reply
    finally:
        n.close()
    return times


def pyinterface_side(node: str, cookie: str, calls: int) -> list[float] | str:
    """py-interface 2.3's rpc in its own process (its event loop is global); a string says why not."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_pyinterface_rpc.py")
    port = os.environ["ERL_EPMD_PORT"]
    try:
        out = subprocess.run(
            [sys.executable, script, node, cookie, port, str(calls), "2000"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        got = json.loads(out.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return f"failed: {exc!r:.100}"
    return got["times"] if "times" in got else str(got["na"])


def one_shot(node: str, cookie: str, runs: int = 15, baseline: str | None = None) -> dict:
    """Median wall time of each command; the commands take turns, so a slow minute hits all of them.

    With ``baseline`` (another checkout) its ``python -m kzbridge`` takes its turn too, run from
    that tree (``-m`` finds the package in the working directory first).
    """
    cmds: dict[str, list[str]] = {}
    cwd: dict[str, str] = {}
    cmds["kzbridge"] = [sys.executable, "-m", "kzbridge", "rpc", "--node", node, "--cookie", cookie, "erlang", "node"]
    cwd["kzbridge"] = str(ROOT)
    if baseline:
        cmds["baseline"] = cmds["kzbridge"]
        cwd["baseline"] = os.path.abspath(baseline)
    script = os.path.join(os.path.dirname(sys.executable), "kzbridge")
    kzb = script if os.path.exists(script) else (shutil.which("kzbridge") or "")
    if kzb:
        cmds["kzbridge_script"] = [kzb, "rpc", "--node", node, "--cookie", cookie, "erlang", "node"]
    cmds["beam_boot"] = [
        "erl",
        "-noinput",
        "-hidden",
        "-name",
        f"sup_{os.getpid()}@127.0.0.1",
        "-setcookie",
        cookie,
        "-eval",
        f"io:format(\"~p~n\", [rpc:call('{node}', erlang, node, [])]), halt().",
    ]
    erl_call = sorted(glob.glob("/usr/lib/erlang/lib/erl_interface-*/bin/erl_call"))
    if erl_call:
        cmds["erl_call"] = [erl_call[-1], "-n", node, "-c", cookie, "-a", "erlang node"]
    # Byte-compiled first, as pip does when it installs: with PYTHONDONTWRITEBYTECODE set (as on
    # these machines) an edited tree would otherwise be compiled again on every start.
    for tree in {str(ROOT), *cwd.values()}:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "kzbridge")], capture_output=True)
    vals: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd.get(key))
            vals[key].append((time.perf_counter() - t0) * 1000)
            if res.returncode != 0:
                raise RuntimeError(f"{cmd[0]} failed: {res.stderr or res.stdout}")
    return {k: pct(v, 50) for k, v in vals.items()}


def edp_version() -> str:
    from importlib.metadata import version

    return version("erldistpy")


def worker(tree: str, driver: str, node: str, cookie: str, calls: int) -> None:
    """One measurement in this interpreter with ``tree``'s kzbridge; prints the latencies as JSON."""
    sys.path.insert(0, tree)
    import kzbridge

    assert os.path.dirname(os.path.dirname(os.path.abspath(kzbridge.__file__))) == os.path.abspath(tree)
    c0 = time.process_time()
    if driver == "async":
        times = asyncio.run(kzbridge_side(node, cookie, calls))["rpc"]
    else:
        times = blocking_side(node, cookie, calls)
    # CPU seconds of this process over the whole run (connect, warm-up, measured calls and, for asyncio,
    # the throughput part): the machine's load moves wall time far more than it moves this.
    print(json.dumps({"times": times, "cpu": time.process_time() - c0}))


def compare(baseline: str, node: str, cookie: str, calls: int, rounds: int) -> None:
    """Old tree against this one, alternating in rounds; see the module docstring."""
    trees = {"baseline": os.path.abspath(baseline), "this tree": str(ROOT)}
    p50: dict[tuple[str, str], list[float]] = {(t, d): [] for t in trees for d in ("async", "blocking")}
    cpu: dict[tuple[str, str], list[float]] = {(t, d): [] for t in trees for d in ("async", "blocking")}
    for r in range(rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for driver in ("async", "blocking"):
            for label, tree in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        driver,
                        "--tree",
                        tree,
                        "--node",
                        node,
                        "--cookie",
                        cookie,
                        "--calls",
                        str(calls),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                got = json.loads(out)
                p50[(label, driver)].append(pct(got["times"], 50))
                cpu[(label, driver)].append(got["cpu"])
    print(
        f"rpc p50 latency, baseline {trees['baseline']} vs this tree ({rounds} rounds x {calls} calls, "
        "erlang:node/0, alternating)"
    )
    for driver in ("async", "blocking"):
        for label in trees:
            v = p50[(label, driver)]
            print(
                f"  {driver:<9} {label:<10} p50 median {statistics.median(v):6.1f} us  "
                f"(rounds {min(v):.1f}-{max(v):.1f})"
            )
        ratios = [a / b for a, b in zip(p50[("this tree", driver)], p50[("baseline", driver)], strict=False)]
        print(
            f"  {driver:<9} ratio this/baseline median {statistics.median(ratios):.3f} "
            f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )
        ratios = [a / b for a, b in zip(cpu[("this tree", driver)], cpu[("baseline", driver)], strict=False)]
        print(
            f"  {driver:<9} client CPU seconds per run, this/baseline median {statistics.median(ratios):.3f} "
            f"(rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )


def one_shot_only(runs: int, baseline: str | None) -> None:
    """The one-shot rows alone, ``runs`` times, each run's ratios to the BEAM boot printed."""
    node, cookie = erl_node()
    for r in range(runs):
        shots = one_shot(node, cookie, baseline=baseline)
        boot = shots["beam_boot"]
        said = ", ".join(f"{k} {v:.0f} ms ({v / boot:.2f}x)" for k, v in shots.items() if k != "beam_boot")
        print(f"run {r + 1}: beam_boot {boot:.0f} ms; {said}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="another kzbridge checkout to compare this tree's rpc latency against")
    ap.add_argument(
        "--one-shot",
        action="store_true",
        help="only the one-shot command rows, --rounds runs of 15 turns each (with --baseline: that tree's too)",
    )
    ap.add_argument("--no-one-shot", action="store_true", help="skip the one-shot command rows at the end")
    ap.add_argument("--worker", choices=["async", "blocking"], help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--node", help=argparse.SUPPRESS)
    ap.add_argument("--cookie", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.tree, args.worker, args.node, args.cookie, args.calls)
        return
    private_epmd()
    if args.one_shot:
        one_shot_only(args.rounds, args.baseline)
        return
    if args.baseline:
        node, cookie = erl_node()
        compare(args.baseline, node, cookie, max(100, args.calls // args.rounds), args.rounds)
        return
    node, cookie = erl_node()
    per_round = max(100, args.calls // args.rounds)
    base: dict = {"rpc_call": [], "rex_call": [], "throughput": []}
    ours: dict = {"rpc": [], "throughput": []}
    spawn: dict = {"rpc": [], "throughput": []}  # the same, calls by spawn_request
    blocking: list[float] = []
    floor: list[float] = []
    blocking_spawn: list[float] = []
    edp: list[float] = []
    pyi: list[float] = []
    pyi_na = ""
    ratios: dict = {
        "async": [],
        "floor": [],
        "async/floor": [],
        "rex": [],
        "blocking": [],
        "throughput": [],
        "blocking/edp": [],
        "blocking/edp p99": [],
        "async/edp": [],
        "blocking/pyi": [],
        "edp": [],
        "spawn": [],
        "spawn/rex": [],
        "spawn throughput": [],
        "spawn/rex throughput": [],
        "blocking spawn/edp": [],
        "blocking spawn/edp p99": [],
        "blocking spawn/rex": [],
    }
    for r in range(args.rounds):
        # Taking turns: the order flips every round, so neither side always runs first after Erlang.
        b = erlang_baseline(node, cookie, per_round)
        sides = {
            "async": lambda: asyncio.run(kzbridge_side(node, cookie, per_round, "rex")),
            "async spawn": lambda: asyncio.run(kzbridge_side(node, cookie, per_round, "spawn")),
            "blocking": lambda: blocking_side(node, cookie, per_round, "rex"),
            "blocking spawn": lambda: blocking_side(node, cookie, per_round, "spawn"),
            "erldistpy": lambda: erldistpy_side(node, cookie, per_round),
            "floor": lambda: asyncio.run(asyncio_floor(node, cookie, per_round)),
        }
        got = {}
        for name in list(sides) if r % 2 == 0 else reversed(sides):
            got[name] = sides[name]()
        o, s, k, ks, d = got["async"], got["async spawn"], got["blocking"], got["blocking spawn"], got["erldistpy"]
        y = pyinterface_side(node, cookie, per_round)
        e50 = pct(b["rpc_call"], 50)
        ratios["async"].append(pct(o["rpc"], 50) / e50)
        ratios["floor"].append(pct(got["floor"], 50) / e50)
        ratios["async/floor"].append(pct(o["rpc"], 50) / pct(got["floor"], 50))
        floor += got["floor"]
        ratios["rex"].append(pct(o["rpc"], 50) / pct(b["rex_call"], 50))
        ratios["blocking"].append(pct(k, 50) / e50)
        ratios["throughput"].append(o["throughput"] / b["throughput"])
        ratios["blocking/edp"].append(pct(k, 50) / pct(d, 50))
        ratios["blocking/edp p99"].append(pct(k, 99) / pct(d, 99))
        ratios["async/edp"].append(pct(o["rpc"], 50) / pct(d, 50))
        ratios["edp"].append(pct(d, 50) / e50)
        ratios["spawn"].append(pct(s["rpc"], 50) / e50)
        ratios["spawn/rex"].append(pct(s["rpc"], 50) / pct(o["rpc"], 50))
        ratios["spawn throughput"].append(s["throughput"] / b["throughput"])
        ratios["spawn/rex throughput"].append(s["throughput"] / o["throughput"])
        ratios["blocking spawn/edp"].append(pct(ks, 50) / pct(d, 50))
        ratios["blocking spawn/edp p99"].append(pct(ks, 99) / pct(d, 99))
        ratios["blocking spawn/rex"].append(pct(ks, 50) / pct(k, 50))
        spawn["rpc"] += s["rpc"]
        spawn["throughput"].append(s["throughput"])
        blocking_spawn += ks
        edp += d
        if isinstance(y, str):
            pyi_na = y
        else:
            pyi += y
            ratios["blocking/pyi"].append(pct(k, 50) / pct(y, 50))
        for key in ("rpc_call", "rex_call"):
            base[key] += b[key]
        base["throughput"].append(b["throughput"])
        ours["rpc"] += o["rpc"]
        ours["throughput"].append(o["throughput"])
        blocking += k

    def rng(name: str) -> str:
        v = ratios[name]
        return f"{statistics.median(v):.2f}x (rounds {min(v):.2f}-{max(v):.2f})"

    print(f"rpc round trip on an open connection ({args.rounds} rounds x {per_round} calls, erlang:node/0)")
    e50, e99 = pct(base["rpc_call"], 50), pct(base["rpc_call"], 99)
    print(f"  {'baseline: Erlang rpc:call between two BEAMs':<48} p50 {e50:7.1f} us  p99 {e99:7.1f} us")
    r50, r99 = pct(base["rex_call"], 50), pct(base["rex_call"], 99)
    print(f"  {'Erlang gen_server:call to rex (our form)':<48} p50 {r50:7.1f} us  p99 {r99:7.1f} us")
    k50, k99 = pct(ours["rpc"], 50), pct(ours["rpc"], 99)
    print(f"  {'kzbridge rpc (rex)':<48} p50 {k50:7.1f} us  p99 {k99:7.1f} us")
    s50, s99 = pct(spawn["rpc"], 50), pct(spawn["rpc"], 99)
    print(f"  {'kzbridge rpc (spawn_request)':<48} p50 {s50:7.1f} us  p99 {s99:7.1f} us")
    b50, b99 = pct(blocking, 50), pct(blocking, 99)
    print(f"  {'kzbridge BlockingNode (one-shot client, rex)':<48} p50 {b50:7.1f} us  p99 {b99:7.1f} us")
    bs50, bs99 = pct(blocking_spawn, 50), pct(blocking_spawn, 99)
    print(f"  {'kzbridge BlockingNode (spawn_request)':<48} p50 {bs50:7.1f} us  p99 {bs99:7.1f} us")
    print(
        f"  ratio p50 kzbridge / rpc:call = {rng('async')}; / rex call = {rng('rex')}; "
        f"pooled p99 / rpc:call = {k99 / e99:.2f}x"
    )
    f50, f99 = pct(floor, 50), pct(floor, 99)
    print(f"  {'asyncio floor (a frame resent, a future per reply)':<48} p50 {f50:7.1f} us  p99 {f99:7.1f} us")
    print(f"  ratio p50 asyncio floor / rpc:call = {rng('floor')}; kzbridge / floor = {rng('async/floor')}")
    print(f"  ratio p50 kzbridge spawn_request / rpc:call = {rng('spawn')}; spawn / rex = {rng('spawn/rex')}")
    print(f"  ratio p50 blocking / rpc:call = {rng('blocking')}; blocking spawn / rex = {rng('blocking spawn/rex')}")
    print("rpc against other Python nodes (same rounds, same node)")
    d50, d99 = pct(edp, 50), pct(edp, 99)
    print(f"  {'erldistpy ' + edp_version() + ' Node.call to rex':<48} p50 {d50:7.1f} us  p99 {d99:7.1f} us")
    if pyi:
        y50, y99 = pct(pyi, 50), pct(pyi, 99)
        print(f"  {'py-interface 2.3 SendRPC':<48} p50 {y50:7.1f} us  p99 {y99:7.1f} us")
    else:
        print(f"  {'py-interface 2.3 SendRPC':<48} n/a: {pyi_na}")
    print(f"  ratio p50 erldistpy / rpc:call = {rng('edp')}")
    print(f"  ratio p50 blocking / erldistpy = {rng('blocking/edp')}; p99 {rng('blocking/edp p99')}")
    print(
        f"  ratio p50 blocking spawn_request / erldistpy = {rng('blocking spawn/edp')}; "
        f"p99 {rng('blocking spawn/edp p99')}"
    )
    print(f"  ratio p50 asyncio / erldistpy = {rng('async/edp')}")
    if ratios["blocking/pyi"]:
        print(f"  ratio p50 blocking / py-interface = {rng('blocking/pyi')}")
    print("throughput, 100 concurrent callers x 100 calls on one connection (median of rounds)")
    line("baseline: Erlang, 100 processes", statistics.median(base["throughput"]), "calls/s")
    line("kzbridge, 100 tasks (rex)", statistics.median(ours["throughput"]), "calls/s")
    line("kzbridge, 100 tasks (spawn_request)", statistics.median(spawn["throughput"]), "calls/s")
    print(f"  ratio kzbridge / Erlang = {rng('throughput')}; spawn_request / Erlang = {rng('spawn throughput')}")
    print(f"  ratio spawn_request / rex = {rng('spawn/rex throughput')}")
    if args.no_one_shot:
        return
    shots = one_shot(node, cookie)
    print("one-shot command doing one rpc (median wall time)")
    line("baseline: boot a hidden BEAM + rpc (sup's way)", shots["beam_boot"], "ms")
    if "erl_call" in shots:
        line("erl_call (OTP's C tool)", shots["erl_call"], "ms", shots["beam_boot"], "of BEAM boot")
    line("python -m kzbridge rpc ... erlang node", shots["kzbridge"], "ms", shots["beam_boot"], "of BEAM boot")
    if "kzbridge_script" in shots:
        line("kzbridge rpc ... (console script)", shots["kzbridge_script"], "ms", shots["beam_boot"], "of BEAM boot")


if __name__ == "__main__":
    main()
