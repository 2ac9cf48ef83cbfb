"""The shared test fixtures and helpers of conftest.py do what its docstring promises."""

from __future__ import annotations

import time

import pytest

from kzbridge.wire.terms import Atom

from .conftest import poll_until, poll_until_async


def test_poll_until_returns_the_first_truthy_value_and_fails_after_the_timeout():
    calls = []

    def third_time() -> int | None:
        calls.append(1)
        return len(calls) * 10 if len(calls) >= 3 else None

    assert poll_until(third_time, timeout=5, interval=0.01) == 30
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"never not met in 0\.2s"):
        poll_until(lambda: False, timeout=0.2, interval=0.01, message="never")
    assert 0.2 <= time.monotonic() - started < 2


def test_poll_until_retries_listed_exceptions_and_lets_others_through():
    attempts = iter([OSError("not yet"), OSError("still not"), "up"])

    def flaky() -> str:
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return str(value)

    assert poll_until(flaky, timeout=5, interval=0.01, retry_on=(OSError,)) == "up"
    with pytest.raises(AssertionError, match="last error: OSError"):
        poll_until(lambda: (_ for _ in ()).throw(OSError("down")), timeout=0.1, interval=0.01, retry_on=(OSError,))
    with pytest.raises(ZeroDivisionError):
        poll_until(lambda: 1 / 0, timeout=1, retry_on=(OSError,))


@pytest.mark.asyncio
async def test_poll_until_async_awaits_coroutine_predicates():
    seen = []

    async def ready() -> bool:
        seen.append(1)
        return len(seen) > 2

    assert await poll_until_async(ready, timeout=5, interval=0.01) is True
    with pytest.raises(AssertionError):
        await poll_until_async(lambda: 0, timeout=0.1, interval=0.01)


@pytest.mark.asyncio
async def test_gen2_node_is_connected_to_the_generation_2_sandbox(gen2_node, sandbox_gen2):
    assert gen2_node.peer_name == sandbox_gen2.node
    info = await gen2_node.rpc("kz_fixture", "info", [])
    assert info[Atom("generation")] == 2


@pytest.mark.asyncio
async def test_any_node_covers_both_generations(any_node, any_sandbox):
    info = await any_node.rpc("kz_fixture", "info", [])
    assert info[Atom("generation")] == any_sandbox.generation


@pytest.mark.asyncio
async def test_erl_hidden_node_talks_to_a_plain_erl_node(erl_hidden_node, erl_node):
    assert await erl_hidden_node.rpc("erlang", "node", []) == Atom(erl_node.node)
