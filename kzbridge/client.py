"""The public entry point: ``async with kzbridge.connect(node) as n: await n.rpc(...)``.

Async scripts trace with ``kazoo.session.TraceSession`` (or ``kazoo.tracing.start_trace``
and ``Trace.follow``) on the node ``connect`` gives. A sync wrapper (``connect_sync``)
runs its own event loop in a thread for scripts, with blocking versions of the
tracing calls (``start_trace`` gives a ``SyncTrace``); they drive the same
TraceSession, so limits, stop requests and the summary are the same everywhere.
Several nodes at once: ``trace_cluster`` (async) and ``trace_cluster_sync``.

Every entry point takes ``address`` and ``epmd_port``, as the command line's ``--address``
and ``--epmd-port``: reach a node whose name's host does not resolve from here (a
container's ``kazoo_apps@kazoo``) at another host, or straight at its distribution port::

    kzbridge.connect_sync("kazoo_apps@kazoo", cookie, address="127.0.0.1", epmd_port=4370)
    kzbridge.connect_sync("kazoo_apps@kazoo", cookie, address="127.0.0.1:9100")   # no EPMD asked
    kzbridge.trace_cluster(nodes, filters, "run/", address={"ecallmgr@kz2": "10.0.0.7"})

``address`` is ``"HOST[:PORT]"`` (for every node given), ``"NODE=HOST[:PORT]"``, a list of
those, or a mapping ``{node: "HOST[:PORT]"}`` (wire.names.Routes.build says the rules).

``tls`` speaks TLS distribution (nodes started with ``-proto_dist inet_tls``), as the command
line's ``--tls*`` options: a ``wire.tls.TlsSettings``, ``True`` for the defaults (the
system's CAs, verification on), or the path of the cluster's ``ssl_dist_optfile``::

    from kzbridge.wire.tls import TlsSettings
    tls = TlsSettings(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")
    kzbridge.connect_sync("kazoo_apps@kz1.example.com", cookie, tls=tls)

Its warnings (verification off, a private key others can read) are ``warnings.warn``-ed
on every connect.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .cookie import cookie_for_node
from .kazoo.filters import DEFAULT_MAX_RATE
from .limits import check_number
from .wire.connection import DEFAULT_TICKTIME
from .wire.names import AddressSpec, Route, Routes
from .wire.node import HiddenNode, connect_node
from .wire.rex import RpcResult

if TYPE_CHECKING:
    from .kazoo.cluster import ClusterSummary, ClusterTrace, Connections, NodeOutcome
    from .kazoo.collect import CollectResult
    from .kazoo.logparse import LogRecord
    from .kazoo.merge import MergedRecord
    from .kazoo.session import Observer, RunSummary
    from .kazoo.tracing import Trace
    from .wire.tls import TlsSettings

T = TypeVar("T")


def tls_settings(tls: TlsSettings | bool | str | os.PathLike[str] | None) -> TlsSettings | None:
    """``tls=`` as a TlsSettings (None: plain TCP); warns what an operator should hear."""
    if tls is None or tls is False:
        return None
    from .errors import UsageError
    from .wire import tls as wire_tls

    if tls is True:
        settings = wire_tls.TlsSettings()
    elif isinstance(tls, wire_tls.TlsSettings):
        settings = tls
    elif isinstance(tls, (str, os.PathLike)):
        settings, unused = wire_tls.read_optfile(tls)
        if unused:
            warnings.warn(
                f"the TLS optfile's client options {', '.join(unused)} are not used by kzbridge", stacklevel=3
            )
    else:
        raise UsageError(f"tls must be TlsSettings, True or an optfile path, not {tls!r:.60}", setting="tls")
    settings.check_files()
    for text in settings.warnings():
        warnings.warn(text, stacklevel=3)
    return settings


class connect:
    """Async context manager yielding a connected HiddenNode."""

    def __init__(
        self,
        node: str,
        cookie: str | None = None,
        *,
        cookie_file: str | None = None,
        timeout: float = 10.0,
        ticktime: float = DEFAULT_TICKTIME,
        address: AddressSpec = None,
        epmd_port: int | None = None,
        tls: TlsSettings | bool | str | os.PathLike[str] | None = None,
    ) -> None:
        self.node = node
        self.timeout = check_number(timeout, "timeout")
        self.route = Routes.build([node], address, epmd_port, tls=tls_settings(tls)).route(node)
        self.cookie = cookie_for_node(node, cookie, cookie_file)
        self.ticktime = ticktime
        self._hidden: HiddenNode | None = None

    async def __aenter__(self) -> HiddenNode:
        self._hidden = await connect_node(
            self.node, self.cookie, timeout=self.timeout, ticktime=self.ticktime, route=self.route
        )
        return self._hidden

    async def __aexit__(self, *exc: object) -> None:
        if self._hidden is not None:
            await self._hidden.close()


class SyncNode:
    """Blocking facade for scripts.

    Calls go over a blocking connection (no event loop, no thread hop: about 2.5x faster
    per call than driving the async node from another thread), kept alive by a tick
    thread. ``run(coro_fn)`` runs async helpers (tracing, collection) on a second,
    asyncio connection (``async_node``) opened on first use in a private loop thread.
    ``route`` (a wire.names.Route), when given, is used instead of ``address``/``epmd_port``/``tls``.
    """

    def __init__(
        self,
        node: str,
        cookie: str | None = None,
        *,
        cookie_file: str | None = None,
        timeout: float = 10.0,
        ticktime: float = DEFAULT_TICKTIME,
        address: AddressSpec = None,
        epmd_port: int | None = None,
        route: Route | None = None,
        tls: TlsSettings | bool | str | os.PathLike[str] | None = None,
    ) -> None:
        from .wire.blocking import BlockingNode

        self._target = node
        self._timeout = check_number(timeout, "timeout")
        self._route = route or Routes.build([node], address, epmd_port, tls=tls_settings(tls)).route(node)
        self._cookie = cookie_for_node(node, cookie, cookie_file)
        self._ticktime = ticktime
        self.blocking = BlockingNode(node, self._cookie, timeout=timeout, route=self._route)
        self.blocking.start_ticking(ticktime)
        self.peer_name = self.blocking.peer_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._async: HiddenNode | None = None

    def rpc(self, module: str, function: str, args: list[Any] | None = None, timeout: float = 30.0) -> Any:
        return self.blocking.rpc(module, function, args, timeout)

    def rpc_output(self, module: str, function: str, args: list[Any] | None = None, timeout: float = 30.0) -> RpcResult:
        result: RpcResult = self.blocking.rpc_output(module, function, args, timeout)
        return result

    @property
    def async_node(self) -> HiddenNode:
        """The asyncio node the tracing helpers run on (opened on first use, in the loop thread)."""
        if self._async is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="kzbridge-loop", daemon=True)
            self._thread.start()
            self._async = self._run(
                connect_node(
                    self._target, self._cookie, timeout=self._timeout, ticktime=self._ticktime, route=self._route
                )
            )
        return self._async

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, coro_fn: Callable[[HiddenNode], Coroutine[Any, Any, T]]) -> T:
        """Run ``await coro_fn(node)`` with the asyncio node (for async helpers from sync code)."""
        node = self.async_node
        return self._run(coro_fn(node))

    def start_trace(self, filter_list: list[Any], **options: Any) -> SyncTrace:
        """Start a trace (options as ``kazoo.tracing.start_trace``); use ``with`` to be sure it stops.

        Its lease is renewed in the background (on the loop thread) until ``stop()``.
        """
        from .kazoo import tracing

        return SyncTrace(self, self.run(lambda n: tracing.start_trace(n, filter_list, **options)))

    def collect_file(self, remote_path: str, local_path: str | os.PathLike[str], **options: Any) -> CollectResult:
        """Bring any file back from the node (options as ``kazoo.collect.collect_file``)."""
        from .kazoo.collect import collect_file

        return self.run(lambda n: collect_file(n, remote_path, local_path, **options))

    def close(self) -> None:
        self.blocking.close()
        if self._loop is not None:
            try:
                if self._async is not None:
                    self._run(self._shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(5)
                self._loop.close()

    async def _shutdown(self) -> None:
        # Lease keepers and the like end with the connection; cancel them so none is left pending.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        assert self._async is not None
        await self._async.close()

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncTrace:
    """A running trace, driven from blocking code; ``with`` guarantees it stops."""

    def __init__(self, owner: SyncNode, trace: Trace) -> None:
        self._owner = owner
        self.trace = trace

    @property
    def ref(self) -> str:
        """kz_data_tracing's ref (lg... for lager_event traces)."""
        return self.trace.ref

    @property
    def remote_path(self) -> str:
        """The trace file on the node."""
        return self.trace.remote_path

    @property
    def generation(self) -> int | None:
        """kz_data_tracing's API generation, 1 or 2; None for the lager_event sink."""
        return self.trace.generation

    @property
    def warnings(self) -> list[str]:
        return list(self.trace.warnings)

    @property
    def stopped(self) -> bool:
        return self.trace.stopped

    def stop(self) -> str:
        """Stop the trace (idempotent); returns the remote file name."""
        return self._owner._run(self.trace.stop())

    def collect(
        self, local_path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None
    ) -> CollectResult:
        """Bring back the whole file, rotated parts first (stop first, or get what is there so far)."""
        return self._owner._run(self.trace.collect(local_path, progress=progress))

    def run(
        self,
        local_path: str | os.PathLike[str],
        *,
        duration: float,
        max_size: int | None = None,
        poll_ms: int = 50,
        observers: Sequence[Observer] = (),
        max_rate: float | None = DEFAULT_MAX_RATE,
        governor: bool = True,
    ) -> RunSummary:
        """Follow into ``local_path`` until ``duration`` (or ``max_size``), stop, verify: a TraceSession's run.

        ``observers`` see every event (on the loop thread). A lost connection raises TraceLostError.
        The governor (kazoo.governor) stops the trace past ``max_rate`` events/s or when lager's sink
        goes synchronous (``summary.reason == "safety"``); ``governor=False`` turns it off.
        """
        from .kazoo.session import DEFAULT_MAX_SIZE, TraceSession

        async def run() -> RunSummary:
            session = TraceSession(
                self.trace,
                local_path,
                duration=duration,
                poll_ms=poll_ms,
                max_size=max_size if max_size is not None else DEFAULT_MAX_SIZE,
                max_rate=max_rate,
                governor=governor,
            )
            return await session.run(*observers)

        return self._owner._run(run())

    def follow(self, duration: float | None = None) -> Iterator[LogRecord]:
        """Parsed records as lager writes them, until the trace stops (the session stops it after
        ``duration`` if given). Leaving the loop early stops following, not the trace.
        """
        from .kazoo.session import Lost, Record, TraceSession

        session = TraceSession(self.trace, None, duration=duration, max_size=None, owns_trace=False)
        stream = session.events()

        async def next_record() -> LogRecord:
            while True:
                event = await stream.__anext__()
                if isinstance(event, Record):
                    return event.record
                if isinstance(event, Lost):
                    raise event.error

        try:
            while True:
                try:
                    yield self._owner._run(next_record())
                except StopAsyncIteration:
                    return
        finally:
            self._owner._run(stream.aclose())

    def __enter__(self) -> SyncTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.trace.stopped and self.trace.node.alive:
            self.stop()


def connect_sync(node: str, cookie: str | None = None, **kwargs: Any) -> SyncNode:
    """Blocking connection for scripts: ``with kzbridge.connect_sync(node) as n: n.rpc(...)``."""
    return SyncNode(node, cookie, **kwargs)


class trace_cluster:
    """The same trace on several nodes: ``async with`` starts it on all, and on exit stops every
    node, collects, and writes ``cluster.json`` and ``merged.log`` into ``directory``.

        async with kzbridge.trace_cluster(["kazoo_apps@kz1", "ecallmgr@kz2"], filters, "run/") as run:
            async for node, event in run.events():   # optional: Record/Progress/... per node
                ...
        run.summary.outcomes                          # per node: RunSummary, error, clocks
        for rec in run.merged_records(): ...          # the merged timeline, corrected for clock skew

    ``options``: ``duration`` (default: until stopped), ``max_size``, ``max_total_size``,
    ``sink``, ``level``, ``format_list``, ``lease``, ``require_all`` (see kazoo.cluster.ClusterTrace).
    Nodes that cannot be reached are in ``run.outcomes`` with their error, unless ``require_all``.
    ``address``/``epmd_port``: where the nodes are reached; ``tls``: TLS distribution (see the
    module docstring).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        filters: list[Any],
        directory: str | os.PathLike[str],
        *,
        cookie: str | None = None,
        cookie_file: str | None = None,
        timeout: float = 10.0,
        duration: float | None = None,
        max_size: int | None = 100 << 20,
        max_total_size: int | None = None,
        address: AddressSpec = None,
        epmd_port: int | None = None,
        tls: TlsSettings | bool | str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        from .kazoo.cluster import ClusterLimits, parse_node_list

        self.nodes = parse_node_list(nodes)
        self.routes = Routes.build(self.nodes, address, epmd_port, tls=tls_settings(tls))
        self.filters = filters
        self.directory = directory
        self._cookie_for = lambda node: cookie_for_node(node, cookie, cookie_file)
        self.timeout = timeout
        self.limits = ClusterLimits(duration=duration, max_size=max_size, max_total_size=max_total_size)
        self.options = options
        self._conns: Connections | None = None
        self.run: ClusterTrace | None = None

    async def __aenter__(self) -> ClusterTrace:
        from .kazoo.cluster import ClusterTrace, connect_all

        self._conns = await connect_all(self.nodes, self._cookie_for, timeout=self.timeout, routes=self.routes)
        try:
            self.run = ClusterTrace(self._conns, self.directory, self.filters, limits=self.limits, **self.options)
            await self.run.start()
        except BaseException:
            await self._conns.close()
            raise
        return self.run

    async def __aexit__(self, *exc: object) -> None:
        assert self._conns is not None and self.run is not None
        try:
            await self.run.stop()
        finally:
            await self._conns.close()


class SyncClusterTrace:
    """``trace_cluster`` for blocking code, on a private event loop thread; ``with`` always stops it.

    with kzbridge.trace_cluster_sync(nodes, filters, "run/", duration=30) as run:
        summary = run.wait()          # until every node's duration (or run.stop() now)
    for rec in run.merged_records(): ...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kzbridge-cluster", daemon=True)
        self._thread.start()
        self._cm = trace_cluster(*args, **kwargs)
        try:
            self.run = self._call(self._cm.__aenter__())
        except BaseException:
            self._close_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def outcomes(self) -> dict[str, NodeOutcome]:
        return self.run.outcomes

    def wait(self) -> ClusterSummary:
        """Follow every node to its end (its duration or max size), then finish: the summary."""

        async def drain() -> ClusterSummary:
            async for _ in self.run.events():
                pass
            return await self.run.finish()

        return self._call(drain())

    def stop(self) -> ClusterSummary:
        """Stop every node now, collect, merge: the summary (idempotent)."""
        return self._call(self.run.stop())

    def merged_records(self) -> Iterator[MergedRecord]:
        return self.run.merged_records()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SyncClusterTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self._cm.__aexit__(*exc))
        finally:
            self._close_loop()


def trace_cluster_sync(
    nodes: Sequence[str], filters: list[Any], directory: str | os.PathLike[str], **kwargs: Any
) -> SyncClusterTrace:
    """Blocking cluster trace for scripts; see SyncClusterTrace and trace_cluster."""
    return SyncClusterTrace(nodes, filters, directory, **kwargs)
