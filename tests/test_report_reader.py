"""report.read_model's batched reader gives exactly what a simple per-line reader gives.

The reader parses each chunk with one findall (report._FAST, which takes any line not starting
with two digits as a continuation line) and falls back to checking every line when a line
starting with digits is not a header; instants come from clock.Timeline.instants over whole
batches. The reference here goes one line at a time: logparse.parse_header decides what is a
header, clock.Timeline.instant gives its instant. Random files with continuation lines (some
starting with digits, some looking almost like headers), dates, UTC suffixes, midnight, a time
that is no time of day, invalid UTF-8, orphan lines and no final newline; read in chunks of
many sizes, so records and continuation lines fall across chunk edges.
"""

from __future__ import annotations

import datetime as dt
import json
import marshal
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import KazooError, ReportWorkerError
from kzbridge.kazoo import logparse, report, report_html, report_work
from kzbridge.kazoo.clock import ClockCorrection, NodeClock, Timeline
from kzbridge.kazoo.merge import MergeSource

from .conftest import kzb

BASE = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc).timestamp()
LEVELS = ["debug", "info", "notice", "warning", "error", "critical"]
NOT_HEADERS = [
    "  continued",
    "",
    '{"a": 1}',
    "12:34 starts with digits",
    "10:00:00.000 [info] no pipes here",
    "10:00:00.000 [INFO] |a|b|m:f:1 (<0.1.0>) upper-case level",
    "10:00:00.000 [info] |a|b|m:f:x (<0.1.0>) line is not a number",
    "2026-11-25 not a time",
    "99",
    "third: a|b:c",
]


def _stamp(sod: float) -> str:
    ms = round(sod * 1000) % 86_400_000
    h, rest = divmod(ms // 1000, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms % 1000:03d}"


def _header(rnd: random.Random, time: str, i: int) -> str:
    callid = rnd.choice([f"call-{rnd.randrange(20)}", "Undefined", "", "c\u00e9"])
    module = rnd.choice(["kz_json", "Undefined", "mod_b", ""])
    line = rnd.choice(["{7,5}", "12", "Undefined"])
    pid = rnd.choice(["<0.1.0>", "<0.2.0>", "Undefined", ""])
    return f"{time} [{rnd.choice(LEVELS)}] |app|{callid}|{module}:fun:{line} ({pid}) message {i} | a:b (c) "


def _file(rnd: random.Random, start_sod: float, n: int, bursts: bool = False) -> bytes:
    """``bursts``: most records share their millisecond with the one before (a busy node), and no
    header carries a date or an impossible time."""
    t = start_sod
    out = [rnd.choice(NOT_HEADERS) for _ in range(rnd.choice([0, 0, 2]))]  # orphans
    for i in range(n):
        if not bursts or rnd.random() < 0.1:
            t += rnd.random() * rnd.choice([0.001, 0.05, 1.0, 120.0])
        r = rnd.random()
        if bursts and 0.25 <= r < 0.30:
            r = 1.0  # no dates, no impossible times: those take the line-by-line path anyway
        if r < 0.25:
            out.append(rnd.choice(NOT_HEADERS))
        elif r < 0.27:
            day = dt.date(2026, 11, 25) + dt.timedelta(days=int(t // 86400))
            out.append(_header(rnd, f"{day.isoformat()} {_stamp(t)}", i))
        elif r < 0.29:
            out.append(_header(rnd, f"{_stamp(t)} UTC", i))
        elif r < 0.30:
            out.append(_header(rnd, "25:61:00.000", i))  # a header whose time is no time of day
        elif r < 0.33:
            out.append(_header(rnd, _stamp(t - rnd.random() * 0.01), i))  # lager's reordering
        else:
            out.append(_header(rnd, _stamp(t), i))
    text = "\n".join(out).encode("utf-8")
    if rnd.random() < 0.3:
        text = text.replace(b"message 1", b"bytes \xff\xfe\xc3( 1")  # invalid UTF-8
    return text if rnd.random() < 0.3 else text + b"\n"


def _correction(rnd: random.Random) -> ClockCorrection:
    start = NodeClock(rnd.choice([0.0, 2.5, -1.25]), 0.0, rnd.choice([0, 3600, -18000]), BASE + 86400 / 2)
    if rnd.random() < 0.5:
        return ClockCorrection(start)
    return ClockCorrection(start, NodeClock(start.offset + 0.4, 0.0, start.utc_offset, start.measured_at + 86400))


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").encode("latin-1").decode("utf-8", "replace")


def reference(source: MergeSource) -> tuple[list[list[Any]], int, int]:
    """Events [instant, level, module, pid, callid, first line, line count], orphan and total lines: line by line."""
    timeline = Timeline(source.correction)
    previous = source.correction.start.measured_at
    events: list[list[Any]] = []
    orphans = 0
    lines = Path(source.path).read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines):
        rec = logparse.parse_header(raw.decode("latin-1"))
        if rec is None:
            if events:
                events[-1][6] += 1
            else:
                orphans += 1
            continue
        instant = timeline.instant(raw)
        previous = instant if instant is not None else previous
        fields = [_text((v or "").encode("latin-1")) for v in (rec.module, rec.pid, rec.callid)]
        events.append([previous, rec.severity, *fields, number, 1])
    return events, orphans, len(lines)


def model_events(model: report.ReportModel) -> list[list[Any]]:
    return [
        [t, model.levels[lv], model.modules.names[m], model.pids.names[p], model.callids.names[c], ln, nl]
        for t, lv, m, p, c, ln, nl in zip(
            model.t, model.level, model.module, model.pid, model.callid, model.line, model.nlines, strict=True
        )
    ]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("chunk", "range_", "workers"),
    [
        *[(chunk, 1 << 30, 0) for chunk in (7, 64, 333, 4096, 4 << 20)],
        # most times repeated (each distinct time read once, clock.Timeline.stamps), midnight too
        (4 << 20, 1 << 30, -1),
        (4 << 20, 700, -1),
        # files cut into ranges (mid-record: a range can start with continuation lines, or hold no
        # header), parsed in this process and by worker processes
        *[(64, 500, 0), (4 << 20, 97, 2), (333, 2000, 3), (4 << 20, 1000, 1)],
    ],
)
def test_batched_reader_equals_the_per_line_reference(
    seed: int, chunk: int, range_: int, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "_CHUNK", chunk)
    monkeypatch.setattr(report, "_RANGE", range_)
    rnd = random.Random(seed)
    sources = []
    for k in range(1 + seed % 3):
        path = tmp_path / f"n{k}@h.log"
        start = rnd.choice([36000.0, 86400 - 30.0, 5.0])  # 10:00, just before midnight, just after
        path.write_bytes(_file(rnd, start, rnd.choice([40, 400]), bursts=workers < 0))
        sources.append(MergeSource(f"n{k}@h", path, _correction(rnd)))
    model = report.read_model(sources, workers=max(workers, 0))

    expected: list[tuple[float, int, int, list[Any]]] = []
    orphans = 0
    for node, source in enumerate(sources):
        events, lost, lines = reference(source)
        assert model.file_lines[node] == lines
        orphans += lost
        keys = accumulate((e[0] for e in events), max)  # merge.py's order: the node's running maximum
        expected += [(key, node, i, e) for i, (key, e) in enumerate(zip(keys, events, strict=True))]
    expected.sort(key=lambda item: (item[0], item[1], item[2]))
    assert model_events(model) == [e for *_, e in expected]
    assert list(model.node) == [node for _, node, _, _ in expected]
    assert model.orphan_lines == orphans


def test_fast_path_and_fallback_agree_on_one_chunk(tmp_path: Path) -> None:
    """The same file with and without one digit-led continuation line (which sends its chunk to the
    fallback): the records are the same, the line numbers shift by one after it."""
    rnd = random.Random(99)
    lines = [_header(rnd, _stamp(36000 + i / 10), i) for i in range(50)]
    lines[20:20] = ["second line", ""]
    plain = tmp_path / "plain@h.log"
    plain.write_text("\n".join(lines) + "\n")
    digits = tmp_path / "digits@h.log"
    digits.write_text("\n".join([*lines[:30], "42 is not a header", *lines[30:]]) + "\n")
    correction = ClockCorrection(NodeClock.given(0.0, at=BASE))
    a = report.read_model([MergeSource("plain@h", plain, correction)])
    b = report.read_model([MergeSource("digits@h", digits, correction)])
    ea, eb = model_events(a), model_events(b)
    assert len(ea) == len(eb) == 50
    shifted = [[*e[:5], e[5] + (e[5] >= 30), e[6]] for e in ea]
    shifted[27][6] += 1  # the record before the inserted line has it as a continuation line
    assert eb == shifted


def test_a_worker_that_dies_mid_way_or_a_file_that_goes_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(5)
    path = tmp_path / "n@h.log"
    path.write_bytes(_file(rnd, 36000.0, 30000))  # about 2.5 MB: results fill the pipe, the worker waits
    source = MergeSource("n@h", path, _correction(rnd))
    monkeypatch.setattr(report, "_RANGE", 64 << 10)
    with report.ModelReader([source], workers=1) as reader:
        results = reader._results()
        next(results)  # the first range's result came: the worker is at work
        proc = reader._workers[0]
        proc.kill()
        with pytest.raises(ReportWorkerError, match=r"ended before its work was done \(exit status -9\)"):
            list(results)
    assert proc.stdout is not None and proc.stdout.closed  # ended and its pipes closed
    start = report_work.start

    def start_after_removing(tasks: Any) -> Any:  # the ranges were cut, then the file went
        path.unlink(missing_ok=True)
        return start(tasks)

    monkeypatch.setattr(report_work, "start", start_after_removing)
    with (
        report.ModelReader([source], workers=1) as reader,
        pytest.raises(KazooError, match=r"cannot read .*n@h\.log: No such file or directory"),
    ):
        reader.model()


def test_the_report_is_the_same_whether_workers_or_this_process_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTML file, byte for byte (but the time it was made), from two files cut into many ranges
    and parsed and compressed by worker processes, from this process alone, and from this process
    when no worker can be started."""
    monkeypatch.setattr(report, "_RANGE", 3000)
    rnd = random.Random(7)
    sources = []
    for k in range(2):
        path = tmp_path / f"n{k}@h.log"
        path.write_bytes(_file(rnd, 36000.0, 2000))
        sources.append(MergeSource(f"n{k}@h", path, _correction(rnd)))
    pages = []
    ways = [("here", 0, sys.executable), ("workers", 2, sys.executable), ("none", 2, "/nonexistent")]
    for name, workers, python in ways:
        monkeypatch.setattr(sys, "executable", python)  # "none": no worker can start, so this process works
        with report.ModelReader(sources, workers=workers) as reader:
            out, model = report_html.write_report(reader, tmp_path / f"{name}.html")
            assert reader.workers == (2 if name == "workers" else 0)
        assert len(model) > 2000
        pages.append(re.sub(rb'"generated":"[^"]*"', b"", out.read_bytes()))
    assert pages[0] == pages[1] == pages[2]


def test_summary_gives_the_same_numbers_with_any_number_of_jobs(tmp_path: Path) -> None:
    rnd = random.Random(11)
    path = tmp_path / "n@h.log"
    piece = _file(rnd, 36000.0, 30000)
    path.write_bytes((piece if piece.endswith(b"\n") else piece + b"\n") * 8)  # about 20 MB: three ranges
    runs = [kzb("summary", str(path), "--json", "--jobs", jobs) for jobs in ("0", "1", "3")]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    assert json.loads(runs[0].stdout)["events"] > 100_000
    bad = kzb("summary", str(path), "--jobs", "-1")
    assert bad.returncode == 2 and "--jobs" in bad.stderr and "Traceback" not in bad.stderr


def _workers_of(pid: int) -> set[int]:
    """The report workers kzbridge process ``pid`` started (each is given its parent's pid, last)."""
    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"report_work" in b" ".join(argv) and str(pid).encode() in argv[-2:]:
            out.add(int(cmdline.parent.name))
    return out


def _gone(workers_of: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _workers_of(workers_of):
            return True
        time.sleep(0.05)
    return False


def _default_signals() -> None:
    """As in a terminal: a suite run under nohup or from a background job has SIGHUP or SIGINT ignored,
    and kzbridge (rightly) keeps them ignored then."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_report_stopped_by_a_signal_leaves_no_worker_running(tmp_path: Path, sig: int) -> None:
    """Ctrl-C, SIGTERM and a closed terminal: one line, exit 130, the workers ended, no file left; SIGKILL
    (nothing can clean up): the workers notice their parent is gone and end by themselves. The signal
    goes as soon as the first worker runs; were the report done by then, it is tried again on a file
    twice as long."""
    rnd = random.Random(3)
    piece = _file(rnd, 36000.0, 30000, bursts=True)
    piece = piece if piece.endswith(b"\n") else piece + b"\n"
    path = tmp_path / "n@h.log"
    out = tmp_path / "r.html"
    for copies in (24, 48, 96):  # about 60, 120, 240 MB
        path.write_bytes(piece * copies)
        cmd = [sys.executable, "-m", "kzbridge", "report", str(path), "--jobs", "2", "-o", str(out)]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals
        )
        deadline = time.monotonic() + 20
        while not _workers_of(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            break
        out.unlink()  # done before the signal came: again, longer
    else:
        pytest.fail("every report was done before its signal came")
    assert _gone(proc.pid, within=5), "a report worker outlived kzbridge"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == 130, err
    assert err.strip() in ("kzbridge: interrupted", "kzbridge: terminated"), err
    assert not out.exists() and not list(tmp_path.glob("r.html*")), list(tmp_path.iterdir())


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_worker_whose_parent_is_gone_stops_before_its_next_chunk(tmp_path: Path, parent_alive: bool) -> None:
    """A worker is told who started it; when that is no longer its parent (kzbridge was killed), it ends
    before reading further, however much work is left, and writes nothing."""
    path = tmp_path / "n@h.log"
    path.write_bytes(_file(random.Random(4), 36000.0, 30000) + b"\n")
    root = str(Path(report_work.__file__).resolve().parents[2])
    parent = os.getpid() if parent_alive else 1  # 1: not its parent, as after kzbridge's death
    with tempfile.TemporaryFile() as spool:
        fd = spool.fileno()
        tasks = [("CompressTask", [str(path)], fd), ("RangeTask", str(path), 0, path.stat().st_size, 4 << 20)]
        worker = subprocess.Popen(
            [sys.executable, "-I", "-c", report_work._BOOT, root, str(parent)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[fd],
        )
        out, _ = worker.communicate(marshal.dumps(tasks), timeout=60)
        written = os.fstat(fd).st_size
    if parent_alive:
        assert worker.returncode == 0 and written > 1000 and len(out) > 100_000
    else:
        assert worker.returncode == 1 and written == 0 and out == b""


def test_report_with_stdin_and_stdout_closed(tmp_path: Path) -> None:
    """The compress worker's file is not given descriptor 0 or 1 when kzbridge's own are closed."""
    path = tmp_path / "n@h.log"
    path.write_bytes(_file(random.Random(12), 36000.0, 3000))
    out = tmp_path / "r.html"
    cmd = f"exec {sys.executable} -m kzbridge report {path} --jobs 1 -o {out} <&- >&-"
    run = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    page = out.read_bytes()
    assert b'{"texts":["' in page and page.rstrip().endswith(b"</html>")
    with report.ModelReader(report.sources_for([path]), workers=0) as reader:
        here, _ = report_html.write_report(reader, tmp_path / "here.html")
    assert re.sub(rb'"generated":"[^"]*"', b"", page) == re.sub(rb'"generated":"[^"]*"', b"", here.read_bytes())


def test_compressing_into_a_full_disk_says_write_not_read(tmp_path: Path) -> None:
    path = tmp_path / "n@h.log"
    path.write_bytes(_file(random.Random(13), 36000.0, 400))
    with open("/dev/full", "wb", buffering=0) as full:  # every write: ENOSPC
        assert report_work.compress_files([str(path)], full) == (
            "write",
            "cannot write the report's compressed text: No space left on device",
        )
    with open(tmp_path / "out", "wb") as out:
        assert report_work.compress_files([str(tmp_path / "gone.log")], out)[0] == "read"
