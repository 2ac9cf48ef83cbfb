"""The self-contained HTML report: one file, no network at view time.

Layout of the file: a style block, one ``<script type="application/json" id="kz-data">``
block holding the data, and one inline script (report_assets/report.js, plain DOM and
Canvas, no library) that draws it. A Content-Security-Policy meta tag allows no network
at all and only that one script (by its hash), so even text that escaped the escaping
could not run.

The data block is JSON with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\u003c``
etc. (``json_for_script``): no string in it can close the script element. It holds the
string tables (nodes, levels, modules, pids, callids), the columns of report.ReportModel
(each the array's little-endian bytes, zlib-compressed, base64) and each node's file,
byte for byte, zlib-compressed and base64 (first in the block: the files are compressed
while the model is being read, see report.ModelReader): the page inflates them with the
browser's DecompressionStream and shows every piece of node text through textContent,
never as markup. Compressed, a trace of 1M lines takes about a tenth of its size.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
import zlib
from array import array
from importlib import resources
from itertools import repeat
from operator import sub
from pathlib import Path
from typing import IO, Any, NoReturn

from ..errors import KazooError, LocalFileError, ReportWorkerError
from . import report_work
from .report import ModelReader, ReportModel, native_little_endian
from .report_work import CompressTask, compress_files

# zlib level 1 for the columns too (report_work.LEVEL says why).
LEVEL = report_work.LEVEL


def json_for_script(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (and as JavaScript source)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _column(col: array[Any]) -> str:
    if not native_little_endian():
        col = array(col.typecode, col)
        col.byteswap()
    return base64.b64encode(zlib.compress(col.tobytes(), LEVEL)).decode("ascii")


def asset(name: str) -> str:
    return resources.files("kzbridge.kazoo").joinpath("report_assets").joinpath(name).read_text(encoding="utf-8")


def _meta(model: ReportModel, title: str) -> dict[str, Any]:
    t0 = min(model.t) if len(model) else 0.0
    rel = array("d", map(sub, model.t, repeat(t0)))
    return {
        "v": 1,
        "title": title,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "n": len(model),
        "t0": t0,
        "nodes": model.nodes,
        "labels": model.labels,
        "files": [p.name for p in model.paths],
        "file_lines": model.file_lines,
        "levels": model.levels,
        "modules": model.modules.names,
        "pids": model.pids.names,
        "callids": model.callids.names,
        "cols": {
            "t": ["f64", _column(rel)],
            "node": ["u16", _column(model.node)],
            "level": ["u8", _column(model.level)],
            "module": ["u32", _column(model.module)],
            "pid": ["u32", _column(model.pid)],
            "callid": ["u32", _column(model.callid)],
            "line": ["u32", _column(model.line)],
            "nlines": ["u32", _column(model.nlines)],
        },
    }


def write_html(model: ReportModel | ModelReader, out: IO[bytes], title: str | None = None) -> ReportModel:
    """Write the report to a binary stream: the page, the data block with each node's file (read again,
    compressed, embedded) and then the model, the script. Given a ModelReader, the files are compressed
    on a thread while its workers parse them; returns the model."""
    script = asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; connect-src 'none'; form-action 'none'; base-uri 'none'"
    )
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>kzbridge report</title>\n<style>\n"
        + asset("report.css")
        + "</style></head>\n<body>\n"
        + asset("report_body.html")
        + '<script type="application/json" id="kz-data">'
    )
    out.write(head.encode() + b'{"texts":[')
    if isinstance(model, ModelReader):
        reader = model
        paths = [str(source.path) for source in reader.sources]
        done = _compress_by_worker(reader, paths, out) if reader.workers else None
        if done is None:
            _compress(paths, out)
            done = reader.model()
        model = done
    else:
        _compress([str(p) for p in model.paths], out)
    data = json_for_script(_meta(model, title or f"kzbridge report: {', '.join(model.labels)}"))
    out.write(b"]," + data[1:].encode())  # the object the texts began
    out.write(b"</script>\n<script>")
    out.write(script.encode())
    out.write(b"</script>\n</body></html>\n")
    return model


def _compress_by_worker(reader: ModelReader, paths: list[str], out: IO[bytes]) -> ReportModel | None:
    """The texts' JSON strings, the files compressed by one more worker while the reader's workers
    parse them; the model. None if no worker could be started (nothing written then)."""
    try:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    except OSError:
        return None
    with spool:
        try:
            # Passed at 3 or above: were kzbridge's stdin or stdout closed, the file could get
            # descriptor 0 or 1, which the worker's own stdin and stdout would replace.
            fd = fcntl.fcntl(spool.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
            try:
                proc = report_work.start([CompressTask(paths, fd)])
            finally:
                os.close(fd)
        except OSError:
            return None
        try:
            model = reader.model()
            done = report_work.receive(proc)
        finally:
            report_work.end(proc)
        if not isinstance(done, list):
            _raise_failure(done)
        spool.seek(0)
        for i, size in enumerate(done):
            out.write(b',"' if i else b'"')
            _copy(spool, out, size)
            out.write(b'"')
    return model


def _compress(paths: list[str], out: IO[bytes]) -> None:
    """The texts' JSON strings, each file compressed here."""
    for i, path in enumerate(paths):
        out.write(b',"' if i else b'"')
        failed = compress_files([path], out)  # type: ignore[arg-type]
        if not isinstance(failed, list):
            _raise_failure(failed)
        out.write(b'"')


def _raise_failure(failure: tuple[str, str]) -> NoReturn:
    """compress_files' failure as kzbridge's error: a trace not read (exit 6), a file not written (exit 1)."""
    kind, why = failure
    raise LocalFileError(why) if kind == "write" else KazooError(why)


def _copy(source: IO[bytes], out: IO[bytes], size: int) -> None:
    while size:
        block = source.read(min(size, 1 << 20))
        if not block:
            raise ReportWorkerError("a report worker's compressed text was cut short")
        out.write(block)
        size -= len(block)


def write_report(
    model: ReportModel | ModelReader, path: str | Path, title: str | None = None
) -> tuple[Path, ReportModel]:
    """Write the report to ``path`` (a new file, written as ``path.partial`` first; see localfiles);
    returns the file and the model."""
    from .localfiles import new_file

    with new_file(Path(path), 0o600) as part:
        done = write_html(model, part, title)  # type: ignore[arg-type]
    return part.final, done
