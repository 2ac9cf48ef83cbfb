"""Commands on one node: ping, rpc, sup (one-shot, a blocking connection, no asyncio) and wait."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..cookie import cookie_for_node
from ..errors import BadRpcError, KzBridgeError, RpcTimeoutError, UsageError
from ..limits import Deadline
from ..wire.literal import format_term, parse_term, to_json
from ..wire.terms import Atom
from . import _connection_options, emit_json, error_line, main, node_options, raw_option, routes_for, warning_line
from .render import safe_text

if TYPE_CHECKING:
    from ..wire.rex import RpcResult

F = TypeVar("F", bound=Callable[..., Any])


def call_once(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    module: str,
    function: str,
    args: list[Any],
    on_connected: Callable[[Any, Deadline], None] | None = None,
) -> RpcResult:
    """One rpc on a blocking connection: the one-shot commands skip asyncio's start-up cost.

    ``timeout`` is a deadline over all of it: connecting, the calls that make pids, the call.
    """
    from ..wire.blocking import BlockingNode

    deadline = Deadline.after(timeout)
    route = routes_for([node]).route(node)
    secret = cookie_for_node(node, cookie, cookie_file)
    with BlockingNode(node, secret, timeout=timeout, route=route) as n:
        if on_connected:
            on_connected(n, deadline)
        real_args = resolve_pids(n, args, deadline)
        result: RpcResult = n.rpc_output(module, function, real_args, timeout=left(deadline, node))
        return result


def left(deadline: Deadline, node: str) -> float:
    """What is left of the command's time; RpcTimeoutError once it is spent."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise RpcTimeoutError(f"{node} did not finish answering within {deadline.seconds:g}s", setting="timeout")
    return remaining


def resolve_pids(n: Any, args: list[Any], timeout: float | Deadline) -> list[Any]:
    """Pids typed as <0.A.B> or <name@host.A.B> become real pids, made by the node that owns them."""
    from ..wire.literal import pid_literals, replace_pid_literals
    from ..wire.terms import ErlString, Pid

    found = pid_literals(args)
    if not found:
        return args
    deadline = timeout if isinstance(timeout, Deadline) else Deadline.after(timeout)
    pids = {}
    lit: Any  # wire.literal.PidLiteral (its fields are not declared to the type checker)
    for lit in found:
        owner = Atom(lit.node or n.peer_name)
        text = ErlString(f"<0.{lit.id}.{lit.serial}>")
        try:
            pid = n.rpc(
                "rpc", "call", [owner, Atom("erlang"), Atom("list_to_pid"), [text]], timeout=left(deadline, n.peer_name)
            )
        except BadRpcError as exc:
            raise UsageError(f"cannot turn {lit} into a pid: {exc.message}") from exc
        if type(pid) is not Pid:
            raise UsageError(f"cannot turn {lit} into a pid: {owner} answered {format_term(pid)[:200]}")
        pids[lit] = pid
    replaced: list[Any] = replace_pid_literals(args, pids)
    return replaced


@main.command()
@node_options
def ping(node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool) -> None:
    """Connect and check the node answers (exit 0 on pong)."""
    conn: dict[str, Any] = {}
    t0 = time.perf_counter()
    otp = call_once(
        node,
        cookie,
        cookie_file,
        timeout,
        "erlang",
        "system_info",
        [Atom("otp_release")],
        on_connected=lambda n, _deadline: conn.update(
            node=n.peer_name, handshake=n.handshake_version, name=n.name, t=time.perf_counter()
        ),
    ).value
    info = {
        "node": conn["node"],
        "pong": True,
        "otp": str(otp),
        "handshake": conn["handshake"],
        "ms": round((time.perf_counter() - conn["t"]) * 1000, 2),
        "connect_ms": round((conn["t"] - t0) * 1000, 2),
        "as": conn["name"],
    }
    if as_json:
        emit_json(info)
    else:
        click.echo(f"pong from {info['node']} (OTP {info['otp']}, handshake v{info['handshake']}, rpc {info['ms']} ms)")


@main.command(context_settings={"ignore_unknown_options": True})
@node_options
@raw_option
@click.argument("module")
@click.argument("function")
@click.argument("args", nargs=-1)
def rpc(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    raw: bool,
    module: str,
    function: str,
    args: tuple[str, ...],
) -> None:
    """Call MODULE:FUNCTION(ARGS...) on the node; each ARG is an Erlang term literal.

    \b
    Examples:
      kzbridge rpc -n kazoo_apps@h erlang node
      kzbridge rpc -n kazoo_apps@h lists seq 1 10
      kzbridge rpc -n kazoo_apps@h kz_data_tracing trace_file '[{module, kz_json}]'
      kzbridge rpc -n kazoo_apps@h erlang byte_size '<<"bin">>'
      kzbridge rpc -n kazoo_apps@h erlang process_info '<0.116.0>' message_queue_len
    What the function prints comes first (stderr with --json), then the result.
    On a terminal, control characters in what it prints are shown escaped (--raw: as they are).
    """
    terms = [parse_term(a) for a in args]
    result = call_once(node, cookie, cookie_file, timeout, module, function, terms)
    if as_json:
        emit_json({"result": to_json(result.value), "output": result.output})
    else:
        if result.output:
            click.echo(printed(result.output, raw), nl=False, color=True)
        click.echo(format_term(result.value))


def printed(text: str, raw: bool) -> str:
    """What a function printed on the node, for our stdout: as it is for --raw or when stdout is
    not a terminal (a script gets the exact text), else control characters escaped (newlines and
    tabs kept: maintenance functions print tables). Echo it with ``color=True``: click would
    otherwise strip colour sequences from exact text in a pipe."""
    if raw or not sys.stdout.isatty():
        return text
    return safe_text(text, newlines="", tabs=True)


# Kazoo's maintenance wrappers that call kz_data_tracing:trace_file/1, the generation 2 defect.
DEFECTIVE_ON_GEN2 = {("kazoo_data_maintenance", f) for f in ("trace_module", "trace_function", "trace_pid")}


def warn_if_defective(module: str, function: str) -> Callable[[Any, Deadline], None] | None:
    """For the wrappers above only (it costs one rpc): warn on stderr before the call when the
    node's kz_data_tracing is generation 2, where they start a trace that stays empty."""
    if (module, function) not in DEFECTIVE_ON_GEN2:
        return None

    def check(n: Any, deadline: Deadline) -> None:
        try:
            exports = n.rpc("kz_data_tracing", "module_info", [Atom("exports")], timeout=left(deadline, n.peer_name))
        except BadRpcError:
            return  # no kz_data_tracing: the call itself will say so
        if type(exports) is list and (Atom("trace_file"), 4) in exports:
            kzb = {"trace_module": "trace-module", "trace_function": "trace-function", "trace_pid": "trace-pid"}
            click.echo(
                warning_line(
                    f"{module}:{function} on a generation 2 node ({n.peer_name}) reproduces Kazoo's defect: the "
                    "trace file stays empty and lager logs one error per matching event while it reinstalls the "
                    f"broken handler; use `kzbridge {kzb[function]}` instead (stop this one with "
                    f"`kzbridge sup {module} stop_trace REF`)"
                ),
                err=True,
            )

    return check


@main.command(context_settings={"ignore_unknown_options": True})
@node_options
@raw_option
@click.option("-e", "erlang_terms", is_flag=True, help="Parse ARGs as Erlang terms instead of binaries.")
@click.argument("module")
@click.argument("function")
@click.argument("args", nargs=-1)
def sup(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    raw: bool,
    erlang_terms: bool,
    module: str,
    function: str,
    args: tuple[str, ...],
) -> None:
    """Run a maintenance function the way Kazoo's sup does, printing what it prints.

    Arguments arrive as binaries (with -e: as Erlang terms). Exit codes are sup's:
    0 the function returned ok, 1 usage/connect/cookie problems, 2 it returned
    something else, 3 other badrpc, 4 timeout (--timeout bounds the whole command).
    kazoo_data_maintenance's trace_module/trace_function/trace_pid are run as asked, after a
    warning on generation 2 nodes, where they leave an empty file (use kzbridge's trace-* commands).

    \b
      kzbridge sup -n kazoo_apps@h kazoo_data_maintenance trace_module kz_json
    """
    try:
        terms = [parse_term(a) for a in args] if erlang_terms else [a.encode() for a in args]
        result = call_once(
            node, cookie, cookie_file, timeout, module, function, terms, warn_if_defective(module, function)
        )
        if result.output and not as_json:
            click.echo(printed(result.output, raw), nl=False, color=True)
    except RpcTimeoutError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(4)
    except BadRpcError as exc:
        if exc.output and not as_json:
            click.echo(printed(exc.output, raw), nl=False, color=True)
        click.echo(error_line(exc), err=True)
        sys.exit(3)
    except KzBridgeError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(1)
    ok = result.value == Atom("ok")
    if as_json:
        emit_json({"result": to_json(result.value), "output": result.output, "ok": ok})
    elif not ok:
        click.echo(format_term(result.value))
    sys.exit(0 if ok else 2)


WAIT_TIMEOUT_HELP = "Seconds to wait at most (a deadline over every attempt); exit 3 when they pass."


def wait_options(fn: F) -> F:
    """The node options of every node command, with a wait's own --timeout default (60s)."""
    return _connection_options(fn, timeout_default=60.0, timeout_help=WAIT_TIMEOUT_HELP)


@main.command()
@click.option("--node", "-n", envvar="KZBRIDGE_NODE", required=True, help="The node to wait for, name@host.")
@click.option(
    "--sink",
    type=click.Choice(["data", "lager_event"]),
    default="data",
    show_default=True,
    help="What the traces will need: data waits for kz_data_tracing, lager_event for lager's lager_event sink.",
)
@click.option("--quiet", "-q", is_flag=True, help="Say nothing while waiting (the result is still printed).")
@wait_options
def wait(
    node: str, cookie: str | None, cookie_file: str | None, timeout: float, as_json: bool, sink: str, quiet: bool
) -> None:
    """Wait until the node answers and is ready to trace; exit 0 then, exit 3 at --timeout.

    Ready: the node answers over distribution and kz_data_tracing is registered (with
    --sink lager_event: lager's lager_event sink). Until then it tries again after a short
    pause (0.1s, doubling up to 1s), printing each new state on stderr (refused, no EPMD,
    cookie rejected, not registered yet). For CI scripts and containers, instead of healthchecks:

    \b
      kzbridge wait -n kazoo_apps@kazoo --address 127.0.0.1 --timeout 120
    """
    import asyncio

    from ..kazoo.ready import READY_PROCESS, wait_ready

    route = routes_for([node]).route(node)
    secret = cookie_for_node(node, cookie, cookie_file)

    def say(state: str) -> None:
        if not quiet:
            click.echo(safe_text(f"kzbridge: waiting for {node}: {state}"), err=True)

    if not quiet and not as_json:
        click.echo(
            safe_text(
                f"kzbridge: waiting up to {timeout:g}s for {node} to answer with {READY_PROCESS[sink]} registered"
            ),
            err=True,
        )
    ready = asyncio.run(wait_ready(node, secret, sink=sink, timeout=timeout, route=route, on_state=say))
    if as_json:
        emit_json(ready.to_json())
    else:
        click.echo(
            safe_text(
                f"{ready.node} is ready: {ready.process} is registered ({ready.pid}); "
                f"waited {ready.seconds:.1f}s, {ready.attempts} attempt{'s' if ready.attempts != 1 else ''}"
            )
        )
