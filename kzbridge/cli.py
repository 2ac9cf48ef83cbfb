"""The kzbridge command line.

Every failure ends as one line on stderr and a documented exit code:
  0 ok   1 other error   2 bad usage or filter   3 cannot connect / connection lost
  4 remote call failed   5 timeout   6 node lacks what we need (tracing, ref, file)
  7 sandbox problem   130 interrupted before the trace could be collected
`kzbridge sup` uses sup's own codes instead (see its --help).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from functools import wraps
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import click

from . import __version__
from .cookie import cookie_for_node
from .errors import (
    BadFilterError,
    BadRpcError,
    KzBridgeError,
    RpcTimeoutError,
    UsageError,
)
from .kazoo import filters as flt
from .wire.literal import format_term, parse_term, to_json
from .wire.terms import Atom

if TYPE_CHECKING:
    from .kazoo.logparse import LogRecord
    from .wire.node import HiddenNode

# Heavier modules (asyncio, the tracing layer, the sandbox) are imported inside the
# commands that need them: a one-shot `kzbridge rpc` should not pay for all of them.

EXIT_INTERRUPTED = 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so later writes do not raise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(exc: KzBridgeError) -> None:
    click.echo(f"kzbridge: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """Turns every library error into one line and its exit code, and any bug into one line too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KzBridgeError as exc:
            _fail(exc)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("kzbridge: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(0)
        except Exception as exc:  # a bug: still one line, details on demand
            if os.environ.get("KZBRIDGE_DEBUG"):
                raise
            click.echo(f"kzbridge: internal error: {type(exc).__name__}: {exc} (set KZBRIDGE_DEBUG=1 for a traceback)",
                       err=True)
            sys.exit(1)


@contextlib.contextmanager
def _keeps_partial_on_interrupt(local: Callable[[], str | None], on_terminal: bool) -> Iterator[None]:
    """Ctrl-C during a collection: say where the bytes so far are, then exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        from .kazoo.collect import partial_path
        path = local()
        part = partial_path(path) if path else None
        if part is None or not part.exists():
            raise
        if on_terminal:
            click.echo("", err=True)
        click.echo(f"kzbridge: interrupted; kept {part.stat().st_size} bytes in {part} (partial)", err=True)
        sys.exit(EXIT_INTERRUPTED)


def node_options(fn: Callable) -> Callable:
    """--node, cookie options, --timeout, --json on every command that talks to a node."""
    @click.option("--node", "-n", envvar="KZBRIDGE_NODE", required=True,
                  help="Target node, name@host (env KZBRIDGE_NODE), e.g. kazoo_apps@kazoo1.")
    @click.option("--cookie", "-c", envvar="KZBRIDGE_COOKIE", default=None, show_envvar=True,
                  help="Erlang cookie (never printed). Falls back to --cookie-file, a sandbox of that name, "
                       "then ~/.erlang.cookie.")
    @click.option("--cookie-file", type=click.Path(dir_okay=False), default=None, help="File holding the cookie.")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                  help="Seconds for connecting and for each remote call.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def run_with_node(node: str, cookie: str | None, cookie_file: str | None, timeout: float,
                  body: Callable[["HiddenNode"], Awaitable[Any]], ticktime: float = 60.0) -> Any:
    import asyncio

    from .wire.node import connect_node
    secret = cookie_for_node(node, cookie, cookie_file)

    async def main() -> Any:
        hidden = await connect_node(node, secret, timeout=timeout, ticktime=ticktime)
        try:
            return await body(hidden)
        finally:
            await hidden.close()
    return asyncio.run(main())


def call_once(node: str, cookie: str | None, cookie_file: str | None, timeout: float, module: str, function: str,
              args: list, on_connected: Callable[[Any], None] | None = None) -> Any:
    """One rpc on a blocking connection: the one-shot commands skip asyncio's start-up cost."""
    from .wire.blocking import BlockingNode
    with BlockingNode(node, cookie_for_node(node, cookie, cookie_file), timeout=timeout) as n:
        if on_connected:
            on_connected(n)
        return n.rpc_output(module, function, resolve_pids(n, args, timeout), timeout=timeout)


def resolve_pids(n: Any, args: list, timeout: float) -> list:
    """Pids typed as <0.A.B> or <name@host.A.B> become real pids, made by the node that owns them."""
    from .wire.literal import pid_literals, replace_pid_literals
    from .wire.terms import ErlString, Pid
    found = pid_literals(args)
    if not found:
        return args
    pids = {}
    for lit in found:
        owner = Atom(lit.node or n.peer_name)
        text = ErlString(f"<0.{lit.id}.{lit.serial}>")
        try:
            pid = n.rpc("rpc", "call", [owner, Atom("erlang"), Atom("list_to_pid"), [text]], timeout=timeout)
        except BadRpcError as exc:
            raise UsageError(f"cannot turn {lit} into a pid: {exc.message}") from None
        if type(pid) is not Pid:
            raise UsageError(f"cannot turn {lit} into a pid: {owner.name} answered {format_term(pid)[:200]}")
        pids[lit] = pid
    return replace_pid_literals(args, pids)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


def parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
    t = text.strip().lower()
    num = t.rstrip("kmgb")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise UsageError(f"bad size {text!r}: write e.g. 100MB, 512k or 1048576") from None
    if unit not in units or value <= 0:
        raise UsageError(f"bad size {text!r}: write e.g. 100MB, 512k or 1048576")
    return int(value * units[unit])


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kzbridge")
def main() -> None:
    """Trace Kazoo nodes from anywhere, as a hidden Erlang node.

    kzbridge joins the cluster over Erlang distribution (no SSH, no sup), starts a
    kz_data_tracing trace, watches it, always stops it (a lease on the node stops it
    even if kzbridge dies) and brings the file back, parsed.

    \b
    Quick start, without a Kazoo at hand:
      kzbridge demo
    Against a node:
      kzbridge trace-module kz_json --node kazoo_apps@host --duration 30 -o trace.log

    Exit codes: 0 ok, 1 other error, 2 bad usage or filter, 3 connection, 4 remote call
    failed, 5 timeout, 6 node lacks tracing/ref/file, 7 sandbox, 130 interrupted.
    """


# ---------------------------------------------------------------- wire commands


@main.command()
@node_options
def ping(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool) -> None:
    """Connect and check the node answers (exit 0 on pong)."""
    conn: dict[str, Any] = {}
    t0 = time.perf_counter()
    otp = call_once(node, cookie, cookie_file, timeout, "erlang", "system_info", [Atom("otp_release")],
                    on_connected=lambda n: conn.update(node=n.peer_name, handshake=n.handshake_version, name=n.name,
                                                       t=time.perf_counter())).value
    info = {"node": conn["node"], "pong": True, "otp": str(otp), "handshake": conn["handshake"],
            "ms": round((time.perf_counter() - conn["t"]) * 1000, 2), "connect_ms": round((conn["t"] - t0) * 1000, 2),
            "as": conn["name"]}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"pong from {info['node']} (OTP {info['otp']}, handshake v{info['handshake']}, "
                   f"rpc {info['ms']} ms)")


@main.command(context_settings={"ignore_unknown_options": True})
@node_options
@click.argument("module")
@click.argument("function")
@click.argument("args", nargs=-1)
def rpc(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
        module: str, function: str, args: tuple[str, ...]) -> None:
    """Call MODULE:FUNCTION(ARGS...) on the node; each ARG is an Erlang term literal.

    \b
    Examples:
      kzbridge rpc -n kazoo_apps@h erlang node
      kzbridge rpc -n kazoo_apps@h lists seq 1 10
      kzbridge rpc -n kazoo_apps@h kz_data_tracing trace_file '[{module, kz_json}]'
      kzbridge rpc -n kazoo_apps@h erlang byte_size '<<"bin">>'
      kzbridge rpc -n kazoo_apps@h erlang process_info '<0.116.0>' message_queue_len
    What the function prints comes first (stderr with --json), then the result.
    """
    terms = [parse_term(a) for a in args]
    result = call_once(node, cookie, cookie_file, timeout, module, function, terms)
    if as_json:
        emit_json({"result": to_json(result.value), "output": result.output})
    else:
        if result.output:
            click.echo(result.output, nl=False)
        click.echo(format_term(result.value))


@main.command(context_settings={"ignore_unknown_options": True})
@node_options
@click.option("-e", "erlang_terms", is_flag=True, help="Parse ARGs as Erlang terms instead of binaries.")
@click.argument("module")
@click.argument("function")
@click.argument("args", nargs=-1)
def sup(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
        erlang_terms: bool, module: str, function: str, args: tuple[str, ...]) -> None:
    """Run a maintenance function the way Kazoo's sup does, printing what it prints.

    Arguments arrive as binaries (with -e: as Erlang terms). Exit codes are sup's:
    0 the function returned ok, 1 usage/connect/cookie problems, 2 it returned
    something else, 3 other badrpc, 4 timeout.

    \b
      kzbridge sup -n kazoo_apps@h kazoo_data_maintenance trace_module kz_json
    """
    try:
        terms = [parse_term(a) for a in args] if erlang_terms else [a.encode() for a in args]
        result = call_once(node, cookie, cookie_file, timeout, module, function, terms)
        if result.output and not as_json:
            click.echo(result.output, nl=False)
    except RpcTimeoutError as exc:
        click.echo(f"kzbridge: error: {exc}", err=True)
        sys.exit(4)
    except BadRpcError as exc:
        if exc.output and not as_json:
            click.echo(exc.output, nl=False)
        click.echo(f"kzbridge: error: {exc}", err=True)
        sys.exit(3)
    except KzBridgeError as exc:
        click.echo(f"kzbridge: error: {exc}", err=True)
        sys.exit(1)
    ok = result.value == Atom("ok")
    if as_json:
        emit_json({"result": to_json(result.value), "output": result.output, "ok": ok})
    elif not ok:
        click.echo(format_term(result.value))
    sys.exit(0 if ok else 2)


# ---------------------------------------------------------------- trace commands


def trace_options(fn: Callable) -> Callable:
    @click.option("--duration", "-d", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                  help="Seconds to trace before stopping and collecting.")
    @click.option("--follow", "-f", is_flag=True, help="Print events as they arrive (until Ctrl-C or --duration).")
    @click.option("--max-size", default="100MB", show_default=True,
                  help="Stop when the remote file reaches this size (e.g. 10MB, 512k).")
    @click.option("--level", default="debug", show_default=True, type=click.Choice(flt.LEVELS),
                  help="Lowest severity traced (generation 2 and lager_event sink).")
    @click.option("--format", "format_", default=None,
                  help="lager formatter_config as an Erlang list, e.g. '[time,\" \",message,\"\\n\"]'. "
                       "Default: Kazoo's format, which the parser reads.")
    @click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                  help="Local file for the trace (default NODE-REF.log in the current directory).")
    @click.option("--sink", type=click.Choice([flt.DATA_SINK, flt.LAGER_SINK]), default=flt.DATA_SINK,
                  show_default=True,
                  help="data: through kz_data_tracing (Kazoo's data sink). lager_event: Kazoo's main log, "
                       "through lager directly (what Kazoo 4.2.2+ actually logs to).")
    @click.option("--lease", type=click.FloatRange(min=5), default=flt.DEFAULT_LEASE, show_default=True,
                  help="Seconds after which the node stops the trace by itself if kzbridge stops renewing.")
    @click.option("--remote-path", default=None, help="Trace file on the node (default /tmp/kzbridge-...log).")
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def _format_arg(text: str | None) -> list | None:
    if text is None:
        return None
    value = parse_term(text)
    if not isinstance(value, list) or not value:
        raise BadFilterError("--format must be a non-empty Erlang list, e.g. '[time,\" \",message,\"\\n\"]'")
    return value


def _record_line(rec: LogRecord, as_json: bool) -> str:
    if as_json:
        return json.dumps(rec.to_dict(), ensure_ascii=False)
    who = f"{rec.module or '?'}:{rec.function or '?'}"
    callid = f" [{rec.callid}]" if rec.callid and rec.callid != "0000000000" else ""
    return f"{rec.time} {rec.severity:<7} {who}{callid} {rec.pid or ''} {rec.message}"


def run_trace_command(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
                      filters: list, duration: float, follow: bool, max_size: str, level: str,
                      format_: str | None, output: str | None, sink: str, lease: float,
                      remote_path: str | None) -> None:
    """The shared body of trace-module, trace-function, trace-pid and trace."""
    import asyncio
    import signal

    from .kazoo import tracing
    limit = parse_size(max_size)
    fmt = _format_arg(format_)
    checked = flt.validate(filters)
    show_progress = sys.stderr.isatty() and not follow
    result: dict[str, Any] = {}

    async def body(n: HiddenNode) -> None:
        control = tracing.RunControl()
        loop = asyncio.get_running_loop()
        hits = {"n": 0}
        piped = {"closed": False}

        def on_signal(name: str) -> None:
            hits["n"] += 1
            if hits["n"] == 1:
                control.reason = name
                control.stop.set()
                click.echo(f"\nkzbridge: {name}: stopping the trace and collecting "
                           "(press Ctrl-C again to stop without collecting)", err=True)
            else:
                control.abandon.set()
                click.echo("kzbridge: stopping the trace without collecting", err=True)
        for sig, name in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
            loop.add_signal_handler(sig, on_signal, name)
        trace = await tracing.start_trace(n, checked, sink=sink, level=level, format_list=fmt,
                                          remote_path=remote_path, lease=lease)
        for w in trace.warnings:
            click.echo(f"kzbridge: warning: {w}", err=True)
        local = output or f"{n.peer_name.split('@')[0]}-{trace.ref}.log"
        click.echo(f"kzbridge: tracing {flt.describe(checked)} on {n.peer_name} (ref {trace.ref}, "
                   f"generation {trace.generation or '-'}, sink {sink}) for up to {duration:g}s -> {local}", err=True)

        def on_record(rec: LogRecord) -> None:
            if follow and not piped["closed"]:
                try:
                    click.echo(_record_line(rec, as_json))
                except BrokenPipeError:
                    # `kzbridge ... --follow | head`: the reader left; stop and collect as on Ctrl-C.
                    piped["closed"] = True
                    _silence_stdout()
                    control.reason = "output closed"
                    control.stop.set()

        def on_progress(elapsed: float, nbytes: int, lines: int) -> None:
            if show_progress:
                click.echo(f"\r  {elapsed:6.1f}s  {human_bytes(nbytes):>10}  {lines} lines   ", err=True, nl=False)
        summary = await tracing.run_trace(trace, local, duration=duration, max_size=limit, control=control,
                                          on_record=on_record, on_progress=on_progress)
        if show_progress:
            click.echo("", err=True)
        result["summary"] = summary

    run_with_node(node, cookie, cookie_file, timeout, body)
    # The trace is stopped and collected: a late Ctrl-C must not turn the summary into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s: tracing.RunSummary = result["summary"]
    data = {k: v for k, v in s.__dict__.items()}
    if as_json:
        emit_json({"summary": data} if follow else data)
    else:
        click.echo(f"ref {s.ref} on {s.node} ({s.sink} sink, generation {s.generation or '-'}), "
                   f"stopped by {s.reason} after {s.seconds:.1f}s", err=True)
        click.echo(f"  remote: {s.remote_path}\n  local:  {s.local_path}{' (PARTIAL)' if s.partial else ''}\n"
                   f"  {s.lines} lines, {s.bytes} bytes{', size verified' if s.verified else ''}", err=True)
    for w in s.warnings:
        click.echo(f"kzbridge: warning: {w}", err=True)
    if s.reason == "abandoned" or s.partial:
        sys.exit(EXIT_INTERRUPTED)


@main.command("trace-module")
@node_options
@trace_options
@click.argument("module")
def trace_module(module: str, **kw: Any) -> None:
    """Trace everything MODULE logs, for --duration seconds, and bring the file back.

    \b
      kzbridge trace-module kz_json -n kazoo_apps@h --duration 30 -o trace.log
    """
    run_trace_command(filters=flt.module_filter(module), **kw)


@main.command("trace-function")
@node_options
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
    run_trace_command(filters=flt.function_filter(function, module), **kw)


@main.command("trace-pid")
@node_options
@trace_options
@click.argument("pid")
def trace_pid(pid: str, **kw: Any) -> None:
    """Trace one process; PID as 0.116.0 or <0.116.0> (normalised, unlike sup's trace_pid)."""
    run_trace_command(filters=flt.pid_filter(pid), **kw)


def _filters_from(filter_specs: tuple[str, ...], module: str | None = None, function: str | None = None,
                  pid: str | None = None) -> list:
    out: list = []
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
@node_options
@trace_options
@click.option("--filter", "filter_specs", multiple=True, required=True,
              help="KEY=VALUE metadata filter, repeatable (ANDed). VALUE * matches any; module/function "
                   "values are atoms, others binaries; KEY:=TERM takes an Erlang term.")
def trace_cmd(filter_specs: tuple[str, ...], **kw: Any) -> None:
    """Trace events matching custom metadata, e.g. a call: --filter callid=abc123.

    \b
      kzbridge trace --filter callid=0123abcd -n kazoo_apps@h
      kzbridge trace --filter request=req-1 --filter module=kz_json -n kazoo_apps@h
    """
    run_trace_command(filters=_filters_from(filter_specs), **kw)


@main.command()
@node_options
@click.option("--module", default=None, help="Filter on module.")
@click.option("--function", default=None, help="Filter on function.")
@click.option("--pid", default=None, help="Filter on pid (0.1.0 or <0.1.0>).")
@click.option("--filter", "filter_specs", multiple=True, help="KEY=VALUE metadata filter, repeatable.")
@click.option("--duration", "-d", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="The node stops the trace by itself after this many seconds.")
@click.option("--level", default="debug", type=click.Choice(flt.LEVELS), show_default=True)
@click.option("--sink", type=click.Choice([flt.DATA_SINK, flt.LAGER_SINK]), default=flt.DATA_SINK,
              show_default=True)
@click.option("--remote-path", default=None)
def start(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
          module: str | None, function: str | None, pid: str | None, filter_specs: tuple[str, ...],
          duration: float, level: str, sink: str, remote_path: str | None) -> None:
    """Start a detached trace and print its ref; the node stops it after --duration.

    Stop and collect it later with `kzbridge stop REF`.
    """
    from .kazoo import tracing
    filters = _filters_from(filter_specs, module, function, pid)

    async def body(n: HiddenNode) -> tracing.Trace:
        return await tracing.start_trace(n, filters, sink=sink, level=level, remote_path=remote_path,
                                         lease=duration, detached=True)
    trace = run_with_node(node, cookie, cookie_file, timeout, body)
    if as_json:
        emit_json({"ref": trace.ref, "node": trace.node_name, "remote_path": trace.remote_path,
                   "generation": trace.generation, "sink": trace.sink, "stops_at": time.time() + duration})
    else:
        click.echo(trace.ref)
        click.echo(f"kzbridge: trace {trace.ref} writes {trace.remote_path} on {trace.node_name}; the node stops it "
                   f"in {duration:g}s. Collect with: kzbridge stop {trace.ref} -n {trace.node_name}", err=True)


@main.command()
@node_options
@click.argument("ref", required=False)
@click.option("--all", "all_", is_flag=True, help="Stop every trace this machine started on the node.")
@click.option("--output", "-o", type=click.Path(), default=None,
              help="Local file (default NODE-REF.log in the current directory), or a directory to put "
                   "NODE-REF.log files in (needed with --all).")
@click.option("--no-collect", is_flag=True, help="Only stop; leave the file on the node.")
def stop(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
         ref: str | None, all_: bool, output: str | None, no_collect: bool) -> None:
    """Stop a trace by REF (or --all) and bring its file back."""
    from .kazoo import tracing
    if not ref and not all_:
        raise UsageError("give a REF or --all")
    if all_ and output and not os.path.isdir(output):
        raise UsageError(f"with --all, --output must be an existing directory, not {output!r}")
    from .kazoo import journal

    collecting: list[str] = []

    async def body(n: HiddenNode) -> list[dict]:
        refs = [ref] if ref else [e.ref for e in journal.active(n.peer_name)]
        done = []
        for r in refs:
            trace = await tracing.attach(n, r)
            await trace.stop()
            item: dict[str, Any] = {"ref": r, "remote_path": trace.remote_path}
            if not no_collect:
                default_name = f"{n.peer_name.split('@')[0]}-{r}.log"
                if output and (all_ or os.path.isdir(output)):
                    local = os.path.join(output, default_name)
                else:
                    local = output or default_name
                bar = ProgressBar() if sys.stderr.isatty() and not as_json else None
                collecting[:] = [local]
                res = await trace.collect(local, progress=bar.update if bar else None)
                if bar is not None:
                    bar.finish(res.bytes)
                item.update(local_path=res.local_path, bytes=res.bytes, parts=res.parts, verified=res.verified)
            done.append(item)
        return done
    with _keeps_partial_on_interrupt(lambda: collecting[0] if collecting else None, sys.stderr.isatty()):
        done = run_with_node(node, cookie, cookie_file, timeout, body)
    if as_json:
        emit_json(done)
    elif not done:
        click.echo("kzbridge: no running traces from this machine on that node", err=True)
    for item in ([] if as_json else done):
        line = f"stopped {item['ref']} ({item['remote_path']})"
        if "local_path" in item:
            line += f" -> {item['local_path']}, {item['bytes']} bytes"
        click.echo(line)


@main.command()
@node_options
@click.option("--orphans", is_flag=True, help="List lager traces kz_data_tracing no longer knows.")
def status(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
           orphans: bool) -> None:
    """Running traces on the node, joined with what this machine started."""
    from .kazoo import tracing
    async def body(n: HiddenNode) -> Any:
        if orphans:
            return await tracing.orphans(n)
        return await tracing.status(n)
    result = run_with_node(node, cookie, cookie_file, timeout, body)
    if orphans:
        if as_json:
            emit_json([{"sink": s, "file": f} for s, f in result])
        else:
            for s, f in result:
                click.echo(f"orphan  {s}  {f}")
            if not result:
                click.echo("no orphaned traces", err=True)
        return
    generation, rows = result
    if as_json:
        emit_json({"generation": generation, "traces": [r.__dict__ for r in rows]})
        return
    if not rows:
        click.echo("no traces running", err=True)
    for r in rows:
        lease = f"stops in {r.lease_until - time.time():.0f}s" if r.lease_until else "no lease (not ours)"
        click.echo(f"{r.ref}  {r.sink:<11} {'ours' if r.ours else 'other':<5} {r.remote_path}  [{r.filters}]  {lease}")


@main.command()
@node_options
@click.option("--orphans", "orphans_only", is_flag=True, help="Stop only orphaned lager traces.")
def clear(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
          orphans_only: bool) -> None:
    """Stop every trace on the node (generation 2: clear_all_traces; generation 1: ours)."""
    from .kazoo import tracing
    async def body(n: HiddenNode) -> list[str]:
        return await (tracing.clear_orphans(n) if orphans_only else tracing.clear_all(n))
    stopped = run_with_node(node, cookie, cookie_file, timeout, body)
    if as_json:
        emit_json({"stopped": stopped})
    else:
        for s in stopped:
            click.echo(f"stopped {s}")
        if not stopped:
            click.echo("nothing to stop", err=True)


@main.command()
@node_options
@click.argument("remote_path")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Local file (default: the remote file's name).")
@click.option("--rotated", is_flag=True, help="Also bring lager's rotated parts .4 .. .0 first, in order.")
def collect(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool,
            remote_path: str, output: str | None, rotated: bool) -> None:
    """Bring any file back from the node (streamed; a partial file is kept on failure)."""
    from .kazoo.collect import collect_file
    local = output or os.path.basename(remote_path) or "collected.log"
    bar = ProgressBar() if sys.stderr.isatty() and not as_json else None

    async def body(n: HiddenNode) -> Any:
        return await collect_file(n, remote_path, local, rotated=rotated, progress=bar.update if bar else None)
    with _keeps_partial_on_interrupt(lambda: local, bar is not None):
        res = run_with_node(node, cookie, cookie_file, timeout, body)
    if bar is not None:
        bar.finish(res.bytes)
    if as_json:
        emit_json(res.__dict__)
    else:
        rate = res.bytes / res.seconds / 1e6 if res.seconds > 0 else 0
        click.echo(f"{res.remote_path} -> {res.local_path}: {res.bytes} bytes in {res.seconds:.2f}s "
                   f"({rate:.0f} MB/s), verified")


# ---------------------------------------------------------------- sandbox and demo


@main.group()
def sandbox() -> None:
    """A local fixture node that behaves like Kazoo's tracing side (for tests and demos)."""


@sandbox.command("start")
@click.option("--name", default="kzsandbox", show_default=True, help="Node name (the host is 127.0.0.1).")
@click.option("--cookie", default=None, help="Cookie (default: random, kept in a 0600 file).")
@click.option("--generation", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="kz_data_tracing API generation: 1 = Kazoo 4.0/4.1, 2 = Kazoo 4.2+.")
@click.option("--rate", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Data-sink log events per second from the traffic workers.")
@click.option("--json", "as_json", is_flag=True)
def sandbox_start(name: str, cookie: str | None, generation: str, rate: float, as_json: bool) -> None:
    """Compile the fixtures if needed, start epmd and the node, wait until it answers."""
    from . import sandbox as sandbox_mod
    box = sandbox_mod.start(name, cookie=cookie, generation=int(generation), rate=rate)
    if as_json:
        emit_json(sandbox_mod.info(box))
    else:
        click.echo(box.node)
        click.echo(f"kzbridge: sandbox up (generation {box.generation}, {box.rate:g} events/s, pid {box.os_pid}); "
                   f"kzbridge finds its cookie by node name, or use --cookie-file {box.cookie_file}", err=True)


@sandbox.command("stop")
@click.option("--name", default="kzsandbox", show_default=True)
def sandbox_stop(name: str) -> None:
    """Stop a sandbox node (and delete the trace files kzbridge wrote on it, /tmp/kzbridge-NAME-*)."""
    from . import sandbox as sandbox_mod
    if not sandbox_mod.stop(name):
        raise UsageError(f"no sandbox named {name!r} is running", hint="kzbridge sandbox list")
    click.echo(f"stopped {name}")


@sandbox.command("list")
@click.option("--json", "as_json", is_flag=True)
def sandbox_list(as_json: bool) -> None:
    """Running sandbox nodes started from this machine."""
    from . import sandbox as sandbox_mod
    boxes = sandbox_mod.list_sandboxes()
    if as_json:
        emit_json([sandbox_mod.info(b) for b in boxes])
        return
    for b in boxes:
        click.echo(f"{b.node}  generation {b.generation}  rate {b.rate:g}/s  pid {b.os_pid}")
    if not boxes:
        click.echo("no sandboxes running", err=True)


@main.command()
@click.option("--duration", type=click.FloatRange(min=1), default=5.0, show_default=True)
@click.option("--generation", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the sandbox running afterwards.")
def demo(duration: float, generation: str, keep: bool) -> None:
    """Start a sandbox, trace kz_json on it, show the result, stop the sandbox.

    Needs only Debian's erlang-nox and erlang-lager.
    """
    from . import sandbox as sandbox_mod
    name = f"kzdemo{os.getpid()}"
    click.echo(f"kzbridge demo: starting a fixture node (generation {generation})...", err=True)
    box = sandbox_mod.start(name, generation=int(generation), rate=40)
    out = f"demo-{name}.log"
    try:
        click.echo(f"$ kzbridge trace-module kz_json --node {box.node} --duration {duration:g} -o {out}", err=True)
        run_trace_command(box.node, box.cookie, None, 10.0, False, flt.module_filter("kz_json"), duration,
                          False, "100MB", "debug", None, out, flt.DATA_SINK, 60.0, None)
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        if not keep:
            sandbox_mod.stop(name)
    from .kazoo.logparse import parse_lines
    with open(out, encoding="utf-8", errors="replace") as fh:
        records = list(parse_lines(fh))
    click.echo(f"\nfirst events of {len(records)} parsed from {out}:")
    for rec in records[:8]:
        click.echo("  " + _record_line(rec, False).replace("\n", "\n    "))


if __name__ == "__main__":  # pragma: no cover
    main()
