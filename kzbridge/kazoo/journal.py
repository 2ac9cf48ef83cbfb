"""A local record of the traces this machine started, so `status` and `stop` can find them later.

One JSON file in kzbridge's cache directory (:mod:`kzbridge.cachedir`), mode 0600, holding no
cookie. Several kzbridge processes may write at once (twelve concurrent ``start``\\ s, a
``stop --all`` while a trace renews its lease): every read-modify-write holds an exclusive
``flock`` on ``journal.lock`` beside it, so one writer at a time and none loses another's
entry. Each write goes to a temporary file that is then renamed over the
journal, so readers (which take no lock) always see a whole file, old or new.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cachedir import cache_dir
from ..errors import LocalFileError

KEEP_STOPPED = 7 * 86400  # stopped entries are forgotten after a week


def journal_path() -> Path:
    return cache_dir() / "journal.json"


@dataclass
class JournalEntry:
    node: str
    ref: str
    remote_path: str
    sink: str
    generation: int
    filters: str
    started: float
    lease_until: float
    detached: bool = False
    lager_trace: str = ""  # hex of the external-term lager trace tuple (lager_event sink)
    stopped: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> list[JournalEntry]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(JournalEntry(**item))
        except TypeError:
            continue
    return out


def load() -> list[JournalEntry]:
    """Every entry, as of the last complete write."""
    return _read(journal_path())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name("journal.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _save(path: Path, entries: list[JournalEntry]) -> None:
    cutoff = time.time() - KEEP_STOPPED
    keep = [e for e in entries if not e.stopped or e.stopped > cutoff]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".journal.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as fh:
            # One entry per line, each by json's C encoder (json.dump with indent runs the pure
            # Python one, and asdict deep-copies): a write is rewritten whole on every start,
            # renewal and stop, and with a week of entries that was milliseconds of the event loop.
            fh.write("[\n" + ",\n".join(json.dumps(vars(e)) for e in keep) + "\n]\n")
        # No fsync: the rename is atomic for every reader and survives our own crash; only a
        # power cut could lose the last entries, and the node's lease stops those traces anyway.
        # An fsync per write (8 ms here) made starting 8 nodes' traces wait on the disk.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _update(change: Callable[[list[JournalEntry]], bool]) -> None:
    """Read, change and write the journal under the lock; ``change`` returns whether to write."""
    path: Path | None = None
    try:
        path = journal_path()
        with _locked(path):
            entries = _read(path)
            if change(entries):
                _save(path, entries)
    except OSError as exc:  # e.g. the cache directory's disk is full: one line, not a traceback
        where = str(path.parent) if path is not None else "kzbridge's cache directory"
        raise LocalFileError(
            f"cannot write kzbridge's journal in {where}: {exc.strerror or exc}", hint=f"free some space in {where}"
        ) from None


def record(entry: JournalEntry) -> None:
    def change(entries: list[JournalEntry]) -> bool:
        entries[:] = [e for e in entries if not (e.node == entry.node and e.ref == entry.ref)]
        entries.append(entry)
        return True

    _update(change)


def mark_stopped(node: str, ref: str) -> None:
    def change(entries: list[JournalEntry]) -> bool:
        hit = [e for e in entries if e.node == node and e.ref == ref and not e.stopped]
        for e in hit:
            e.stopped = time.time()
        return bool(hit)

    _update(change)


def extend_lease(node: str, ref: str, until: float, timer: str = "") -> None:
    """Record a renewed lease, so ``status`` shows when the node would stop the trace now.

    ``timer`` (hex of the external-term timer ref on the node) goes to ``extra["timer"]``, so a
    later ``stop`` from another process can cancel the lease timer instead of leaving it to fire.
    """

    def change(entries: list[JournalEntry]) -> bool:
        hit = [e for e in entries if e.node == node and e.ref == ref and not e.stopped]
        for e in hit:
            e.lease_until = until
            if timer:
                e.extra["timer"] = timer
        return bool(hit)

    _update(change)


def find(node: str, ref: str) -> JournalEntry | None:
    for e in load():
        if e.node == node and e.ref == ref:
            return e
    return None


def active(node: str) -> list[JournalEntry]:
    now = time.time()
    return [e for e in load() if e.node == node and not e.stopped and e.lease_until > now]


def annotate(node: str, ref: str, **extra: Any) -> None:
    """Add facts learned later to a trace's entry (``extra``), e.g. why the node stopped it."""

    def change(entries: list[JournalEntry]) -> bool:
        hit = [e for e in entries if e.node == node and e.ref == ref]
        for e in hit:
            e.extra.update(extra)
        return bool(hit)

    _update(change)
