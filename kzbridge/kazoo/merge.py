"""Several nodes' trace files, merged into one timeline by corrected UTC instant.

A *record* is a line that starts with a printed time plus the lines after it that do not
(a message with newlines of its own). Each record gets the instant ``clock.Timeline``
computes for its node; lines are merged by ``(key, node index, line number)``, where the key
is the running maximum of the node's instants and a continuation line has its record's, in
batches: each round merges what every file has passed (up to the smallest last key among
the files still going), so memory holds one batch per file whatever the sizes, lines of one
node always keep their file order and a record's lines stay together. The work per line is
done by builtins over whole columns (map, zip, sort, join), not by Python code per line.

Every output line is ``LABEL INSTANT LINE``: the node's short label padded to one width,
the corrected UTC instant (``2026-11-25T23:59:58.123Z``), then the line as the node wrote
it, byte for byte. Continuation lines carry their record's label and instant. The same
inputs always give the same bytes, so an offline merge reproduces a run's merged.log.

``LiveMerger`` is the streaming form for ``--follow``: lines from different nodes arrive
out of order (lager flushes about once a second), so it holds each record until every
node's stream has passed its instant (a watermark), but never longer than ``hold``
seconds behind the newest data, and reports the nodes that hold the others back.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from operator import add as _add
from operator import floordiv as _floordiv
from operator import gt as _gt
from operator import mod as _mod
from operator import mul as _mul
from operator import sub as _sub
from pathlib import Path
from typing import Any, Protocol

from .clock import ClockCorrection, Timeline, format_instant, nones, printed_seconds
from .logparse import LogRecord, parse_text


class Writer(Protocol):
    """Where merged bytes go: a binary file, or a localfiles.Partial."""

    def write(self, data: bytes, /) -> object: ...


# One record, as merged_items gives it: (sort key, node index, line number of its first line
# in that node's file, instant, its lines).
MergeItem = tuple[float, int, int, float, list[bytes]]
_BATCH_BYTES = 1 << 20


@dataclass
class MergeSource:
    """One node's collected file and its clock correction."""

    node: str
    path: Path
    correction: ClockCorrection
    label: str = ""


def short_labels(nodes: list[str]) -> dict[str, str]:
    """The shortest unique label per node: ``kazoo_apps``, else ``kazoo_apps@host1``, else the full name."""

    def forms(node: str) -> list[str]:
        name, _, host = node.partition("@")
        return [name, f"{name}@{host.split('.')[0]}" if host else name, node]

    for level in range(3):
        labels = {n: forms(n)[level] for n in nodes}
        if len(set(labels.values())) == len(set(nodes)):
            return labels
    return {n: n for n in nodes}


class _LineReader:
    """One file's lines, a batch at a time, each with its instant and sort key.

    The sort key is the running maximum of the instants, so a record that prints an earlier
    time than its predecessor (lager's buffering reorders by milliseconds) stays after it:
    lines of one node always keep their file order. A record's continuation lines carry its
    instant and key, so they stay right after it. Everything per line is done by builtins
    over whole lists (clock.Timeline.instants, map, zip): that is the merge's cost per line.
    """

    def __init__(self, source: MergeSource, index: int) -> None:
        self.index = index
        # A buffer of a batch: readlines then refills it once per batch, not once per 8 KB
        # (that alone was 0.17 us a line).
        self._fh = open(source.path, "rb", buffering=_BATCH_BYTES)  # noqa: SIM115 - closed by close()
        self._timeline = Timeline(source.correction)
        self._instant = source.correction.start.measured_at
        self._key = float("-inf")
        self._timed = False  # a line with a time seen
        self.lines = 0
        self.records = 0
        self.done = False

    def batch(self) -> tuple[list[float], list[float], list[bytes]]:
        """The next lines' sort keys, instants and text (empty once the file is done)."""
        lines = [] if self.done else self._fh.readlines(_BATCH_BYTES)
        if not lines:
            self.done = True
            return [], [], []
        if lines[-1][-1:] != b"\n":
            lines[-1] += b"\n"  # the file's last line, unterminated: every output line ends with one
        instants: list[Any] = self._timeline.instants(lines)
        records = len(lines)
        lead = 0  # lines before the file's first time: one record, sorted first (key -inf)
        if None in instants:
            # Continuation lines take their record's instant and key.
            continued = sorted(nones(instants))
            records -= len(continued)
            if not self._timed:
                while lead < len(continued) and continued[lead] == lead:
                    lead += 1
                records += 1 if lead and not self.lines else 0
            for i in continued:
                instants[i] = instants[i - 1] if i else self._instant
        self._timed = self._timed or lead < len(lines)
        self.lines += len(lines)
        self.records += records
        self._instant = instants[-1]
        if lead:
            keys = running_max([self._key] * lead + instants[lead:], self._key)
        else:
            keys = running_max(instants, self._key)
        self._key = keys[-1]
        return keys, instants, lines

    def close(self) -> None:
        self._fh.close()


def running_max(values: list[float], floor: float) -> list[float]:
    """``accumulate(values, max, initial=floor)`` without the floor: the values themselves when
    already in order (lager's usual), else each dip raised to the maximum before it."""
    if values[0] >= floor and not any(map(_gt, values, islice(values, 1, None))):
        return values
    return list(accumulate(values, max, initial=floor))[1:]


# What the merge carries per line besides its key: shaped per file by the caller (e.g. the
# output line already formatted), so merging moves one object per line.
Shape = Callable[[int, list[float], list[float], list[bytes]], list[Any]]


def _merged(sources: list[MergeSource], shape: Shape, stats: MergeStats | None = None) -> Iterator[Iterator[Any]]:
    """Every line of every source, shaped, in timeline order, in batches; ``stats`` gets the counts.

    Each round tops up every reader's buffer with a batch, merges everything up to the
    smallest last position (key, node index) among the readers still going (nothing later in
    any file can sort before it), and keeps the rest. Memory: one batch per file, whatever the
    sizes. The order is (key, node index, line number), which a stable sort on the keys of the
    buffers laid end to end in node order gives.
    """
    readers = [_LineReader(s, i) for i, s in enumerate(sources)]
    keys: list[list[float]] = [[] for _ in readers]
    shaped: list[list[Any]] = [[] for _ in readers]
    try:
        while True:
            for r in readers:
                if not keys[r.index] and not r.done:
                    k, instants, lines = r.batch()
                    keys[r.index], shaped[r.index] = k, shape(r.index, k, instants, lines)
                    if stats is not None:
                        stats.lines[r.index], stats.records[r.index] = r.lines, r.records
            going = [(k[-1], r.index) for r, k in zip(readers, keys, strict=True) if k and not r.done]
            bound_key, bound_index = min(going) if going else (float("inf"), len(readers))
            all_keys: list[float] = []
            all_shaped: list[Any] = []
            for i, k in enumerate(keys):
                if not k:
                    continue
                # At or before the bound: the bound's own node up to its last line; a node before it
                # in order, keys up to the bound's; a node after it, keys below it.
                if i == bound_index or k[-1] < bound_key or (k[-1] == bound_key and i < bound_index):
                    cut = len(k)
                else:
                    cut = (bisect.bisect_right if i < bound_index else bisect.bisect_left)(k, bound_key)
                all_keys += k[:cut]
                all_shaped += shaped[i][:cut]
                keys[i], shaped[i] = k[cut:], shaped[i][cut:]
            if not all_keys:
                if not any(keys):
                    return
                continue
            order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
            yield map(all_shaped.__getitem__, order)
    finally:
        for r in readers:
            r.close()


def merged_items(sources: list[MergeSource]) -> Iterator[MergeItem]:
    """All records of all sources in timeline order, one item per record (its lines together)."""

    def shape(index: int, keys: list[float], instants: list[float], lines: list[bytes]) -> list[Any]:
        return list(zip(keys, repeat(index), instants, lines))

    current: list[Any] | None = None
    seq = [0] * len(sources)
    for batch in _merged(sources, shape):
        for key, index, instant, line in batch:
            seq[index] += 1
            if current is not None and index == current[1] and printed_seconds(line[:23]) is None:
                current[4].append(line)
                continue
            if current is not None:
                yield (current[0], current[1], current[2], current[3], current[4])
            current = [key, index, seq[index] - 1, instant, [line]]
    if current is not None:
        yield (current[0], current[1], current[2], current[3], current[4])


_MILLIS = [b".%03dZ " % i for i in range(1000)]
# A batch whose lines span at most one second per this many lines gets a table of texts per second.
_DENSE = 300


def write_merged(sources: list[MergeSource], out: Writer) -> MergeStats:
    """Merge ``sources`` into ``out`` (see module docstring); returns counts per node."""
    labels = short_labels([s.node for s in sources])
    width = max((len(s.label or labels[s.node]) for s in sources), default=0)
    prefixes = [(s.label or labels[s.node]).ljust(width).encode() + b" " for s in sources]
    stats = MergeStats([s.node for s in sources])
    heads: list[dict[int, bytes]] = [{} for _ in sources]  # per node: whole second -> "LABEL 2026-11-25T23:59:58"
    # Per node: whole second -> its 1000 "LABEL 2026-11-25T23:59:58.123Z " texts, for dense seconds.
    blocks: list[dict[int, list[bytes]]] = [{} for _ in sources]

    def head(index: int, second: int) -> bytes:
        known = heads[index]
        text = known.get(second)
        if text is None:
            if len(known) > 4096:
                known.clear()
            text = known[second] = prefixes[index] + format_instant(second)[:-5].encode()
        return text

    def shape(index: int, keys: list[float], instants: list[float], lines: list[bytes]) -> list[bytes]:
        # Each output line whole, column by column: "LABEL 2026-11-25T23:59:58" + ".123Z " + line.
        millis = list(map(float.__round__, map(_mul, instants, repeat(1000.0))))
        if not millis:
            return []
        first, last = min(millis) // 1000, max(millis) // 1000
        if (last - first + 1) * _DENSE <= len(millis):
            # Dense (the common case for a big file): one table covering the batch's seconds,
            # each second's 1000 texts made once, and one look-up per line.
            mine = blocks[index]
            if len(mine) > 16:
                mine.clear()
            table: list[bytes] = []
            for second in range(first, last + 1):
                block = mine.get(second)
                if block is None:
                    block = mine[second] = list(map(_add, repeat(head(index, second)), _MILLIS))
                table += block
            texts = map(table.__getitem__, map(_sub, millis, repeat(first * 1000)))
            return list(map(_add, texts, lines))
        seconds = list(map(_floordiv, millis, repeat(1000)))
        for second in set(seconds):
            head(index, second)
        known = heads[index]
        tails = map(_MILLIS.__getitem__, map(_mod, millis, repeat(1000)))
        return list(map(_add, map(_add, map(known.__getitem__, seconds), tails), lines))

    for batch in _merged(sources, shape, stats):
        out.write(b"".join(batch))
    return stats


@dataclass(frozen=True)
class MergedRecord:
    """One record of the merged timeline: its node, corrected UTC instant, text, and the parsed record
    (None when the text is not in Kazoo's format, e.g. a custom --format)."""

    node: str
    instant: float
    text: str
    record: LogRecord | None

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.instant, dt.timezone.utc)


def merged_records(sources: list[MergeSource]) -> Iterator[MergedRecord]:
    """The merged timeline as records, in order; memory stays flat as with merged_items."""
    names = [s.node for s in sources]
    for _, index, _, instant, lines in merged_items(sources):
        text = b"".join(lines).decode("utf-8", "replace").rstrip("\n")
        parsed = parse_text(text)
        yield MergedRecord(names[index], instant, text, parsed[0] if parsed else None)


def merge_to_file(sources: list[MergeSource], path: str | os.PathLike[str], mode: int | None = None) -> MergeStats:
    """``write_merged`` into ``path`` (a new file: never over an existing one, 0600 unless ``mode``,
    written as ``path.partial`` first; see localfiles)."""
    from .localfiles import new_file

    with new_file(path, mode) as part:
        return write_merged(sources, part)


@dataclass
class MergeStats:
    nodes: list[str]
    records: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = self.records or [0] * len(self.nodes)
        self.lines = self.lines or [0] * len(self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {n: {"records": r, "lines": ln} for n, r, ln in zip(self.nodes, self.records, self.lines, strict=False)}


@dataclass
class _Held:
    instant: float
    node: int
    seq: int
    item: Any = field(compare=False)

    def __lt__(self, other: _Held) -> bool:
        return (self.instant, self.node, self.seq) < (other.instant, other.node, other.seq)


class LiveMerger:
    """Holds records from several live streams until every stream has passed their instant.

    ``push(node, instant, item)`` as records arrive; ``passed(node, instant)`` when a node's
    stream is known to have nothing earlier than ``instant`` to come (e.g. its reader polled
    and found nothing new); ``release(now)`` returns the records that are ready, in order.
    A node that has said nothing for ``hold`` seconds no longer holds the others back:
    ``lagging(now)`` names it, and a record it sends later than what was already released
    comes out at once, counted per node in ``late`` (that node falls behind).
    """

    def __init__(self, nodes: Iterable[str], hold: float = 2.0) -> None:
        self.hold = hold
        self._index = {n: i for i, n in enumerate(nodes)}
        self._mark: dict[str, float] = {}
        self._heard: dict[str, float] = {}
        self._gone: set[str] = set()
        self._heap: list[_Held] = []
        self._seq = 0
        self.released_up_to = float("-inf")
        self.late: dict[str, int] = {}

    @property
    def nodes(self) -> list[str]:
        return list(self._index)

    def push(self, node: str, instant: float, item: Any, now: float) -> None:
        self._heard[node] = now
        self._mark[node] = max(self._mark.get(node, float("-inf")), instant)
        self._seq += 1
        if instant < self.released_up_to:
            self.late[node] = self.late.get(node, 0) + 1
        heapq.heappush(self._heap, _Held(instant, self._index[node], self._seq, item))

    def passed(self, node: str, instant: float, now: float) -> None:
        self._heard[node] = now
        self._mark[node] = max(self._mark.get(node, float("-inf")), instant)

    def gone(self, node: str) -> None:
        """The node's stream ended (stopped, or lost): it holds nothing back any more."""
        self._gone.add(node)

    def watermark(self, now: float) -> float:
        """Records at or before this instant are ready."""
        floor = now - self.hold
        marks = [max(self._mark.get(n, float("-inf")), floor) for n in self._index if n not in self._gone]
        return min(marks) if marks else float("inf")

    def lagging(self, now: float) -> list[str]:
        """Live nodes that have said nothing (no data, no poll) for ``hold`` seconds."""
        return [n for n in self._index if n not in self._gone and now - self._heard.get(n, float("-inf")) > self.hold]

    def release(self, now: float) -> list[Any]:
        mark = self.watermark(now)
        out = []
        while self._heap and self._heap[0].instant <= mark:
            held = heapq.heappop(self._heap)
            self.released_up_to = max(self.released_up_to, held.instant)
            out.append(held.item)
        return out

    def drain(self) -> list[Any]:
        """Everything still held, in order (the end of the run)."""
        out = []
        while self._heap:
            held = heapq.heappop(self._heap)
            self.released_up_to = max(self.released_up_to, held.instant)
            out.append(held.item)
        return out
