"""What the command line draws: progress, record lines, a trace's summary, the trace observers.

Pure text in, text out, plus observers for a TraceSession's events. The record
line is where terminal-safe text (escaping control characters from the node) goes.
No asyncio and no tracing layer at import time.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..kazoo.logparse import LogRecord
    from ..kazoo.session import Event, RunSummary

SIGNAL_NAMES = ("interrupted", "terminated")

# What a terminal acts on instead of showing: C0 controls (ESC starts colour, title (OSC) and
# clear-screen sequences; CR and BS overwrite what was printed), DEL, C1 controls (U+0080-U+009F,
# CSI among them), and the Unicode line/paragraph separators and bidirectional overrides that
# reorder or break what is shown. Newline is handled by the caller (kept, or indented).
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_BUT_TAB = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def safe_text(text: str, *, newlines: str | None = None, tabs: bool = False) -> str:
    """``text`` from a node or from whoever wrote the logs, safe to print on a terminal.

    Control characters show as ``\\xHH`` (``\\uHHHH`` for the Unicode ones). A newline is
    shown as ``\\x0a`` unless ``newlines`` is given: then each newline is kept and followed
    by that indent, so a message's continuation lines cannot pass for records of their own.
    A backslash already in the text is left as it is: the escapes are for showing, not
    for decoding (--json and --raw are for exact text). ``tabs`` keeps tabs (printed tables).
    """
    out = (_UNSAFE_BUT_TAB if tabs else _UNSAFE).sub(_escape, text)
    return out.replace("\n", "\\x0a" if newlines is None else "\n" + newlines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class ProgressBar:
    """One self-overwriting stderr line for long transfers: bar, bytes, rate; at most 10 redraws a second."""

    WIDTH = 30

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, total: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        rate = done / max(now - self.started, 1e-6)
        if total > 0:
            filled = min(self.WIDTH, self.WIDTH * done // total)
            bar = "[" + "#" * filled + "." * (self.WIDTH - filled) + f"] {100 * done / total:5.1f}%"
            size = f"{human_bytes(done)} / {human_bytes(total)}"
        else:
            bar, size = "", human_bytes(done)
        click.echo(f"\r  {bar}  {size}  {human_bytes(int(rate))}/s   ", err=True, nl=False)

    def finish(self, nbytes: int) -> None:
        self.update(nbytes, nbytes, final=True)
        click.echo("", err=True)


# Continuation lines of a multi-line message start with this, never with a time.
CONTINUATION = "    | "


def record_line(rec: LogRecord, as_json: bool, raw: bool = False) -> str:
    """One record as --follow prints it: a JSON object, or time, severity, who, callid, pid, message.

    Every field comes from the node (and the message from whoever logged it), so unless
    ``raw`` the text is made terminal-safe (safe_text) and a message's further lines are
    indented, so a newline in a message cannot start a forged record on screen.
    """
    if as_json:
        import json  # here: one-shot commands load this module, and most never print JSON

        return json.dumps(rec.to_dict(), ensure_ascii=False)
    who = f"{rec.module or '?'}:{rec.function or '?'}"
    callid = f" [{rec.callid}]" if rec.callid and rec.callid != "0000000000" else ""
    line = f"{rec.time} {rec.severity:<7} {who}{callid} {rec.pid or ''} "
    if raw:
        return line + rec.message
    return safe_text(line) + safe_text(rec.message, newlines=CONTINUATION)


def summary_json(s: RunSummary) -> dict[str, Any]:
    """The summary as --json has always printed it (generation 0 for the lager_event sink)."""
    data = dict(s.__dict__)
    data["generation"] = s.generation or 0
    data["safety"] = s.safety.to_dict() if s.safety is not None else None
    return data


def summary_text(s: RunSummary) -> str:
    """The summary for a person; node names and paths shown terminal-safe."""
    return safe_text(
        f"ref {s.ref} on {s.node} ({s.sink} sink, generation {s.generation or '-'}), "
        f"stopped by {s.reason} after {s.seconds:.1f}s\n"
        f"  remote: {s.remote_path}\n  local:  {s.local_path}{' (PARTIAL)' if s.partial else ''}\n"
        f"  {s.records} records ({s.lines} lines), {s.bytes} bytes{', size verified' if s.verified else ''}",
        newlines="",
    ) + (f"\n  stopped by safety: {s.safety.describe('--max-rate')}" if s.safety is not None else "")


# ---------------------------------------------------------------- observers of a TraceSession


def stop_notices(event: Event) -> None:
    """Say what a signal did: the first stops and collects, the second stops without collecting."""
    from ..kazoo.session import StoppedBy

    if isinstance(event, StoppedBy) and event.safety is not None:
        click.echo(
            f"\nkzbridge: stopping the trace for the node's safety: {event.safety.describe('--max-rate')}", err=True
        )
        return
    if not isinstance(event, StoppedBy) or event.by not in SIGNAL_NAMES:
        return
    if event.reason == "requested":
        click.echo(
            f"\nkzbridge: {event.by}: stopping the trace and collecting "
            "(press Ctrl-C again to stop without collecting)",
            err=True,
        )
    elif event.reason == "abandoned":
        click.echo("kzbridge: stopping the trace without collecting", err=True)


def progress_line(event: Event) -> None:
    """Elapsed time, bytes and records on one self-overwriting stderr line; a newline at the end."""
    from ..kazoo.session import Collected, Lost, Progress

    if isinstance(event, Progress):
        click.echo(
            f"\r  {event.elapsed:6.1f}s  {human_bytes(event.bytes):>10}  {event.records} records   ", err=True, nl=False
        )
    elif isinstance(event, (Collected, Lost)):
        click.echo("", err=True)


class RecordPrinter:
    """--follow: each record on stdout as it arrives. When the reader of stdout goes away
    (``| head``), stdout is pointed at /dev/null and ``on_closed`` is called once."""

    def __init__(
        self, as_json: bool, on_closed: Callable[[], None], silence: Callable[[], None], *, raw: bool = False
    ) -> None:
        self.as_json = as_json
        self.raw = raw
        self.on_closed = on_closed
        self.silence = silence
        self.closed = False

    def __call__(self, event: Event) -> None:
        from ..kazoo.session import Record

        if not isinstance(event, Record) or self.closed:
            return
        try:
            # color=True: --raw means the bytes; click would strip colour sequences in a pipe.
            click.echo(record_line(event.record, self.as_json, self.raw), color=True)
        except BrokenPipeError:
            self.closed = True
            self.silence()
            self.on_closed()


def is_terminal() -> bool:
    return sys.stderr.isatty()
