"""Several nodes' trace files, merged into one timeline by corrected UTC instant.

A *record* is a line that starts with a printed time plus the lines after it that do not
(a message with newlines of its own). Each record gets the instant ``clock.Timeline``
computes for its node; records are merged by ``(instant, node index, position in file)``
in batches: each round merges what every file has passed (up to the smallest last instant
among the files still going), so memory holds one batch per file whatever the sizes, and
lines of one node always keep their file order.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .clock import ClockCorrection, Timeline, format_instant
from .logparse import LogRecord, parse_text


class Writer(Protocol):
    """Where merged bytes go: a binary file, or a localfiles.Partial."""

    def write(self, data: bytes, /) -> object: ...


# (sort key, node index, sequence within that node, instant, lines). The tuple order is the
# merge order; sequences are unique per node, so the lines are never compared.
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


class _RecordReader:
    """One file's records, a batch at a time, each with its instant and sort key.

    The sort key is the running maximum of the instants, so a record that prints an earlier
    time than its predecessor (lager's buffering reorders by milliseconds) stays after it:
    lines of one node always keep their file order.
    """

    def __init__(self, source: MergeSource, index: int) -> None:
        self.index = index
        self._fh = open(source.path, "rb")  # noqa: SIM115 - closed by close(), after the merge
        self._timeline = Timeline(source.correction)
        self._instant = source.correction.start.measured_at
        self._key = float("-inf")
        self._current: list[bytes] | None = None
        self._seq = 0
        self.done = False

    def batch(self) -> list[MergeItem]:
        """The next records (empty once the file is done); the last record is held until the next header."""
        out: list[MergeItem] = []
        while not out and not self.done:
            lines = self._fh.readlines(_BATCH_BYTES)
            if lines and lines[-1][-1:] != b"\n":
                lines[-1] += b"\n"  # the file's last line, unterminated: every output line ends with one
            if not lines:
                self.done = True
                if self._current is not None:
                    out.append((self._key, self.index, self._seq, self._instant, self._current))
                    self._current = None
                break
            index, seq, key, instant, current = self.index, self._seq, self._key, self._instant, self._current
            append = out.append
            for line, t in zip(lines, self._timeline.instants(lines), strict=False):
                if t is None:
                    if current is None:
                        current = [line]
                    else:
                        current.append(line)
                    continue
                if current is not None:
                    append((key, index, seq, instant, current))
                    seq += 1
                current = [line]
                instant = t
                if t > key:
                    key = t
            self._seq, self._key, self._instant, self._current = seq, key, instant, current
        return out

    def close(self) -> None:
        self._fh.close()


def merged_batches(sources: list[MergeSource]) -> Iterator[list[MergeItem]]:
    """All records of all sources in timeline order, in batches.

    Each round tops up every reader's buffer with a batch, merges everything up to the
    smallest last key among the readers still going (nothing later in any file can sort
    before it), and keeps the rest. Memory: one batch per file, whatever the sizes.
    """
    readers = [_RecordReader(s, i) for i, s in enumerate(sources)]
    buffers: list[list[MergeItem]] = [[] for _ in readers]
    try:
        while True:
            for r in readers:
                if not buffers[r.index] and not r.done:
                    buffers[r.index] = r.batch()
            live = [b for b in buffers if b]
            if not live:
                return
            # A reader's later records sort after its last one (key, index, sequence): anything
            # at or before the smallest such position is final.
            going = [_position(buffers[r.index][-1]) for r in readers if not r.done and buffers[r.index]]
            bound = min(going) if going else (float("inf"), 0, 0)
            ready: list[MergeItem] = []
            for i, buf in enumerate(buffers):
                if not buf:
                    continue
                if _position(buf[-1]) <= bound:
                    ready += buf
                    buffers[i] = []
                else:
                    cut = bisect.bisect_right(buf, bound, key=_position)
                    ready += buf[:cut]
                    buffers[i] = buf[cut:]
            ready.sort()
            yield ready
    finally:
        for r in readers:
            r.close()


def _position(item: MergeItem) -> tuple[float, int, int]:
    return (item[0], item[1], item[2])


def merged_items(sources: list[MergeSource]) -> Iterator[MergeItem]:
    """All records of all sources in timeline order."""
    for batch in merged_batches(sources):
        yield from batch


_MILLIS = [b".%03dZ " % i for i in range(1000)]


def write_merged(sources: list[MergeSource], out: Writer) -> MergeStats:
    """Merge ``sources`` into ``out`` (see module docstring); returns counts per node."""
    labels = short_labels([s.node for s in sources])
    width = max((len(s.label or labels[s.node]) for s in sources), default=0)
    prefixes = [(s.label or labels[s.node]).ljust(width).encode() + b" " for s in sources]
    stats = MergeStats([s.node for s in sources])
    records, counted = stats.records, stats.lines
    second = -1
    heads = prefixes
    millis = _MILLIS
    for batch in merged_batches(sources):
        chunk: list[bytes] = []
        add = chunk.append
        for _, index, _, instant, lines in batch:
            # The instant's text: "LABEL 2026-11-25T23:59:58" per node once per second, then ".123Z ".
            ms = round(instant * 1000)
            if ms // 1000 != second:
                second = ms // 1000
                text = format_instant(second)[:-5].encode()
                heads = [p + text for p in prefixes]
            tail = millis[ms - second * 1000]
            if len(lines) == 1:
                add(heads[index])
                add(tail)
                add(lines[0])
            else:
                for line in lines:
                    add(heads[index])
                    add(tail)
                    add(line)
            records[index] += 1
            counted[index] += len(lines)
        out.write(b"".join(chunk))
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
    from .localfiles import Partial

    part = Partial.create(path, mode)
    try:
        stats = write_merged(sources, part)
    except BaseException:
        part.discard()
        raise
    part.publish()
    return stats


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
