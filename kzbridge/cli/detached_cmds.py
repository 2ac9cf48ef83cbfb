"""Detached traces and files: start, stop, status, clear, collect.

``start``, ``stop``, ``status`` and ``clear`` take one node or several (``-n A -n B``,
``--cluster SEED``, ``--exclude GLOB``). Each command's work on a node is one coroutine:
``run_with_node`` runs it on one node, ``run_on_nodes`` on all of them at once
(kazoo.cluster.each_node, one deadline for all); only the rendering differs. Several
nodes print one line per node or trace, the node's name first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import (
    KzBridgeError,
    UsageError,
)
from ..kazoo import filters as flt
from . import (
    EXIT_INTERRUPTED,
    NumberType,
    emit_json,
    interrupted_word,
    main,
    node_options,
    nodes_options,
    parse_mode,
    raw_option,
    run_with_node,
    warning_line,
)
from .render import ProgressBar, safe_text
from .targets import (
    Targets,
    errors_of,
    exit_code,
    failure_row,
    no_answer,
    node_json,
    nodes_flags,
    nodes_json,
    pid_owner_only,
    resolve_nodes,
    run_on_nodes,
    say,
)
from .trace_cmds import filters_from

if TYPE_CHECKING:
    from ..kazoo.collect import CollectResult
    from ..kazoo.tracing import Trace, TraceStatus
    from ..wire.node import HiddenNode


T = TypeVar("T")
EXIT_CONNECTION = 3
EXIT_STILL_THERE = 6


@contextlib.contextmanager
def keeps_partial_on_interrupt(locals_: Callable[[], list[str]], on_terminal: bool) -> Iterator[None]:
    """Ctrl-C during collections: say where the bytes so far are (one line per partial file), then exit 130."""
    try:
        yield
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        from ..kazoo.collect import partial_path

        kept = [part for part in (partial_path(p) for p in locals_() if p) if part.exists()]
        if not kept:
            raise
        if on_terminal:
            click.echo("", err=True)
        for part in kept:
            click.echo(
                f"kzbridge: {interrupted_word(exc)}; kept {part.stat().st_size} bytes in {part} (partial)", err=True
            )
        sys.exit(EXIT_INTERRUPTED)


class Stopping:
    """What ``stop`` did on one node before collecting: the traces it stopped (each with its
    local file and result line) and, when a later stop failed, that failure."""

    def __init__(self) -> None:
        self.stopped: list[tuple[Trace, str, dict[str, Any]]] = []
        self.failed: KzBridgeError | None = None


# ---------------------------------------------------------------- one node or several


# ---------------------------------------------------------------- start


def _start_targets(t: Targets, pid: str | None) -> tuple[Targets, str | None]:
    """A pid belongs to one node: with several nodes only <name@host.A.B> is taken, and only that node
    is traced (as trace-pid does); a pid written so is given to the node as its own <0.A.B>."""
    if not pid:
        return t, pid
    narrowed = pid_owner_only(pid, t.given, t.several)
    if narrowed is not None:
        t = t.only(narrowed)
    owner, local = flt.pid_owner(pid)
    if owner is None:
        return t, pid
    flt.pid_filter(pid, node=t.one())  # refuses a process of another node
    return t, local


@main.command()
@nodes_options
@click.option("--module", default=None, help="Filter on module.")
@click.option("--function", default=None, help="Filter on function.")
@click.option(
    "--pid",
    default=None,
    help="Filter on pid (0.1.0 or <0.1.0>; with several nodes <name@host.A.B>, and only that node is traced).",
)
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
@click.option("--remote-path", default=None, help="Trace file on the node (one node only).")
@click.option(
    "--require-all",
    is_flag=True,
    help="With several nodes: if any node cannot be reached or refuses, stop the traces started and fail (exit 3).",
)
@click.option(
    "--max-rate",
    type=float,
    default=flt.DEFAULT_MAX_RATE,
    show_default=True,
    help="Events/s: a governor on the node stops the trace past this rate, or when lager's sink goes "
    "synchronous, and start refuses a sink that is synchronous already.",
)
@click.option(
    "--no-governor",
    is_flag=True,
    help="Start no governor on the node (a flood can then make every logging process wait).",
)
def start(
    node: tuple[str, ...],
    cluster_seed: str | None,
    exclude: tuple[str, ...],
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
    require_all: bool,
    max_rate: float,
    no_governor: bool,
) -> None:
    """Start a detached trace and print its ref; the node stops it after --duration.

    Stop and collect it later with `kzbridge stop REF`. With several nodes (or --cluster SEED)
    the same trace starts on every node at once: one line per node (node, ref, remote file),
    then the command that stops and collects them all. A node that cannot be reached or
    refuses is named and the others go on (--require-all: the others are stopped, exit 3).

    \b
      kzbridge start --module kz_json -n kazoo_apps@kz1 --duration 300
      kzbridge start --filter callid=0123abcd -n kazoo_apps@kz1 -n ecallmgr@kz2 --duration 300
      kzbridge start --filter callid=0123abcd --cluster kazoo_apps@kz1 --exclude 'bigcouch@*'
    """
    from ..kazoo import tracing
    from ..kazoo.governor import check_max_rate

    check_max_rate(max_rate)  # before connecting, as the trace commands do
    t, pid = _start_targets(Targets(node, cluster_seed, exclude, cookie, cookie_file, timeout), pid)
    filters = filters_from(filter_specs, module, function, pid)
    checked = flt.validate(filters)  # once, before any node is asked
    if t.several and remote_path:
        raise UsageError(
            "--remote-path names one file on one node: leave it out with several nodes", setting="remote_path"
        )
    if require_all and not t.several:
        raise UsageError("--require-all goes with several nodes", setting="node")

    async def body(n: HiddenNode) -> Trace:
        return await tracing.start_trace(
            n, checked, sink=sink, level=level, remote_path=remote_path, lease=duration, detached=True, timeout=timeout,
            max_rate=max_rate, governor=not no_governor,
        )  # fmt: skip

    if t.several:
        _start_on_nodes(t, body, checked, duration, as_json, require_all)
        return
    trace = t.run(body)
    for w in trace.warnings:
        click.echo(warning_line(w), err=True)
    if as_json:
        emit_json(_started_json(trace, duration))
    else:
        click.echo(trace.ref)
        click.echo(
            f"kzbridge: trace {trace.ref} writes {trace.remote_path} on {trace.node_name}; the node stops it "
            f"in {duration:g}s. Collect with: kzbridge stop {trace.ref} -n {trace.node_name}",
            err=True,
        )


def _started_json(trace: Trace, duration: float) -> dict[str, Any]:
    return {
        "ref": trace.ref,
        "node": trace.node_name,
        "remote_path": trace.remote_path,
        "generation": trace.generation or 0,
        "sink": trace.sink,
        "stops_at": time.time() + duration,
    }


def _start_on_nodes(
    t: Targets,
    body: Callable[[HiddenNode], Awaitable[Trace]],
    checked: list[Any],
    duration: float,
    as_json: bool,
    require_all: bool,
) -> None:
    import asyncio

    from ..kazoo.cluster import ClusterIncompleteError

    async def all_or_none(results: dict[str, Trace | KzBridgeError]) -> None:
        failed = errors_of(results)
        if not require_all or not failed:
            return
        started = {n: r for n, r in results.items() if not isinstance(r, KzBridgeError)}

        async def stop(trace: Trace) -> str:
            return await asyncio.wait_for(trace.stop(), t.timeout)

        done = await asyncio.gather(*(stop(tr) for tr in started.values()), return_exceptions=True)
        stopped = [n for n, d in zip(started, done, strict=False) if isinstance(d, str)]
        left = [n for n, d in zip(started, done, strict=False) if not isinstance(d, str)]
        what = "; ".join(f"{n}: {e}" for n, e in failed.items())
        raise ClusterIncompleteError(
            f"{len(failed)} of {len(results)} nodes could not start the trace ({what})"
            + (f"; stopped the traces started on {', '.join(stopped)}" if stopped else "")
            + (
                f"; COULD NOT STOP the traces on {', '.join(left)} (their nodes stop them in {duration:g}s)"
                if left
                else ""
            ),
            failed=list(failed),
        )

    results, source = run_on_nodes(t, body, then=all_or_none)
    started = {n: r for n, r in results.items() if not isinstance(r, KzBridgeError)}
    if as_json:
        emit_json(
            [
                {**node_json(n, r), "started": False}
                if isinstance(r, KzBridgeError)
                else {**node_json(n, r), "started": True, **_started_json(r, duration), "node": n}
                for n, r in results.items()
            ]
        )
    else:
        width = max(len(n) for n in results)
        for n, tr in started.items():
            say(f"{n:<{width}}  {tr.ref}  {tr.remote_path}")
    for n, r in results.items():
        if isinstance(r, KzBridgeError):
            say(f"kzbridge: {n}: not started: {r}", err=True)
        else:
            for w in r.warnings:
                click.echo(warning_line(f"{n}: {w}"), err=True)
    if not started:
        sys.exit(exit_code(results))
    say(
        f"kzbridge: tracing {flt.describe(checked)} on {len(started)} of {len(results)} nodes"
        f"{f' (nodes from {source})' if source != 'given' else ''}; each node stops its trace in {duration:g}s. "
        f"Stop and collect them all with: kzbridge stop --all {nodes_flags(list(started))} -o DIR",
        err=True,
    )


# ---------------------------------------------------------------- stop


def _holder_of(t: Targets, ref: str) -> str:
    """Which of the nodes given holds REF, by this machine's journal."""
    from ..kazoo import journal

    nodes, _ = resolve_nodes(t)
    holders = [n for n in nodes if journal.find(n, ref) is not None]
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise UsageError(
            f"this machine's journal has no trace {ref} on {', '.join(nodes)}: give the one node that runs it",
            setting="node",
        )
    raise UsageError(
        f"trace {ref} is in this machine's journal for {', '.join(holders)}: give one of them", setting="node"
    )


def _stopped_line(item: dict[str, Any]) -> str:
    ref, remote = safe_text(item["ref"]), safe_text(item["remote_path"])
    line = f"stopped {ref} ({remote})"
    if item.get("already_stopped"):  # not by this run: say so
        line = f"{ref} was already stopped, by its lease, another client or sup ({remote})"
    if "local_path" in item:
        line += f" -> {item['local_path']}, {item['bytes']} bytes"
    if "governor" in item:
        line += f"; the node's governor had stopped it: {item['governor']}"
    return line


@main.command()
@nodes_options
@click.argument("ref", required=False)
@click.option("--all", "all_", is_flag=True, help="Stop every trace this machine started on the node(s).")
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    default=None,
    help="Local file (default NODE-REF.log in the current directory), or a directory to put "
    "NODE-REF.log files in (needed with --all on several nodes).",
)
@click.option("--no-collect", is_flag=True, help="Only stop; leave the file on the node.")
@click.option("--mode", default=None, help="Permission bits of the local files, octal (default 0600).")
def stop(
    node: tuple[str, ...],
    cluster_seed: str | None,
    exclude: tuple[str, ...],
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
    """Stop a trace by REF (or --all) and bring its file back.

    With several nodes, --all stops every trace this machine started on each of them, at
    once, into -o DIR (an existing directory; files DIR/NODE-REF.log), one line per node on
    stderr as each finishes; REF is looked up in this machine's journal among the nodes given.

    \b
      kzbridge stop 0a1b2c3d4e5f -n kazoo_apps@kz1 -o trace.log
      kzbridge stop --all -n kazoo_apps@kz1 -n ecallmgr@kz2 -o traces/
      kzbridge stop 0a1b2c3d4e5f -n kazoo_apps@kz1,ecallmgr@kz2
    """
    if not ref and not all_:
        raise UsageError("give a REF or --all")
    file_mode = parse_mode(mode)
    if all_ and output and not os.path.isdir(output):
        raise UsageError(f"with --all, --output must be an existing directory, not {output!r}")
    t = Targets(node, cluster_seed, exclude, cookie, cookie_file, timeout)
    if t.several and ref:
        t = t.only(_holder_of(t, ref))
    several = t.several
    if several and not output and not no_collect:
        raise UsageError(
            "with several nodes, give --output DIR (an existing directory) for the NODE-REF.log files",
            setting="local_path",
        )
    import asyncio

    from ..kazoo import journal, localfiles, tracing
    from ..kazoo.governor import detached_stop
    from ..kazoo.session import default_local_path

    collecting: dict[str, str] = {}  # node -> the local file being collected (Ctrl-C names what was kept)

    # Every trace is stopped (on every node) before any collection begins: a Ctrl-C during the
    # collections then leaves nothing running, only .partial files to name. Every output and
    # every ref is checked before the first trace is stopped; a stop that fails after others
    # succeeded ends the node's stopping, and those already stopped are still collected.
    async def stop_each(n: HiddenNode) -> Stopping:
        refs = [ref] if ref else [e.ref for e in journal.active(n.peer_name)]
        targets = []
        for r in refs:
            local = ""
            if not no_collect:
                default_name = default_local_path(n.peer_name, r)
                if output and (all_ or os.path.isdir(output)):
                    local = os.path.join(output, default_name)
                else:
                    local = output or default_name
                localfiles.check_target(local)
            targets.append((r, local))
        traces = [(await tracing.attach(n, r, timeout), local) for r, local in targets]  # reads only
        stopping = Stopping()
        for trace, local in traces:
            try:
                await trace.stop()
                item: dict[str, Any] = {"ref": trace.ref, "remote_path": trace.remote_path}
                if trace.already_stopped:
                    item["already_stopped"] = True
                stopping.stopped.append((trace, local, item))
                safety = await detached_stop(n, trace.remote_path, ref=trace.ref, timeout=timeout)
                if safety is not None:  # the node-side governor had stopped it
                    item.update(safety=safety.to_dict(), governor=safety.describe("--max-rate"))
            except KzBridgeError as exc:
                if not stopping.stopped:
                    raise
                stopping.failed = exc
                break
        return stopping

    async def collect_each(node: str, stopping: Stopping) -> list[dict[str, Any]]:
        for trace, local, item in [] if no_collect else stopping.stopped:
            bar = ProgressBar() if sys.stderr.isatty() and not as_json and not several else None
            collecting[node] = local
            res = await trace.collect(local, progress=bar.update if bar else None, mode=file_mode)
            for w in res.warnings:
                click.echo(warning_line(f"{node}: {w}" if several else w), err=True)
            if bar is not None:
                bar.finish(res.bytes)
            item.update(local_path=res.local_path, bytes=res.bytes, parts=res.parts, verified=res.verified)
        if stopping.failed is not None:  # what was stopped before the failure is named, then the failure
            prefix = f"{node}: " if several else ""
            for _, _, item in stopping.stopped:
                click.echo(safe_text(f"kzbridge: {prefix}{_stopped_line(item)}"), err=True)
            raise stopping.failed
        return [item for _, _, item in stopping.stopped]

    async def one_node(n: HiddenNode) -> list[dict[str, Any]]:
        return await collect_each(n.peer_name, await stop_each(n))

    results: dict[str, list[dict[str, Any]] | KzBridgeError] = {}

    async def collect_all(stops: dict[str, Stopping | KzBridgeError]) -> None:
        async def node_done(node: str, stopping: Stopping) -> None:
            try:
                done[node] = await collect_each(node, stopping)
            except KzBridgeError as exc:
                done[node] = exc
            _stop_progress(node, done[node])

        done: dict[str, list[dict[str, Any]] | KzBridgeError] = {}
        for node, stopping in stops.items():
            if isinstance(stopping, KzBridgeError):
                done[node] = stopping
                _stop_progress(node, stopping)
        await asyncio.gather(*(node_done(n, s) for n, s in stops.items() if not isinstance(s, KzBridgeError)))
        results.update((node, done[node]) for node in stops)  # in the order the nodes were given

    with keeps_partial_on_interrupt(lambda: list(collecting.values()), sys.stderr.isatty()):
        if several:
            run_on_nodes(t, stop_each, overall=no_collect, then=collect_all)
        else:
            done = t.run(one_node, overall=no_collect)
    if several:
        _render_stopped(results, as_json)
        return
    if as_json:
        emit_json(done)
    elif not done:
        click.echo("kzbridge: no running traces from this machine on that node", err=True)
    for item in [] if as_json else done:
        click.echo(_stopped_line(item))


def _stop_progress(node: str, result: list[dict[str, Any]] | KzBridgeError) -> None:
    """One stderr line as each node finishes."""
    if isinstance(result, KzBridgeError):
        say(f"kzbridge: {node}: error: {result}", err=True)
    elif not result:
        say(f"kzbridge: {node}: no running traces from this machine", err=True)
    else:
        collected = [i for i in result if "local_path" in i]
        before = sum(1 for i in result if i.get("already_stopped"))  # not by this run
        ours = len(result) - before
        line = f"kzbridge: {node}: stopped {ours} trace{'s' if ours != 1 else ''}"
        if before:
            line += f" ({before} already stopped, by a lease, another client or sup)"
        if collected:
            verified = all(i["verified"] for i in collected)
            line += f", collected {sum(i['bytes'] for i in collected)} bytes"
            line += ", size verified" if verified else ", NOT verified"
        say(line, err=True)


def _render_stopped(results: dict[str, list[dict[str, Any]] | KzBridgeError], as_json: bool) -> None:
    if as_json:
        emit_json(nodes_json(results, "stopped", lambda r: r))
    else:
        width = max(len(n) for n in results)
        for n, r in results.items():
            for item in [] if isinstance(r, KzBridgeError) else r:
                click.echo(f"{safe_text(n):<{width}}  {_stopped_line(item)}")
    code = exit_code(results)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------- status


GEN1_STATUS_NOTE = (
    "kzbridge: note: generation 1 kz_data_tracing has no status: only traces started from this machine "
    "are listed; traces started with sup or by other machines are invisible here"
)
GEN1_JSON_NOTE = "generation 1 has no status: only traces started from this machine are listed"


def _status_row(r: TraceStatus, text: Callable[[str], str]) -> str:
    lease = f"stops in {r.lease_until - time.time():.0f}s" if r.lease_until else "no lease (not ours)"
    return (
        f"{text(r.ref)}  {r.sink:<11} {'ours' if r.ours else 'other':<5} {text(r.remote_path)}  "
        f"[{text(r.filters)}]  {lease}"
    )


def _status_json(generation: int, rows: list[TraceStatus]) -> dict[str, Any]:
    data: dict[str, Any] = {"generation": generation, "traces": [r.__dict__ for r in rows]}
    if generation == 1:
        data["complete"] = False
        data["note"] = GEN1_JSON_NOTE
    return data


@main.command()
@nodes_options
@raw_option
@click.option("--orphans", is_flag=True, help="List lager traces kz_data_tracing no longer knows.")
def status(
    node: tuple[str, ...],
    cluster_seed: str | None,
    exclude: tuple[str, ...],
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    raw: bool,
    orphans: bool,
) -> None:
    """Running traces on the node, joined with what this machine started.

    On generation 1 nodes only the traces this machine started can be listed (that API has no
    status). File names and filters come from the node: control characters are shown escaped
    (--raw: as they are).

    With several nodes (or --cluster SEED) one table, the node first: a row per trace, "no
    traces running" for a node without any, "NO ANSWER" and the error for a node that did not
    answer (then exit 3).

    \b
      kzbridge status -n kazoo_apps@kz1
      kzbridge status -n kazoo_apps@kz1 -n ecallmgr@kz2
      kzbridge status --cluster kazoo_apps@kz1 --json
    """
    from ..kazoo import tracing

    def text(t: str) -> str:
        return t if raw else safe_text(t)

    async def list_orphans(n: HiddenNode) -> list[tuple[str, str]]:
        return await tracing.orphans(n, timeout)

    async def list_traces(n: HiddenNode) -> tuple[int, list[TraceStatus]]:
        return await tracing.status(n, timeout)

    t = Targets(node, cluster_seed, exclude, cookie, cookie_file, timeout)
    if t.several:
        if orphans:
            _orphans_table(*run_on_nodes(t, list_orphans), as_json, text)
        else:
            _status_table(*run_on_nodes(t, list_traces), as_json, text)
        return
    if orphans:
        found = t.run(list_orphans)
        if as_json:
            emit_json([{"sink": s, "file": f} for s, f in found])
        else:
            for s, f in found:
                click.echo(f"orphan  {text(s)}  {text(f)}", color=True)
            if not found:
                click.echo("no orphaned traces", err=True)
        return
    generation, rows = t.run(list_traces)
    if as_json:
        emit_json(_status_json(generation, rows))
        return
    if generation == 1:
        click.echo(GEN1_STATUS_NOTE, err=True)
    if not rows:
        click.echo("no traces running", err=True)
    for r in rows:
        # color=True: with --raw, the bytes (click strips colour sequences in a pipe otherwise)
        click.echo(_status_row(r, text), color=True)


def _tally(what: str, results: dict[str, Any], source: str) -> str:
    """``kzbridge: 3 traces on 2 of 3 nodes (nodes from kz_nodes); no answer from 1``."""
    errors = errors_of(results).values()
    silent = sum(1 for e in errors if no_answer(e))
    failed = len(errors) - silent
    return (
        f"kzbridge: {what} on {len(results) - len(errors)} of {len(results)} nodes"
        + (f" (nodes from {source})" if source != "given" else "")
        + (f"; no answer from {silent}" if silent else "")
        + (f"; {failed} failed" if failed else "")
    )


def _status_table(
    results: dict[str, tuple[int, list[TraceStatus]] | KzBridgeError],
    source: str,
    as_json: bool,
    text: Callable[[str], str],
) -> None:
    if as_json:
        entries = []
        for n, r in results.items():
            entry = node_json(n, r)
            if isinstance(r, KzBridgeError):
                entry.update(generation=None, traces=[])
            else:
                entry.update(_status_json(*r))
            entries.append(entry)
        emit_json({"source": source, "nodes": entries})
    else:
        width = max(len(n) for n in results)
        count = 0
        for n, r in results.items():
            if isinstance(r, KzBridgeError):
                click.echo(failure_row(n, width, r))
                continue
            generation, rows = r
            if generation == 1:
                say(GEN1_STATUS_NOTE.replace("note: ", f"note: {n}: ", 1), err=True)
            if not rows:
                click.echo(f"{safe_text(n):<{width}}  no traces running")
            for row in rows:
                click.echo(f"{safe_text(n):<{width}}  {_status_row(row, text)}", color=True)
            count += len(rows)
        click.echo(_tally(f"{count} trace{'s' if count != 1 else ''}", results, source), err=True)
    code = exit_code(results)
    if code:
        sys.exit(code)


def _orphans_table(
    results: dict[str, list[tuple[str, str]] | KzBridgeError],
    source: str,
    as_json: bool,
    text: Callable[[str], str],
) -> None:
    if as_json:
        emit_json(nodes_json(results, "orphans", lambda r: [{"sink": s, "file": f} for s, f in r], source=source))
    else:
        width = max(len(n) for n in results)
        for n, r in results.items():
            if isinstance(r, KzBridgeError):
                click.echo(failure_row(n, width, r))
                continue
            if not r:
                click.echo(f"{safe_text(n):<{width}}  no orphaned traces")
            for s, f in r:
                click.echo(f"{safe_text(n):<{width}}  orphan  {text(s)}  {text(f)}", color=True)
    code = exit_code(results)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------- clear


def _still_there_line(count: int, where: str = "") -> str:
    return (
        f"kzbridge: error: {count} orphaned handler(s) still installed after removal{where} "
        "(the node's handlers were read again; check its lager configuration)"
    )


def _orphans_cleared_json(cleared: list[Any]) -> dict[str, Any]:
    return {
        "stopped": [r.file for r in cleared if r.removed],
        "removed": [{"sink": r.sink, "file": r.file, "how": r.how} for r in cleared if r.removed],
        "still_there": [r.file for r in cleared if not r.removed],
    }


def _cleared_line(r: Any) -> str:
    return f"{'removed' if r.removed else 'still there'} {safe_text(r.file)} ({r.how})"


@main.command()
@nodes_options
@click.option("--orphans", "orphans_only", is_flag=True, help="Stop only orphaned lager traces.")
def clear(
    node: tuple[str, ...],
    cluster_seed: str | None,
    exclude: tuple[str, ...],
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    orphans_only: bool,
) -> None:
    """Stop every trace on the node (generation 2: clear_all_traces; generation 1: ours).

    With --orphans each orphaned handler is removed and the node's handlers are read again:
    "removed FILE" only for those gone, "still there FILE" (and exit 6) for any that stayed.

    With several nodes (or --cluster SEED) every node at once, each line starting with its
    node; a node that cannot be reached is named on stderr (exit 3).

    \b
      kzbridge clear -n kazoo_apps@kz1
      kzbridge clear --orphans -n kazoo_apps@kz1 -n ecallmgr@kz2
    """
    from ..kazoo import tracing

    async def remove_orphans(n: HiddenNode) -> list[tracing.OrphanCleared]:
        return await tracing.clear_orphans(n, timeout)

    async def clear_all(n: HiddenNode) -> list[str]:
        return await tracing.clear_all(n, timeout)

    t = Targets(node, cluster_seed, exclude, cookie, cookie_file, timeout)
    if t.several:
        if orphans_only:
            _orphans_cleared(*run_on_nodes(t, remove_orphans), as_json)
        else:
            _cleared(*run_on_nodes(t, clear_all), as_json)
        return
    if orphans_only:
        results = t.run(remove_orphans)
        left = [r.file for r in results if not r.removed]
        if as_json:
            emit_json(_orphans_cleared_json(results))
        else:
            for r in results:
                click.echo(_cleared_line(r))
            if not results:
                click.echo("no orphaned traces", err=True)
        if left:
            click.echo(_still_there_line(len(left)), err=True)
            sys.exit(EXIT_STILL_THERE)
        return
    stopped = t.run(clear_all)
    if as_json:
        emit_json({"stopped": stopped})
    else:
        for s in stopped:
            click.echo(f"stopped {safe_text(s)}")
        if not stopped:
            click.echo("nothing to stop", err=True)


def _report_failures(results: dict[str, Any]) -> None:
    for n, exc in errors_of(results).items():
        say(f"kzbridge: {n}: error: {exc}", err=True)


def _per_node_lines(results: dict[str, Any], none: str, line: Callable[[Any], str]) -> None:
    """One stdout line per item, the node's name first (``line`` renders an item terminal-safe);
    a node with none says ``none`` on stderr; failed nodes are left to _report_failures."""
    width = max(len(n) for n in results)
    for n, r in results.items():
        if isinstance(r, KzBridgeError):
            continue
        if not r:
            say(f"kzbridge: {n}: {none}", err=True)
        for item in r:
            click.echo(f"{safe_text(n):<{width}}  {line(item)}")


def _cleared(results: dict[str, list[str] | KzBridgeError], source: str, as_json: bool) -> None:
    if as_json:
        emit_json(nodes_json(results, "stopped", lambda r: r))
    else:
        _per_node_lines(results, "nothing to stop", lambda s: f"stopped {safe_text(s)}")
    _report_failures(results)
    code = exit_code(results)
    if code:
        sys.exit(code)


def _orphans_cleared(results: dict[str, list[Any] | KzBridgeError], source: str, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "nodes": [
                    {**node_json(n, r), **_orphans_cleared_json([] if isinstance(r, KzBridgeError) else r)}
                    for n, r in results.items()
                ]
            }
        )
    else:
        _per_node_lines(results, "no orphaned traces", _cleared_line)
    _report_failures(results)
    left = {n: sum(1 for c in r if not c.removed) for n, r in results.items() if not isinstance(r, KzBridgeError)}
    left = {n: k for n, k in left.items() if k}
    if left:
        say(_still_there_line(sum(left.values()), f" on {', '.join(left)}"), err=True)
        sys.exit(EXIT_STILL_THERE)
    code = exit_code(results)
    if code:
        sys.exit(code)


# ---------------------------------------------------------------- collect


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

    with keeps_partial_on_interrupt(lambda: [local], bar is not None):
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
