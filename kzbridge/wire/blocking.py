"""A blocking client for one-shot commands (`kzbridge ping/rpc/sup`) and sync scripts.

Importing asyncio costs more than a whole rpc, and a one-shot command needs no
concurrency, so this drives the same sans-IO pieces (EPMD parsers, ClientHandshake,
FrameReader, codec, rex and I/O protocol helpers) with a plain socket. Long-lived
work (tracing, collection, the library API) uses the asyncio HiddenNode.

With TLS distribution the socket is wrapped (``SSLContext.wrap_socket``) before the
handshake. An OpenSSL connection must not be read and written from two threads at once,
so over TLS a read holds the send lock, in slices of ``TLS_READ_SLICE`` seconds: the tick
thread's writes wait at most that long.

Per call the plain-TCP path makes four system calls (poll and send, poll and receive):
replies are received into one reused buffer (``recv(n)`` would allocate, resize and free
an n-byte object per read: mmap, mremap and munmap for a 256 KB read), and the socket's
timeout is changed only when a wait must be shorter than ``SOCKET_WAIT`` (each change
is an ioctl).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

from ..errors import BadRpcError, ConnectError, ConnectionLostError, RpcTimeoutError
from . import epmd
from .frames import TICK_FRAME, FrameReader, parse_message
from .handshake import ClientHandshake
from .names import Route
from .rex import RpcResult, rpc_result
from .session import ConnectPlan, RpcReply, call_name
from .socket_errors import TIMEOUTS, describe, map_exceptions
from .terms import Atom

TLS_READ_SLICE = 0.5
# The socket's usual timeout over plain TCP: how long one read waits before the deadline is
# checked again, and how long a send may block on a peer that does not read.
SOCKET_WAIT = 10.0
RECV_BUFFER = 1 << 18


class BlockingNode:
    """One connection, one caller, calls made one at a time: the blocking driver of a Session."""

    def __init__(self, node: str, cookie: str, *, timeout: float = 10.0, route: Route | None = None) -> None:
        plan = ConnectPlan(node, cookie, timeout=timeout, route=route)
        attempts = plan.attempts() or [epmd.lookup_blocking(plan.name, plan.host, timeout=timeout, port=plan.epmd_port)]
        for i, info in enumerate(attempts):
            try:
                self.sock, hs = self._handshake(plan, info)
                break
            except ConnectError as exc:
                if i + 1 == len(attempts) or not plan.retry_older(info, exc):
                    raise
        assert hs.result is not None
        self.session = plan.session(hs.result)
        self.name = self.session.name
        self.peer_name = self.session.peer_name
        self.handshake_version = self.session.version
        self.caller = self.session.caller
        # FrameReader buffers what has arrived, so a forged frame length costs nothing up front.
        self._reader = FrameReader()
        try:
            self._frames = list(self._reader.feed(hs.result.rest))
        except BaseException:
            self.sock.close()
            raise
        self._send_lock = threading.Lock()
        self._tls = plan.tls is not None
        self._recv_buffer = bytearray(RECV_BUFFER)
        self._recv_view = memoryview(self._recv_buffer)
        self._sock_timeout = SOCKET_WAIT
        self.sock.settimeout(SOCKET_WAIT)
        self._call_lock = threading.Lock()
        self._last_sent = time.monotonic()
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()
        self._send_errors = map_exceptions(
            {OSError: lambda exc: ConnectionLostError(f"lost the connection to {self.peer_name}: {describe(exc)}")}
        )

    @staticmethod
    def _handshake(plan: ConnectPlan, info: epmd.NodeInfo) -> tuple[socket.socket, ClientHandshake]:
        """One TCP connection to the node's port and the handshake on it."""
        with map_exceptions(plan.tcp_errors(info.port)):
            sock = socket.create_connection((plan.host, info.port), timeout=plan.remaining())
            if plan.tls is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(plan.remaining())
                    sock = plan.ssl_context().wrap_socket(sock, server_hostname=plan.server_name)
                except BaseException:
                    sock.close()
                    raise
        try:
            with map_exceptions(plan.handshake_errors()):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hs = plan.handshake(info, sock.getsockname()[0])
                sock.sendall(hs.start())
                while not hs.done:
                    sock.settimeout(plan.remaining(0.05))
                    data = sock.recv(65536)
                    if not data:
                        raise hs.connection_closed()
                    out = hs.feed(data)
                    if out:
                        sock.sendall(out)
        except BaseException:
            sock.close()
            raise
        return sock, hs

    def start_ticking(self, ticktime: float = 60.0) -> None:
        """Keep an idle connection alive: send a tick when nothing was sent for ticktime/4.

        Needed for long-lived use (scripts); a one-shot command finishes long before.
        """
        if self._ticker is not None:
            return

        def tick() -> None:
            interval = ticktime / 4
            while not self._closed.wait(interval / 2):
                if time.monotonic() - self._last_sent >= interval:
                    try:
                        self._write(TICK_FRAME)
                    except ConnectionLostError:
                        return

        self._ticker = threading.Thread(target=tick, name="kzbridge-tick", daemon=True)
        self._ticker.start()

    def _write(self, data: bytes) -> None:
        with self._send_lock, self._send_errors:
            self.sock.sendall(data)
            self._last_sent = time.monotonic()

    def _next_frame(self, deadline: float, what: str) -> bytes | None:
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcTimeoutError(
                    f"{self.peer_name}: {what} did not answer in time",
                    hint="raise the timeout, or check the node's load",
                    setting="timeout",
                )
            try:
                if self._tls:
                    with self._send_lock:
                        self._set_timeout(min(remaining, TLS_READ_SLICE))
                        n = self.sock.recv_into(self._recv_buffer)
                else:
                    self._set_timeout(min(remaining, SOCKET_WAIT))
                    n = self.sock.recv_into(self._recv_buffer)
            except TIMEOUTS:
                continue  # the deadline check above decides
            except OSError as exc:
                raise ConnectionLostError(f"{self.peer_name} went away during {what}: {describe(exc)}") from exc
            if not n:
                raise ConnectionLostError(f"{self.peer_name} went away during {what}")
            # The reader copies each frame out (and keeps a partial one), so the buffer is free again.
            self._frames.extend(self._reader.feed(self._recv_view[:n]))
        return self._frames.pop(0)

    def _set_timeout(self, seconds: float) -> None:
        if seconds != self._sock_timeout:
            self.sock.settimeout(seconds)
            self._sock_timeout = seconds

    def rpc_output(
        self, module: str | Atom, function: str | Atom, args: list[Any] | None = None, timeout: float = 30.0
    ) -> RpcResult:
        """Call ``module:function(args)``; answer the function's io_requests; return value and output."""
        with self._call_lock:
            return self._rpc_output(module, function, args, timeout)

    def _rpc_output(
        self, module: str | Atom, function: str | Atom, args: list[Any] | None, timeout: float
    ) -> RpcResult:
        m = module if type(module) is Atom else Atom(str(module))
        f = function if type(function) is Atom else Atom(str(function))
        args = list(args or [])
        what = call_name(m, f, args)
        session = self.session
        key, leader, output, frame = session.start_call(m, f, args)
        try:
            self._write(frame)
            deadline = time.monotonic() + timeout
            while True:
                raw = self._next_frame(deadline, what)
                if raw is None:
                    continue  # the node's tick; ours go out from start_ticking's thread or with our calls
                reply = session.reply_of(raw)  # the reply, read by its bytes; anything else in full
                if reply is not None and reply[0] == key:
                    return rpc_result(reply[1], "".join(output), self.peer_name, what)
                for ev in session.receive(parse_message(raw)):
                    if type(ev) is RpcReply and session.ref_bytes(ev.ref) == key:
                        return rpc_result(ev.value, "".join(output), self.peer_name, what)
                if session.outbox:
                    self._write(session.data_to_send())
        finally:
            session.end_call(key, leader, time.monotonic())

    def rpc(
        self, module: str | Atom, function: str | Atom, args: list[Any] | None = None, timeout: float = 30.0
    ) -> Any:
        return self.rpc_output(module, function, args, timeout).value

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BadRpcError", "BlockingNode"]
