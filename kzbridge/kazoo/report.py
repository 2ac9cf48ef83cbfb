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

Reading fast: each chunk of whole lines (4 MB) is parsed by one ``findall`` that gives, per
record, its header fields and its continuation lines (``_FAST``); everything else is done by
builtins over those columns (zip, map, accumulate), and instants by clock.Timeline.instants
(each printed second parsed once), so no Python code runs per line. ``_FAST`` ends a record's
continuation lines at any line starting with two digits (every header does), which is exact
unless such a line is not a header: then ``findall`` skips it, the line count shows it, and
that chunk is parsed again by ``_RECORDS`` (which checks the whole header at every line).
Both give the same records as logparse.parse_lines.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate, count, filterfalse, islice, repeat
from operator import add, gt
from pathlib import Path
from typing import Any

from ..errors import KazooError, UsageError
from .clock import ClockCorrection, NodeClock, Timeline, format_instant, nones, printed_seconds
from .logparse import SEVERITIES, UNDEFINED
from .merge import MergeSource, running_max, short_labels

# logparse._HEADER, on bytes, capturing only what the model keeps: time, severity, callid, module, pid.
_HEAD = (
    rb"((?:\d{4}-\d{2}-\d{2} )?\d{2}:\d{2}:\d{2}\.\d{3}(?: UTC)?) "
    rb"\[([a-z]+)\] "
    rb"\|[^|\n]*\|([^|\n]*)\|"
    rb"([^:|\n]*):[^:|\n]*:(?:\{\d+,\d+\}|\d+|Undefined) "
    rb"\(([^)\n]*)\) "
)
_HEADS = re.compile(rb"^" + _HEAD, re.MULTILINE)
# A record: its header line, then the lines that are not headers (its message's further lines).
_HEAD_UNCAPTURED = re.sub(rb"(?<!\\)\((?!\?)", b"(?:", _HEAD)
_RECORDS = re.compile(rb"^" + _HEAD + rb"[^\n]*((?:\n(?!" + _HEAD_UNCAPTURED + rb")[^\n]*)*)\n", re.MULTILINE)
# The same header with possessive repeats (each stops at its delimiter, so backtracking could never
# help: the same matches, less bookkeeping), after a newline (a literal: findall jumps from line to
# line), then its continuation lines, taken as those not starting with two digits.
_HEAD_POSSESSIVE = _HEAD.replace(rb"]*", rb"]*+").replace(rb"]+", rb"]++").replace(rb"\d+", rb"\d++")
_FAST = re.compile(rb"\n" + _HEAD_POSSESSIVE + rb"[^\n]*+((?:\n(?!\d\d)[^\n]*+)*+)")
_CHUNK = 4 << 20
NONE = ""  # the interned "no value" (Undefined, empty): index 0 of every table
WARNING = SEVERITIES.index("warning")
ERROR = SEVERITIES.index("error")


class Interner:
    """Strings to small integers; index 0 is NONE (``Undefined`` and the empty value map to it)."""

    def __init__(self) -> None:
        self.names: list[str] = [NONE]
        self._index: dict[bytes, int] = {b"": 0, UNDEFINED.encode(): 0}

    def indexes(self, values: tuple[bytes, ...] | list[bytes]) -> list[int]:
        """The index of each value, new values numbered in order of first appearance."""
        index = self._index
        new = list(filterfalse(index.__contains__, dict.fromkeys(values)))
        if new:
            index.update(zip(new, count(len(self.names))))
            self.names += [v.decode("utf-8", "replace") for v in new]
        return list(map(index.__getitem__, values))


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


def read_model(sources: list[MergeSource]) -> ReportModel:
    """Read every source once into a ReportModel (timeline order)."""
    if not sources:
        raise UsageError("nothing to report: no trace file")
    labels = short_labels([s.node for s in sources])
    model = ReportModel(
        nodes=[s.node for s in sources],
        labels=[s.label or labels[s.node] for s in sources],
        paths=[Path(s.path) for s in sources],
        file_lines=[],
    )
    keys: list[float] = []
    for index, source in enumerate(sources):
        before = len(model.t)
        model.file_lines.append(_read_file(model, index, source))
        if len(sources) > 1 and len(model.t) > before:  # the node's running maximum: merge.py's order
            keys += running_max(model.t[before:].tolist(), float("-inf"))
    if any(map(gt, keys, islice(keys, 1, None))):
        order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: ties keep (node, file order)
        for name in ("t", "node", "level", "module", "pid", "callid", "line", "nlines"):
            col = getattr(model, name)
            setattr(model, name, array(col.typecode, map(col.__getitem__, order)))
    return model


def _read_file(model: ReportModel, node: int, source: MergeSource) -> int:
    """Append one file's events to ``model``; returns the file's line count."""
    timeline = Timeline(source.correction)
    level_of = {s.encode(): i for i, s in enumerate(model.levels)}
    node_column = array("H", [node])
    previous = source.correction.start.measured_at
    lineno = 0
    rest = b""
    first = len(model.t)  # this file's first event
    try:
        fh = open(source.path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise KazooError(f"cannot read {source.path}: {exc.strerror or exc}") from exc
    with fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                if rest:
                    block, rest = rest + b"\n", b""
                else:
                    break
            else:
                block = rest + block
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
                if not block:
                    continue
            count = block.count(b"\n")
            columns, starts, nlines = _records(model, block, lineno, len(model.t) > first)
            lineno += count
            if not columns:
                continue
            times, sevs, cids, mods, pids = columns
            instants: list[Any] = timeline.instants(list(times))
            if None in instants:
                # A header whose time is no time of day ("25:00:00.000"): merge.py reads it as a
                # continuation line, so it gets the previous record's instant (the file's start first).
                for i in sorted(nones(instants)):
                    instants[i] = instants[i - 1] if i else previous
            previous = instants[-1]
            model.t += array("d", instants)
            model.node.extend(node_column * len(times))
            for sev in set(sevs).difference(level_of):
                level_of[sev] = len(model.levels)
                model.levels.append(sev.decode("ascii"))
            model.level += array("B", list(map(level_of.__getitem__, sevs)))
            model.module += array("I", model.modules.indexes(mods))
            model.pid += array("I", model.pids.indexes(pids))
            model.callid += array("I", model.callids.indexes(cids))
            model.line.extend(starts)
            model.nlines.extend(nlines)
    return lineno


def _records(
    model: ReportModel, block: bytes, lineno: int, continues: bool
) -> tuple[list[tuple[bytes, ...]], Iterable[int], Iterable[int]]:
    """A chunk of whole lines: the header fields of its records as columns (time, severity, callid,
    module, pid), each record's first line number and line count (the same records as
    logparse.parse_lines). Lines before the first header continue the previous chunk's last
    record (``continues``) or are orphans (the file's start)."""
    # "\n" + the chunk without its last newline: every line, a header's first, follows a newline,
    # at the same offsets as in the chunk.
    text = b"\n" + block[:-1]
    found = _FAST.search(text)
    head_at = len(block) if found is None else found.start()
    if head_at:
        before = block.count(b"\n", 0, head_at)
        if continues:
            model.nlines[-1] += before
        else:
            model.orphan_lines += before
        lineno += before
    if found is None:
        return [], [], []
    lines = block.count(b"\n", head_at)
    records = _FAST.findall(text, head_at)
    *columns, more = zip(*records, strict=True)
    if not any(more):  # no continuation lines (the usual chunk)
        if len(records) == lines:
            return columns, range(lineno, lineno + lines), repeat(1, lines)
    else:
        extra = list(map(bytes.count, more, repeat(b"\n")))
        if len(records) + sum(extra) == lines:
            nlines = list(map(add, extra, repeat(1)))
            return columns, accumulate(nlines[:-1], initial=lineno), nlines
    # A line starting with two digits that is not a header (_FAST skipped it): check every line.
    records = _RECORDS.findall(block, head_at)
    *columns, more = zip(*records, strict=True)
    nlines = [1 + n for n in map(bytes.count, more, repeat(b"\n"))]
    return columns, accumulate(nlines[:-1], initial=lineno), nlines


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
