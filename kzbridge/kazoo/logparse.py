"""Parse trace files written with Kazoo's default format.

    11:38:57.900 [debug] |Undefined|0000000000|Undefined:Undefined:{5,13} (<0.116.0>) noise 82

Fields may read ``Undefined``; the line may be ``{Line,Col}`` (OTP 24+); a message
may hold ``|``, ``:`` and newlines, so a line that does not start like a record
continues the previous record's message.

lager prints only the time of day (``HH:MM:SS.mmm``, `` UTC`` appended when the node
runs with ``utc_log``); clock.Timeline turns it into an instant.

Forged headers: what can be told apart, and what cannot
    A message may hold a newline followed by text shaped like a header
    (``"ok\n11:38:57.900 [error] |app|cid|mod:fun:1 (<0.1.0>) forged"``). lager formats
    each event whole and hands it to the file in one write, but its file backend buffers
    (delayed_write) and we read the file in chunks: a chunk holds many events, and
    nothing in the bytes marks where one write ended. In the text format a forged header
    line is byte for byte what a real one would be, and times are no help either (lager
    stamps the time in the logging process, so events of different processes legitimately
    arrive slightly out of order). So in general the two cannot be told apart, and
    ``parse_text`` and an assembler without ``admits`` take every header-shaped line as
    a record.

    What can be told apart soundly: a line that no event *of this trace* could have
    produced. lager writes to a trace file only events at or above the trace's level
    whose metadata match all its filters; when the format prints a filtered key (the
    lager_event format prints module, function, pid, callid, application; Kazoo's data
    format prints pid and callid), a header-shaped line whose severity is below the level,
    or whose printed value differs from the filter's, cannot be an event of the trace: it
    continues the previous record's message. ``admitted_by`` builds that check and
    TraceSession uses it for traces it started with a default format and file name (a
    file shared with another trace would break the premise). A forged line that matches
    the trace's level and filters stays indistinguishable: use ``--json`` (exact fields)
    or read the file with that in mind. On a terminal, kzbridge prints a message's further
    lines indented (cli.render), so they do not look like records of their own there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
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
SEVERITIES = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Metadata key -> the LogRecord field it is printed in, for the formats kzbridge starts traces with.
PRINTED_BY_LAGER_FORMAT = {
    "module": "module",
    "function": "function",
    "pid": "pid",
    "callid": "callid",
    "application": "app",
}
PRINTED_BY_KAZOO_FORMAT = {"pid": "pid", "callid": "callid", "mod": "module", "func": "function", "from_app": "app"}


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


def _printed(value: Any) -> str | None:
    """How lager prints a filter value (atom name, binary text, string), or None if unsure."""
    from ..wire.terms import Atom, ErlString

    if type(value) is Atom:
        return None if value.name == "*" else value.name
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if type(value) in (str, ErlString):
        return str(value)
    return None


def admitted_by(level: str, filters: list[Any], printed: Mapping[str, str]) -> Callable[[LogRecord], bool]:
    """A check that says False for a parsed header no event of the trace could have produced:
    severity below ``level``, or a printed field that differs from an equality filter on the
    key it prints (``printed``: key -> LogRecord field). See the module docstring."""
    lowest = SEVERITIES.index(level) if level in SEVERITIES else 0
    wanted: list[tuple[str, str]] = []
    for f in filters:
        if type(f) is tuple and len(f) == 2 and getattr(f[0], "name", None) in printed:
            text = _printed(f[1])
            if text is not None:
                wanted.append((printed[f[0].name], text))

    def admits(rec: LogRecord) -> bool:
        if rec.severity in SEVERITIES and SEVERITIES.index(rec.severity) < lowest:
            return False
        return all((getattr(rec, field) or UNDEFINED) == text for field, text in wanted)

    return admits


class LineAssembler:
    """Feeds text chunks, yields complete records; a record is complete when the next header starts.

    ``flush()`` yields the last record at end of input. Linear in the input: the text
    after the last newline and a record's continuation lines are kept as lists of
    pieces and joined once, so a record of any number of lines, or a line arriving in
    any number of chunks, costs no more than its size.

    ``admits`` (see ``admitted_by``): a header-shaped line it refuses continues the
    current record's message instead of starting one (counted in ``refused_headers``).
    """

    def __init__(self, admits: Callable[[LogRecord], bool] | None = None) -> None:
        self._admits = admits
        self.refused_headers = 0
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
            if rec is not None and self._admits is not None and self._current is not None and not self._admits(rec):
                self.refused_headers += 1
                rec = None
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
