"""Shared helpers for the benchmarks: a private epmd and BEAM nodes on loopback, cleaned up on exit."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_procs: list[subprocess.Popen] = []


def _cleanup() -> None:
    for p in _procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if _own_cache:
        shutil.rmtree(_own_cache[0], ignore_errors=True)


_own_cache: list[str] = []


atexit.register(_cleanup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_epmd() -> int:
    port = free_port()
    os.environ["ERL_EPMD_PORT"] = str(port)
    if "KZBRIDGE_CACHE" not in os.environ:
        os.environ["KZBRIDGE_CACHE"] = f"/tmp/kzbridge-bench-{os.getpid()}"
        _own_cache.append(os.environ["KZBRIDGE_CACHE"])
    p = subprocess.Popen(
        ["epmd", "-port", str(port), "-address", "127.0.0.1"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _procs.append(p)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return port
        time.sleep(0.05)
    raise RuntimeError("epmd did not start")


def erl_node(*extra: str) -> tuple[str, str]:
    name = f"b{secrets.token_hex(3)}@127.0.0.1"
    cookie = secrets.token_hex(8)
    p = subprocess.Popen(
        ["erl", "-noinput", "-name", name, "-setcookie", cookie, *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _procs.append(p)
    out = ""
    for _ in range(200):
        out = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout
        if name.split("@")[0] in out:
            return name, cookie
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start: {out}")


def erl_eval(node: str, cookie: str, expr: str, timeout: float = 600) -> str:
    """Run ``expr`` in a fresh hidden BEAM connected to ``node`` (bound as Node); return its output."""
    me = f"e{secrets.token_hex(3)}@127.0.0.1"
    code = f"Node = '{node}', true = net_kernel:hidden_connect_node(Node), {expr}, halt()."
    res = subprocess.run(
        ["erl", "-noinput", "-hidden", "-name", me, "-setcookie", cookie, "-eval", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res.stdout


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def summary(name: str, values: list[float], unit: str = "us") -> dict:
    return {
        "name": name,
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "median": statistics.median(values),
        "unit": unit,
        "n": len(values),
    }


def line(name: str, value: float, unit: str, baseline: float | None = None, base_name: str = "") -> None:
    ratio = f"  {value / baseline:5.2f}x {base_name}" if baseline else ""
    print(f"  {name:<48} {value:10.1f} {unit}{ratio}")


def collect_table(title: str, base: list[list[float]], ours: list[list[float]], rss: list[float]) -> None:
    """The collection benches' report: MB/s of each transfer, per process [first, later...], baseline
    (Erlang's rpc:call of file:read_file) against kzbridge, as medians and ratios."""
    import statistics

    med = statistics.median
    print(title)
    print(f"  {'':<40} {'all':>8} {'first':>8} {'later':>8}")
    rows = []
    for name, runs in (("rpc:call(N, file, read_file, [F])", base), ("kzbridge collect_file", ours)):
        row = (med([x for r in runs for x in r]), med([r[0] for r in runs]), med([x for r in runs for x in r[1:]]))
        rows.append(row)
        print(f"  {name:<40} {row[0]:8.0f} {row[1]:8.0f} {row[2]:8.0f}")
    print(
        f"  {'ratio':<40} {rows[1][0] / rows[0][0]:7.2f}x {rows[1][1] / rows[0][1]:7.2f}x "
        f"{rows[1][2] / rows[0][2]:7.2f}x"
    )
    print(
        f"  {'slowest kzbridge transfer / fastest baseline':<40} "
        f"{min(x for r in ours for x in r) / max(x for r in base for x in r):7.2f}x"
    )
    print(f"  kzbridge process peak RSS {max(rss):.0f} MB")
