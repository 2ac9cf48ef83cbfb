"""Which nodes a command works on, and running its per-node work on one or all of them.

Every multi-node command shares this: the names (given with --node, found from --cluster
SEED, less --exclude), the same cookie options for each, and ``run_on_nodes`` to run one
per-node coroutine on all of them at once (kazoo.cluster.each_node, one deadline per node),
with per-node results or errors, exit codes and rendering helpers for tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..cookie import cookie_for_node
from ..errors import ConnectError, ConnectionLostError, KzBridgeError, ProtocolError, RpcTimeoutError, UsageError
from . import routes_for, run_with_node
from .render import safe_text

if TYPE_CHECKING:
    from ..wire.names import Routes
    from ..wire.node import HiddenNode

T = TypeVar("T")
EXIT_CONNECTION = 3


def say(text: str, *, err: bool = False) -> None:
    """Print lines that carry node-supplied text (names from kz_nodes, errors, paths), each terminal-safe."""
    click.echo("\n".join(safe_text(line) for line in text.split("\n")), err=err)


def cookie_resolver(cookie: str | None, cookie_file: str | None) -> Callable[[str], str]:
    """The same cookie options for every node (a local sandbox still supplies its own)."""
    return lambda node: cookie_for_node(node, cookie, cookie_file)


async def select_nodes(
    given: tuple[str, ...],
    seed: str | None,
    exclude: tuple[str, ...],
    cookie_for: Callable[[str], str],
    timeout: float,
    routes: Routes | None = None,
) -> tuple[list[str], str]:
    """The node names to work on, and where they came from ("given", "kz_nodes", "nodes+epmd")."""
    from ..kazoo import cluster
    from ..wire.node import connect_node

    nodes = cluster.parse_node_list(given)
    source = "given"
    if seed:
        route = routes.route(seed) if routes is not None else None
        seed_node = await connect_node(seed, cookie_for(seed), timeout=timeout, route=route)
        try:
            found = await cluster.discover(seed_node, timeout=timeout, epmd_port=route.epmd_port if route else None)
        finally:
            await seed_node.close()
        nodes = cluster.parse_node_list([*nodes, *found.nodes])
        source = found.source
    if not nodes:
        raise UsageError("give --node NAME@HOST (repeatable) or --cluster SEED", setting="node")
    kept = cluster.apply_excludes(nodes, exclude)
    if not kept:
        raise UsageError(f"--exclude leaves none of {', '.join(nodes)}", setting="node")
    return kept, source


def given_routes(given: tuple[str, ...], seed: str | None) -> Routes:
    """--address/--epmd-port for the nodes named on the command line (--node and the --cluster seed);
    nodes found by discovery are reached where their names say unless a NODE=HOST names them."""
    from ..kazoo.cluster import parse_node_list

    return routes_for(parse_node_list([*given, *([seed] if seed else [])]), more_nodes=bool(seed))


@dataclass(frozen=True)
class Targets:
    """What --node, --cluster, --exclude and the connection options say, as given."""

    given: tuple[str, ...]
    seed: str | None
    exclude: tuple[str, ...]
    cookie: str | None
    cookie_file: str | None
    timeout: float

    @property
    def several(self) -> bool:
        """Several nodes (or a whole cluster) rather than one: decided by what was given."""
        from ..kazoo.cluster import parse_node_list

        return bool(self.seed) or len(parse_node_list(self.given)) > 1

    def one(self) -> str:
        """The one node given (not excluded)."""
        from ..kazoo.cluster import apply_excludes, parse_node_list

        nodes = parse_node_list(self.given)
        if not nodes:
            raise UsageError("give --node NAME@HOST (repeatable) or --cluster SEED", setting="node")
        kept = apply_excludes(nodes, self.exclude)
        if not kept:
            raise UsageError(f"--exclude leaves none of {', '.join(nodes)}", setting="node")
        return kept[0]

    def only(self, node: str) -> Targets:
        return replace(self, given=(node,), seed=None, exclude=())

    def run(self, body: Callable[[HiddenNode], Awaitable[T]], *, overall: bool = True) -> T:
        """``body`` on the one node (run_with_node)."""
        return run_with_node(self.one(), self.cookie, self.cookie_file, self.timeout, body, overall=overall)


async def _bounded(work: Awaitable[T], seconds: float, what: str) -> T:
    import asyncio

    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise RpcTimeoutError(
            f"{what} did not finish answering within {seconds:g}s",
            hint="the node may be overloaded or stalled",
            setting="timeout",
        ) from None


def resolve_nodes(t: Targets) -> tuple[list[str], str]:
    """The node names to work on (discovered from the seed with --cluster), and where they came from."""
    import asyncio

    cookie_for = cookie_resolver(t.cookie, t.cookie_file)
    work = select_nodes(t.given, t.seed, t.exclude, cookie_for, t.timeout, given_routes(t.given, t.seed))
    return asyncio.run(_bounded(work, t.timeout, t.seed or "the nodes"))


def run_on_nodes(
    t: Targets,
    body: Callable[[HiddenNode], Awaitable[T]],
    *,
    overall: bool = True,
    on_done: Callable[[str, T | KzBridgeError], None] | None = None,
    then: Callable[[dict[str, T | KzBridgeError]], Awaitable[None]] | None = None,
) -> tuple[dict[str, T | KzBridgeError], str]:
    """``body`` on every node at once; per node its result or its error, and where the nodes came from.

    With ``overall`` --timeout is one deadline over all of it (discovery, then each node's
    connecting and work): a node still working then is reported with a timeout, and the others
    keep what they finished. Without it --timeout bounds connecting and each call, as for one
    node. ``then(results)`` runs before the connections close.
    """
    import asyncio

    from ..kazoo import cluster

    cookie_for = cookie_resolver(t.cookie, t.cookie_file)
    routes = given_routes(t.given, t.seed)

    async def whole() -> tuple[dict[str, T | KzBridgeError], str]:
        loop = asyncio.get_running_loop()
        end = loop.time() + t.timeout
        names, source = await _bounded(
            select_nodes(t.given, t.seed, t.exclude, cookie_for, t.timeout, routes), t.timeout, t.seed or "the nodes"
        )
        left = max(end - loop.time(), 0.1)
        conns, results = await cluster.each_node(
            names,
            cookie_for,
            body,
            timeout=min(t.timeout, left) if overall else t.timeout,
            deadline=left if overall else None,
            on_done=on_done,
            routes=routes,
        )
        async with conns:
            if then is not None:
                await then(results)
            return results, source

    return asyncio.run(whole())


def no_answer(exc: KzBridgeError) -> bool:
    """The node could not be reached, went away or did not answer in time (as opposed to answering no)."""
    return isinstance(exc, (ConnectError, ConnectionLostError, ProtocolError, RpcTimeoutError))


def errors_of(results: dict[str, Any]) -> dict[str, KzBridgeError]:
    return {n: r for n, r in results.items() if isinstance(r, KzBridgeError)}


def exit_code(results: dict[str, Any]) -> int:
    """0 when every node did its work; 3 when any did not answer; else the first failure's code."""
    errors = list(errors_of(results).values())
    if not errors:
        return 0
    if any(no_answer(e) for e in errors):
        return EXIT_CONNECTION
    return errors[0].exit_code


def node_json(node: str, result: Any) -> dict[str, Any]:
    """The fields every node's --json entry starts with."""
    error = result if isinstance(result, KzBridgeError) else None
    return {
        "node": node,
        "answered": error is None or not no_answer(error),
        "error": str(error) if error is not None else None,
    }


def failure_row(node: str, width: int, exc: KzBridgeError) -> str:
    """A table row for a node that did not do its work."""
    return safe_text(f"{node:<{width}}  {'NO ANSWER' if no_answer(exc) else 'FAILED'}  {exc}")


def nodes_flags(nodes: list[str]) -> str:
    return " ".join(f"-n {n}" for n in nodes)


def pid_owner_only(pid: str, given: tuple[str, ...], several: bool) -> str | None:
    """A pid belongs to one node: with several nodes it must be written <name@host.A.B>, and that
    node (one of those given) is the only one to work on; its name is returned (None: no narrowing)."""
    from ..errors import BadFilterError
    from ..kazoo import filters as flt
    from ..kazoo.cluster import parse_node_list

    owner, _ = flt.pid_owner(pid)
    if not several:
        return None
    if owner is None:
        raise UsageError(
            "a pid belongs to one node: with several nodes write it as <name@host.A.B>, as kzbridge prints pids",
            setting="node",
        )
    nodes = parse_node_list(given)
    if nodes and owner not in nodes:
        raise BadFilterError(f"{pid} is a process of {owner}, which is not among the nodes given")
    return owner


def nodes_json(results: dict[str, Any], field: str, value: Callable[[Any], Any], **top: Any) -> dict[str, Any]:
    """{"nodes": [...]} for --json over several nodes: each node's entry (node_json) with ``field``
    set to ``value(result)`` (``value([])`` for a node that failed), plus ``top`` keys first."""
    return {
        **top,
        "nodes": [
            {**node_json(n, r), field: value([] if isinstance(r, KzBridgeError) else r)} for n, r in results.items()
        ],
    }
