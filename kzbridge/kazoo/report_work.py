"""The work of ``kzbridge report`` that runs in parallel: parsing byte ranges of trace files, compressing them.

report.py cuts each file into ranges of whole lines and has each range parsed here
(``parse_range``); report_html embeds each file compressed (``compress_files``). When the
files are large and there is more than one CPU, both run in worker processes (``python -m
kzbridge.kazoo.report_work``, started by ``start``: each takes its list of tasks, one marshal
object, from its stdin, and writes each task's result to its stdout, in order, as its length
in 8 bytes and then marshal);
else in the caller's process, by the same functions.

A range's result holds its records' header fields as columns (the printed times as they are;
the strings as indexes into the range's own tables, which report.py maps onto the model's),
each record's first line (counted from the range's first line) and line count, and the lines
before the range's first header (the previous range's last record's continuation lines, or
the file's orphan lines: only report.py knows which).

Reading fast: each chunk of whole lines (4 MB) is parsed by one ``findall`` that gives, per
record, its header fields and its continuation lines (``_FAST``); everything else is done by
builtins over those columns, so no Python code runs per line. ``_FAST`` ends a record's
continuation lines at any line starting with two digits (every header does), which is exact
unless such a line is not a header: then ``findall`` skips it, the line count shows it, and
that chunk is parsed again by ``_RECORDS`` (which checks the whole header at every line).
Both give the same records as logparse.parse_lines.

This module imports little (``re``, ``array``, ``zlib``, ``base64``, ``marshal``, ``subprocess``):
a worker starts in 40-50 ms.
"""

from __future__ import annotations

import base64
import marshal
import os
import re
import subprocess
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, count, filterfalse, repeat
from operator import add
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..errors import ReportWorkerError

# logparse._HEADER, on bytes, capturing only what the model keeps: time, severity, "callid|module"
# (one capture, one table: fewer objects per record; report.py splits the table's few values), pid.
_HEAD = (
    rb"((?:\d{4}-\d{2}-\d{2} )?\d{2}:\d{2}:\d{2}\.\d{3}(?: UTC)?) "
    rb"\[([a-z]+)\] "
    rb"\|[^|\n]*\|([^|\n]*\|"
    rb"[^:|\n]*):[^:|\n]*:(?:\{\d+,\d+\}|\d+|Undefined) "
    rb"\(([^)\n]*)\) "
)
# A record: its header line, then the lines that are not headers (its message's further lines).
_HEAD_UNCAPTURED = re.sub(rb"(?<!\\)\((?!\?)", b"(?:", _HEAD)
_RECORDS = re.compile(rb"^" + _HEAD + rb"[^\n]*((?:\n(?!" + _HEAD_UNCAPTURED + rb")[^\n]*)*)\n", re.MULTILINE)
# The same header with possessive repeats (each stops at its delimiter, so backtracking could never
# help: the same matches, less bookkeeping), after a newline (a literal: findall jumps from line to
# line), then its continuation lines, taken as those not starting with two digits.
_HEAD_POSSESSIVE = _HEAD.replace(rb"]*", rb"]*+").replace(rb"]+", rb"]++").replace(rb"\d+", rb"\d++")
_FAST = re.compile(rb"\n" + _HEAD_POSSESSIVE + rb"[^\n]*+((?:\n(?!\d\d)[^\n]*+)*+)")
CHUNK = 4 << 20
# "Undefined" and the empty value are one value, "no value": index 0 of every table.
_NO_VALUE = (b"", b"Undefined")


class RangeTask(NamedTuple):
    path: str
    start: int  # byte offsets; start is a line's first byte, end is after a newline or the file's end
    end: int
    chunk: int = CHUNK


class RangeColumns(NamedTuple):
    """One range's records. Tables are lists of bytes; an index column's values index its table."""

    lines: int  # the range's lines (a last line without newline counts)
    leading: int  # lines before its first header
    times: list[bytes]  # each record's printed time, as printed
    levels: list[bytes]
    level: bytes  # array("B")
    sites: list[bytes]  # b"callid|module"
    site: bytes  # array("I"), as are the rest
    pids: list[bytes]
    pid: bytes
    line: bytes  # each record's first line, counted from the range's first line
    nlines: bytes
    error: str | None = None  # the range could not be read: why (e.g. "No such file or directory")


class Table:
    """Byte strings to small integers, new ones numbered in order of first appearance; the no-value is 0."""

    def __init__(self) -> None:
        self.values: list[bytes] = [b""]
        self._index: dict[bytes, int] = dict.fromkeys(_NO_VALUE, 0)

    def indexes(self, values: Iterable[bytes]) -> list[int]:
        values = list(values)
        index = self._index
        new = list(filterfalse(index.__contains__, dict.fromkeys(values)))
        if new:
            index.update(zip(new, count(len(self.values))))
            self.values += new
        return list(map(index.__getitem__, values))


def parse_range(task: RangeTask) -> RangeColumns:
    """The records of one byte range of a file (see the module docstring)."""
    try:
        return _parse(task)
    except OSError as exc:
        return RangeColumns(0, 0, [], [], b"", [], b"", [], b"", b"", b"", exc.strerror or str(exc))


def _parse(task: RangeTask) -> RangeColumns:
    times: list[bytes] = []
    levels, sites, pids = Table(), Table(), Table()
    level, site, pid = array("B"), array("I"), array("I")
    starts, nlines = array("I"), array("I")
    leading = lineno = 0
    rest = b""
    left = task.end - task.start
    with open(task.path, "rb") as fh:
        fh.seek(task.start)
        while True:
            if parent_gone():
                raise SystemExit(1)
            block = fh.read(min(task.chunk, left)) if left > 0 else b""
            left -= len(block)
            if not block:
                if not rest:
                    break
                block, rest = rest + b"\n", b""  # the file's last line, without its newline
            else:
                block = rest + block
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
                if not block:
                    continue
            columns, first, count_, before, lines = _records(block, lineno)
            lineno += lines
            if before:
                if nlines:
                    nlines[-1] += before  # the last record's continuation lines
                else:
                    leading += before
            if not columns:
                continue
            chunk_times, sevs, chunk_sites, chunk_pids = columns
            times += chunk_times
            level.fromlist(levels.indexes(sevs))
            site.fromlist(sites.indexes(chunk_sites))
            pid.fromlist(pids.indexes(chunk_pids))
            starts.extend(first)
            nlines.extend(count_)
    return RangeColumns(
        lineno,
        leading,
        times,
        levels.values,
        level.tobytes(),
        sites.values,
        site.tobytes(),
        pids.values,
        pid.tobytes(),
        starts.tobytes(),
        nlines.tobytes(),
    )


def _records(block: bytes, lineno: int) -> tuple[list[tuple[bytes, ...]], Iterable[int], Iterable[int], int, int]:
    """A chunk of whole lines: the header fields of its records as columns (time, severity,
    "callid|module", pid), each record's first line number and line count (the same records as
    logparse.parse_lines), how many lines come before its first header, and how many lines it has."""
    # "\n" + the chunk without its last newline: every line, a header's first, follows a newline,
    # at the same offsets as in the chunk.
    text = b"\n" + block[:-1]
    found = _FAST.search(text)
    head_at = len(block) if found is None else found.start()
    before = block.count(b"\n", 0, head_at) if head_at else 0
    if found is None:
        return [], [], [], before, before
    lineno += before
    lines = block.count(b"\n", head_at)
    total = before + lines
    records = _FAST.findall(text, head_at)
    *columns, more = zip(*records, strict=True)
    if not any(more):  # no continuation lines (the usual chunk)
        if len(records) == lines:
            return columns, range(lineno, lineno + lines), repeat(1, lines), before, total
    else:
        extra = list(map(bytes.count, more, repeat(b"\n")))
        if len(records) + sum(extra) == lines:
            nlines = list(map(add, extra, repeat(1)))
            return columns, accumulate(nlines[:-1], initial=lineno), nlines, before, total
    # A line starting with two digits that is not a header (_FAST skipped it): check every line.
    records = _RECORDS.findall(block, head_at)
    *columns, more = zip(*records, strict=True)
    nlines = [1 + n for n in map(bytes.count, more, repeat(b"\n"))]
    return columns, accumulate(nlines[:-1], initial=lineno), nlines, before, total


# ---------------------------------------------------------------- compressing


TEXT_CHUNK = 3 << 20  # a multiple of 3: base64 of each compressed piece joins without padding
# zlib level 1 for the texts: 2-4x faster than level 6 (which took a third of the time of a 1M-line
# report), for a file about 60 % larger (bench/report.py: 0.11x the log instead of 0.06x).
LEVEL = 1


class CompressTask(NamedTuple):
    paths: list[str]
    fd: int  # where to write: an open file of the caller's, passed to the worker


def compress_files(paths: list[str], out: BinaryIO) -> list[int] | tuple[str, str]:
    """Each file's bytes, zlib-compressed and base64, one after another into ``out`` (memory: one chunk);
    returns how many bytes each took, or what failed: ("read", why) or ("write", why)."""
    sizes = []
    for path in paths:
        z = zlib.compressobj(LEVEL)
        pending = b""
        written = 0
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            return "read", f"cannot read {path}: {exc.strerror or exc}"
        with fh:
            while True:
                if parent_gone():
                    raise SystemExit(1)
                try:
                    block = fh.read(TEXT_CHUNK)
                except OSError as exc:
                    return "read", f"cannot read {path}: {exc.strerror or exc}"
                last = not block
                pending += z.flush() if last else z.compress(block)
                cut = len(pending) if last else len(pending) - len(pending) % 3
                text = base64.b64encode(pending[:cut])
                pending = pending[cut:]
                try:
                    out.write(text)
                except OSError as exc:
                    return "write", f"cannot write the report's compressed text: {exc.strerror or exc}"
                written += len(text)
                if last:
                    break
        sizes.append(written)
    return sizes


# ---------------------------------------------------------------- workers


# The worker's start: isolated (-I: no current directory, no PYTHON* variables, no user site on its
# path, so nothing in the directory kzbridge runs from is imported), then this very kzbridge.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from kzbridge.kazoo.report_work import main; main(int(sys.argv[2]))"
)
# A result longer than this is not one (a range of 8 MB gives a few MB).
_MAX_RESULT = 1 << 32


def start(tasks: Sequence[RangeTask | CompressTask]) -> subprocess.Popen[bytes]:
    """A worker process, its tasks already sent (one marshal object: it reads them all before writing,
    so a long list cannot fill both pipes at once). Its own session: a Ctrl-C reaches only the
    caller, who ends it (``end``); if the caller dies without ending it (SIGKILL), the worker sees
    its parent change before its next chunk and exits."""
    root = str(Path(__file__).resolve().parent.parent.parent)  # where kzbridge is imported from
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _BOOT, root, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        pass_fds=[t.fd for t in tasks if isinstance(t, CompressTask)],
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(marshal.dumps([(type(t).__name__, *t) for t in tasks]))
        proc.stdin.close()
    except OSError:
        pass  # it is gone already: receive() says so
    return proc


def receive(proc: subprocess.Popen[bytes]) -> Any:
    """The worker's next result (ReportWorkerError if it ended before giving it, or sent what is not one)."""
    assert proc.stdout is not None
    try:
        head = proc.stdout.read(8)
        size = int.from_bytes(head, "little")
        if len(head) == 8 and size <= _MAX_RESULT:
            body = proc.stdout.read(size)
            if len(body) == size:
                return marshal.loads(body)  # (marshal.load on the pipe reads it in many small pieces: slow)
    except (EOFError, ValueError, TypeError, OverflowError, MemoryError):
        pass
    try:
        status: int | None = proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        status = None
    raise ReportWorkerError(
        "a report worker process ended before its work was done"
        + (f" (exit status {status})" if status is not None else " (it sent what is not a result)")
    )


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


_parent: int | None = None  # in a worker: the process that started it


def parent_gone() -> bool:
    """In a worker: whether the process that started it has ended (then nobody reads its results)."""
    return _parent is not None and os.getppid() != _parent


def main(parent: int) -> None:
    """A worker's life (see ``start``): ``parent`` is the process that started it."""
    global _parent
    _parent = parent
    serve(sys.stdin.buffer, sys.stdout.buffer)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """A worker: its tasks, one list (marshal) read from stdin first, then each one's result written in
    order (its length in 8 bytes, little-endian, then marshal)."""
    for kind, *fields in marshal.load(stdin):
        if kind == "CompressTask":
            task = CompressTask(*fields)
            out = os.fdopen(task.fd, "wb")
            result: Any = compress_files(task.paths, out)
            try:
                out.close()
            except OSError as exc:
                result = "write", f"cannot write the report's compressed text: {exc.strerror or exc}"
        else:
            result = tuple(parse_range(RangeTask(*fields)))
        data = marshal.dumps(result)
        stdout.write(len(data).to_bytes(8, "little") + data)
        stdout.flush()


if __name__ == "__main__":
    main(os.getppid())
