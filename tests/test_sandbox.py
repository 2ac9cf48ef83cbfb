"""The sandbox as a neighbour on a shared machine: its cookie, its files, its clock and zone."""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kzbridge import sandbox
from kzbridge.kazoo import filters, journal, tracing
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, ErlString

from .conftest import RunEnv, poll_until, poll_until_async


@pytest.fixture
def start_box(private_epmd: int, run_env: RunEnv) -> Iterator[Any]:
    """sandbox.start for this test; every sandbox it started is stopped afterwards."""
    names: list[str] = []

    def start(name: str, **kw: Any) -> sandbox.Sandbox:
        names.append(name)
        run_env.sandbox_names.append(name)
        return sandbox.start(name, **kw)

    try:
        yield start
    finally:
        for name in names:
            sandbox.stop(name)


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:  # the process ended meanwhile
                continue
    return out


@pytest.mark.asyncio
async def test_the_cookie_is_on_no_command_line_and_its_files_are_private(start_box):
    box = start_box(f"kzck{secrets.token_hex(3)}", rate=0)
    cookie = box.cookie
    beam = Path(f"/proc/{box.os_pid}/cmdline").read_bytes()
    assert box.node.encode() in beam, "os_pid is the BEAM of this node"
    assert cookie.encode() not in beam and b"-setcookie" not in beam
    leaking = [pid for pid, line in _cmdlines().items() if cookie.encode() in line]
    assert not leaking, f"the cookie is on the command line of {leaking}"
    assert stat.S_IMODE(os.stat(box.cookie_file).st_mode) == 0o600
    home_cookie = sandbox.state_dir() / box.name / "home" / ".erlang.cookie"
    assert stat.S_IMODE(home_cookie.stat().st_mode) == 0o400 and home_cookie.read_text() == cookie
    n = await connect_node(box.node, cookie)  # kzbridge still connects with it
    try:
        assert await n.rpc("erlang", "get_cookie", []) == Atom(cookie)
        assert await n.rpc("kz_fixture", "ready", []) == Atom("true")
    finally:
        await n.close()
    assert sandbox.cookie_for(box.node) == cookie


def test_private_files_are_created_without_a_readable_moment(tmp_path):
    target = tmp_path / "c.cookie"
    target.write_text("old")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        sandbox._write_private(target, "secret", 0o600)
    finally:
        os.umask(old_umask)
    assert target.read_text() == "secret" and stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_stopping_a_sandbox_leaves_the_files_of_one_whose_name_extends_it(start_box):
    base = f"atk{secrets.token_hex(2)}"
    first, second = start_box(base, rate=20), start_box(f"{base}-y", rate=20)
    paths = {}
    for box in (first, second):
        n = await connect_node(box.node, box.cookie)
        try:
            trace = await tracing.start_trace(n, filters.module_filter("kz_json"), detached=True, lease=120)
            paths[box.name] = trace.remote_path
        finally:
            await n.close()
        assert journal.find(box.node, trace.ref) is not None, "the trace is recorded in the journal"
    assert paths[second.name].startswith(f"/tmp/kzbridge-{base}-"), "the name shares the first one's prefix"
    for p in paths.values():
        poll_until(lambda p=p: os.path.exists(p), timeout=10, message=f"{p} created")  # type: ignore[misc]
    assert sandbox.trace_files(first) == [paths[first.name]] + [f"{paths[first.name]}.{i}" for i in range(5)]

    assert sandbox.stop(first.name)
    assert not os.path.exists(paths[first.name]), "its own trace file goes with it"
    assert os.path.exists(paths[second.name]), f"{second.name}'s running trace file was left alone"
    assert second.alive()


def _lager_time(line: str) -> timedelta:
    m = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) ", line)
    assert m, line
    h, mi, s, ms = map(int, m.groups())
    return timedelta(hours=h, minutes=mi, seconds=s, milliseconds=ms)


def _clock_gap(a: timedelta, b: timedelta) -> float:
    """Seconds between two times of day, across midnight."""
    d = abs((a - b).total_seconds()) % 86400
    return min(d, 86400 - d)


@pytest.mark.asyncio
async def test_faketime_and_tz_reach_the_beam_and_lagers_timestamps(start_box, node_tmp):
    zone = "America/New_York"
    box = start_box(f"kzft{secrets.token_hex(3)}", rate=40, faketime="+3600s", tz=zone)
    n = await connect_node(box.node, box.cookie)
    try:
        ahead = await n.rpc("erlang", "system_time", [Atom("second")]) - time.time()
        assert 3590 < ahead < 3610, f"the node's clock is {ahead:.1f}s ahead"
        local, utc = await n.rpc("calendar", "local_time", []), await n.rpc("calendar", "universal_time", [])
        as_dt = [datetime(*d, *t) for d, t in (local, utc)]
        fake_now = datetime.now(timezone.utc) + timedelta(seconds=3600)
        offset = fake_now.astimezone(ZoneInfo(zone)).utcoffset()
        assert as_dt[0] - as_dt[1] == offset, f"local - universal = {as_dt[0] - as_dt[1]}, zone offset {offset}"

        path = str(node_tmp / f"ft-{box.name}.log")
        ok, ref = await n.rpc("kz_data_tracing", "trace_file",
                              [[(Atom("module"), Atom("kz_json"))], path.encode(),
                               [Atom("time"), ErlString(" "), Atom("message"), ErlString("\n")]])  # fmt: skip
        assert ok == Atom("ok")
        try:
            await poll_until_async(lambda: os.path.exists(path) and os.path.getsize(path) > 0, timeout=15,
                                   message="a traced line")  # fmt: skip
        finally:
            await n.rpc("kz_data_tracing", "stop_trace", [ref])
    finally:
        await n.close()
    first = Path(path).read_text().splitlines()[0]
    expected = datetime.now(timezone.utc).astimezone(ZoneInfo(zone)) + timedelta(seconds=3600)
    expected_tod = timedelta(hours=expected.hour, minutes=expected.minute, seconds=expected.second)
    gap = _clock_gap(_lager_time(first), expected_tod)
    assert gap < 30, f"lager wrote {first!r}; New York time an hour ahead is {expected:%H:%M:%S}"


@pytest.mark.asyncio
async def test_faketime_start_time_before_midnight_keeps_the_clock_running(start_box):
    box = start_box(f"kzmn{secrets.token_hex(3)}", rate=0, faketime="@2026-11-25 23:59:58", tz="UTC")
    start = datetime(2026, 11, 25, 23, 59, 58, tzinfo=timezone.utc).timestamp()
    n = await connect_node(box.node, box.cookie)
    try:
        t0 = await n.rpc("erlang", "system_time", [Atom("millisecond")]) / 1000
        assert start <= t0 < start + 60, f"the node's clock started at {t0 - start:.1f}s past the fake start"
        day = await n.rpc("calendar", "local_time", [])
        t1 = await poll_until_async(lambda: _after(n, t0 + 0.5), timeout=10, message="the fake clock advancing")
        assert t1 > t0
        assert day[0] in ((2026, 11, 25), (2026, 11, 26))
    finally:
        await n.close()


async def _after(n: Any, t: float) -> float | None:
    now = await n.rpc("erlang", "system_time", [Atom("millisecond")]) / 1000
    return now if now > t else None


def test_bad_clock_and_zone_options_are_usage_errors(private_epmd):
    from kzbridge.errors import UsageError

    with pytest.raises(UsageError, match="time zone"):
        sandbox.start(f"kzbad{secrets.token_hex(2)}", tz="Mars/Olympus_Mons")
    with pytest.raises(UsageError, match="faketime"):
        sandbox.start(f"kzbad{secrets.token_hex(2)}", faketime=" ")
