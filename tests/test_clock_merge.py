"""Clock correction and the k-way merge, without nodes (pure functions on made-up files).

The live cluster tests run the same code against skewed sandboxes under libfaketime.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from kzbridge.kazoo.clock import (
    ClockCorrection,
    ClockSample,
    NodeClock,
    Timeline,
    best_sample,
    format_instant,
    printed_seconds,
)
from kzbridge.kazoo.merge import LiveMerger, MergeSource, merged_items, short_labels, write_merged

UTC = dt.timezone.utc


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def clock(
    start_utc: str, offset: float = 0.0, utc_offset: int = 0, utc_log: bool = False, uncertainty: float = 0.0
) -> NodeClock:
    return NodeClock(offset, uncertainty, utc_offset, epoch(start_utc), utc_log)


def test_printed_seconds_forms() -> None:
    assert printed_seconds("12:40:38.038 [debug] x") == (None, 12 * 3600 + 40 * 60 + 38.038)
    assert printed_seconds(b"00:00:00.000") == (None, 0.0)
    day, sod = printed_seconds("2026-11-25 23:59:59.999 [info]")  # type: ignore[misc]
    assert day == dt.date(2026, 11, 25).toordinal() and sod == pytest.approx(86399.999)
    for bad in ("", "12:40", "ab:cd:ef.ghi", "25:00:00.000", "12-40-38.038", "  continuation"):
        assert printed_seconds(bad) is None


def test_best_sample_is_the_smallest_round_trip() -> None:
    samples = [ClockSample(0.0, 10.0, 0.004), ClockSample(1.0, 11.0015, 1.001), ClockSample(2.0, 12.0, 2.02)]
    best = best_sample(samples)
    assert best is samples[1]
    assert best.offset == pytest.approx(10.001)
    assert best.round_trip / 2 == pytest.approx(0.0005)
    with pytest.raises(ValueError):
        best_sample([])


def test_timeline_removes_zone_and_clock_offset() -> None:
    # Node in UTC-5, 3.5 s ahead; trace starts at 12:00:00 UTC by our clock.
    node = clock("2026-11-25T12:00:00", offset=3.5, utc_offset=-5 * 3600)
    tl = Timeline(ClockCorrection(node))
    # The node prints 07:00:13.500 local = 12:00:13.500 on its clock = 12:00:10.000 on ours.
    assert tl.instant("07:00:13.500 [debug] hi") == pytest.approx(epoch("2026-11-25T12:00:10"))
    assert tl.instant("  continued") is None


def test_timeline_utc_log_prints_utc() -> None:
    node = clock("2026-11-25T12:00:00", offset=-2.0, utc_offset=3600, utc_log=True)
    tl = Timeline(ClockCorrection(node))
    assert tl.instant("11:59:58.000 UTC [info] x") == pytest.approx(epoch("2026-11-25T12:00:00"))


def test_timeline_carries_the_date_across_midnight() -> None:
    node = clock("2026-11-25T23:59:58")
    tl = Timeline(ClockCorrection(node))
    assert tl.instant("23:59:59.500 x") == pytest.approx(epoch("2026-11-25T23:59:59.500"))
    assert tl.instant("00:00:00.250 x") == pytest.approx(epoch("2026-11-26T00:00:00.250"))
    assert tl.instant("00:00:01.000 x") == pytest.approx(epoch("2026-11-26T00:00:01"))
    assert tl.days_carried == 1
    # The first line may already be past midnight.
    tl2 = Timeline(ClockCorrection(node))
    assert tl2.instant("00:00:03.000 x") == pytest.approx(epoch("2026-11-26T00:00:03"))
    # Started just after midnight: a line stamped just before it is from the day before.
    tl4 = Timeline(ClockCorrection(clock("2026-11-26T00:00:00.200")))
    assert tl4.instant("23:59:59.900 x") == pytest.approx(epoch("2026-11-25T23:59:59.900"))
    assert tl4.instant("00:00:00.300 x") == pytest.approx(epoch("2026-11-26T00:00:00.300"))
    # lager's buffering can reorder by milliseconds: that is not a new day.
    tl3 = Timeline(ClockCorrection(clock("2026-11-25T10:00:00")))
    assert tl3.instant("10:00:01.000 x") == pytest.approx(epoch("2026-11-25T10:00:01"))
    assert tl3.instant("10:00:00.900 x") == pytest.approx(epoch("2026-11-25T10:00:00.900"))


def test_timeline_date_comes_from_the_node_not_from_us() -> None:
    # Our clock says 23:59:59 on the 25th; the node runs in UTC+1, so its date is already the 26th.
    node = clock("2026-11-25T23:59:59", utc_offset=3600)
    tl = Timeline(ClockCorrection(node))
    assert tl.instant("01:00:00.000 x") == pytest.approx(epoch("2026-11-26T00:00:00"))


def test_offset_is_interpolated_between_start_and_stop() -> None:
    start = clock("2026-11-25T12:00:00", offset=1.0)
    stop = clock("2026-11-25T12:01:40", offset=1.1)
    corr = ClockCorrection(start, stop)
    assert corr.offset_at(epoch("2026-11-25T12:00:50")) == pytest.approx(1.05)
    assert corr.offset_at(epoch("2026-11-25T11:00:00")) == pytest.approx(1.0)
    assert corr.offset_at(epoch("2026-11-25T13:00:00")) == pytest.approx(1.1)
    assert ClockCorrection.from_json(corr.to_json()) == corr


def test_clock_json_rejects_garbage() -> None:
    from kzbridge.errors import KazooError

    for bad in ({}, {"start": 3}, {"start": {"offset": "x"}}):
        with pytest.raises(KazooError):
            ClockCorrection.from_json(bad)  # type: ignore[arg-type]


def test_format_instant() -> None:
    assert format_instant(epoch("2026-11-25T23:59:58.123")) == "2026-11-25T23:59:58.123Z"
    assert format_instant(epoch("2026-11-25T23:59:59.9996")) == "2026-11-26T00:00:00.000Z"


def test_short_labels() -> None:
    assert short_labels(["a@h1", "b@h1"]) == {"a@h1": "a", "b@h1": "b"}
    assert short_labels(["kazoo_apps@kz1.example.com", "kazoo_apps@kz2.example.com"]) == {
        "kazoo_apps@kz1.example.com": "kazoo_apps@kz1",
        "kazoo_apps@kz2.example.com": "kazoo_apps@kz2",
    }
    assert short_labels(["a@x.one", "a@x.two"]) == {"a@x.one": "a@x.one", "a@x.two": "a@x.two"}


def _write(tmp: Path, name: str, lines: list[str]) -> Path:
    path = tmp / name
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    return path


def test_causal_chain_merges_in_true_order_though_clocks_disagree(tmp_path: Path) -> None:
    """A call crosses a (3.5 s ahead), b (2 s behind, other zone) and c; steps 10 ms apart in true time."""
    start = "2026-11-25T12:00:00"
    a = clock(start, offset=3.5)
    b = clock(start, offset=-2.0, utc_offset=-5 * 3600)
    c = clock(start)
    true0 = epoch("2026-11-25T12:00:05")

    def printed(node: NodeClock, true: float) -> str:
        local = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=true + node.offset + node.utc_offset)
        return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"

    steps = [(a, "a"), (b, "b"), (c, "c"), (a, "a"), (b, "b"), (c, "c")]
    files: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for i, (node, name) in enumerate(steps):
        files[name].append(f"{printed(node, true0 + i * 0.010)} [info] |app|call-1|m:f:1 (<0.1.0>) step {i}")
    files["b"].insert(1, "  a continuation line of b's first record")
    sources = [
        MergeSource(n, _write(tmp_path, f"{n}.log", files[n]), ClockCorrection(k))
        for n, k in (("a", a), ("b", b), ("c", c))
    ]
    out = io.BytesIO()
    stats = write_merged(sources, out)
    text = out.getvalue().decode()
    order = [int(line.rsplit("step ", 1)[1]) for line in text.splitlines() if "step " in line]
    assert order == [0, 1, 2, 3, 4, 5]
    lines = text.splitlines()
    assert lines[2].startswith("b 2026-11-25T12:00:05.010Z   a continuation")
    assert lines[0] == f"a 2026-11-25T12:00:05.000Z {files['a'][0]}"
    assert stats.records == [2, 2, 2] and stats.lines == [2, 3, 2]
    # The naive order (sort by printed time) is wrong, which is why the correction matters.
    naive = sorted((line for f in files.values() for line in f if "step" in line), key=lambda s: s[:12])
    assert [int(s.rsplit("step ", 1)[1]) for s in naive] != [0, 1, 2, 3, 4, 5]
    # Same inputs, same bytes.
    again = io.BytesIO()
    write_merged(sources, again)
    assert again.getvalue() == out.getvalue()


def test_merge_is_stable_and_keeps_file_order(tmp_path: Path) -> None:
    k = ClockCorrection(clock("2026-11-25T12:00:00"))
    x = _write(tmp_path, "x.log", ["12:00:01.000 x1", "12:00:01.000 x2", "12:00:00.999 x3 (lager reordered)"])
    y = _write(tmp_path, "y.log", ["12:00:01.000 y1"])
    items = list(merged_items([MergeSource("x", x, k), MergeSource("y", y, k)]))
    texts = [b"".join(item[4]).decode().split()[1] for item in items]
    # x's lines keep their order even where its instants go backwards; ties go to the first node.
    assert texts == ["x1", "x2", "x3", "y1"]


def test_merge_across_midnight(tmp_path: Path) -> None:
    k = ClockCorrection(clock("2026-11-25T23:59:58"))
    late = _write(tmp_path, "late.log", ["23:59:59.000 before", "00:00:00.500 after"])
    early = _write(tmp_path, "early.log", ["00:00:00.100 other-after"])
    items = list(merged_items([MergeSource("late", late, k), MergeSource("early", early, k)]))
    assert [b"".join(i[4]).split()[1] for i in items] == [b"before", b"other-after", b"after"]


def test_lines_before_the_first_time_and_no_final_newline(tmp_path: Path) -> None:
    k = ClockCorrection(clock("2026-11-25T12:00:00"))
    path = tmp_path / "odd.log"
    path.write_bytes(b"garbage first\n12:00:01.000 real\nno newline at end")
    out = io.BytesIO()
    write_merged([MergeSource("n@h", path, k)], out)
    assert out.getvalue().splitlines() == [
        b"n 2026-11-25T12:00:00.000Z garbage first",
        b"n 2026-11-25T12:00:01.000Z 12:00:01.000 real",
        b"n 2026-11-25T12:00:01.000Z no newline at end",
    ]


def test_live_merger_holds_until_every_node_has_passed() -> None:
    m = LiveMerger(["a", "b"], hold=2.0)
    m.push("a", 10.0, "a10", now=10.5)
    m.push("a", 11.0, "a11", now=11.2)
    assert m.release(now=11.2) == []  # b has said nothing yet; hold not expired
    m.push("b", 10.5, "b10.5", now=11.3)
    assert m.release(now=11.3) == ["a10", "b10.5"]
    m.passed("b", 12.0, now=12.0)
    assert m.release(now=12.0) == ["a11"]
    # b goes quiet: after `hold` it no longer holds a back, and is named.
    m.push("a", 12.5, "a12.5", now=12.6)
    assert m.release(now=13.0) == []
    assert m.lagging(now=14.1) == ["b"]
    assert m.release(now=14.6) == ["a12.5"]
    # b's record older than what was released comes out at once, counted late.
    m.push("b", 12.1, "b12.1", now=14.7)
    assert m.release(now=14.7) == ["b12.1"] and m.late == {"b": 1}
    m.gone("b")
    m.push("a", 20.0, "a20", now=20.1)
    assert m.release(now=20.1) == ["a20"]
    m.push("a", 30.0, "a30", now=30.0)
    m.gone("a")
    assert m.watermark(30.0) == float("inf")  # every stream ended: nothing holds back
    assert m.release(now=30.0) == ["a30"]
    assert m.drain() == []
