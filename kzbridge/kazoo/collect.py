"""Bring files back from the node: streamed by a reader process on the node, with credits.

The reader (programs.READER) sends chunks as messages; we grant credit for a
window of chunks, so memory stays bounded and TCP pushes back when we fall
behind. A run ends with the reader's own byte count and the file's size, which
we check against what we wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConnectionLostError, KzBridgeError, LocalFileError, RemoteFileError, RpcTimeoutError
from ..wire.literal import format_term
from ..wire.node import HiddenNode, Mailbox
from ..wire.terms import Atom, ErlString
from . import localfiles, programs

# Whole-file collection: 4 MB messages, 4 in flight (16 MB at most queued on the node).
# Per-message cost on both sides, not bandwidth, limited 1 MB chunks: measured on
# loopback, 256 MB came back at ~610/930 MB/s (first/warm) with 1 MB x 32 and at
# ~940/1210 MB/s with 4 MB x 4; larger chunks or windows gained nothing more.
DEFAULT_CHUNK = 4 << 20
DEFAULT_WINDOW = 4
# Following a growing file: reads are small and latency matters, so smaller reads
# (the node allocates a buffer of the requested size on every poll) and more of them.
FOLLOW_CHUNK = 1 << 20
FOLLOW_WINDOW = 16
A_DATA = Atom("kzb_data")
A_EOF = Atom("kzb_eof")
A_PART = Atom("kzb_part")
A_ROTATED = Atom("kzb_rotated")
A_GONE = Atom("kzb_gone")
A_KZB_ERROR = Atom("kzb_error")
A_ACK = Atom("kzb_ack")
A_FINISH = Atom("kzb_finish")
A_DOWN = Atom("DOWN")
A_NORMAL = Atom("normal")


@dataclass
class ReaderEvent:
    kind: str  # data | part | rotated | eof | gone
    data: bytes = b""
    name: str = ""
    sent: int = 0
    position: int = 0
    size: int = 0


class RemoteReader:
    """One reader process on the node and the mailbox it streams into."""

    def __init__(
        self,
        node: HiddenNode,
        path: str,
        *,
        mode: str = "once",
        offset: int = 0,
        chunk: int | None = None,
        window: int | None = None,
        poll_ms: int = 50,
        idle_ms: int = 120_000,
        on_data: Callable[[memoryview], None] | None = None,
        timeout: float = 10.0,
        watch: str | None = None,
    ) -> None:
        self.node = node
        self.timeout = timeout  # bounds each call that starts the reader
        self.path = path
        self.mode = mode
        self.offset = offset
        following = mode == "follow"
        self.chunk = chunk or (FOLLOW_CHUNK if following else DEFAULT_CHUNK)
        self.window = window or (FOLLOW_WINDOW if following else DEFAULT_WINDOW)
        self.poll_ms = poll_ms
        self.idle_ms = idle_ms
        self.watch = watch  # follow mode: report when no lager handler writes this file any more
        self.mailbox: Mailbox | None = None
        self.pid: Any = None
        self._unacked = 0
        self._mref: Any = None
        self.received = 0
        self.messages_sent = 0
        # With on_data, chunks are handed over as they arrive, straight from the receive
        # buffer (no copy, no queue); next_event then reports only the other events. With
        # ``credit_when_done``, a chunk counts towards the next acknowledgement only when the
        # owner calls done_with_chunk() (it wrote the chunk elsewhere, later): the window then
        # bounds what is in flight *and* waiting on our side.
        self.on_data = on_data
        self.credit_when_done = False
        self._data_error: BaseException | None = None

    async def start(self) -> RemoteReader:
        self.mailbox = self.node.mailbox(
            high_water=self.window * 2 + 8, consumer=self._take_data if self.on_data is not None else None
        )
        self.pid = await programs.spawn(
            self.node,
            programs.READER,
            timeout=self.timeout,
            Owner=self.mailbox.pid,
            Path=self.path,
            Offset=self.offset,
            Chunk=self.chunk,
            Window=self.window,
            Poll=self.poll_ms,
            Idle=self.idle_ms,
            Watch=ErlString(self.watch) if self.watch is not None else Atom("false"),
            Mode=Atom(self.mode),
        )
        self._mref = self.node.monitor(self.mailbox, self.pid)
        return self

    def _take_data(self, msg: Any) -> bool:
        if not (type(msg) is tuple and len(msg) == 4 and msg[0] == A_DATA):
            return False
        data = msg[3]
        if self._data_error is None:
            try:
                assert self.on_data is not None
                self.on_data(data)
            except BaseException as exc:  # surfaces from next_event, not inside the protocol
                self.data_failed(exc)
        self.received += len(data)
        if not self.credit_when_done:
            self.done_with_chunk()
        return True

    def data_failed(self, exc: BaseException) -> None:
        """Handling a chunk failed (e.g. the local disk is full): next_event raises ``exc``."""
        if self._data_error is None:
            self._data_error = exc
            assert self.mailbox is not None
            self.mailbox.deliver((A_KZB_ERROR, None, Atom("local")))

    def done_with_chunk(self) -> None:
        """One chunk received is dealt with: credit for it goes back to the node (every half window)."""
        self._unacked += 1
        if self._unacked * 2 >= self.window and self.node.alive and self.mailbox is not None:
            self.node.send(self.pid, (A_ACK, self._unacked), sender=self.mailbox.pid)
            self.messages_sent += 1
            self._unacked = 0

    def finish(self) -> None:
        """Ask a follow-mode reader to read to the end and report eof."""
        if self.pid is not None and self.node.alive:
            self.node.send(self.pid, A_FINISH, sender=self.mailbox.pid if self.mailbox else None)
            self.messages_sent += 1

    async def next_event(self, timeout: float | None) -> ReaderEvent | None:
        """The next event, or None when ``timeout`` passes with nothing."""
        assert self.mailbox is not None
        try:
            msg = await self.mailbox.receive(timeout)
        except RpcTimeoutError:
            return None
        if type(msg) is not tuple or not msg:
            return None
        tag = msg[0]
        if self._data_error is not None:
            self._close()
            raise self._data_error
        if tag == A_DATA:
            data = msg[3]
            self.received += len(data)
            self.done_with_chunk()
            return ReaderEvent("data", data=data)
        if tag == A_PART:
            return ReaderEvent("part", name=msg[3].decode("utf-8", "replace"))
        if tag == A_ROTATED:
            return ReaderEvent("rotated", sent=msg[3])
        if tag == A_GONE:
            return ReaderEvent("gone")
        if tag == A_EOF:
            self._close()
            return ReaderEvent("eof", sent=msg[3], position=msg[4], size=msg[5])
        if tag == A_KZB_ERROR:
            self._close()
            reason = msg[2]
            raise RemoteFileError(f"{self.node.peer_name}: cannot read {self.path}: {_file_reason(reason)}")
        if tag == A_DOWN and msg[1] == self._mref:
            self._close()
            if msg[4] == A_NORMAL:
                raise RemoteFileError(
                    f"the reader of {self.path} on {self.node.peer_name} stopped early "
                    "(no acknowledgement for too long)"
                )
            raise RemoteFileError(
                f"the reader of {self.path} on {self.node.peer_name} crashed: {format_term(msg[4])[:200]}"
            )
        return None

    def _close(self) -> None:
        if self.mailbox is not None:
            if self._mref is not None and self.node.alive:
                self.node.demonitor(self.mailbox, self.pid, self._mref)
            self.mailbox.close()

    def abandon(self) -> None:
        """Stop the reader on the node (best effort) and drop our mailbox."""
        if self.pid is not None and self.node.alive:
            try:
                self.node.exit(self.pid, Atom("kill"))
            except KzBridgeError:
                pass
        self._close()


def _file_reason(reason: Any) -> str:
    if reason == Atom("enoent"):
        return "no such file (enoent)"
    if reason == Atom("eacces"):
        return "permission denied (eacces)"
    if reason == Atom("eisdir"):
        return "is a directory (eisdir)"
    return format_term(reason)[:200]


@dataclass
class CollectResult:
    remote_path: str
    local_path: str
    bytes: int
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verified: bool = False
    partial: bool = False
    warnings: list[str] = field(default_factory=list)


def partial_path(local: str | os.PathLike[str]) -> Path:
    return localfiles.partial_of(local)


async def collect_file(
    node: HiddenNode,
    remote_path: str,
    local_path: str | os.PathLike[str],
    *,
    rotated: bool = False,
    progress: Callable[[int, int], None] | None = None,
    chunk: int | None = None,
    window: int | None = None,
    timeout: float = 10.0,
    mode: int | None = None,
) -> CollectResult:
    """Copy a remote file (with ``rotated``, its .4 .. .0 parts first) to ``local_path``.

    ``timeout`` bounds each call that sets the transfer up; the transfer itself ends when
    no data arrives for a minute.

    Written to ``local_path.partial`` (localfiles.Partial: created exclusively, 0600 or exactly
    ``mode``) and given its final name when complete and verified, never over an existing file;
    if the node goes away midway or the local disk fills, the partial file stays and the error
    names it.
    """
    localfiles.check_target(local_path)  # before anything runs on the node
    total = -1
    warnings: list[str] = []
    if progress is not None:
        sizes = await programs.evaluate(node, programs.STAT_PARTS, timeout, Path=remote_path) if rotated else None
        total = sum(s for n, s in sizes) if sizes else await _size(node, remote_path, timeout)
    if mode is not None and mode & 0o077:
        wider = localfiles.wider_than_source(mode, await _mode(node, remote_path, timeout))
        if wider:
            warnings.append(wider)
    # Nodes on this machine share its CPUs with us: see _transfer_slot.
    async with _transfer_slot(node):
        part = localfiles.Partial.create(local_path, mode)
        tmp = part.path
        started = time.monotonic()
        parts: list[str] = []
        writer = _WriteBehind(part)

        def written(exc: BaseException | None) -> None:
            if reader is None:
                return
            if exc is not None:
                reader.data_failed(exc)
            elif progress is not None:
                progress(part.written, total)
            reader.done_with_chunk()

        def on_data(data: memoryview) -> None:
            writer.write(data, written)

        reader: RemoteReader | None = None
        try:
            reader = RemoteReader(
                node,
                remote_path,
                mode="rotated" if rotated else "once",
                chunk=chunk,
                window=window,
                on_data=on_data,
                timeout=timeout,
            )
            reader.credit_when_done = True
            await reader.start()
            while True:
                ev = await reader.next_event(timeout=60.0)
                if ev is None:
                    raise RemoteFileError(f"no data from {node.peer_name} for 60s while reading {remote_path}")
                if ev.kind == "part":
                    parts.append(ev.name)
                elif ev.kind == "eof":
                    await writer.drain()
                    if reader._data_error is not None:
                        raise reader._data_error
                    if ev.sent != part.written:
                        raise RemoteFileError(
                            f"size check failed for {remote_path}: node sent {ev.sent} bytes, we wrote {part.written}"
                        )
                    break
        except (ConnectionLostError, RemoteFileError) as exc:
            if reader is not None:
                reader.abandon()
            try:
                await writer.drain()  # what arrived is kept: at most a window of chunks still to write
            finally:
                writer.close()
            if part.written == 0:  # e.g. no such file: nothing worth keeping
                part.discard()
                raise
            part.close()
            raise type(exc)(f"{exc.message}; kept {part.written} bytes in {tmp} (partial)", hint=exc.hint) from exc
        except LocalFileError as exc:
            if reader is not None:
                reader.abandon()
            writer.close()
            with contextlib.suppress(LocalFileError):
                part.close()
            exc.remote_path, exc.node = remote_path, node.peer_name
            raise
        except BaseException:
            if reader is not None:
                reader.abandon()
            writer.close()
            with contextlib.suppress(LocalFileError):
                part.close()
            raise
        writer.close()
        final = part.publish()
        return CollectResult(
            remote_path,
            str(final),
            part.written,
            parts or [remote_path],
            time.monotonic() - started,
            verified=True,
            warnings=warnings,
        )


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def local_transfers_at_once() -> int:
    """How many collections from nodes on this machine stream at once: half the CPUs, at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)


def _on_this_machine(node: HiddenNode) -> bool:
    """The connection is to this machine: a loopback address, or our own end's address."""
    transport = node.conn.protocol.transport
    if transport is None:
        return False
    peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    try:
        address = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    return address.is_loopback or (own is not None and peer[0] == own[0])


@contextlib.asynccontextmanager
async def _transfer_slot(node: HiddenNode) -> AsyncIterator[None]:
    """Collections at once, bounded where that is faster: a transfer from a node on this machine
    keeps two processes busy, the node's and ours, on the same CPUs; beyond half the CPUs, more
    at once only adds switching and cache misses (three such transfers at once measured 0.7-0.9x
    the speed of one after another on 2 CPUs). They wait for a slot (local_transfers_at_once);
    transfers from other machines, bound by their links, all run at once."""
    if not _on_this_machine(node):
        yield
        return
    loop = asyncio.get_running_loop()
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = asyncio.Semaphore(local_transfers_at_once())
    async with slots:
        yield


class _WriteBehind:
    """Where a collection's chunks are written: on the event loop when it is the only
    collection running, else by a thread of its own, in order.

    A write into the page cache usually takes a few milliseconds for 4 MB, but when the
    kernel is flushing (other files, other processes) one can block for tens or hundreds.
    One collection alone loses nothing by waiting for it (its node waits for credit either
    way), and writing straight from the receive buffer is the fastest path. With several at
    once, a blocked write on the loop would stall every transfer (three collections at once
    came out slower than one after another): then chunks are copied (the receive buffer is
    reused for the next one) and written by a thread, and the reader's credit for a chunk
    goes back once it is written, so a window of chunks at most waits in memory.
    """

    active = 0  # collections writing in this process

    def __init__(self, part: localfiles.Partial) -> None:
        self._part = part
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._failed = False
        self._open = True
        _WriteBehind.active += 1

    def _write(self, data: bytes | memoryview) -> None:
        # One chunk after another (on the loop, or in the one writer thread). After a failure
        # nothing more is written, so the file stays a prefix of the remote one.
        if self._failed:
            return
        try:
            self._part.write(data)
        except BaseException:
            self._failed = True
            raise

    def write(self, view: memoryview, done: Callable[[BaseException | None], None]) -> None:
        """Write ``view`` now or queue a copy; ``done`` is called on the loop once it is written (or failed)."""
        if not self._pending and _WriteBehind.active <= 1:
            try:
                self._write(view)
            except BaseException as exc:
                done(exc)
                return
            done(None)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kzbridge-write")
        fut = asyncio.wrap_future(self._pool.submit(self._write, bytes(view)))
        self._pending.add(fut)

        def finished(f: asyncio.Future[None]) -> None:
            self._pending.discard(f)
            if not f.cancelled():  # cancelled: the collection is over (close())
                done(f.exception())

        fut.add_done_callback(finished)

    async def drain(self) -> None:
        """Until every chunk handed over so far is written (or failed: the callback said so)."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    def close(self) -> None:
        """No more writes; waits for the one in progress (the file may be closed next), drops the rest."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._open:
            self._open = False
            _WriteBehind.active -= 1


async def _mode(node: HiddenNode, path: str, timeout: float = 10.0) -> int | None:
    """The remote file's permission bits (file_info's mode), None when it cannot be read."""
    info = await node.rpc("file", "read_file_info", [path], timeout=timeout)
    if type(info) is tuple and len(info) == 2 and info[0] == Atom("ok") and type(info[1]) is tuple:
        mode = info[1][7]
        return mode & 0o7777 if type(mode) is int else None
    return None


async def _size(node: HiddenNode, path: str, timeout: float = 10.0) -> int:
    info = await node.rpc("filelib", "file_size", [path], timeout=timeout)
    return info if type(info) is int else -1
