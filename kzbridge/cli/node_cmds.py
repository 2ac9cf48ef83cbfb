"""One-shot commands on a node: ping, rpc, sup. A blocking connection, no asyncio."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..cookie import cookie_for_node
from ..errors import BadRpcError, KzBridgeError, RpcTimeoutError, UsageError
from ..wire.literal import format_term, parse_term, to_json
from ..wire.terms import Atom
from . import emit_json, error_line, main, node_options

if TYPE_CHECKING:
    from ..wire.rex import RpcResult


def call_once(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    module: str,
    function: str,
    args: list[Any],
    on_connected: Callable[[Any], None] | None = None,
) -> RpcResult:
    """One rpc on a blocking connection: the one-shot commands skip asyncio's start-up cost."""
    from ..wire.blocking import BlockingNode

    with BlockingNode(node, cookie_for_node(node, cookie, cookie_file), timeout=timeout) as n:
        if on_connected:
            on_connected(n)
        result: RpcResult = n.rpc_output(module, function, resolve_pids(n, args, timeout), timeout=timeout)
        return result


def resolve_pids(n: Any, args: list[Any], timeout: float) -> list[Any]:
    """Pids typed as <0.A.B> or <name@host.A.B> become real pids, made by the node that owns them."""
    from ..wire.literal import pid_literals, replace_pid_literals
    from ..wire.terms import ErlString, Pid

    found = pid_literals(args)
    if not found:
        return args
    pids = {}
    lit: Any  # wire.literal.PidLiteral (its fields are not declared to the type checker)
    for lit in found:
        owner = Atom(lit.node or n.peer_name)
        text = ErlString(f"<0.{lit.id}.{lit.serial}>")
        try:
            pid = n.rpc("rpc", "call", [owner, Atom("erlang"), Atom("list_to_pid"), [text]], timeout=timeout)
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
        on_connected=lambda n: conn.update(
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
@click.argument("module")
@click.argument("function")
@click.argument("args", nargs=-1)
def rpc(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
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
def sup(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    as_json: bool,
    erlang_terms: bool,
    module: str,
    function: str,
    args: tuple[str, ...],
) -> None:
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
        click.echo(error_line(exc), err=True)
        sys.exit(4)
    except BadRpcError as exc:
        if exc.output and not as_json:
            click.echo(exc.output, nl=False)
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
