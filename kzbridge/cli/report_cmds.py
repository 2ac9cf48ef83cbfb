"""See a collected trace: ``report`` (one self-contained HTML file) and ``summary`` (the terminal).

The model and the HTML are kazoo.report's and kazoo.report_html's; this module takes the
paths and options and prints what came out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from . import emit_json, main
from .render import human_bytes, safe_text

if TYPE_CHECKING:
    from ..kazoo.merge import MergeSource


def report_sources(paths: tuple[str, ...], clocks: tuple[str, ...] = (), zones: tuple[str, ...] = ()) -> list[Any]:
    """A cluster run's directory (cluster.json's clocks), or trace files (clocks and zones given by hand)."""
    from ..kazoo import report

    if not (clocks or zones):
        return report.sources_for(list(paths))
    if len(paths) == 1 and Path(paths[0]).is_dir():
        raise UsageError("--clock and --zone are for files; a run's directory has cluster.json")
    from .cluster_cmds import file_sources

    return list(file_sources(paths, clocks, zones, None))


def write_report_for(sources: list[MergeSource], output: str, jobs: int | None = None) -> str:
    """Read ``sources`` and write the HTML report to ``output``; returns the line to print."""
    from ..kazoo import report, report_html

    with report.ModelReader(sources, workers=jobs) as reader:
        path, model = report_html.write_report(reader, output)
    return (
        f"{path}: report of {len(model)} events from {len(sources)} node{'s' if len(sources) != 1 else ''}"
        f" ({human_bytes(path.stat().st_size)})"
    )


_FILE_OPTIONS = [
    click.option(
        "--clock",
        "clocks",
        multiple=True,
        metavar="NODE=OFFSET",
        help="For files: seconds NODE's clock ran ahead of true time (file NODE.log is node NODE).",
    ),
    click.option(
        "--zone", "zones", multiple=True, metavar="NODE=+HH:MM", help="For files: NODE's UTC offset (default UTC)."
    ),
    click.option(
        "--jobs",
        type=click.IntRange(0, 256),
        default=None,
        metavar="N",
        help="Worker processes that parse the files, each a range at a time (report adds one that compresses "
        "them): default one per CPU when the files hold 24 MB or more, else none; 0 reads them in this process.",
    ),
]


@main.command("report")
@click.argument("paths", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="The new HTML file (0600; an existing file is never replaced).")
@_FILE_OPTIONS[0]
@_FILE_OPTIONS[1]
@_FILE_OPTIONS[2]
def report_cmd(
    paths: tuple[str, ...], output: str, clocks: tuple[str, ...], zones: tuple[str, ...], jobs: int | None
) -> None:
    """Write one self-contained HTML timeline of a trace or a cluster run.

    \b
      kzbridge report trace.log -o trace.html
      kzbridge report kzbridge-cluster-20261125-120000 -o run.html
      kzbridge report kazoo_apps@kz1.log ecallmgr@kz2.log --clock ecallmgr@kz2=-2.1 -o both.html
    The page needs no network: open it from disk in any current browser.
    """
    click.echo(safe_text(write_report_for(report_sources(paths, clocks, zones), output, jobs)), err=True)


@main.command("summary")
@click.argument("paths", nargs=-1, required=True)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Calls listed per ranking.")
@click.option("--json", "as_json", is_flag=True, help="The same numbers, machine-readable.")
@_FILE_OPTIONS[0]
@_FILE_OPTIONS[1]
@_FILE_OPTIONS[2]
def summary_cmd(
    paths: tuple[str, ...],
    top: int,
    as_json: bool,
    clocks: tuple[str, ...],
    zones: tuple[str, ...],
    jobs: int | None,
) -> None:
    """Counts per level, module and node, the top calls, the time span and the event rate of a trace.

    \b
      kzbridge summary trace.log
      kzbridge summary kzbridge-cluster-20261125-120000 --json
    """
    from ..kazoo import report

    model = report.read_model(report_sources(paths, clocks, zones), workers=jobs)
    data = report.summary_data(model, top)
    if as_json:
        emit_json(data)
        return
    click.echo(summary_text(data, model.labels, model.nodes))


def summary_text(data: dict[str, Any], labels: list[str], nodes: list[str]) -> str:
    label_of = dict(zip(nodes, labels, strict=True))
    out = [
        f"{data['events']} events ({data['lines']} lines) from {len(nodes)} node{'s' if len(nodes) != 1 else ''}, "
        f"{data['calls']} calls",
    ]
    if data["first"]:
        out.append(f"span   {data['span']:.3f} s: {data['first']} to {data['last']}")
    rate = data["rate"]
    if rate["total"]:
        out.append(
            f"rate   {report_spark(rate['total'])}  peak {rate['peak']}/s, "
            f"{rate['warnings']} warnings, {rate['errors']} errors or worse"
        )
    out.append("levels " + ", ".join(f"{k} {v}" for k, v in data["levels"].items()))
    out.append("nodes  " + ", ".join(f"{label_of.get(k, k)} {v}" for k, v in data["nodes"].items()))
    mods = list(data["modules"].items())
    more = f", ... ({len(mods) - 10} more)" if len(mods) > 10 else ""
    out.append("modules " + ", ".join(f"{k} {v}" for k, v in mods[:10]) + more)
    for title, key in (("calls by events", "top_by_events"), ("calls by duration", "top_by_duration")):
        if not data[key]:
            continue
        out.append(f"{title}:")
        width = max(len(c["callid"]) for c in data[key])
        for c in data[key]:
            where = ",".join(label_of.get(n, n) for n in c["nodes"])
            out.append(
                f"  {c['callid']:<{width}}  {c['events']:>7} events  {c['duration']:>9.3f} s  {c['worst']:<8} {where}"
            )
    return safe_text("\n".join(out), newlines="")


def report_spark(values: list[int]) -> str:
    from ..kazoo.report import sparkline

    return sparkline(values)
