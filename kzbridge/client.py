"""The public entry point: ``async with kzbridge.connect(node) as n: await n.rpc(...)``.

A sync wrapper (``connect_sync``) runs its own event loop in a thread for scripts.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from .cookie import resolve_cookie
from .wire.connection import DEFAULT_TICKTIME
from .wire.node import HiddenNode, connect_node
from .wire.rex import RpcResult


class connect:  # noqa: N801 - reads as a function at the call site
    """Async context manager yielding a connected HiddenNode."""

    def __init__(self, node: str, cookie: str | None = None, *, cookie_file: str | None = None,
                 timeout: float = 10.0, ticktime: float = DEFAULT_TICKTIME) -> None:
        self.node = node
        self.cookie = resolve_cookie(cookie, cookie_file)
        self.timeout = timeout
        self.ticktime = ticktime
        self._hidden: HiddenNode | None = None

    async def __aenter__(self) -> HiddenNode:
        self._hidden = await connect_node(self.node, self.cookie, timeout=self.timeout, ticktime=self.ticktime)
        return self._hidden

    async def __aexit__(self, *exc: Any) -> None:
        if self._hidden is not None:
            await self._hidden.close()


class SyncNode:
    """Blocking facade for scripts.

    Calls go over a blocking connection (no event loop, no thread hop: about 2.5x faster
    per call than driving the async node from another thread), kept alive by a tick
    thread. ``run(coro_fn)`` runs async helpers (tracing, collection) on a second,
    asyncio connection opened on first use in a private loop thread.
    """

    def __init__(self, node: str, cookie: str | None = None, *, cookie_file: str | None = None,
                 timeout: float = 10.0, ticktime: float = DEFAULT_TICKTIME) -> None:
        from .wire.blocking import BlockingNode
        self._target = node
        self._cookie = resolve_cookie(cookie, cookie_file)
        self._timeout = timeout
        self._ticktime = ticktime
        self.blocking = BlockingNode(node, self._cookie, timeout=timeout)
        self.blocking.start_ticking(ticktime)
        self.peer_name = self.blocking.peer_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._async: HiddenNode | None = None

    def rpc(self, module: str, function: str, args: list | None = None, timeout: float = 30.0) -> Any:
        return self.blocking.rpc(module, function, args, timeout)

    def rpc_output(self, module: str, function: str, args: list | None = None, timeout: float = 30.0) -> RpcResult:
        return self.blocking.rpc_output(module, function, args, timeout)

    @property
    def node(self) -> HiddenNode:
        """The asyncio node (opened on first use)."""
        if self._async is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="kzbridge-loop", daemon=True)
            self._thread.start()
            self._async = self._run(connect_node(self._target, self._cookie, timeout=self._timeout,
                                                 ticktime=self._ticktime))
        return self._async

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, coro_fn: Callable[[HiddenNode], Any]) -> Any:
        """Run ``await coro_fn(node)`` with the asyncio node (for async helpers from sync code)."""
        node = self.node
        return self._run(coro_fn(node))

    def close(self) -> None:
        self.blocking.close()
        if self._loop is not None:
            try:
                if self._async is not None:
                    self._run(self._async.close())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(5)
                self._loop.close()

    def __enter__(self) -> "SyncNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect_sync(node: str, cookie: str | None = None, **kwargs: Any) -> SyncNode:
    """Blocking connection for scripts: ``with kzbridge.connect_sync(node) as n: n.rpc(...)``."""
    return SyncNode(node, cookie, **kwargs)
