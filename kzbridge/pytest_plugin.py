"""pytest plugin: a Kazoo-like node for tests, real (--kazoo-node) or a local sandbox.

    def test_trace(kazoo_node):            # a connected HiddenNode
        ...
    def test_target(kazoo_target):         # (node name, cookie)
        ...

Options: --kazoo-node NAME@HOST and --kazoo-cookie (else KZBRIDGE_COOKIE); without
--kazoo-node a sandbox fixture node (generation --kazoo-generation) is started once
per session and stopped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("kzbridge")
    group.addoption("--kazoo-node", default=os.environ.get("KZBRIDGE_NODE"), help="Kazoo node to test against.")
    group.addoption("--kazoo-cookie", default=None, help="Its cookie (else KZBRIDGE_COOKIE).")
    group.addoption(
        "--kazoo-generation",
        default="2",
        choices=["1", "2"],
        help="kz_data_tracing generation of the sandbox started when no --kazoo-node is given.",
    )


@pytest.fixture(scope="session")
def kazoo_target(request: Any) -> Iterator[tuple[str, str]]:
    """(node, cookie) of the node under test; starts and stops a sandbox when none is given."""
    node = request.config.getoption("--kazoo-node")
    if node:
        cookie = request.config.getoption("--kazoo-cookie") or os.environ.get("KZBRIDGE_COOKIE")
        if not cookie:
            raise pytest.UsageError("--kazoo-node needs --kazoo-cookie or KZBRIDGE_COOKIE")
        yield node, cookie
        return
    from . import sandbox

    name = f"kzpytest_{secrets.token_hex(4)}"
    box = sandbox.start(name, generation=int(request.config.getoption("--kazoo-generation")), rate=50)
    try:
        yield box.node, box.cookie
    finally:
        sandbox.stop(name)


_async_fixture: Callable[[Callable[..., Any]], Any] = pytest.fixture
try:  # pytest-asyncio in strict mode runs only async fixtures declared through it
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # without it an async fixture needs another asyncio plugin (anyio, auto mode)
    pass


@_async_fixture
async def kazoo_node(kazoo_target: tuple[str, str]) -> AsyncIterator[Any]:
    """A connected HiddenNode (needs an asyncio test runner such as pytest-asyncio)."""
    from .wire.node import connect_node

    node = await connect_node(*kazoo_target)
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
def kazoo_sync(kazoo_target: tuple[str, str]) -> Iterator[Any]:
    """A connected SyncNode for plain (non-async) tests."""
    from .client import connect_sync

    with connect_sync(kazoo_target[0], kazoo_target[1]) as node:
        yield node
