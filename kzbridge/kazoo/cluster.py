"""Many nodes at once: choose them, connect to all concurrently, and survey them.

    select_nodes(given, seed=..., exclude=...)   the node names: given, or discovered from a seed
    discover(seed)                               what one node knows of its cluster
    connect_all(nodes, cookie_for, timeout)      one connection per node, all at once; failures by name
    survey(connections)                          per node: OTP release, tracing generation, clock

Kazoo nodes find each other over AMQP, so ``nodes()`` on one node may not list the others.
Every Kazoo node keeps its view of the cluster in the ETS table ``kz_nodes``, one
``#kz_node{}`` record per node seen in heartbeats, the node name in tuple element 2: that
is asked first. A node without that table (not Kazoo, or an older one) is asked for
``nodes()``, and the EPMD on the seed's host for the names registered there; names that
are kzbridge's own hidden nodes are left out.

The tracing itself is ``ClusterTrace`` (cluster_trace.py): one trace session per node.
"""
from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadRpcError, KzBridgeError, UsageError
from ..wire.terms import Atom

if TYPE_CHECKING:
    from ..wire.node import HiddenNode
    from .clock import NodeClock

# ets:select(kz_nodes, [{'$1', [], [{element, 2, '$1'}]}]): the name of every record.
_KZ_NODES_NAMES = [(Atom("$1"), [], [(Atom("element"), 2, Atom("$1"))])]
# Hidden nodes that are tools, not cluster members: kzbridge's own and sup's.
_TOOL_PREFIXES = ("kzbridge_", "sup_")


@dataclass
class Discovery:
    """The nodes one seed knows of, and where that knowledge came from."""

    seed: str
    nodes: list[str]
    source: str  # "kz_nodes" or "nodes+epmd"


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v.name for v in value if type(v) is Atom and "@" in v.name]


async def discover(seed: HiddenNode, *, timeout: float = 10.0, epmd_port: int | None = None) -> Discovery:
    """The cluster as ``seed`` sees it (see the module docstring); the seed itself included."""
    from ..wire import epmd
    try:
        listed = await seed.rpc("ets", "select", [Atom("kz_nodes"), _KZ_NODES_NAMES], timeout=timeout)
        found = _names(listed)
        if found:
            return Discovery(seed.peer_name, _unique([seed.peer_name, *found]), "kz_nodes")
    except BadRpcError:
        pass  # no kz_nodes table on that node: not Kazoo, or not up yet
    found = _names(await seed.rpc("erlang", "nodes", [], timeout=timeout))
    host = seed.peer_name.split("@", 1)[1]
    try:
        registered = await epmd.names(host, timeout=timeout, port=epmd_port)
    except KzBridgeError:
        registered = []
    found += [f"{name}@{host}" for name, _ in registered]
    found = [n for n in found if not n.startswith(_TOOL_PREFIXES)]
    return Discovery(seed.peer_name, _unique([seed.peer_name, *found]), "nodes+epmd")


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n, None)
    return list(seen)


def apply_excludes(nodes: list[str], exclude: Iterable[str]) -> list[str]:
    """Drop the names that match any glob (``ecallmgr@*``)."""
    patterns = list(exclude)
    return [n for n in nodes if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def parse_node_list(values: Iterable[str]) -> list[str]:
    """Names from repeated options and comma-separated lists (``KZBRIDGE_NODE=a@h,b@h``), in order, once each."""
    from ..wire.names import split_node_name
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if name:
                split_node_name(name)
                out.append(name)
    return _unique(out)


@dataclass
class Connections:
    """One connection per node that answered, and the error of each that did not."""

    nodes: dict[str, HiddenNode] = field(default_factory=dict)
    failed: dict[str, KzBridgeError] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes.values()), return_exceptions=True)
        self.nodes.clear()

    async def __aenter__(self) -> Connections:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_all(nodes: list[str], cookie_for: Callable[[str], str], *, timeout: float = 10.0,
                      ticktime: float = 60.0) -> Connections:
    """Connect to every node at once; a node that cannot be reached is recorded, not raised.

    ``cookie_for(node)`` gives each node's cookie (the same options apply to every node; a
    local sandbox supplies its own). Errors other than kzbridge's own propagate.
    """
    from ..wire.node import connect_node
    if not nodes:
        raise UsageError("no nodes to connect to", setting="node")

    async def one(node: str) -> HiddenNode:
        return await connect_node(node, cookie_for(node), timeout=timeout, ticktime=ticktime)
    results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    conns = Connections(order=list(nodes))
    for node, result in zip(nodes, results):
        if isinstance(result, KzBridgeError):
            conns.failed[node] = result
        elif isinstance(result, BaseException):
            await conns.close()
            raise result
        else:
            conns.nodes[node] = result
    return conns


@dataclass
class NodeReport:
    """What ``kzbridge nodes`` shows for one node."""

    node: str
    answered: bool
    otp: str = ""
    generation: int | None = None   # kz_data_tracing API generation; None: no kz_data_tracing
    clock: NodeClock | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "answered": self.answered, "otp": self.otp, "generation": self.generation,
                "clock": self.clock.to_json() if self.clock else None, "error": self.error}


async def survey_one(node: HiddenNode, timeout: float = 10.0) -> NodeReport:
    from . import clock as clock_mod
    from .tracing import detect_generation
    report = NodeReport(node.peer_name, True)
    otp = await node.rpc("erlang", "system_info", [Atom("otp_release")], timeout=timeout)
    report.otp = otp if isinstance(otp, str) else str(otp)
    try:
        report.generation = await detect_generation(node)
    except KzBridgeError as exc:
        report.error = exc.message
    report.clock = await clock_mod.measure(node, timeout=timeout)
    return report


async def survey(conns: Connections, timeout: float = 10.0) -> list[NodeReport]:
    """Every node in ``conns.order``: surveyed at once if connected, else with its connect error."""
    async def one(name: str) -> NodeReport:
        if name in conns.failed:
            return NodeReport(name, False, error=str(conns.failed[name]))
        try:
            return await survey_one(conns.nodes[name], timeout)
        except KzBridgeError as exc:
            return NodeReport(name, False, error=str(exc))
    return list(await asyncio.gather(*(one(n) for n in conns.order)))
