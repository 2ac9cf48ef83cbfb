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
byte for byte, zlib-compressed and base64: the page inflates them with the browser's
DecompressionStream and shows every piece of node text through textContent, never as
markup. Compressed, a trace of 1M lines takes about a fifth of its size.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import zlib
from array import array
from importlib import resources
from itertools import repeat
from operator import sub
from pathlib import Path
from typing import IO, Any

from ..errors import KazooError
from .report import ReportModel, native_little_endian

_TEXT_CHUNK = 3 << 20  # a multiple of 3: base64 of each compressed piece joins without padding
# zlib level 1 for the texts and columns: 2-4x faster than level 6 (which took a third of the time of
# a 1M-line report), for a file about 60 % larger (bench/report.py: 0.11x the log instead of 0.06x).
LEVEL = 1


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


def write_html(model: ReportModel, out: IO[bytes], title: str = "kzbridge report") -> None:
    """Write the report to a binary stream; each node's file is read again, compressed and embedded."""
    script = asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; connect-src 'none'; form-action 'none'; base-uri 'none'"
    )
    data = json_for_script(_meta(model, title))
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
    out.write(head.encode())
    out.write(data[:-1].encode())  # the object stays open for the texts
    out.write(b',"texts":[')
    for i, path in enumerate(model.paths):
        out.write(b',"' if i else b'"')
        _embed_file(path, out)
        out.write(b'"')
    out.write(b"]}</script>\n<script>")
    out.write(script.encode())
    out.write(b"</script>\n</body></html>\n")


def _embed_file(path: Path, out: IO[bytes]) -> None:
    """The file's bytes, zlib-compressed, base64, streamed (memory: one chunk)."""
    z = zlib.compressobj(LEVEL)
    pending = b""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise KazooError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        while True:
            block = fh.read(_TEXT_CHUNK)
            if not block:
                break
            pending += z.compress(block)
            cut = len(pending) - len(pending) % 3
            out.write(base64.b64encode(pending[:cut]))
            pending = pending[cut:]
    pending += z.flush()
    out.write(base64.b64encode(pending))


def write_report(model: ReportModel, path: str | Path, title: str | None = None) -> Path:
    """Write the report to ``path`` (a new file, written as ``path.partial`` first; see localfiles)."""
    from .localfiles import Partial

    target = Path(path)
    part = Partial.create(target, 0o600)
    try:
        write_html(model, part, title or f"kzbridge report: {', '.join(model.labels)}")  # type: ignore[arg-type]
    except BaseException:
        part.discard()
        raise
    return part.publish()
