"""A trace, or a cluster run, as a compact columnar model: what ``kzbridge report`` and ``summary`` show.

One streaming pass over each node's file gives, per event (a record: a header line and its
continuation lines), its UTC instant (corrected for the node's clock, as merge.py does),
node, level, module, pid, callid, and where its text is (first line number and line count
in the node's file). The columns are ``array.array``s and the strings are interned in
tables, so 1M events cost about 30 MB whatever the messages hold; the text stays in the
files (report_html reads it again to embed it).

Events are kept in timeline order: by instant, a node's events in their file order (the
sort key is each node's running maximum, exactly as merge.py orders merged.log), then by
node. Aggregates (counts per level/module/node, calls, the event rate) are computed from
the columns on demand.

Reading: each file is cut into ranges of whole lines, parsed into columns by report_ranges
(by worker processes, one per CPU, when the files are large; see there for how a range is
parsed fast), and the ranges are added to the model in order: instants by
clock.Timeline.instants (each printed second parsed once, as the merge does), each range's
string tables mapped onto the model's, its line numbers made the file's. Both give the same
records as logparse.parse_lines.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import add, gt
from pathlib import Path
from typing import Any

from ..errors import KazooError, UsageError
from . import report_work
from .clock import ClockCorrection, NodeClock, Timeline, format_instant, nones, printed_seconds
from .logparse import SEVERITIES, UNDEFINED
from .merge import MergeSource, running_max, short_labels
from .report_work import CHUNK, RangeColumns, RangeTask, Table, parse_range

# Work for worker processes: files of at least this many bytes in all, in ranges of about this size.
_PARALLEL_MIN = 24 << 20
_RANGE = 8 << 20
_CHUNK = CHUNK
NONE = ""  # the interned "no value" (Undefined, empty): index 0 of every table
WARNING = SEVERITIES.index("warning")
ERROR = SEVERITIES.index("error")


class Interner(Table):
    """A Table that also keeps its values decoded (``names``); index 0 is NONE (``Undefined`` and the
    empty value map to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = [NONE]

    def indexes(self, values: Iterable[bytes]) -> list[int]:
        known = len(self.values)
        out = super().indexes(values)
        self.names += [v.decode("utf-8", "replace") for v in self.values[known:]]
        return out


@dataclass
class Call:
    """One callid's events: first and last instant, nodes (indexes), event count, worst level (index)."""

    callid: str
    first: float
    last: float
    events: int
    worst: int
    nodes: set[int] = field(default_factory=set)

    @property
    def duration(self) -> float:
        return self.last - self.first


@dataclass
class ReportModel:
    """The columns (timeline order) and their string tables. See the module docstring."""

    nodes: list[str]
    labels: list[str]
    paths: list[Path]
    file_lines: list[int]
    levels: list[str] = field(default_factory=lambda: list(SEVERITIES))
    modules: Interner = field(default_factory=Interner)
    pids: Interner = field(default_factory=Interner)
    callids: Interner = field(default_factory=Interner)
    t: array[float] = field(default_factory=lambda: array("d"))
    node: array[int] = field(default_factory=lambda: array("H"))
    level: array[int] = field(default_factory=lambda: array("B"))
    module: array[int] = field(default_factory=lambda: array("I"))
    pid: array[int] = field(default_factory=lambda: array("I"))
    callid: array[int] = field(default_factory=lambda: array("I"))
    line: array[int] = field(default_factory=lambda: array("I"))
    nlines: array[int] = field(default_factory=lambda: array("I"))
    orphan_lines: int = 0

    def __len__(self) -> int:
        return len(self.t)

    # ---------------------------------------------------------------- aggregates

    @property
    def span(self) -> tuple[float, float] | None:
        """First and last instant, or None without events."""
        return (min(self.t), max(self.t)) if self.t else None

    def per_level(self) -> dict[str, int]:
        counts = Counter(self.level)
        return {self.levels[i]: counts[i] for i in sorted(counts)}

    def per_node(self) -> dict[str, int]:
        counts = Counter(self.node)
        return {self.nodes[i]: counts[i] for i in range(len(self.nodes))}

    def per_module(self) -> dict[str, int]:
        counts = Counter(self.module)
        return {self.modules.names[i] or UNDEFINED: c for i, c in counts.most_common()}

    def calls(self) -> list[Call]:
        """One Call per callid, in order of first event."""
        out: dict[int, Call] = {}
        names = self.callids.names
        for cid, t, lv, nd in zip(self.callid, self.t, self.level, self.node, strict=True):
            if not cid:
                continue
            c = out.get(cid)
            if c is None:
                out[cid] = Call(names[cid], t, t, 1, lv, {nd})
                continue
            c.events += 1
            if t < c.first:
                c.first = t
            elif t > c.last:
                c.last = t
            if lv > c.worst:
                c.worst = lv
            c.nodes.add(nd)
        return sorted(out.values(), key=lambda c: c.first)

    def rate(self, bins: int | None = None) -> tuple[float, float, list[list[int]], list[int], list[int]]:
        """Events per time bin: (start, bin width in s, counts[node][bin], warnings[bin], errors-or-worse[bin]).
        One-second bins unless ``bins`` is given (then the span is cut into that many)."""
        span = self.span
        if span is None:
            return 0.0, 1.0, [[] for _ in self.nodes], [], []
        start, end = span
        width = 1.0 if bins is None else max((end - start) / bins, 1e-3)
        n = int((end - start) / width) + 1
        keys = [int((t - start) / width) * len(self.nodes) + nd for t, nd in zip(self.t, self.node, strict=True)]
        counts = Counter(keys)
        per_node = [[counts.get(b * len(self.nodes) + i, 0) for b in range(n)] for i in range(len(self.nodes))]
        warn, err = [0] * n, [0] * n
        for k, lv in zip(keys, self.level, strict=True):
            if lv == WARNING:
                warn[k // len(self.nodes)] += 1
            elif lv >= ERROR:
                err[k // len(self.nodes)] += 1
        return start, width, per_node, warn, err


# -------------------------------------------------------------------- reading


def read_model(sources: list[MergeSource], *, workers: int | None = None) -> ReportModel:
    """Read every source once into a ReportModel (timeline order)."""
    with ModelReader(sources, workers=workers) as reader:
        return reader.model()


class ModelReader:
    """Reads sources into a ReportModel, large files by worker processes (report_ranges).

    The workers start when this is made, so the caller can do other work (report_html
    compresses the files meanwhile) before asking for ``model()``. ``workers``: how many
    (0: none, this process reads); by default one per CPU when the files hold at least
    24 MB, else none. Use as a context manager: leaving it ends the workers.
    """

    def __init__(self, sources: list[MergeSource], *, workers: int | None = None) -> None:
        if not sources:
            raise UsageError("nothing to report: no trace file")
        self.sources = sources
        self._tasks = [_ranges(Path(s.path), _RANGE, _CHUNK) for s in sources]
        count_ = sum(map(len, self._tasks))
        if workers is None:
            size = sum(task.end for tasks in self._tasks for task in tasks[-1:])
            workers = _cpus() if size >= _PARALLEL_MIN else 0
        self.workers = n = min(workers, count_)
        tasks = [t for ts in self._tasks for t in ts]
        self._workers: list[subprocess.Popen[bytes]] = []
        try:
            for w in range(n):
                self._workers.append(report_work.start(tasks[w::n]))
        except OSError:  # no process can be started here (limits, no interpreter file): this one reads
            self.close()
            self.workers = 0
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._workers:
            report_work.end(proc)
        self._workers = []

    def _results(self) -> Iterator[RangeColumns]:
        """Each range's columns, in order (files in order, each file's ranges in order)."""
        tasks = [t for ts in self._tasks for t in ts]
        if not self._workers:
            yield from map(parse_range, tasks)
            return
        for i in range(len(tasks)):
            yield RangeColumns(*report_work.receive(self._workers[i % len(self._workers)]))

    def model(self) -> ReportModel:
        sources = self.sources
        labels = short_labels([s.node for s in sources])
        model = ReportModel(
            nodes=[s.node for s in sources],
            labels=[s.label or labels[s.node] for s in sources],
            paths=[Path(s.path) for s in sources],
            file_lines=[],
        )
        results = self._results()
        keys: list[float] = []
        for index, (source, tasks) in enumerate(zip(sources, self._tasks, strict=True)):
            before = len(model.t)
            reading = _FileReading(model, index, source)
            for _ in tasks:
                reading.add(next(results))
            model.file_lines.append(reading.lines)
            if len(sources) > 1 and len(model.t) > before:  # the node's running maximum: merge.py's order
                keys += running_max(model.t[before:].tolist(), float("-inf"))
        if any(map(gt, keys, islice(keys, 1, None))):
            order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: ties keep (node, file order)
            for name in ("t", "node", "level", "module", "pid", "callid", "line", "nlines"):
                col = getattr(model, name)
                setattr(model, name, array(col.typecode, map(col.__getitem__, order)))
        return model


class _FileReading:
    """One file's ranges, added to the model in order: instants from the printed times (clock.Timeline,
    which goes in file order), the ranges' tables mapped onto the model's, line numbers made the file's."""

    def __init__(self, model: ReportModel, node: int, source: MergeSource) -> None:
        self.model = model
        self.source = source
        self.timeline = Timeline(source.correction)
        self.level_of = {s.encode(): i for i, s in enumerate(model.levels)}
        self.node_column = array("H", [node])
        self.previous = source.correction.start.measured_at
        self.first = len(model.t)  # the file's first event
        self.lines = 0  # lines of the file so far

    def add(self, part: RangeColumns) -> None:
        model = self.model
        if part.error is not None:
            raise KazooError(f"cannot read {self.source.path}: {part.error}")
        if part.leading:  # the previous range's last record continues, or the file's orphan lines
            if len(model.t) > self.first:
                model.nlines[-1] += part.leading
            else:
                model.orphan_lines += part.leading
        if part.times:
            instants: list[Any] = self.timeline.stamps(part.times)
            if None in instants:
                # A header whose time is no time of day ("25:00:00.000"): merge.py reads it as a
                # continuation line, so it gets the previous record's instant (the file's start first).
                for i in sorted(nones(instants)):
                    instants[i] = instants[i - 1] if i else self.previous
            self.previous = instants[-1]
            model.t += array("d", instants)
            model.node.extend(self.node_column * len(instants))
            for sev in set(part.levels[1:]).difference(self.level_of):
                self.level_of[sev] = len(model.levels)
                model.levels.append(sev.decode("ascii"))
            _extend(model.level, array("B", part.level), [0, *map(self.level_of.__getitem__, part.levels[1:])])
            callids, _, modules = zip(*(site.partition(b"|") for site in part.sites), strict=True)
            sites = array("I", part.site)
            _extend(model.callid, sites, model.callids.indexes(callids))
            _extend(model.module, sites, model.modules.indexes(modules))
            _extend(model.pid, array("I", part.pid), model.pids.indexes(part.pids))
            starts = array("I", part.line)
            model.line.extend(starts if not self.lines else array("I", map(add, starts, repeat(self.lines))))
            model.nlines.frombytes(part.nlines)
        self.lines += part.lines


def _extend(column: array[int], values: array[int], table: list[int]) -> None:
    """Append a range's index column to the model's, each value mapped through ``table``."""
    if table == list(range(len(table))):
        column.extend(values)
    else:
        column.extend(map(table.__getitem__, values))


def _ranges(path: Path, length: int, chunk: int) -> list[RangeTask]:
    """The file cut into ranges of whole lines of about ``length`` bytes."""
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            out: list[RangeTask] = []
            start = 0
            while start < total:
                end = start + length
                if end < total:
                    fh.seek(end)
                    fh.readline()
                    end = min(fh.tell(), total)
                else:
                    end = total
                out.append(RangeTask(str(path), start, end, chunk))
                start = end
    except OSError as exc:
        raise KazooError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -------------------------------------------------------------------- sources


def file_source(path: Path, node: str | None = None, *, utc_offset: int = 0, offset: float = 0.0) -> MergeSource:
    """A trace file without a cluster description: its node (from ``node``, else the file's name) and a
    clock given by hand (default: the node printed UTC and its clock was right), dated from the file."""
    return MergeSource(
        node or path.name.removesuffix(".log"),
        path,
        ClockCorrection(NodeClock.given(offset, utc_offset=utc_offset, at=first_line_instant(path, utc_offset))),
    )


def first_line_instant(path: Path, utc_offset: int) -> float:
    """A start for a file without one: its first printed time on the day the file was last written
    (the day before, if that time is later in the day than the file's last write)."""
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise KazooError(f"cannot read {path}: {exc.strerror or exc}") from exc
    day = dt.datetime.fromtimestamp(mtime + utc_offset, dt.timezone.utc)
    with open(path, "rb") as fh:
        for line in fh:
            parsed = printed_seconds(line[:23])
            if parsed is None:
                continue
            sod = parsed[1]
            midnight = day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
            if sod > day.hour * 3600 + day.minute * 60 + day.second + 60:
                midnight -= 86400
            return midnight + sod - utc_offset
    return mtime


def sources_for(paths: list[str | os.PathLike[str]]) -> list[MergeSource]:
    """What ``report``/``summary`` take: one cluster run directory (cluster.json's clocks), or trace files."""
    from .cluster import merge_sources, read_cluster_json

    given = [Path(p) for p in paths]
    if len(given) == 1 and given[0].is_dir():
        return merge_sources(given[0], read_cluster_json(given[0]))
    out = []
    for p in given:
        if p.is_dir():
            raise UsageError(
                f"{p} is a directory: give one cluster run directory, or trace files", setting="local_path"
            )
        if not p.is_file():
            raise UsageError(f"{p} is not a file", setting="local_path")
        out.append(file_source(p))
    return out


# -------------------------------------------------------------------- summary


def sparkline(values: list[int], width: int = 60) -> str:
    """Unicode blocks, one per group of ``len(values) / width`` values (their sum)."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [sum(values[int(i * step) : int((i + 1) * step)]) for i in range(width)]
    top = max(values)
    blocks = " ▁▂▃▄▅▆▇█"
    return "".join(blocks[0 if v == 0 else max(1, round(v / top * 8))] for v in values)


def summary_data(model: ReportModel, top: int = 10) -> dict[str, Any]:
    """The numbers ``kzbridge summary`` prints (and ``--json`` gives)."""
    calls = model.calls()
    span = model.span
    _, width, per_node, warn, err = model.rate()
    total = [sum(col) for col in zip(*per_node, strict=True)] if per_node and per_node[0] else []

    def call_json(c: Call) -> dict[str, Any]:
        return {
            "callid": c.callid,
            "first": format_instant(c.first),
            "last": format_instant(c.last),
            "duration": round(c.duration, 3),
            "events": c.events,
            "nodes": [model.nodes[i] for i in sorted(c.nodes)],
            "worst": model.levels[c.worst],
        }

    return {
        "events": len(model),
        "lines": sum(model.file_lines),
        "orphan_lines": model.orphan_lines,
        "first": format_instant(span[0]) if span else None,
        "last": format_instant(span[1]) if span else None,
        "span": round(span[1] - span[0], 3) if span else 0.0,
        "levels": model.per_level(),
        "nodes": model.per_node(),
        "modules": model.per_module(),
        "calls": len(calls),
        "top_by_events": [call_json(c) for c in sorted(calls, key=lambda c: (-c.events, c.first))[:top]],
        "top_by_duration": [call_json(c) for c in sorted(calls, key=lambda c: (-c.duration, c.first))[:top]],
        "rate": {
            "bin": width,
            "total": total,
            "peak": max(total, default=0),
            "warnings": sum(warn),
            "errors": sum(err),
        },
    }


def native_little_endian() -> bool:
    return sys.byteorder == "little"
