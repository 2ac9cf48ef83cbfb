"""The merge's column-wise fast path gives exactly what the line-by-line rules give.

clock.Timeline.instants does a batch with builtins over whole lists and falls back to a loop
for batches with dates or midnight; merge reads files in batches of any size. Random files with
continuation lines, lines lager wrote out of order, dates, UTC suffixes, midnight, zones and
clock slopes: the fast path must agree with one line at a time, and the merged bytes must not
depend on where the batches are cut.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import pytest

from kzbridge.kazoo import merge
from kzbridge.kazoo.clock import ClockCorrection, NodeClock, Timeline

BASE = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc).timestamp()


def _stamp(sod: float) -> str:
    ms = round(sod * 1000) % 86_400_000
    h, rest = divmod(ms // 1000, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms % 1000:03d}"


def _lines(rnd: random.Random, start_sod: float, n: int) -> list[bytes]:
    t = start_sod
    out = [f"orphan {i}" for i in range(rnd.choice([0, 0, 3]))]
    for i in range(n):
        t += rnd.random() * rnd.choice([0.002, 0.05, 1.0, 60.0])
        r = rnd.random()
        if r < 0.08:
            out.append(rnd.choice(["  continued", "", '{"a": 1}', "10:00", "ab:cd:ef.ghi", "25:00:00.000 x"]))
        elif r < 0.12:
            out.append(f"{_stamp(t - rnd.random() * 0.01)} [info] reordered {i}")
        elif r < 0.13:
            day = dt.date(2026, 11, 25) + dt.timedelta(days=int(t // 86400))
            out.append(f"{day.isoformat()} {_stamp(t)} [info] dated {i}")
        elif r < 0.15:
            out.append(f"{_stamp(t)} UTC [info] utc {i}")
        else:
            out.append(f"{_stamp(t)} [debug] |app|call-{i}|m:f:1 (<0.1.0>) line {i}")
    return [(line + "\n").encode() for line in out]


def _correction(rnd: random.Random, start_sod: float) -> ClockCorrection:
    off = rnd.choice([0.0, 3.5, -2.000123, rnd.uniform(-5, 5)])
    zone = rnd.choice([0, 3600, -5 * 3600])
    at = BASE + start_sod - zone - off - rnd.random()
    start = NodeClock(off, 0.001, zone, at, rnd.random() < 0.2)
    if rnd.random() < 0.5:
        return ClockCorrection(start)
    stop = NodeClock(off + rnd.uniform(-0.01, 0.01), 0.001, zone, at + rnd.uniform(1, 5000), start.utc_log)
    return ClockCorrection(start, stop)


@pytest.mark.parametrize("seed", range(40))
def test_batch_instants_equal_line_by_line(seed: int) -> None:
    rnd = random.Random(seed)
    start_sod = rnd.choice([36000.0, 86399.0 - rnd.random() * 5, 0.2, 43200.123])
    lines = _lines(rnd, start_sod, rnd.randint(1, 2500))
    corr = _correction(rnd, start_sod)
    one = Timeline(corr)
    expected = [one.instant(line) for line in lines]
    batched = Timeline(corr)
    got: list[float | None] = []
    i = 0
    while i < len(lines):
        size = rnd.choice([1, 7, 300, 5000])
        got += batched.instants(lines[i : i + size])
        i += size
    assert got == expected  # exactly: the same float operations in the same order
    assert batched.days_carried == one.days_carried


@pytest.mark.parametrize("seed", range(12))
def test_merged_bytes_do_not_depend_on_batch_size(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(1000 + seed)
    sources = []
    for j in range(rnd.randint(1, 4)):
        start_sod = rnd.choice([36000.0, 86399.0 - rnd.random() * 5, 0.2])
        path = tmp_path / f"n{j}.log"
        data = b"".join(_lines(rnd, start_sod, rnd.randint(0, 2000)))
        path.write_bytes(data[:-1] if data and rnd.random() < 0.3 else data)  # sometimes no final newline
        sources.append(merge.MergeSource(f"n{j}@h", path, _correction(rnd, start_sod)))
    outputs = []
    for batch in (1 << 20, 4096, 64):
        monkeypatch.setattr(merge, "_BATCH_BYTES", batch)
        out = io.BytesIO()
        stats = merge.write_merged(sources, out)
        items = list(merge.merged_items(sources))
        outputs.append((out.getvalue(), stats.records, stats.lines, [(i[1], i[3], b"".join(i[4])) for i in items]))
    assert outputs[0] == outputs[1] == outputs[2]
    data, records, lines, items = outputs[0]
    assert len(items) == sum(records) and len(data.splitlines()) == sum(lines)
    # Every record's lines come out together, and each node's lines keep their file order.
    for j, src in enumerate(sources):
        mine = [line.split(b" ", 2)[2] for line in data.splitlines(keepends=True) if line.startswith(f"n{j} ".encode())]
        text = src.path.read_bytes()
        assert b"".join(mine) == (text if text.endswith(b"\n") or not text else text + b"\n")
