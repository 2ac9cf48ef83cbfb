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
    """Blocking facade over HiddenNode for scripts: each call runs on a private loop thread."""

    def __init__(self, node: str, cookie: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kzbridge-loop", daemon=True)
        self._thread.start()
        self._cm = connect(node, cookie, **kwargs)
        try:
            self.node: HiddenNode = self._run(self._cm.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def rpc(self, module: str, function: str, args: list | None = None, timeout: float | None = 30.0) -> Any:
        return self._run(self.node.rpc(module, function, args, timeout=timeout))

    def rpc_output(self, module: str, function: str, args: list | None = None, timeout: float | None = 30.0,
                   on_output: Callable[[str], None] | None = None) -> RpcResult:
        return self._run(self.node.rpc_output(module, function, args, timeout=timeout, on_output=on_output))

    def run(self, coro_fn: Callable[[HiddenNode], Any]) -> Any:
        """Run ``await coro_fn(node)`` on the loop thread (for async helpers from sync code)."""
        return self._run(coro_fn(self.node))

    def close(self) -> None:
        try:
            self._run(self._cm.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> "SyncNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect_sync(node: str, cookie: str | None = None, **kwargs: Any) -> SyncNode:
    """Blocking connection for scripts: ``with kzbridge.connect_sync(node) as n: n.rpc(...)``."""
    return SyncNode(node, cookie, **kwargs)
