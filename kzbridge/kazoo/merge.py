"""Several nodes' trace files, merged into one timeline by corrected UTC instant.

A *record* is a line that starts with a printed time plus the lines after it that do not
(a message with newlines of its own). Each record gets the instant ``clock.Timeline``
computes for its node; records are merged by ``(instant, node index, position in file)``
with a k-way merge (``heapq.merge``) that holds one record per node at a time, so memory
stays flat whatever the sizes, and lines of one node always keep their file order.

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

import heapq
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .clock import ClockCorrection, Timeline, format_instant

# (instant, node index, sequence within that node, lines): the tuple order is the merge order.
MergeItem = tuple[float, int, int, list[bytes]]


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


def read_records(source: MergeSource, index: int) -> Iterator[MergeItem]:
    """The records of one file in file order, each with its instant (see module docstring).

    Lines before the first printed time belong to a record stamped with the trace's start.
    """
    timeline = Timeline(source.correction)
    instant = source.correction.start.measured_at
    current: list[bytes] | None = None
    seq = 0
    with open(source.path, "rb") as fh:
        for line in fh:
            t = timeline.instant(line[:23]) if line[:1].isdigit() else None
            if t is None:
                if current is None:
                    current = [line]
                else:
                    current.append(line)
                continue
            if current is not None:
                yield (instant, index, seq, current)
                seq += 1
            current = [line]
            instant = t
    if current is not None:
        yield (instant, index, seq, current)


class _InstantText:
    """Formats instants, re-using the text of the last whole second (most lines share it)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, instant: float) -> bytes:
        ms = round(instant * 1000)
        whole, frac = divmod(ms, 1000)
        if whole != self._second:
            self._second = whole
            self._prefix = format_instant(whole)[:-5]
        return f"{self._prefix}.{frac:03d}Z".encode()


def merged_items(sources: list[MergeSource]) -> Iterator[MergeItem]:
    """All records of all sources in timeline order."""
    return heapq.merge(*(read_records(s, i) for i, s in enumerate(sources)))


def write_merged(sources: list[MergeSource], out: IO[bytes]) -> MergeStats:
    """Merge ``sources`` into ``out`` (see module docstring); returns counts per node."""
    labels = short_labels([s.node for s in sources])
    width = max((len(s.label or labels[s.node]) for s in sources), default=0)
    prefixes = [(s.label or labels[s.node]).ljust(width).encode() + b" " for s in sources]
    stamp = _InstantText()
    stats = MergeStats([s.node for s in sources])
    write = out.write
    for instant, index, _, lines in merged_items(sources):
        head = prefixes[index] + stamp(instant) + b" "
        for line in lines:
            write(head + line if line.endswith(b"\n") else head + line + b"\n")
        stats.records[index] += 1
        stats.lines[index] += len(lines)
    return stats


def merge_to_file(sources: list[MergeSource], path: str | os.PathLike[str]) -> MergeStats:
    """``write_merged`` into ``path``, written whole under a temporary name first."""
    target = Path(path)
    tmp = target.with_name(target.name + ".partial")
    with open(tmp, "wb") as out:
        stats = write_merged(sources, out)
    os.replace(tmp, target)
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
        return {n: {"records": r, "lines": ln} for n, r, ln in zip(self.nodes, self.records, self.lines)}


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
        return [n for n in self._index
                if n not in self._gone and now - self._heard.get(n, float("-inf")) > self.hold]

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
