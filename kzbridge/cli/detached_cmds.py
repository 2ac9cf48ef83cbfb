"""Detached traces and files: start, stop, status, clear, collect."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..kazoo import filters as flt
from . import (
    EXIT_INTERRUPTED,
    NumberType,
    emit_json,
    interrupted_word,
    main,
    node_options,
    parse_mode,
    raw_option,
    run_with_node,
    warning_line,
)
from .render import ProgressBar, safe_text
from .trace_cmds import filters_from

if TYPE_CHECKING:
    from ..kazoo.collect import CollectResult
    from ..kazoo.tracing import Trace, TraceStatus
    from ..wire.node import HiddenNode


@contextlib.contextmanager
def keeps_partial_on_interrupt(local: Callable[[], str | None], on_terminal: bool) -> Iterator[None]:
    """Ctrl-C during a collection: say where the bytes so far are, then exit 130."""
    try:
        yield
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        from ..kazoo.collect import partial_path

        path = local()
        part = partial_path(path) if path else None
        if part is None or not part.exists():
            raise
        if on_terminal:
            click.echo("", err=True)
        click.echo(f"kzbridge: {interrupted_word(exc)}; kept {part.stat().st_size} bytes in {part} (partial)", err=True)
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@node_options
@click.option("--module", default=None, help="Filter on module.")
@click.option("--function", default=None, help="Filter on function.")
@click.option("--pid", default=None, help="Filter on pid (0.1.0 or <0.1.0>).")
@click.option("--filter", "filter_specs", multiple=True, help="KEY=VALUE metadata filter, repeatable.")
@click.option(
    "--duration",
    "-d",
    type=NumberType("duration", lo=1),
    default=600.0,
    show_default=True,
    help="The node stops the trace by itself after this many seconds.",
)
@click.option("--level", default="debug", type=click.Choice(flt.LEVELS), show_default=True)
@click.option("--sink", type=click.Choice([flt.DATA_SINK, flt.LAGER_SINK]), default=flt.DATA_SINK, show_default=True)
@click.option("--remote-path", default=None)
def start(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    module: str | None,
    function: str | None,
    pid: str | None,
    filter_specs: tuple[str, ...],
    duration: float,
    level: str,
    sink: str,
    remote_path: str | None,
) -> None:
    """Start a detached trace and print its ref; the node stops it after --duration.

    Stop and collect it later with `kzbridge stop REF`.
    """
    from ..kazoo import tracing

    filters = filters_from(filter_specs, module, function, pid)

    async def body(n: HiddenNode) -> Trace:
        return await tracing.start_trace(
            n, filters, sink=sink, level=level, remote_path=remote_path, lease=duration, detached=True, timeout=timeout
        )

    trace = run_with_node(node, cookie, cookie_file, timeout, body)
    if as_json:
        emit_json(
            {
                "ref": trace.ref,
                "node": trace.node_name,
                "remote_path": trace.remote_path,
                "generation": trace.generation or 0,
                "sink": trace.sink,
                "stops_at": time.time() + duration,
            }
        )
    else:
        click.echo(trace.ref)
        click.echo(
            f"kzbridge: trace {trace.ref} writes {trace.remote_path} on {trace.node_name}; the node stops it "
            f"in {duration:g}s. Collect with: kzbridge stop {trace.ref} -n {trace.node_name}",
            err=True,
        )


@main.command()
@node_options
@click.argument("ref", required=False)
@click.option("--all", "all_", is_flag=True, help="Stop every trace this machine started on the node.")
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Local file (default NODE-REF.log in the current directory), or a directory to put "
    "NODE-REF.log files in (needed with --all).",
)
@click.option("--no-collect", is_flag=True, help="Only stop; leave the file on the node.")
@click.option("--mode", default=None, help="Permission bits of the local files, octal (default 0600).")
def stop(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    ref: str | None,
    all_: bool,
    output: str | None,
    no_collect: bool,
    mode: str | None,
) -> None:
    """Stop a trace by REF (or --all) and bring its file back."""
    if not ref and not all_:
        raise UsageError("give a REF or --all")
    file_mode = parse_mode(mode)
    if all_ and output and not os.path.isdir(output):
        raise UsageError(f"with --all, --output must be an existing directory, not {output!r}")
    from ..kazoo import journal, localfiles, tracing
    from ..kazoo.session import default_local_path

    collecting: list[str] = []

    async def body(n: HiddenNode) -> list[dict[str, Any]]:
        refs = [ref] if ref else [e.ref for e in journal.active(n.peer_name)]
        done = []
        for r in refs:
            local = ""
            if not no_collect:  # the output is checked before the trace is touched
                default_name = default_local_path(n.peer_name, r)
                if output and (all_ or os.path.isdir(output)):
                    local = os.path.join(output, default_name)
                else:
                    local = output or default_name
                localfiles.check_target(local)
            trace = await tracing.attach(n, r, timeout)
            await trace.stop()
            item: dict[str, Any] = {"ref": r, "remote_path": trace.remote_path}
            if not no_collect:
                bar = ProgressBar() if sys.stderr.isatty() and not as_json else None
                collecting[:] = [local]
                res = await trace.collect(local, progress=bar.update if bar else None, mode=file_mode)
                for w in res.warnings:
                    click.echo(warning_line(w), err=True)
                if bar is not None:
                    bar.finish(res.bytes)
                item.update(local_path=res.local_path, bytes=res.bytes, parts=res.parts, verified=res.verified)
            done.append(item)
        return done

    with keeps_partial_on_interrupt(lambda: collecting[0] if collecting else None, sys.stderr.isatty()):
        done = run_with_node(node, cookie, cookie_file, timeout, body, overall=no_collect)
    if as_json:
        emit_json(done)
    elif not done:
        click.echo("kzbridge: no running traces from this machine on that node", err=True)
    for item in [] if as_json else done:
        line = f"stopped {safe_text(item['ref'])} ({safe_text(item['remote_path'])})"
        if "local_path" in item:
            line += f" -> {item['local_path']}, {item['bytes']} bytes"
        click.echo(line)


GEN1_STATUS_NOTE = (
    "kzbridge: note: generation 1 kz_data_tracing has no status: only traces started from this machine "
    "are listed; traces started with sup or by other machines are invisible here"
)


@main.command()
@node_options
@raw_option
@click.option("--orphans", is_flag=True, help="List lager traces kz_data_tracing no longer knows.")
def status(
    node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool, raw: bool, orphans: bool
) -> None:
    """Running traces on the node, joined with what this machine started.

    On generation 1 nodes only the traces this machine started can be listed (that API has no
    status). File names and filters come from the node: control characters are shown escaped
    (--raw: as they are).
    """
    from ..kazoo import tracing

    def text(t: str) -> str:
        return t if raw else safe_text(t)

    async def list_orphans(n: HiddenNode) -> list[tuple[str, str]]:
        return await tracing.orphans(n, timeout)

    async def list_traces(n: HiddenNode) -> tuple[int, list[TraceStatus]]:
        return await tracing.status(n, timeout)

    if orphans:
        found = run_with_node(node, cookie, cookie_file, timeout, list_orphans)
        if as_json:
            emit_json([{"sink": s, "file": f} for s, f in found])
        else:
            for s, f in found:
                click.echo(f"orphan  {s}  {text(f)}", color=True)
            if not found:
                click.echo("no orphaned traces", err=True)
        return
    generation, rows = run_with_node(node, cookie, cookie_file, timeout, list_traces)
    if as_json:
        data: dict[str, Any] = {"generation": generation, "traces": [r.__dict__ for r in rows]}
        if generation == 1:
            data["complete"] = False
            data["note"] = "generation 1 has no status: only traces started from this machine are listed"
        emit_json(data)
        return
    if generation == 1:
        click.echo(GEN1_STATUS_NOTE, err=True)
    if not rows:
        click.echo("no traces running", err=True)
    for r in rows:
        lease = f"stops in {r.lease_until - time.time():.0f}s" if r.lease_until else "no lease (not ours)"
        click.echo(
            f"{r.ref}  {r.sink:<11} {'ours' if r.ours else 'other':<5} {text(r.remote_path)}  "
            f"[{text(r.filters)}]  {lease}",
            color=True,  # with --raw, the bytes (click strips colour sequences in a pipe otherwise)
        )


@main.command()
@node_options
@click.option("--orphans", "orphans_only", is_flag=True, help="Stop only orphaned lager traces.")
def clear(
    node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool, orphans_only: bool
) -> None:
    """Stop every trace on the node (generation 2: clear_all_traces; generation 1: ours).

    With --orphans each orphaned handler is removed and the node's handlers are read again:
    "removed FILE" only for those gone, "still there FILE" (and exit 6) for any that stayed.
    """
    from ..kazoo import tracing

    if orphans_only:

        async def remove_orphans(n: HiddenNode) -> list[tracing.OrphanCleared]:
            return await tracing.clear_orphans(n, timeout)

        results = run_with_node(node, cookie, cookie_file, timeout, remove_orphans)
        left = [r.file for r in results if not r.removed]
        if as_json:
            emit_json(
                {
                    "stopped": [r.file for r in results if r.removed],
                    "removed": [{"sink": r.sink, "file": r.file, "how": r.how} for r in results if r.removed],
                    "still_there": left,
                }
            )
        else:
            for r in results:
                click.echo(f"{'removed' if r.removed else 'still there'} {safe_text(r.file)} ({r.how})")
            if not results:
                click.echo("no orphaned traces", err=True)
        if left:
            click.echo(
                f"kzbridge: error: {len(left)} orphaned handler(s) still installed after removal "
                "(the node's handlers were read again; check its lager configuration)",
                err=True,
            )
            sys.exit(6)
        return

    async def body(n: HiddenNode) -> list[str]:
        return await tracing.clear_all(n, timeout)

    stopped = run_with_node(node, cookie, cookie_file, timeout, body)
    if as_json:
        emit_json({"stopped": stopped})
    else:
        for s in stopped:
            click.echo(f"stopped {safe_text(s)}")
        if not stopped:
            click.echo("nothing to stop", err=True)


@main.command()
@node_options
@click.argument("remote_path")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local file (default: the remote file's name).",
)
@click.option("--rotated", is_flag=True, help="Also bring lager's rotated parts .4 .. .0 first, in order.")
@click.option("--mode", default=None, help="Permission bits of the local file, octal (default 0600).")
def collect(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    remote_path: str,
    output: str | None,
    rotated: bool,
    mode: str | None,
) -> None:
    """Bring any file back from the node (streamed; a partial file is kept on failure)."""
    from ..kazoo import localfiles
    from ..kazoo.collect import collect_file

    file_mode = parse_mode(mode)
    local = output or os.path.basename(remote_path) or "collected.log"
    localfiles.check_target(local)  # before connecting
    bar = ProgressBar() if sys.stderr.isatty() and not as_json else None

    async def body(n: HiddenNode) -> CollectResult:
        return await collect_file(
            n,
            remote_path,
            local,
            rotated=rotated,
            progress=bar.update if bar else None,
            timeout=timeout,
            mode=file_mode,
        )

    with keeps_partial_on_interrupt(lambda: local, bar is not None):
        res = run_with_node(node, cookie, cookie_file, timeout, body, overall=False)
    if bar is not None:
        bar.finish(res.bytes)
    for w in res.warnings:
        click.echo(warning_line(w), err=True)
    if as_json:
        emit_json(res.__dict__)
    else:
        rate = res.bytes / res.seconds / 1e6 if res.seconds > 0 else 0
        click.echo(
            f"{res.remote_path} -> {res.local_path}: {res.bytes} bytes in {res.seconds:.2f}s "
            f"({rate:.0f} MB/s), verified"
        )
