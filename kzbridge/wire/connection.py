"""One distribution connection over asyncio: handshake, framing, ticks.

The protocol object is a thin loop around the sans-IO pieces (ClientHandshake,
FrameReader). It hands each frame to a callback (which parses it: frames.parse_message,
or reads an rpc reply by its bytes, session.reply_of) and reports loss once; it knows
nothing about rpc or mailboxes. ``open_connection``
walks the shared ConnectPlan (session.py) with asyncio; with TLS distribution the
connection is asyncio's own TLS transport (``create_connection(ssl=...)``), under the
same protocol object.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import cast

from ..errors import ConnectError, ConnectionLostError, KzBridgeError, ProtocolError
from . import epmd
from .frames import TICK_FRAME, FrameReader
from .handshake import ClientHandshake, HandshakeResult
from .names import Route
from .session import ConnectPlan, Session
from .socket_errors import map_exceptions

DEFAULT_TICKTIME = 60.0


class DistProtocol(asyncio.BufferedProtocol):
    """asyncio protocol for one connection; see module docstring.

    A buffered protocol: small reads land in one reused buffer; a large frame (a
    streamed file chunk) is received straight into a buffer of its own, which saves
    two copies per byte when collecting files. That buffer is sized by what has
    arrived, not by the length the peer announced: it starts at ``FIRST_BIG`` at most
    and doubles (capped at the announced length) whenever it fills, so a peer that
    announces a gigabyte and sends a few bytes costs a few megabytes. Honest 4 MB file
    chunks reuse the kept buffer and never grow it after the first.
    """

    SMALL_BUFFER = 256 * 1024
    BIG_FRAME = 32 * 1024
    FIRST_BIG = 8 << 20  # a file chunk (4 MB and its header) fits at once
    KEEP_BIG = 16 << 20  # file chunks are 4 MB; a buffer up to this size is kept for the next one

    def __init__(self, handshake_factory: Callable[[str], ClientHandshake], tls: bool = False) -> None:
        self._factory = handshake_factory
        self._tls = tls
        self.handshake: ClientHandshake | None = None
        self._loop = asyncio.get_running_loop()
        self.handshake_done: asyncio.Future[HandshakeResult] = self._loop.create_future()
        # Mark the outcome retrieved even if the caller gave up waiting (timeout).
        self.handshake_done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        # Installed by start(); until then nothing is read after the handshake and a loss is kept.
        self.on_frame: Callable[[bytes | memoryview], None] = lambda f: None
        self.on_lost: Callable[[KzBridgeError], None] = self._lost_before_start
        self._early_loss: KzBridgeError | None = None
        self._rest = b""
        self.last_received = time.monotonic()
        self.last_sent = time.monotonic()
        self.closed = False
        self._paused = False
        self._small = bytearray(self.SMALL_BUFFER)
        # Handed out as a memoryview: asyncio's TLS transport reads a record into
        # ``buf[offset:]``, which for a bytearray would be a copy (those bytes would be lost).
        self._small_view = memoryview(self._small)
        self._big: memoryview | None = None  # the part of _big_store received into so far
        self._big_store = bytearray()
        self._big_filled = 0
        self._big_len = 0  # the announced length of the frame being received in place
        # Frames sent during one loop iteration, written together at its end (see send_raw).
        self._outgoing: list[bytes] = []

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        local_ip = (transport.get_extra_info("sockname") or ("127.0.0.1",))[0]
        self.handshake = self._factory(local_ip)
        self.transport.write(self.handshake.start())

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        big = self._big
        if big is not None:
            if self._big_filled == len(big):
                big = self._grow_big()
            return big[self._big_filled :]
        return self._small_view

    def _grow_big(self) -> memoryview:
        """The in-place buffer is full but the frame is not: double it, up to the announced length."""
        assert self._big is not None
        size = min(self._big_len, max(2 * len(self._big), self.BIG_FRAME))
        store = bytearray(size)
        store[: self._big_filled] = self._big[: self._big_filled]
        self._big_store = store
        self._big = memoryview(store)
        return self._big

    def buffer_updated(self, nbytes: int) -> None:
        self.last_received = time.monotonic()
        big = self._big
        if big is not None:
            self._big_filled += nbytes
            if self._big_filled == self._big_len:
                frame = big[: self._big_len]
                self._big = None
                self._dispatch([frame])
                if len(self._big_store) > self.KEEP_BIG:
                    # A one-off huge message (an rpc returning a big binary): do not keep its buffer.
                    self._big_store = bytearray()
            return
        view = self._small_view[:nbytes]
        if not self.handshake_done.done():
            self._handshake_data(bytes(view))
            return
        self._feed(view)

    def data_received(self, data: bytes) -> None:
        # Only used for bytes that came with the handshake's last message.
        self.last_received = time.monotonic()
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            frames, big = self.reader.feed_detaching(data, self.BIG_FRAME if not self.closed else None)
        except KzBridgeError as exc:
            self._fail(exc)
            return
        if big is not None:
            # The start of a large frame (a streamed file chunk): its head is copied once
            # into a buffer and the rest is received there in place. One buffer, reused:
            # decoding copies everything out of it, and fresh megabyte allocations per
            # frame cost page faults. A new one is only as big as what has arrived
            # allows (see the class docstring), never the announced length up front.
            n, part = big
            if len(self._big_store) < n:
                self._big_store = bytearray(min(n, max(self.FIRST_BIG, len(part))))
            self._big_len = n
            self._big = memoryview(self._big_store)[:n]
            self._big[: len(part)] = part
            self._big_filled = len(part)
        self._dispatch(frames)

    def _dispatch(self, frames: Sequence[bytes | memoryview | None]) -> None:
        try:
            for f in frames:
                if f is None:
                    continue
                self.on_frame(f)
        except KzBridgeError as exc:
            self._fail(exc)
        except Exception as exc:
            self._fail(ProtocolError(f"internal error handling a message: {exc!r}"))

    def _handshake_data(self, data: bytes) -> None:
        assert self.handshake is not None
        try:
            out = self.handshake.feed(data)
        except KzBridgeError as exc:
            self.handshake_done.set_exception(exc)
            if self.transport:
                self.transport.close()
            return
        if out and self.transport:
            self.transport.write(out)
        if self.handshake.done:
            assert self.handshake.result is not None
            self.handshake_done.set_result(self.handshake.result)
            # Frames that came with the ack, and any after them, wait until the node layer
            # has installed its handlers (start): before, nobody would hear them.
            self._rest = self.handshake.result.rest
            if self.transport and not self.closed:
                self.transport.pause_reading()

    def start(self, on_frame: Callable[[bytes | memoryview], None], on_lost: Callable[[KzBridgeError], None]) -> None:
        """Install the handlers and start reading frames (those that came with the ack first).

        ``on_frame`` gets each frame but ticks; a big one is a view into a buffer that is
        reused once it returns, so whatever it keeps must be copied or decoded by then."""
        self.on_frame = on_frame
        self.on_lost = on_lost
        if self._early_loss is not None:
            on_lost(self._early_loss)
            return
        if self.transport and not self.closed and not self._paused:
            self.transport.resume_reading()
        rest, self._rest = self._rest, b""
        if rest:
            self.data_received(rest)

    def _lost_before_start(self, exc: KzBridgeError) -> None:
        if self._early_loss is None:
            self._early_loss = exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshake_done.done():
            assert self.handshake is not None
            if self._tls and exc is not None:
                # A TLS alert (the node wants our certificate, refuses it): the plan reads it.
                self.handshake_done.set_exception(exc)
            else:
                self.handshake_done.set_exception(self.handshake.connection_closed())
            return
        self.on_lost(ConnectionLostError(f"connection closed by the peer{': ' + str(exc) if exc else ''}"))

    # -- sending
    def send_raw(self, data: bytes) -> None:
        """Queue a frame; what is queued goes out in one write once the current callbacks are done.

        A hundred tasks calling at once would otherwise make a hundred send system calls
        (a tenth of the throughput benchmark's time); one caller waits one loop iteration
        more for its write, which costs no system call.
        """
        if self.closed or self.transport is None:
            raise ConnectionLostError("the connection is closed")
        if not self._outgoing:
            self._loop.call_soon(self.flush)
        self._outgoing.append(data)
        self.last_sent = time.monotonic()

    def send_now(self, data: bytes) -> None:
        """Write a frame at once (after any queued ones): for a caller that is the only one
        waiting, so there is nothing to batch with, and the loop iteration ``send_raw``'s
        deferred write would cost is saved."""
        if self.closed or self.transport is None:
            raise ConnectionLostError("the connection is closed")
        if self._outgoing:
            self._outgoing.append(data)
            self.flush()
        else:
            self.transport.write(data)
        self.last_sent = time.monotonic()

    def flush(self) -> None:
        """Write the queued frames now (also before a close, so nothing queued is dropped)."""
        out = self._outgoing
        if not out:
            return
        self._outgoing = []
        if self.closed or self.transport is None:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause(self) -> None:
        if not self._paused and self.transport and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport and not self.closed:
            self._paused = False
            self.last_received = time.monotonic()
            self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        return self._paused

    def _fail(self, exc: KzBridgeError) -> None:
        if not self.closed:
            self.closed = True
            if self.transport:
                self.transport.abort()
            self.on_lost(exc)


class Connection:
    """An established connection: its protocol object and the session on it."""

    def __init__(self, protocol: DistProtocol, session: Session, ticktime: float) -> None:
        self.protocol = protocol
        self.session = session
        self.peer_name = session.peer_name
        self.own_name = session.name
        self.flags = session.flags
        self.version = session.version
        self.big_creation = session.big_creation
        self.creation = session.creation
        self.ticktime = ticktime
        self._tick_task: asyncio.Task[None] | None = None

    def start_ticking(self, on_dead: Callable[[KzBridgeError], None]) -> None:
        self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop(on_dead))

    async def _tick_loop(self, on_dead: Callable[[KzBridgeError], None]) -> None:
        interval = self.ticktime / 4
        p = self.protocol
        while not p.closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if p.paused:
                continue
            if now - p.last_received > self.ticktime:
                p._fail(
                    ConnectionLostError(
                        f"{self.peer_name} stopped ticking: nothing received for {self.ticktime:g}s",
                        hint="the node is hung, overloaded or the network dropped",
                    )
                )
                on_dead(ConnectionLostError(f"{self.peer_name} stopped ticking"))
                return
            if now - p.last_sent >= interval:
                try:
                    p.send_raw(TICK_FRAME)
                except ConnectionLostError:
                    return

    def close(self) -> None:
        if self._tick_task:
            self._tick_task.cancel()
        if self.protocol.transport and not self.protocol.closed:
            self.protocol.flush()
            self.protocol.closed = True
            self.protocol.transport.close()


async def open_connection(
    node: str,
    cookie: str,
    *,
    timeout: float = 10.0,
    ticktime: float = DEFAULT_TICKTIME,
    name_prefix: str = "kzbridge",
    epmd_port: int | None = None,
    route: Route | None = None,
) -> Connection:
    """EPMD lookup, TCP connect, handshake (the steps of ConnectPlan). Each failure has its own error class.

    ``route`` says where the node is reached (names.Route: another host, a distribution port
    without EPMD, EPMD's port); ``epmd_port`` alone is the older spelling of its EPMD port.
    """
    if epmd_port is not None and (route is None or route.epmd_port is None):
        route = (route or Route())._replace(epmd_port=epmd_port)
    plan = ConnectPlan(node, cookie, timeout=timeout, name_prefix=name_prefix, route=route)
    attempts = plan.attempts() or [await epmd.lookup(plan.name, plan.host, timeout=timeout, port=plan.epmd_port)]
    for i, info in enumerate(attempts):
        try:
            return Connection(*await _handshake(plan, info), ticktime)
        except ConnectError as exc:
            if i + 1 == len(attempts) or not plan.retry_older(info, exc):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _handshake(plan: ConnectPlan, info: epmd.NodeInfo) -> tuple[DistProtocol, Session]:
    """One TCP connection to the node's port and the handshake on it."""
    loop = asyncio.get_running_loop()
    tls = plan.tls is not None

    def make() -> DistProtocol:
        return DistProtocol(lambda local_ip: plan.handshake(info, local_ip), tls)

    with map_exceptions(plan.tcp_errors(info.port)):
        if tls:
            connecting = loop.create_connection(
                make,
                plan.host,
                info.port,
                ssl=plan.ssl_context(),
                server_hostname=plan.server_name,
                ssl_handshake_timeout=plan.remaining(),
            )
        else:
            connecting = loop.create_connection(make, plan.host, info.port)
        _, protocol = await asyncio.wait_for(connecting, plan.remaining())
    try:
        with map_exceptions(plan.handshake_errors()):
            result = await asyncio.wait_for(asyncio.shield(protocol.handshake_done), plan.remaining())
    except BaseException:
        if protocol.transport:
            protocol.transport.abort()
        raise
    return protocol, plan.session(result)
