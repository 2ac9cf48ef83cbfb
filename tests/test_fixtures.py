"""The shared test fixtures and helpers of conftest.py do what its docstring promises."""

from __future__ import annotations

import os
import time
from pathlib import Path

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


def test_the_runs_cleanup_names_only_files_its_own_nodes_made(tmp_path, monkeypatch):
    from kzbridge.kazoo import journal

    from .conftest import RunEnv

    monkeypatch.setenv("KZBRIDGE_CACHE", str(tmp_path / "cache"))
    tag = os.urandom(4).hex()
    env = RunEnv(tmp_path / "cache", 0, tmp_path / "nodes", tmp_path / "ledger", sandbox_names=[f"kzt2_{tag}"])
    mine_default = f"/tmp/kzbridge-kzt2_{tag}-20261125-120000-abcdef.log"
    theirs_extended = f"/tmp/kzbridge-kzt2_{tag}-x-20261125-120000-abcdef.log"  # another run's node kzt2_<tag>-x
    theirs_kazoo_default = f"/tmp/{os.urandom(16).hex()}.log"  # kz_data_tracing's default name, not in our ledger
    mine_kazoo_default = f"/tmp/{os.urandom(16).hex()}.log"
    journaled = f"/tmp/kzbpkg-journaled-{tag}.log"
    env.ledger.write_text(f"{mine_kazoo_default}\n")
    journal.record(journal.JournalEntry("n@h", "r", journaled, "data", 2, "", time.time(), time.time() + 60))
    made = [mine_default, theirs_extended, theirs_kazoo_default, mine_kazoo_default, journaled]
    try:
        for f in made:
            Path(f).write_text("x")
        files = env.files_made()
    finally:
        for f in made:
            Path(f).unlink(missing_ok=True)
    assert {mine_default, mine_kazoo_default, f"{mine_kazoo_default}.4", journaled, f"{journaled}.0"} <= files
    assert theirs_extended not in files and theirs_kazoo_default not in files
