"""Many nodes at once: choose them, connect to all concurrently, and survey them.

    select_nodes(given, seed=..., exclude=...)   the node names: given, or discovered from a seed
    discover(seed)                               what one node knows of its cluster
    connect_all(nodes, cookie_for, timeout)      one connection per node, all at once; failures by name
    each_node(nodes, cookie_for, work)           connect and run the same work on every node at once; by name
    survey(connections)                          per node: OTP release, tracing generation, clock

Kazoo nodes find each other over AMQP, so ``nodes()`` on one node may not list the others.
Every Kazoo node keeps its view of the cluster in the ETS table ``kz_nodes``, one
``#kz_node{}`` record per node seen in heartbeats, the node name in tuple element 2: that
is asked first. A node without that table (not Kazoo, or an older one) is asked for
``nodes()``, and the EPMD on the seed's host for the names registered there; names that
are kzbridge's own hidden nodes are left out.

``ClusterTrace`` traces them: one TraceSession per node, one stop for all, and at the end
``cluster.json`` (what ran, each node's clocks) and ``merged.log`` (merge.py) in one directory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BadRpcError, KazooError, KzBridgeError, TraceLostError, UsageError
from ..wire.terms import Atom
from .merge import MergedRecord, MergeSource, MergeStats, merge_to_file, merged_records, short_labels
from .session import StopControls

if TYPE_CHECKING:
    from ..wire.names import Routes
    from ..wire.node import HiddenNode
    from .clock import NodeClock
    from .session import Event, RunSummary, TraceSession

# ets:select(kz_nodes, [{'$1', [], [{element, 2, '$1'}]}]): the name of every record.
_KZ_NODES_NAMES: list[tuple[Any, ...]] = [(Atom("$1"), [], [(Atom("element"), 2, Atom("$1"))])]
# Hidden nodes that are tools, not cluster members: kzbridge's own and sup's.
_TOOL_PREFIXES = ("kzbridge_", "sup_")
T = TypeVar("T")


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


async def connect_all(
    nodes: list[str],
    cookie_for: Callable[[str], str],
    *,
    timeout: float = 10.0,
    ticktime: float = 60.0,
    routes: Routes | None = None,
) -> Connections:
    """Connect to every node at once; a node that cannot be reached is recorded, not raised.

    ``cookie_for(node)`` gives each node's cookie (the same options apply to every node; a
    local sandbox supplies its own). ``routes``: where each node is reached (wire.names.Routes;
    default: where its name says). Errors other than kzbridge's own propagate.
    """
    from ..wire.node import connect_node

    if not nodes:
        raise UsageError("no nodes to connect to", setting="node")

    async def one(node: str) -> HiddenNode:
        route = routes.route(node) if routes is not None else None
        return await connect_node(node, cookie_for(node), timeout=timeout, ticktime=ticktime, route=route)

    results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    conns = Connections(order=list(nodes))
    for node, result in zip(nodes, results, strict=False):
        if isinstance(result, KzBridgeError):
            conns.failed[node] = result
        elif isinstance(result, BaseException):
            await conns.close()
            raise result
        else:
            conns.nodes[node] = result
    return conns


async def each_node(
    nodes: list[str],
    cookie_for: Callable[[str], str],
    work: Callable[[HiddenNode], Awaitable[T]],
    *,
    timeout: float = 10.0,
    deadline: float | None = None,
    on_done: Callable[[str, T | KzBridgeError], None] | None = None,
    ticktime: float = 60.0,
    routes: Routes | None = None,
) -> tuple[Connections, dict[str, T | KzBridgeError]]:
    """Connect to every node at once and run ``work`` on each as soon as it is connected.

    Returns the connections (still open: the caller closes them, ``async with``) and per node,
    in the order given, what ``work`` returned or the KzBridgeError it raised (a node that
    could not be reached: its connect error). ``timeout`` bounds each connection, as in
    connect_all; ``deadline`` (seconds) bounds each node's connecting and work together, so a
    stalled node costs the others nothing: when it passes, that node's work is cancelled and it
    gets an RpcTimeoutError. ``on_done(node, result)`` is called as each node finishes.
    ``routes``: where each node is reached, as in connect_all.
    Errors other than kzbridge's own propagate once every node has finished.
    """
    from ..errors import RpcTimeoutError
    from ..wire.node import connect_node

    if not nodes:
        raise UsageError("no nodes to connect to", setting="node")
    conns = Connections(order=list(nodes))

    async def connected(name: str) -> T:
        route = routes.route(name) if routes is not None else None
        node = await connect_node(name, cookie_for(name), timeout=timeout, ticktime=ticktime, route=route)
        conns.nodes[name] = node
        return await work(node)

    async def one(name: str) -> T | KzBridgeError:
        result: T | KzBridgeError
        try:
            result = await (connected(name) if deadline is None else asyncio.wait_for(connected(name), deadline))
        except asyncio.TimeoutError:
            result = RpcTimeoutError(
                f"{name} did not finish answering within {deadline:.3g}s",
                hint="the node may be overloaded or stalled",
                setting="timeout",
            )
        except KzBridgeError as exc:
            result = exc
        if isinstance(result, KzBridgeError) and name not in conns.nodes:
            conns.failed[name] = result
        if on_done is not None:
            on_done(name, result)
        return result

    try:
        done = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    except BaseException:  # cancelled (Ctrl-C): no connection is left open
        await conns.close()
        raise
    out: dict[str, T | KzBridgeError] = {}
    for name, result in zip(nodes, done, strict=False):
        if isinstance(result, BaseException) and not isinstance(result, KzBridgeError):
            await conns.close()
            raise result
        out[name] = result
    return conns, out


@dataclass
class NodeReport:
    """What ``kzbridge nodes`` shows for one node."""

    node: str
    answered: bool
    otp: str = ""
    generation: int | None = None  # kz_data_tracing API generation; None: no kz_data_tracing
    clock: NodeClock | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "answered": self.answered,
            "otp": self.otp,
            "generation": self.generation,
            "clock": self.clock.to_json() if self.clock else None,
            "error": self.error,
        }


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


# ---------------------------------------------------------------------------------------
# Tracing many nodes: one TraceSession per node, one stop for all, one timeline.

CLUSTER_FILE = "cluster.json"
MERGED_FILE = "merged.log"


def node_file(node: str) -> str:
    """The per-node file name in a cluster run's directory."""
    return f"{node}.log"


@dataclass
class ClusterLimits:
    """What every node's trace shares; sizes per node, and across all nodes."""

    duration: float | None = 60.0
    max_size: int | None = 100 << 20
    max_total_size: int | None = None
    poll_ms: int = 50
    max_rate: float | None = None  # the governor's limit per node (None: its default)
    governor: bool = True


@dataclass
class NodeOutcome:
    """One node of a cluster run: what it ran, what came back, or why it did not."""

    node: str
    label: str
    summary: RunSummary | None = None
    error: KzBridgeError | None = None
    start: NodeClock | None = None
    stop: NodeClock | None = None
    ref: str = ""
    remote_path: str = ""

    @property
    def traced(self) -> bool:
        return bool(self.ref)

    @property
    def lost(self) -> TraceLostError | None:
        """The connection went away mid-run: the error names the partial file kept and the remote file."""
        return self.error if isinstance(self.error, TraceLostError) else None

    @property
    def partial_path(self) -> str | None:
        """The local file that holds less than the trace wrote, if any."""
        if self.summary is not None:
            return self.summary.local_path if self.summary.partial else None
        lost = self.lost
        return lost.partial_path if lost is not None and lost.partial_path else None


@dataclass
class ClusterSummary:
    directory: Path
    outcomes: list[NodeOutcome]
    started: float
    stopped: float
    merged: MergeStats | None = None
    stopped_by: str = ""

    @property
    def complete(self) -> bool:
        """Every node traced, collected whole and verified."""
        return all(o.summary is not None and o.summary.verified and not o.summary.partial for o in self.outcomes)


class ClusterTrace(StopControls):
    """The same trace on several nodes, started together, stopped together, merged.

    ``start()`` validates the filters once, measures every node's clock and starts a
    TraceSession on each connected node at once (each with its own lease, exactly as a
    single-node trace). A node that cannot be reached or refuses the trace is recorded by
    name and the others go on, unless ``require_all``: then the traces already started are
    stopped and ClusterIncompleteError is raised. ``run(*observers)`` follows every node
    concurrently; all sessions share one StopRequests, so Ctrl-C (``signals()``), a
    caller's ``request_stop`` or ``max_total_size`` stop every node, while ``duration``
    and ``max_size`` are each node's own. At the end the clocks are measured again and the
    run's directory gets ``cluster.json`` and ``merged.log``.
    """

    def __init__(
        self,
        conns: Connections,
        directory: str | os.PathLike[str],
        filters: list[Any],
        *,
        limits: ClusterLimits | None = None,
        sink: str = "data",
        level: str = "debug",
        format_list: list[Any] | None = None,
        lease: float | None = None,
        require_all: bool = False,
    ) -> None:
        from . import filters as flt
        from .session import StopRequests

        self.conns = conns
        self.directory = Path(directory)
        self.filters = flt.validate(filters)
        self.limits = limits or ClusterLimits()
        self.sink = sink
        self.level = level
        self.format_list = format_list
        self.lease = lease
        self.require_all = require_all
        self.requests = StopRequests()
        labels = short_labels(conns.order)
        self.outcomes = {n: NodeOutcome(n, labels[n]) for n in conns.order}
        for node, exc in conns.failed.items():
            self.outcomes[node].error = exc
        self.sessions: dict[str, TraceSession] = {}
        self.started = 0.0
        self.summary: ClusterSummary | None = None
        self._reading = False

    # -------------------------------------------------------------------- start

    def _check_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        taken = [
            name
            for name in [CLUSTER_FILE, MERGED_FILE, *(node_file(n) for n in self.outcomes)]
            if (self.directory / name).exists() or (self.directory / (name + ".partial")).exists()
        ]
        if taken:
            raise UsageError(
                f"{self.directory} already holds {', '.join(taken[:3])}"
                f"{' ...' if len(taken) > 3 else ''}: give a new or empty directory",
                setting="local_path",
            )

    async def start(self) -> None:
        from . import clock
        from .governor import DEFAULT_MAX_RATE
        from .session import TraceSession
        from .tracing import DEFAULT_LEASE

        self._check_directory()
        live = [n for n in self.conns.order if n in self.conns.nodes]

        async def one(name: str) -> TraceSession:
            node = self.conns.nodes[name]
            outcome = self.outcomes[name]
            outcome.start = await clock.measure(node)
            return await TraceSession.start(
                node,
                self.filters,
                local_path=self.directory / node_file(name),
                duration=self.limits.duration,
                max_size=self.limits.max_size,
                sink=self.sink,
                level=self.level,
                format_list=self.format_list,
                lease=self.lease or DEFAULT_LEASE,
                poll_ms=self.limits.poll_ms,
                correction=clock.ClockCorrection(outcome.start),
                requests=self.requests,
                governor=self.limits.governor,
                max_rate=self.limits.max_rate if self.limits.max_rate is not None else DEFAULT_MAX_RATE,
            )

        self.started = time.time()
        results = await asyncio.gather(*(one(n) for n in live), return_exceptions=True)
        for name, result in zip(live, results, strict=False):
            if isinstance(result, KzBridgeError):
                self.outcomes[name].error = result
            elif isinstance(result, BaseException):
                await self._stop_started()
                raise result
            else:
                self.sessions[name] = result
                self.outcomes[name].ref = result.trace.ref
                self.outcomes[name].remote_path = result.trace.remote_path
        failed = [o.node for o in self.outcomes.values() if o.error is not None]
        if not self.sessions or (failed and self.require_all):
            stopped = await self._stop_started()
            what = "; ".join(f"{n}: {self.outcomes[n].error}" for n in failed)
            raise ClusterIncompleteError(
                f"{len(failed)} of {len(self.outcomes)} nodes could not be traced ({what})"
                + (f"; stopped the traces started on {', '.join(stopped)}" if stopped else ""),
                failed=failed,
            )

    async def _stop_started(self) -> list[str]:
        async def stop(name: str) -> str:
            await self.sessions[name].stop()
            return name

        done = await asyncio.gather(*(stop(n) for n in self.sessions), return_exceptions=True)
        self.sessions.clear()
        return [d for d in done if isinstance(d, str)]

    # -------------------------------------------------------------------- run

    async def events(self) -> AsyncIterator[tuple[str, Event]]:
        """Every node's events as they come, tagged with the node's name (once: each session's stream is read once)."""
        from .session import Collected, Lost, Progress

        if self._reading:
            raise UsageError("a cluster trace's events can be read once")
        self._reading = True

        queue: asyncio.Queue[tuple[str, Event] | None] = asyncio.Queue(maxsize=1024)
        totals: dict[str, int] = {}

        async def pump(name: str, session: TraceSession) -> None:
            try:
                async for event in session.events():
                    await queue.put((name, event))
            except KzBridgeError as exc:  # the stream reports loss as Lost; anything else is recorded
                self.outcomes[name].error = exc
            finally:
                await queue.put(None)

        tasks = [asyncio.ensure_future(pump(n, s)) for n, s in self.sessions.items()]
        running = len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                name, event = item
                if isinstance(event, Progress):
                    totals[name] = event.bytes
                    cap = self.limits.max_total_size
                    if cap is not None and sum(totals.values()) >= cap:
                        self.requests.request_stop("max-total-size")
                elif isinstance(event, Collected):
                    self.outcomes[name].summary = event.summary
                elif isinstance(event, Lost):
                    self.outcomes[name].error = event.error
                yield name, event
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, *observers: Callable[[str, Event], None]) -> ClusterSummary:
        """Follow every node to its end, then measure the clocks again, write cluster.json and merged.log."""
        async for name, event in self.events():
            for observe in observers:
                observe(name, event)
        return await self.finish()

    async def stop(self) -> ClusterSummary:
        """Stop every node (if not stopped yet), collect what remains, write cluster.json and merged.log."""
        if self.summary is not None:
            return self.summary
        self.request_stop("caller")
        if not self._reading:
            async for _ in self.events():
                pass
        return await self.finish()

    def merged_records(self) -> Iterator[MergedRecord]:
        """After finish(): the merged timeline as records (node, corrected instant, text, parsed record)."""
        if self.summary is None:
            raise UsageError("the merged timeline exists once the run has finished")
        return merged_records(merge_sources(self.directory, read_cluster_json(self.directory)))

    async def finish(self) -> ClusterSummary:
        """After the events: measure the clocks again, write cluster.json and merged.log (once)."""
        from . import clock

        if self.summary is not None:
            return self.summary

        async def measure(name: str) -> None:
            node = self.conns.nodes.get(name)
            if node is not None and node.alive and self.outcomes[name].start is not None:
                try:
                    self.outcomes[name].stop = await clock.measure(node)
                except KzBridgeError:
                    pass  # the start measurement stands alone; cluster.json says there is no stop

        await asyncio.gather(*(measure(n) for n in self.sessions))
        summary = ClusterSummary(
            self.directory,
            list(self.outcomes.values()),
            self.started,
            time.time(),
            stopped_by=self.requests.abandon_by or self.requests.stop_by,
        )
        # The merge reads the description exactly as `kzbridge merge DIR` will read cluster.json.
        sources = merge_sources(self.directory, cluster_description(summary, self))
        summary.merged = merge_to_file(sources, self.directory / MERGED_FILE)
        write_cluster_json(summary, self)
        self.summary = summary
        return summary


def write_cluster_json(summary: ClusterSummary, run: ClusterTrace | None = None) -> Path:
    """Write ``cluster.json`` (a new file, 0600, whole or not at all: localfiles.Partial)."""
    from .localfiles import new_file

    with new_file(summary.directory / CLUSTER_FILE) as part:
        part.write((json.dumps(cluster_description(summary, run), indent=1) + "\n").encode())
    return part.final


def cluster_description(summary: ClusterSummary, run: ClusterTrace | None = None) -> dict[str, Any]:
    """The run's description (see README "Cluster tracing"), as cluster.json holds it."""
    from . import filters as flt
    from .clock import ClockCorrection

    def node_entry(o: NodeOutcome) -> dict[str, Any]:
        s = o.summary
        entry: dict[str, Any] = {
            "node": o.node,
            "label": o.label,
            "traced": o.traced,
            "ref": o.ref,
            "remote_path": o.remote_path,
            "file": node_file(o.node) if s is not None else None,
            "partial_file": Path(o.partial_path).name if o.partial_path else None,
            "records": s.records if s else 0,
            "lines": s.lines if s else 0,
            "bytes": s.bytes if s else (o.lost.kept_bytes if o.lost else 0),
            "verified": bool(s and s.verified),
            "partial": o.partial_path is not None,
            "stopped_by": s.reason if s else None,
            "generation": s.generation if s else None,
            "warnings": [str(w) for w in s.warnings] if s else [],
            "error": str(o.error) if o.error is not None else None,
            "clock": ClockCorrection(o.start, o.stop).to_json() if o.start is not None else None,
        }
        if o.start is not None:
            local = o.start.node_local_start
            entry["utc_offset"] = o.start.utc_offset
            entry["date_at_start"] = local.date().isoformat()
            entry["utc_log"] = o.start.utc_log
        return entry

    data: dict[str, Any] = {
        "kzbridge_cluster": 1,
        "started": _iso(summary.started),
        "stopped": _iso(summary.stopped),
        "stopped_by": summary.stopped_by or None,
        "nodes": [node_entry(o) for o in summary.outcomes],
        "failed": {o.node: str(o.error) for o in summary.outcomes if o.error is not None},
        "merged": {"file": MERGED_FILE, "nodes": summary.merged.to_json()} if summary.merged else None,
    }
    if run is not None:
        data.update(
            filters=flt.describe(run.filters),
            sink=run.sink,
            level=run.level,
            limits={
                "duration": run.limits.duration,
                "max_size": run.limits.max_size,
                "max_total_size": run.limits.max_total_size,
            },
        )
    return data


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_cluster_json(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / CLUSTER_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path} not found: give a cluster run's directory, or files with clocks", setting="local_path"
        ) from None
    except (OSError, ValueError) as exc:
        raise KazooError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kzbridge_cluster") != 1 or not isinstance(data.get("nodes"), list):
        raise KazooError(f"{path} is not a kzbridge cluster description")
    return data


def merge_sources(directory: str | os.PathLike[str], data: dict[str, Any]) -> list[MergeSource]:
    """The per-node files a cluster.json names, with their clocks, in the run's node order."""
    from .clock import ClockCorrection

    out: list[MergeSource] = []
    for entry in data["nodes"]:
        if not isinstance(entry, dict):
            raise KazooError("cluster.json: a node entry is not an object")
        name = entry.get("partial_file") or entry.get("file")
        if not name or entry.get("clock") is None:
            continue
        path = Path(directory) / Path(str(name)).name
        if not path.exists():
            raise KazooError(f"cluster.json names {path.name}, which is not in {directory}")
        out.append(
            MergeSource(
                str(entry["node"]), path, ClockCorrection.from_json(entry["clock"]), str(entry.get("label") or "")
            )
        )
    return out


class ClusterIncompleteError(KzBridgeError):
    """Some nodes could not be traced and the run required all of them (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, *, failed: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint, setting="node")
        self.failed = failed
