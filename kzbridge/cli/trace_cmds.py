"""Trace commands that follow a trace to its end: trace-module, trace-function, trace-pid, trace.

They parse options, start a TraceSession, attach render's observers and print the
summary; the session owns the limits, the stop requests and the signals.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import BadFilterError, UsageError
from ..kazoo import filters as flt
from ..wire.literal import parse_term
from . import (
    EXIT_INTERRUPTED,
    NumberType,
    _silence_stdout,
    emit_json,
    main,
    nodes_options,
    parse_mode,
    parse_size,
    raw_option,
    render,
    run_with_node,
    warning_line,
)

if TYPE_CHECKING:
    from ..kazoo.session import Observer, RunSummary
    from ..wire.node import HiddenNode

F = TypeVar("F", bound=Callable[..., Any])


def trace_options(fn: F) -> F:
    @click.option(
        "--duration",
        "-d",
        type=NumberType("duration"),
        default=60.0,
        show_default=True,
        help="Seconds to trace before stopping and collecting.",
    )
    @click.option("--follow", "-f", is_flag=True, help="Print events as they arrive (until Ctrl-C or --duration).")
    @click.option(
        "--max-size",
        default="100MB",
        show_default=True,
        help="Stop when the remote file reaches this size (e.g. 10MB, 512k).",
    )
    @click.option(
        "--level",
        default="debug",
        show_default=True,
        type=click.Choice(flt.LEVELS),
        help="Lowest severity traced (generation 2 and lager_event sink).",
    )
    @click.option(
        "--format",
        "format_",
        default=None,
        help='lager formatter_config as an Erlang list, e.g. \'[time," ",message,"\\n"]\'. '
        "Default: Kazoo's format, which the parser reads.",
    )
    @click.option(
        "--output",
        "-o",
        type=click.Path(),
        default=None,
        help="Local file for the trace (default NODE-REF.log in the current directory); with several nodes, "
        "a new or empty directory (default kzbridge-cluster-DATE-TIME).",
    )
    @click.option(
        "--sink",
        type=click.Choice([flt.DATA_SINK, flt.LAGER_SINK]),
        default=flt.DATA_SINK,
        show_default=True,
        help="data: through kz_data_tracing (Kazoo's data sink). lager_event: Kazoo's main log, "
        "through lager directly (what Kazoo 4.2.2+ actually logs to).",
    )
    @click.option(
        "--lease",
        type=NumberType("lease", lo=5),
        default=flt.DEFAULT_LEASE,
        show_default=True,
        help="Seconds after which the node stops the trace by itself if kzbridge stops renewing.",
    )
    @click.option("--remote-path", default=None, help="Trace file on the node (default /tmp/kzbridge-...log).")
    @click.option(
        "--require-all",
        is_flag=True,
        help="With several nodes: if any node cannot be reached or traced, stop the others and fail (exit 3).",
    )
    @click.option(
        "--max-total-size",
        default=None,
        help="With several nodes: stop every node when their files together reach this size.",
    )
    @click.option(
        "--max-rate",
        type=float,
        default=flt.DEFAULT_MAX_RATE,
        show_default=True,
        help="Events/s: the governor stops the trace (and collects) past this rate, or when lager's sink "
        "goes synchronous, and refuses to start on a sink that is synchronous already.",
    )
    @click.option(
        "--no-governor",
        is_flag=True,
        help="Do not watch the node's logging load (a flood can then make every logging process wait).",
    )
    @click.option(
        "--mode",
        default=None,
        help="Permission bits of the local file, octal (default 0600: traces hold call data).",
    )
    @click.option(
        "--report",
        "report",
        type=click.Path(dir_okay=False),
        default=None,
        help="Also write the HTML report of what was collected to this new file (see kzbridge report).",
    )
    @raw_option
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class TraceOptions:
    """What the node and trace options of a trace command say, as given."""

    node: tuple[str, ...]
    cookie: str | None = None
    cookie_file: str | None = None
    timeout: float = 10.0
    as_json: bool = False
    duration: float = 60.0
    follow: bool = False
    max_size: str = "100MB"
    level: str = "debug"
    format_: str | None = None
    output: str | None = None
    sink: str = flt.DATA_SINK
    lease: float = flt.DEFAULT_LEASE
    remote_path: str | None = None
    raw: bool = False
    mode: str | None = None
    max_rate: float = flt.DEFAULT_MAX_RATE
    no_governor: bool = False
    cluster_seed: str | None = None
    exclude: tuple[str, ...] = ()
    require_all: bool = False
    max_total_size: str | None = None
    report: str | None = None

    @property
    def several(self) -> bool:
        """Several nodes (or a whole cluster) rather than one."""
        from ..kazoo.cluster import parse_node_list

        return bool(self.cluster_seed) or len(parse_node_list(self.node)) > 1

    def one_node(self) -> str:
        from ..kazoo.cluster import parse_node_list

        nodes = parse_node_list(self.node)
        if len(nodes) != 1 or self.cluster_seed:
            raise UsageError("give one --node NAME@HOST", setting="node")
        return nodes[0]


def format_arg(text: str | None) -> list[Any] | None:
    if text is None:
        return None
    value = parse_term(text)
    if not isinstance(value, list) or not value:
        raise UsageError(
            'the format must be a non-empty Erlang list, e.g. \'[time," ",message,"\\n"]\'', setting="format"
        )
    return value


def run_trace_command(filters: list[Any], opts: TraceOptions) -> None:
    """The shared body of trace-module, trace-function, trace-pid and trace (and demo)."""
    if opts.report and (os.path.lexists(opts.report) or os.path.lexists(opts.report + ".partial")):
        raise UsageError(f"{opts.report} exists: --report writes a new file", setting="local_path")
    if opts.several:
        from .cluster_cmds import run_cluster_trace

        run_cluster_trace(filters, opts)
        return
    node = opts.one_node()
    if opts.output and os.path.isdir(opts.output):
        raise UsageError(f"{opts.output} is a directory: give a file name for one node", setting="local_path")
    if opts.require_all or opts.max_total_size:
        raise UsageError("--require-all and --max-total-size go with several nodes", setting="node")
    limit = parse_size(opts.max_size)
    mode = parse_mode(opts.mode)
    fmt = format_arg(opts.format_)
    checked = flt.validate(filters)
    from ..kazoo.governor import check_max_rate

    check_max_rate(opts.max_rate)
    show_progress = render.is_terminal() and not opts.follow
    corrections: list[Any] = []

    async def body(n: HiddenNode) -> RunSummary:
        from ..kazoo.session import StopRequests, TraceSession

        requests = StopRequests()
        with requests.signals():
            session = await TraceSession.start(
                n,
                checked,
                local_path=opts.output,
                duration=opts.duration,
                max_size=limit,
                sink=opts.sink,
                level=opts.level,
                format_list=fmt,
                remote_path=opts.remote_path,
                lease=opts.lease,
                requests=requests,
                max_rate=opts.max_rate,
                governor=not opts.no_governor,
                timeout=opts.timeout,
                mode=mode,
            )
            trace = session.trace
            for w in trace.warnings:
                click.echo(warning_line(w), err=True)
            click.echo(
                render.safe_text(
                    f"kzbridge: tracing {flt.describe(checked)} on {n.peer_name} (ref {trace.ref}, "
                    f"generation {trace.generation or '-'}, sink {trace.sink}) for up to {opts.duration:g}s "
                    f"-> {session.local_path}"
                ),
                err=True,
            )
            observers: list[Observer] = [render.stop_notices]
            if show_progress:
                observers.append(render.progress_line)
            if opts.follow:
                # `kzbridge ... --follow | head`: the reader left; stop and collect as on Ctrl-C.
                observers.append(
                    render.RecordPrinter(
                        opts.as_json, lambda: requests.request_stop("output closed"), _silence_stdout, raw=opts.raw
                    )
                )
            done = await session.run(*observers)
            corrections.append(session.correction)
            return done

    summary = run_with_node(node, opts.cookie, opts.cookie_file, opts.timeout, body, overall=False)
    # The trace is stopped and collected: a late Ctrl-C must not turn the summary into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.as_json:
        data = render.summary_json(summary)
        emit_json({"summary": data} if opts.follow else data)
    else:
        click.echo(render.summary_text(summary), err=True)
    for w in summary.warnings:
        click.echo(warning_line(w), err=True)
    if opts.report and corrections and corrections[0] is not None:
        from pathlib import Path

        from ..kazoo.merge import MergeSource
        from .report_cmds import write_report_for

        source = MergeSource(summary.node, Path(summary.local_path), corrections[0])
        click.echo(render.safe_text("kzbridge: " + write_report_for([source], opts.report)), err=True)
    if summary.reason == "abandoned" or summary.partial:
        sys.exit(EXIT_INTERRUPTED)


@main.command("trace-module")
@nodes_options
@trace_options
@click.argument("module")
def trace_module(module: str, **kw: Any) -> None:
    """Trace everything MODULE logs, for --duration seconds, and bring the file back.

    \b
      kzbridge trace-module kz_json -n kazoo_apps@h --duration 30 -o trace.log
    """
    run_trace_command(flt.module_filter(module), TraceOptions(**kw))


@main.command("trace-function")
@nodes_options
@trace_options
@click.argument("names", nargs=-1, required=True)
def trace_function(names: tuple[str, ...], **kw: Any) -> None:
    """Trace one function: [MODULE] FUNCTION.

    \b
      kzbridge trace-function kz_json get_value -n kazoo_apps@h
    """
    if len(names) > 2:
        raise UsageError("trace-function takes [MODULE] FUNCTION")
    module, function = (None, names[0]) if len(names) == 1 else names
    run_trace_command(flt.function_filter(function, module), TraceOptions(**kw))


@main.command("trace-pid")
@nodes_options
@trace_options
@click.argument("pid")
def trace_pid(pid: str, **kw: Any) -> None:
    """Trace one process; PID as 0.116.0, <0.116.0> or <node@host.116.0> (as rpc prints it),
    normalised, unlike sup's trace_pid.

    A pid belongs to one node: with several nodes, write it as kzbridge prints it,
    <name@host.A.B>, and only that node is traced.
    """
    from .targets import pid_owner_only

    opts = TraceOptions(**kw)
    owner = pid_owner_only(pid, opts.node, opts.several)
    if owner is not None:
        opts = replace(opts, node=(owner,), cluster_seed=None, exclude=())
    run_trace_command(flt.pid_filter(pid, node=opts.one_node()), opts)


def filters_from(
    filter_specs: tuple[str, ...], module: str | None = None, function: str | None = None, pid: str | None = None
) -> list[Any]:
    out: list[Any] = []
    if module:
        out += flt.module_filter(module)
    if function:
        out += flt.function_filter(function)
    if pid:
        out += flt.pid_filter(pid)
    out += [flt.parse_filter(s) for s in filter_specs]
    if not out:
        raise BadFilterError("give at least one filter (--filter KEY=VALUE, --module, --function or --pid)")
    return out


@main.command("trace")
@nodes_options
@trace_options
@click.option(
    "--filter",
    "filter_specs",
    multiple=True,
    required=True,
    help="KEY=VALUE metadata filter, repeatable (ANDed). VALUE * matches any; module/function "
    "values are atoms, others binaries; KEY:=TERM takes an Erlang term.",
)
def trace_cmd(filter_specs: tuple[str, ...], **kw: Any) -> None:
    """Trace events matching custom metadata, e.g. a call: --filter callid=abc123.

    \b
      kzbridge trace --filter callid=0123abcd -n kazoo_apps@h
      kzbridge trace --filter request=req-1 --filter module=kz_json -n kazoo_apps@h
    """
    run_trace_command(filters_from(filter_specs), TraceOptions(**kw))
