"""Commands over several nodes: the trace commands' cluster path, ``nodes`` and ``merge``.

The cluster logic (selection, concurrent start and stop, clocks, merge) is
kazoo.cluster's; this module turns options into its calls and renders what comes back.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..kazoo import filters as flt
from . import EXIT_INTERRUPTED, _silence_stdout, emit_json, main, nodes_options, parse_size, render, warning_line
from .targets import EXIT_CONNECTION, cookie_resolver, given_routes, say, select_nodes

if TYPE_CHECKING:
    from ..kazoo.cluster import ClusterSummary, ClusterTrace, Connections, NodeOutcome, NodeReport
    from ..kazoo.session import Event
    from .trace_cmds import TraceOptions


def _default_directory() -> Path:
    return Path(f"kzbridge-cluster-{time.strftime('%Y%m%d-%H%M%S')}")


class ClusterPrinter:
    """--follow over several nodes: one merged stream, each record held until every node has passed
    its instant (merge.LiveMerger), at most ``hold`` seconds; says when a node falls behind (its records
    arrive after later ones were printed) or goes away."""

    def __init__(
        self, run: ClusterTrace, as_json: bool, on_closed: Callable[[], None], hold: float = 2.0, raw: bool = False
    ) -> None:
        from ..kazoo.merge import LiveMerger

        self.run = run
        self.as_json = as_json
        self.raw = raw
        self.on_closed = on_closed
        self.merger = LiveMerger(run.sessions, hold=hold)
        self.labels = {n: run.outcomes[n].label for n in run.sessions}
        self.width = max((len(v) for v in self.labels.values()), default=0)
        self.closed = False
        self._warned: set[str] = set()

    def __call__(self, name: str, event: Event) -> None:
        from ..kazoo.session import Collected, Lost, Record

        now = time.time()
        if isinstance(event, Record):
            late_before = self.merger.late.get(name, 0)
            self.merger.push(name, event.instant.timestamp(), event, now)
            if self.merger.late.get(name, 0) > late_before and name not in self._warned:
                self._warned.add(name)
                say(
                    f"kzbridge: {name} falls behind: its lines arrive more than {self.merger.hold:g}s late and are "
                    "printed out of order here (merged.log has the exact order)",
                    err=True,
                )
        elif isinstance(event, (Collected, Lost)):
            self.merger.gone(name)
            if isinstance(event, Lost):
                say(f"kzbridge: {name} went away: {event.error.message}", err=True)
        self._print(self.merger.release(now))

    def drain(self) -> None:
        self._print(self.merger.drain())
        late = {n: c for n, c in self.merger.late.items() if c}
        if late:
            say("kzbridge: records printed late: " + ", ".join(f"{n} {c}" for n, c in late.items()), err=True)

    def _print(self, records: list[Any]) -> None:
        from ..kazoo.clock import format_instant

        for rec in records:
            if self.closed:
                return
            label = self.labels.get(rec.node, rec.node)
            if self.as_json:
                line = json.dumps(
                    {"node": rec.node, "instant": format_instant(rec.instant.timestamp()), **rec.record.to_dict()},
                    ensure_ascii=False,
                )
            else:  # the corrected UTC time, so that lines of nodes in other zones read in order
                shown = dataclasses.replace(rec.record, time=format_instant(rec.instant.timestamp())[11:])
                line = f"{render.safe_text(label):<{self.width}} {render.record_line(shown, False, self.raw)}"
            try:
                click.echo(line)
            except BrokenPipeError:
                self.closed = True
                _silence_stdout()
                self.on_closed()


def run_cluster_trace(filters: list[Any], opts: TraceOptions) -> None:
    """Trace several nodes at once into one directory (per-node files, cluster.json, merged.log)."""
    import asyncio

    from ..kazoo import cluster
    from .trace_cmds import format_arg

    if opts.remote_path:
        raise UsageError("--remote-path names one file on one node: leave it out with several nodes", setting="node")
    checked = flt.validate(filters)
    fmt = format_arg(opts.format_)
    from ..kazoo.governor import check_max_rate

    check_max_rate(opts.max_rate)
    limits = cluster.ClusterLimits(
        duration=opts.duration,
        max_size=parse_size(opts.max_size),
        max_total_size=parse_size(opts.max_total_size) if opts.max_total_size else None,
        max_rate=opts.max_rate,
        governor=not opts.no_governor,
    )
    directory = Path(opts.output) if opts.output else _default_directory()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file: with several nodes --output is a directory", setting="local_path")
    cookie_for = cookie_resolver(opts.cookie, opts.cookie_file)
    routes = given_routes(opts.node, opts.cluster_seed)

    async def body() -> ClusterSummary:
        nodes, source = await select_nodes(opts.node, opts.cluster_seed, opts.exclude, cookie_for, opts.timeout, routes)
        conns = await cluster.connect_all(nodes, cookie_for, timeout=opts.timeout, routes=routes)
        async with conns:
            for node, exc in conns.failed.items():
                say(f"kzbridge: {node}: {exc}", err=True)
            run = cluster.ClusterTrace(
                conns,
                directory,
                checked,
                limits=limits,
                sink=opts.sink,
                level=opts.level,
                format_list=fmt,
                lease=opts.lease,
                require_all=opts.require_all,
            )
            with run.signals():
                await run.start()
                _announce(run, conns, source, opts)
                observers: list[Callable[[str, Event], None]] = [_stop_notices_once()]
                printer = None
                if opts.follow:
                    printer = ClusterPrinter(run, opts.as_json, lambda: run.request_stop("output closed"), raw=opts.raw)
                    observers.append(printer)
                async for name, event in run.events():
                    for observe in observers:
                        observe(name, event)
                if printer is not None:
                    printer.drain()
                return await run.finish()

    summary = asyncio.run(body())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.as_json:
        data = cluster_json(summary)
        emit_json({"summary": data} if opts.follow else data)
    else:
        say(cluster_text(summary), err=True)
    for o in summary.outcomes:
        for w in o.summary.warnings if o.summary else []:
            click.echo(warning_line(f"{o.node}: {w}"), err=True)
    if opts.report:
        from .report_cmds import report_sources, write_report_for

        say("kzbridge: " + write_report_for(report_sources((str(summary.directory),)), opts.report), err=True)
    if summary.stopped_by and summary.stopped_by == "abandoned":
        sys.exit(EXIT_INTERRUPTED)
    if any(o.partial_path for o in summary.outcomes):
        sys.exit(EXIT_INTERRUPTED if summary.stopped_by in render.SIGNAL_NAMES else EXIT_CONNECTION)


def _stop_notices_once() -> Callable[[str, Event], None]:
    """Ctrl-C reaches every node's session: say what it does once, not once per node."""
    said: set[tuple[str, str]] = set()

    def observe(_name: str, event: Event) -> None:
        from ..kazoo.session import StoppedBy

        if isinstance(event, StoppedBy) and (event.reason, event.by) not in said:
            said.add((event.reason, event.by))
            render.stop_notices(event)

    return observe


def _announce(run: ClusterTrace, conns: Connections, source: str, opts: TraceOptions) -> None:
    traced = [n for n in conns.order if n in run.sessions]
    failed = [o for o in run.outcomes.values() if o.error is not None]
    say(
        f"kzbridge: tracing {flt.describe(run.filters)} on {len(traced)} nodes"
        f"{f' (of {len(run.outcomes)}; nodes from {source})' if failed or source != 'given' else ''}"
        f" for up to {opts.duration:g}s -> {run.directory}/",
        err=True,
    )
    for name in traced:
        o = run.outcomes[name]
        say(f"  {name}: ref {o.ref}, clock {_clock_text(o)}", err=True)
    for o in failed:
        if o.node not in conns.failed:
            say(f"kzbridge: {o.node}: not traced: {o.error}", err=True)


def _clock_text(o: NodeOutcome) -> str:
    if o.start is None:
        return "not measured"
    zone = o.start.utc_offset
    sign = "+" if zone >= 0 else "-"
    hours, minutes = divmod(abs(zone) // 60, 60)
    utc = " (prints UTC)" if o.start.utc_log else ""
    return f"{o.start.offset:+.3f}s ±{o.start.uncertainty * 1000:.1f}ms, UTC{sign}{hours:02d}:{minutes:02d}{utc}"


def cluster_text(s: ClusterSummary) -> str:
    traced = [o for o in s.outcomes if o.summary is not None]
    lines = [
        f"cluster run: {len(traced)} of {len(s.outcomes)} nodes collected"
        f"{f', stopped by {s.stopped_by}' if s.stopped_by else ''} after {s.stopped - s.started:.1f}s"
        f" -> {s.directory}/"
    ]
    for o in s.outcomes:
        if o.summary is not None:
            r = o.summary
            state = "size verified" if r.verified else ("PARTIAL" if r.partial else "not verified")
            kept = f", kept {Path(r.local_path).name}" if r.partial else ""
            lines.append(
                f"  {o.label}: stopped by {r.reason}, {r.records} records ({r.lines} lines), {r.bytes} bytes, "
                f"{state}{kept}; "
                f"clock {_clock_text(o)}"
            )
        elif o.lost is not None:
            lines.append(
                f"  {o.label}: LOST, PARTIAL: {o.lost.message}; if the node is still up, its lease stops trace "
                f"{o.ref} within {o.lost.lease:g}s; collect the rest with: "
                f"kzbridge collect {o.remote_path} --rotated -n {o.node}"
            )
        else:
            lines.append(f"  {o.label}: NOT TRACED: {o.error}")
    if s.merged is not None:
        total = sum(s.merged.records)
        lines.append(f"  merged.log: {total} records in corrected time order (cluster.json describes the run)")
    return "\n".join(lines)


def cluster_json(s: ClusterSummary) -> dict[str, Any]:
    from ..kazoo.cluster import CLUSTER_FILE

    data: dict[str, Any] = json.loads((s.directory / CLUSTER_FILE).read_text())
    data["directory"] = str(s.directory)
    data["complete"] = s.complete
    return data


# ---------------------------------------------------------------- nodes


@main.command("nodes")
@nodes_options
def nodes_cmd(
    node: tuple[str, ...],
    cluster_seed: str | None,
    exclude: tuple[str, ...],
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """List the nodes given or found (--cluster SEED): OTP release, tracing generation, clock.

    \b
      kzbridge nodes --cluster kazoo_apps@kz1
      kzbridge nodes -n kazoo_apps@kz1 -n ecallmgr@kz1 --json
    Exit 3 when a node does not answer.
    """
    import asyncio

    from ..kazoo import cluster

    cookie_for = cookie_resolver(cookie, cookie_file)
    routes = given_routes(node, cluster_seed)

    async def body() -> tuple[list[NodeReport], str]:
        names, source = await select_nodes(node, cluster_seed, exclude, cookie_for, timeout, routes)
        async with await cluster.connect_all(names, cookie_for, timeout=timeout, routes=routes) as conns:
            return await cluster.survey(conns, timeout=timeout), source

    reports, source = asyncio.run(body())
    if as_json:
        emit_json({"source": source, "nodes": [r.to_json() for r in reports]})
    else:
        width = max(len(r.node) for r in reports)
        for r in reports:
            if not r.answered:
                say(f"{r.node:<{width}}  NO ANSWER  {r.error}")
                continue
            gen = f"generation {r.generation}" if r.generation else "no kz_data_tracing"
            clock = ""
            if r.clock is not None:
                o = cluster.NodeOutcome(r.node, r.node, start=r.clock)
                clock = _clock_text(o)
            say(f"{r.node:<{width}}  OTP {r.otp:<3} {gen:<18} clock {clock}")
        click.echo(f"kzbridge: {len(reports)} nodes ({source})", err=True)
    if any(not r.answered for r in reports):
        sys.exit(EXIT_CONNECTION)


# ---------------------------------------------------------------- merge


def _parse_pairs(values: tuple[str, ...], what: str, convert: Callable[[str], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for value in values:
        name, sep, text = value.rpartition("=")
        if not sep or not name:
            raise UsageError(f"{what} takes NODE={'OFFSET' if what == '--clock' else '+HH:MM'}, not {value!r}")
        try:
            out[name] = convert(text)
        except ValueError:
            raise UsageError(f"{what} {value!r}: {text!r} is not a valid value") from None
    return out


def _seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _zone(text: str) -> float:
    if text.upper() in ("UTC", "Z"):
        return 0.0
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    value = sign * (int(hours) * 3600 + int(minutes or 0) * 60)
    if abs(value) > 14 * 3600:
        raise ValueError(text)
    return value


@main.command("merge")
@click.argument("paths", nargs=-1, required=True)
@click.option("--output", "-o", default=None, help="The new file for the merged timeline (0600).")
@click.option(
    "--clock",
    "clocks",
    multiple=True,
    metavar="NODE=OFFSET",
    help="For files without cluster.json: seconds NODE's clock ran ahead of true time (e.g. 3.5 or -2).",
)
@click.option(
    "--zone", "zones", multiple=True, metavar="NODE=+HH:MM", help="For files: NODE's UTC offset (default UTC)."
)
@click.option(
    "--start",
    default=None,
    metavar="'YYYY-MM-DD HH:MM:SS'",
    help="For files: when the trace started, UTC (the date of the first lines; default: each file's time).",
)
def merge_cmd(
    paths: tuple[str, ...], output: str | None, clocks: tuple[str, ...], zones: tuple[str, ...], start: str | None
) -> None:
    """Merge trace files into one timeline, corrected for each node's clock.

    \b
    A cluster run's directory (its cluster.json holds the clocks):
      kzbridge merge kzbridge-cluster-20261125-120000 -o again.log
    Files collected some other way, with clocks given by hand (file NODE.log is node NODE):
      kzbridge merge kazoo_apps@kz1.log ecallmgr@kz2.log --clock ecallmgr@kz2=-2.1 --zone ecallmgr@kz2=-05:00
    Re-merging a run's directory reproduces its merged.log byte for byte. The output is a new
    file: an existing one is never replaced.
    """
    from ..kazoo import cluster
    from ..kazoo.merge import merge_to_file

    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir():
        if clocks or zones or start:
            raise UsageError("--clock, --zone and --start are for files; a run's directory has cluster.json")
        sources = cluster.merge_sources(first, cluster.read_cluster_json(first))
        if not output:
            raise UsageError(
                f"give --output: {first / cluster.MERGED_FILE} is the run's own merge (a new merge never replaces it)",
                setting="local_path",
            )
        target = Path(output)
    else:
        sources = file_sources(paths, clocks, zones, start)
        if not output:
            raise UsageError("give --output for merging files (there is no run directory to write into)")
        target = Path(output)
    if not sources:
        raise UsageError("nothing to merge: no node file with a clock")
    stats = merge_to_file(sources, target)
    say(f"{target}: {sum(stats.records)} records from {len(sources)} nodes")


def file_sources(
    paths: tuple[str, ...], clocks: tuple[str, ...], zones: tuple[str, ...], start: str | None
) -> list[Any]:
    import datetime as dt

    from ..kazoo.clock import ClockCorrection, NodeClock
    from ..kazoo.merge import MergeSource
    from ..kazoo.report import first_line_instant

    offsets = _parse_pairs(clocks, "--clock", _seconds)
    utc_offsets = _parse_pairs(zones, "--zone", _zone)
    at: float | None = None
    if start:
        try:
            at = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            raise UsageError(f"--start {start!r}: write 'YYYY-MM-DD HH:MM:SS' (UTC)") from None
    out = []
    names = []
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"{path} is not a file", setting="local_path")
        node = path.name.removesuffix(".log")
        names.append(node)
        offset = offsets.get(node, 0.0)
        zone = int(utc_offsets.get(node, 0.0))
        when = at if at is not None else first_line_instant(path, zone)
        out.append(MergeSource(node, path, ClockCorrection(NodeClock.given(offset, utc_offset=zone, at=when))))
    unknown = (set(offsets) | set(utc_offsets)) - set(names)
    if unknown:
        raise UsageError(f"--clock/--zone name nodes with no file: {', '.join(sorted(unknown))}")
    return out
