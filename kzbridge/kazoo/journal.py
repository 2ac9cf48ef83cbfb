"""A local record of the traces this machine started, so `status` and `stop` can find them later.

One JSON file; each write replaces it atomically. Holds no cookie.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def journal_path() -> Path:
    base = os.environ.get("KZBRIDGE_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kzbridge")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path / "journal.json"


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
    lager_trace: str = ""          # hex of the external-term lager trace tuple (lager_event sink)
    stopped: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def load() -> list[JournalEntry]:
    path = journal_path()
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


def _save(entries: list[JournalEntry]) -> None:
    path = journal_path()
    cutoff = time.time() - 7 * 86400
    keep = [e for e in entries if not e.stopped or e.stopped > cutoff]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".journal.")
    with os.fdopen(fd, "w") as fh:
        json.dump([asdict(e) for e in keep], fh, indent=1)
    os.replace(tmp, path)


def record(entry: JournalEntry) -> None:
    entries = [e for e in load() if not (e.node == entry.node and e.ref == entry.ref)]
    entries.append(entry)
    _save(entries)


def mark_stopped(node: str, ref: str) -> None:
    entries = load()
    for e in entries:
        if e.node == node and e.ref == ref and not e.stopped:
            e.stopped = time.time()
    _save(entries)


def extend_lease(node: str, ref: str, until: float) -> None:
    """Record a renewed lease, so ``status`` shows when the node would stop the trace now."""
    entries = load()
    hit = [e for e in entries if e.node == node and e.ref == ref and not e.stopped]
    for e in hit:
        e.lease_until = until
    if hit:
        _save(entries)


def find(node: str, ref: str) -> JournalEntry | None:
    for e in load():
        if e.node == node and e.ref == ref:
            return e
    return None


def active(node: str) -> list[JournalEntry]:
    now = time.time()
    return [e for e in load() if e.node == node and not e.stopped and e.lease_until > now]
