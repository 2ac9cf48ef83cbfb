"""Parse trace files written with Kazoo's default format.

    11:38:57.900 [debug] |Undefined|0000000000|Undefined:Undefined:{5,13} (<0.116.0>) noise 82

Fields may read ``Undefined``; the line may be ``{Line,Col}`` (OTP 24+); a message
may hold ``|``, ``:`` and newlines, so a line that does not start like a record
continues the previous record's message.

lager prints only the time of day (``HH:MM:SS.mmm``, `` UTC`` appended when the node
runs with ``utc_log``); clock.Timeline turns it into an instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

_HEADER = re.compile(
    r"(?P<time>(?:\d{4}-\d{2}-\d{2} )?\d{2}:\d{2}:\d{2}\.\d{3}(?: UTC)?) "
    r"\[(?P<severity>[a-z]+)\] "
    r"\|(?P<app>[^|]*)\|(?P<callid>[^|]*)\|"
    r"(?P<module>[^:|]*):(?P<function>[^:|]*):(?P<line>\{\d+,\d+\}|\d+|Undefined) "
    r"\((?P<pid>[^)]*)\) "
    r"(?P<message>.*)\Z",
    re.DOTALL,
)
UNDEFINED = "Undefined"


@dataclass
class LogRecord:
    """One event of a trace file."""

    time: str
    severity: str
    app: str | None
    callid: str | None
    module: str | None
    function: str | None
    line: int | None
    column: int | None
    pid: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _opt(value: str) -> str | None:
    return None if value == UNDEFINED or value == "" else value


def parse_header(text: str) -> LogRecord | None:
    m = _HEADER.match(text)
    if not m:
        return None
    line_text = m.group("line")
    line: int | None
    column: int | None = None
    if line_text.startswith("{"):
        a, b = line_text[1:-1].split(",")
        line, column = int(a), int(b)
    elif line_text == UNDEFINED:
        line = None
    else:
        line = int(line_text)
    return LogRecord(
        time=m.group("time"),
        severity=m.group("severity"),
        app=_opt(m.group("app")),
        callid=_opt(m.group("callid")),
        module=_opt(m.group("module")),
        function=_opt(m.group("function")),
        line=line,
        column=column,
        pid=_opt(m.group("pid")),
        message=m.group("message"),
    )


class LineAssembler:
    """Feeds text chunks, yields complete records; a record is complete when the next header starts.

    ``flush()`` yields the last record at end of input. Linear in the input: the text
    after the last newline and a record's continuation lines are kept as lists of
    pieces and joined once, so a record of any number of lines, or a line arriving in
    any number of chunks, costs no more than its size.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []  # pieces of the line not yet ended by a newline
        self._current: LogRecord | None = None
        self._more: list[str] = []  # continuation lines of the current record
        self.orphan_lines = 0

    def feed(self, text: str) -> list[LogRecord]:
        if "\n" not in text:
            if text:
                self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending = []
        lines = text.split("\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        out: list[LogRecord] = []
        for line in lines:
            rec = parse_header(line)
            if rec is not None:
                self._close(out)
                self._current = rec
            elif self._current is not None:
                self._more.append(line)
            else:
                self.orphan_lines += 1
        return out

    def _close(self, out: list[LogRecord]) -> None:
        if self._current is None:
            return
        if self._more:
            self._more.insert(0, self._current.message)
            self._current.message = "\n".join(self._more)
            self._more = []
        out.append(self._current)
        self._current = None

    def flush(self) -> list[LogRecord]:
        out = self.feed("\n") if self._pending else []
        self._close(out)
        return out


def parse_lines(lines: Iterable[str]) -> Iterator[LogRecord]:
    """Records from an iterable of text chunks (e.g. an open file)."""
    asm = LineAssembler()
    for chunk in lines:
        yield from asm.feed(chunk)
    yield from asm.flush()


def parse_text(text: str) -> list[LogRecord]:
    return list(parse_lines([text]))
