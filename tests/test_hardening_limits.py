"""Issue 11, rule 4: every number is checked before it reaches a node, every time limit is a deadline.

Numbers: nan, inf and out-of-range values are one usage error naming the option (CLI) or the
setting (Python API), and nothing is sent. Deadlines: a peer that completes a real handshake and
then swallows every call holds ``status --timeout 3`` for about 3 s, not 10; a FIFO given as the
cookie file is refused at once instead of blocking forever.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kzbridge import limits
from kzbridge.cookie import resolve_cookie
from kzbridge.errors import UsageError
from kzbridge.kazoo import tracing
from kzbridge.kazoo.session import TraceSession
from kzbridge.wire.terms import Atom

from .conftest import kzb
from .peers.hostile import HostilePeer

COOKIE = "stall-cookie"
NOWHERE = "nobody@127.0.0.1"  # never reached: every case here must fail before connecting


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------ the checks themselves (pure)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e12, 0.0, -1.0, "30", True])
def test_a_duration_must_be_finite_and_in_range(value):
    with pytest.raises(UsageError) as err:
        limits.check_number(value, "duration")
    assert err.value.setting == "duration" and "duration" in err.value.message


def test_in_range_numbers_pass_unchanged():
    assert limits.check_number(30, "duration") == 30.0
    assert limits.check_number(7 * 24 * 3600, "lease") == 7 * 24 * 3600
    assert limits.parse_size("100MB") == 100 << 20 and limits.parse_size("512k") == 512 << 10
    assert limits.parse_number("1e3", "timeout") == 1000.0


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "infMB", "1e300", "0", "-5MB", "lots", ""])
def test_sizes_are_finite_positive_and_bounded(text):
    with pytest.raises(UsageError) as err:
        limits.parse_size(text)
    assert err.value.setting == "max_size"


def test_a_deadline_counts_down_once_for_the_whole_operation():
    d = limits.Deadline.after(0.3)
    first = d.remaining()
    time.sleep(0.35)
    assert 0 < first <= 0.3 and d.remaining() == 0 and d.expired
    with pytest.raises(UsageError):
        limits.Deadline.after(math.inf)


# ------------------------------------------------------------------ the Python API refuses before sending


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kwargs,setting",
    [({"lease": math.nan}, "lease"), ({"lease": 1e12}, "lease"), ({"timeout": math.inf}, "timeout")],
)
async def test_start_trace_refuses_bad_numbers_before_any_call(gen2_node, kwargs, setting):
    before = gen2_node.calls_made
    with pytest.raises(UsageError) as err:
        await tracing.start_trace(gen2_node, [(Atom("module"), Atom("kz_json"))], **kwargs)
    assert err.value.setting == setting
    assert gen2_node.calls_made == before, "nothing reached the node"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kwargs,setting",
    [
        ({"duration": math.nan}, "duration"),
        ({"duration": math.inf}, "duration"),
        ({"duration": 1e12}, "duration"),
        ({"max_size": math.nan}, "max_size"),
        ({"lease": math.nan}, "lease"),
        ({"timeout": math.inf}, "timeout"),
    ],
)
async def test_a_session_refuses_bad_numbers_before_any_call(gen2_node, kwargs, setting):
    before = gen2_node.calls_made
    with pytest.raises(UsageError) as err:
        await TraceSession.start(gen2_node, [(Atom("module"), Atom("kz_json"))], **kwargs)
    assert err.value.setting == setting
    assert gen2_node.calls_made == before


# ------------------------------------------------------------------ the command line: one line naming the option


@pytest.mark.parametrize(
    "args,option",
    [
        (["trace-module", "kz_json", "--duration", "nan"], "--duration"),
        (["trace-module", "kz_json", "--duration", "inf"], "--duration"),
        (["trace-module", "kz_json", "--duration", "1e12"], "--duration"),
        (["trace-module", "kz_json", "--max-size", "nan"], "--max-size"),
        (["trace-module", "kz_json", "--lease", "nan"], "--lease"),
        (["trace-module", "kz_json", "--lease", "2"], "--lease"),
        (["status", "--timeout", "inf"], "--timeout"),
        (["ping", "--timeout", "nan"], "--timeout"),
        (["start", "--module", "kz_json", "--duration", "1e12"], "--duration"),
        (["start", "--module", "kz_json", "--duration", "inf"], "--duration"),
    ],
)
def test_bad_numbers_are_one_usage_line_naming_the_option(args, option):
    t0 = time.monotonic()
    res = kzb(*args, "--node", NOWHERE, "--cookie", "x")
    assert res.returncode == 2, (res.returncode, res.stderr)
    line = one_line(res)
    assert line.startswith("kzbridge: error:") and option in line, line
    assert time.monotonic() - t0 < 10


def test_sandbox_rate_is_checked_too():
    res = kzb("sandbox", "start", "--name", f"kzrate{secrets.token_hex(2)}", "--rate", "nan")
    assert res.returncode == 2 and "--rate" in one_line(res)


# ------------------------------------------------------------------ a cookie file that is a FIFO


def test_a_fifo_as_cookie_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "cookie.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="not a regular file"):
        resolve_cookie(None, fifo)
    res = kzb("ping", "--node", NOWHERE, "--cookie-file", str(fifo), timeout=20)
    assert res.returncode == 2 and "not a regular file" in one_line(res)
    assert time.monotonic() - t0 < 10, "nobody writes the FIFO: a blocking open would hang here"


def test_a_directory_or_device_as_cookie_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        resolve_cookie(None, "/dev/zero")
    with pytest.raises(UsageError, match="not a regular file"):
        resolve_cookie(None, tmp_path)
    good = Path(tmp_path / "c")
    good.write_text("secret\n")
    assert resolve_cookie(None, good) == "secret"


# ------------------------------------------------------------------ a peer that stalls after the handshake


def swallow(seconds: float = 20.0) -> Callable[[socket.socket], None]:
    """After the handshake: read and drop everything (rpcs, ticks) without ever answering."""

    def act(conn: socket.socket) -> None:
        conn.settimeout(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    return act


@pytest.fixture
def stalling_peer(private_epmd: int) -> Iterator[Callable[[], HostilePeer]]:
    peers: list[HostilePeer] = []

    def make() -> HostilePeer:
        peers.append(HostilePeer(private_epmd, COOKIE, swallow(), name=f"stall{secrets.token_hex(4)}"))
        return peers[-1]

    yield make
    for p in peers:
        p.close()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--orphans"],
        ["clear"],
        ["start", "--module", "kz_json"],
        ["ping"],
        ["rpc", "erlang", "node"],
    ],
    ids=["status", "status-orphans", "clear", "start", "ping", "rpc"],
)
def test_a_stalled_peer_ends_the_command_at_its_timeout(stalling_peer, command):
    peer = stalling_peer()
    t0 = time.monotonic()
    res = kzb(*command, "--node", peer.node, "--cookie", COOKIE, "--timeout", "3", timeout=30)
    took = time.monotonic() - t0
    assert res.returncode == 5, (res.returncode, res.stderr)
    line = one_line(res)
    assert "--timeout" in line and peer.node in line, line
    assert 2.5 < took < 7, f"took {took:.1f}s for --timeout 3"


def test_a_trace_command_on_a_stalled_peer_gives_up_at_its_timeout_too(stalling_peer):
    peer = stalling_peer()
    t0 = time.monotonic()
    res = kzb("trace-module", "kz_json", "--node", peer.node, "--cookie", COOKIE, "--timeout", "2", timeout=30)
    took = time.monotonic() - t0
    assert res.returncode == 5, (res.returncode, res.stderr)
    one_line(res)
    assert took < 7, f"took {took:.1f}s for --timeout 2 (calls used to wait 10s each)"


@pytest.mark.asyncio
async def test_domain_calls_take_the_callers_timeout(stalling_peer):
    from kzbridge.errors import RpcTimeoutError
    from kzbridge.wire.node import connect_node

    peer = stalling_peer()
    node = await connect_node(peer.node, COOKIE, timeout=5)
    try:
        for call in (tracing.status, tracing.orphans, tracing.clear_all, tracing.detect_generation):
            t0 = time.monotonic()
            with pytest.raises(RpcTimeoutError):
                await call(node, timeout=0.5)
            assert time.monotonic() - t0 < 2, call.__name__
    finally:
        await node.close()


def test_a_trace_run_is_not_cut_at_the_timeout(sandbox_gen2, tmp_path):
    """--timeout bounds each call of a trace run; the run's own length is --duration."""
    t0 = time.monotonic()
    res = kzb(
        "trace-module",
        "kz_json",
        "--node",
        sandbox_gen2.node,
        "--duration",
        "3",
        "--timeout",
        "1",
        "-o",
        str(tmp_path / "t.log"),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 > 3


def test_the_python_clients_check_their_timeout_before_connecting():
    from kzbridge.client import SyncNode, connect

    for bad in (math.nan, math.inf, 0.0):
        with pytest.raises(UsageError) as err:
            connect(NOWHERE, "x", timeout=bad)
        assert err.value.setting == "timeout"
        with pytest.raises(UsageError):
            SyncNode(NOWHERE, "x", timeout=bad)
