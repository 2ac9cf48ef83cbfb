"""Collection writes its file in a thread of its own: a slow local disk holds up that transfer
only, never the event loop (other transfers, calls, ticks on every connection).

Against a real sandbox; what is slowed is our own local file (Partial.write), not the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import LocalFileError
from kzbridge.kazoo import localfiles, programs
from kzbridge.kazoo.collect import collect_file
from kzbridge.wire.terms import ErlString

MB = 1 << 20


async def _make_file(n: Any, path: str, mb: int) -> None:
    src = (
        "{ok, F} = file:open(Path, [write, raw, binary]), "
        "[ok = file:write(F, crypto:strong_rand_bytes(1048576)) || _ <- lists:seq(1, MB)], file:close(F)."
    )
    await programs.evaluate(n, src, timeout=60, Path=ErlString(path), MB=mb)


def _sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.asyncio
async def test_a_slow_local_disk_does_not_stall_the_event_loop(
    sandbox_gen2: Any, open_node: Any, node_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = await open_node(sandbox_gen2)
    remote = f"{node_tmp}/kzb-wb-{time.time_ns()}.bin"
    await _make_file(n, remote, 12)
    real_write = localfiles.Partial.write

    def slow_write(self: localfiles.Partial, data: Any) -> None:
        time.sleep(0.4)  # a write blocked by the kernel's writeback, as under load
        real_write(self, data)

    monkeypatch.setattr(localfiles.Partial, "write", slow_write)
    gaps: list[float] = []
    calls = 0

    async def ping() -> None:
        nonlocal calls
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await n.rpc("erlang", "node", [], timeout=10)
            calls += 1
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    pinger = asyncio.ensure_future(ping())
    try:
        res = await collect_file(n, remote, tmp_path / "slow.bin", chunk=4 * MB, window=4)
    finally:
        pinger.cancel()
    # Three 4 MB chunks, 0.4 s each on the disk: the transfer waits for them, the loop does not.
    assert res.verified and res.bytes == 12 * MB
    assert _sha(res.local_path) == _sha(remote)
    assert calls >= 10, calls
    assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.2f}s while a write was blocked"


@pytest.mark.asyncio
async def test_a_write_failing_midway_keeps_a_prefix_and_names_it(
    sandbox_gen2: Any, open_node: Any, node_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = await open_node(sandbox_gen2)
    remote = f"{node_tmp}/kzb-wbfail-{time.time_ns()}.bin"
    await _make_file(n, remote, 8)
    real_write = localfiles.Partial.write
    seen = {"writes": 0}

    def failing_write(self: localfiles.Partial, data: Any) -> None:
        seen["writes"] += 1
        if seen["writes"] == 3:
            raise self._error("write", OSError(28, "No space left on device"))
        real_write(self, data)

    monkeypatch.setattr(localfiles.Partial, "write", failing_write)
    out = tmp_path / "fail.bin"
    with pytest.raises(LocalFileError) as info:
        await collect_file(n, remote, out, chunk=1 * MB, window=4)
    partial = tmp_path / "fail.bin.partial"
    assert str(partial) in str(info.value) and not out.exists()
    # Only the two chunks before the failure: chunks queued after it were never written.
    assert partial.stat().st_size == 2 * MB
    assert partial.read_bytes() == Path(remote).read_bytes()[: 2 * MB]
    assert seen["writes"] == 3
    # The connection is still good for the next call.
    assert await n.rpc("erlang", "node", [], timeout=10) is not None
