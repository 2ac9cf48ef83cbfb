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
from kzbridge.kazoo import collect, localfiles, programs
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
async def test_a_slow_local_disk_does_not_stall_the_event_loop_while_collecting_several(
    sandbox_gen2: Any, open_node: Any, node_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local transfers are bounded by our CPUs (see the last test); let two run at once here,
    # as two from other machines would.
    monkeypatch.setattr(collect, "local_transfers_at_once", lambda: 2)
    n = await open_node(sandbox_gen2)
    remotes = [f"{node_tmp}/kzb-wb-{i}-{time.time_ns()}.bin" for i in range(2)]
    for remote in remotes:
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
        results = await asyncio.gather(
            *(collect_file(n, r, tmp_path / f"slow{i}.bin", chunk=4 * MB, window=4) for i, r in enumerate(remotes))
        )
    finally:
        pinger.cancel()
    # Three 4 MB chunks each, 0.4 s apiece on the disk: the transfers wait for them, the loop does not.
    for res, remote in zip(results, remotes, strict=True):
        assert res.verified and res.bytes == 12 * MB
        assert _sha(res.local_path) == _sha(remote)
    assert calls >= 10, calls
    assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.2f}s while a write was blocked"


@pytest.mark.asyncio
@pytest.mark.parametrize("together", [False, True], ids=["alone", "with-another"])
async def test_a_write_failing_midway_keeps_a_prefix_and_names_it(
    sandbox_gen2: Any,
    open_node: Any,
    node_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    together: bool,
) -> None:
    """Alone, chunks are written on the loop; with another collection running, by a thread
    (queued): either way the third write fails, nothing after it is written, the other
    collection completes."""
    monkeypatch.setattr(collect, "local_transfers_at_once", lambda: 2)  # both stream at once
    n = await open_node(sandbox_gen2)
    remote = f"{node_tmp}/kzb-wbfail-{time.time_ns()}.bin"
    other = f"{node_tmp}/kzb-wbother-{time.time_ns()}.bin"
    await _make_file(n, remote, 8)
    await _make_file(n, other, 8)
    out = tmp_path / "fail.bin"
    partial = tmp_path / "fail.bin.partial"
    real_write = localfiles.Partial.write
    seen = {"writes": 0}

    def failing_write(self: localfiles.Partial, data: Any) -> None:
        if self.path == partial:
            seen["writes"] += 1
            time.sleep(0.05)  # slow enough for later chunks to queue behind it
            if seen["writes"] == 3:
                raise self._error("write", OSError(28, "No space left on device"))
        real_write(self, data)

    monkeypatch.setattr(localfiles.Partial, "write", failing_write)
    calls = [collect_file(n, remote, out, chunk=1 * MB, window=4)]
    if together:
        calls.append(collect_file(n, other, tmp_path / "other.bin", chunk=1 * MB, window=4))
    results = await asyncio.gather(*calls, return_exceptions=True)
    err = results[0]
    assert isinstance(err, LocalFileError), results
    assert str(partial) in str(err) and not out.exists()
    # Only the two chunks before the failure: chunks received after it were never written.
    assert partial.stat().st_size == 2 * MB
    assert partial.read_bytes() == Path(remote).read_bytes()[: 2 * MB]
    assert seen["writes"] == 3
    if together:
        assert not isinstance(results[1], BaseException), results[1]
        assert _sha(results[1].local_path) == _sha(other)
    # The connection is still good for the next call.
    assert await n.rpc("erlang", "node", [], timeout=10) is not None


@pytest.mark.asyncio
async def test_collections_from_this_machine_stream_at_most_half_the_cpus_at_once(
    sandbox_gen2: Any, open_node: Any, node_tmp: Path, tmp_path: Path
) -> None:
    """Three collections from a node on this machine, asked for at once: at most
    local_transfers_at_once() stream at the same time (one on 2 CPUs), and all arrive whole."""
    n = await open_node(sandbox_gen2)
    remotes = [f"{node_tmp}/kzb-slot-{i}-{time.time_ns()}.bin" for i in range(3)]
    for remote in remotes:
        await _make_file(n, remote, 6)
    streaming: set[int] = set()
    most = 0

    def progress_of(i: int) -> Any:
        def progress(done: int, total: int) -> None:
            nonlocal most
            streaming.add(i)
            most = max(most, len(streaming))
            if done >= total:
                streaming.discard(i)

        return progress

    results = await asyncio.gather(
        *(
            collect_file(n, r, tmp_path / f"c{i}.bin", chunk=1 * MB, window=2, progress=progress_of(i))
            for i, r in enumerate(remotes)
        )
    )
    assert [_sha(r.local_path) for r in results] == [_sha(r) for r in remotes]
    assert 1 <= most <= collect.local_transfers_at_once(), most
