"""A blocking client for one-shot commands (`kzbridge ping/rpc/sup`) and sync scripts.

Importing asyncio costs more than a whole rpc, and a one-shot command needs no
concurrency, so this drives the same sans-IO pieces (EPMD parsers, ClientHandshake,
FrameReader, codec, rex and I/O protocol helpers) with a plain socket. Long-lived
work (tracing, collection, the library API) uses the asyncio HiddenNode.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from ..errors import (
    BadRpcError,
    ConnectError,
    ConnectionLostError,
    HandshakeTimeoutError,
    HostUnreachableError,
    KzBridgeError,
    RpcTimeoutError,
    UsageError,
)
from . import epmd
from .frames import (
    MONITOR_P,
    MONITOR_P_EXIT,
    REG_SEND,
    SEND,
    SEND_SENDER,
    SEND_SENDER_TT,
    SEND_TT,
    TICK_FRAME,
    UNLINK_ID,
    UNLINK_ID_ACK,
    UNUSED,
    FrameReader,
    build_message,
    parse_message,
)
from .handshake import BIG_CREATION, OUR_FLAGS, ClientHandshake
from .handshake import SEND_SENDER as SEND_SENDER_FLAG
from .io_protocol import A_IO_REPLY, ApplyFailed, io_steps, is_io_request
from .names import own_node_name, split_node_name
from .rex import A_NOPROC, A_REX, RpcResult, rex_request, rpc_result
from .terms import Atom, Pid, Reference


class BlockingNode:
    """One connection, one caller, calls made one at a time."""

    def __init__(self, node: str, cookie: str, *, timeout: float = 10.0) -> None:
        if not cookie:
            raise UsageError("empty cookie", hint="pass --cookie, set KZBRIDGE_COOKIE or create ~/.erlang.cookie")
        name, host = split_node_name(node)
        deadline = time.monotonic() + timeout
        info = epmd.lookup_blocking(name, host, timeout=timeout)
        try:
            self.sock = socket.create_connection((host, info.port), timeout=max(0.1, deadline - time.monotonic()))
        except socket.timeout:
            raise HandshakeTimeoutError(f"{node}: TCP connect to port {info.port} timed out after {timeout:g}s") \
                from None
        except OSError as exc:
            raise HostUnreachableError(f"{node}: cannot connect to distribution port {info.port}: "
                                       f"{exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.name = own_node_name(host, self.sock.getsockname()[0])
        creation = int.from_bytes(os.urandom(4), "big") | 4
        hs = ClientHandshake(self.name, cookie, peer_version=6 if info.highest >= 6 else 5, creation=creation,
                             flags=OUR_FLAGS)
        try:
            self.sock.sendall(hs.start())
            while not hs.done:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    raise hs.connection_closed()
                out = hs.feed(data)
                if out:
                    self.sock.sendall(out)
        except socket.timeout:
            self.sock.close()
            raise HandshakeTimeoutError(f"{node}: the handshake did not finish within {timeout:g}s") from None
        except ConnectError:
            self.sock.close()
            raise
        except KzBridgeError as exc:
            self.sock.close()
            raise ConnectError(f"{node}: handshake failed: {exc}") from exc
        except OSError as exc:
            self.sock.close()
            raise ConnectError(f"{node}: connection failed during the handshake: {exc}") from None
        assert hs.result is not None
        self.peer_name = hs.result.peer_name
        self.handshake_version = hs.result.version
        self._flags = hs.result.flags
        big = bool(hs.result.flags & BIG_CREATION)
        self._atom = Atom(self.name)
        self._creation = creation if big else (creation % 3) + 1
        self._old = not big
        self._ids = 0
        self.caller = self._pid()
        self._reader = FrameReader()
        self._frames = list(self._reader.feed(hs.result.rest))
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._last_sent = time.monotonic()
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

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

    def _pid(self) -> Pid:
        self._ids += 1
        return Pid(self._atom, self._ids, 0, self._creation, old=self._old)

    def _ref(self) -> Reference:
        self._ids += 1
        return Reference(self._atom, (self._ids, 0, os.getpid() & 0xFFFFFFFF), self._creation,
                         114 if self._old else 90)

    def _write(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise ConnectionLostError(f"lost the connection to {self.peer_name}: {exc}") from None
            self._last_sent = time.monotonic()

    def _send(self, control: tuple, payload: Any = None) -> None:
        self._write(build_message(control, payload))

    def _call_rex(self, m: Atom, f: Atom, args: list, gl: Pid) -> Reference:
        ref = self._ref()
        self._send((REG_SEND, self.caller, UNUSED, A_REX), rex_request(self.caller, ref, m, f, args, gl))
        return ref

    def _next_frame(self, deadline: float, what: str) -> Any:
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcTimeoutError(f"{self.peer_name}: {what} did not answer in time",
                                      hint="raise --timeout, or check the node's load")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError as exc:
                raise ConnectionLostError(f"{self.peer_name} went away during {what}: {exc}") from None
            if not data:
                raise ConnectionLostError(f"{self.peer_name} went away during {what}")
            self._frames.extend(self._reader.feed(data))
        return self._frames.pop(0)

    def rpc_output(self, module: str, function: str, args: list | None = None, timeout: float = 30.0) -> RpcResult:
        """Call ``module:function(args)``; answer the function's io_requests; return value and output."""
        with self._call_lock:
            return self._rpc_output(module, function, args, timeout)

    def _rpc_output(self, module: str, function: str, args: list | None, timeout: float) -> RpcResult:
        m, f, args = Atom(str(module)), Atom(str(function)), list(args or [])
        what = f"{m.name}:{f.name}/{len(args)}"
        gl = self._pid()
        main = self._call_rex(m, f, args, gl)
        deadline = time.monotonic() + timeout
        output: list[str] = []
        # Formatting calls in flight for io_requests: ref -> (steps generator, sender, reply_as)
        waiting: dict[Reference, tuple[Any, Any, Any]] = {}
        while True:
            frame = self._next_frame(deadline, what)
            if frame is None:
                continue  # the node's tick; ours go out from start_ticking's thread or with our calls
            msg = parse_message(frame)
            op = msg.op
            if op in (SEND, SEND_TT, SEND_SENDER, SEND_SENDER_TT):
                to, payload = msg.control[2], msg.payload
                if to == self.caller and type(payload) is tuple and len(payload) == 2 \
                        and type(payload[0]) is Reference:
                    if payload[0] == main:
                        return rpc_result(payload[1], "".join(output), self.peer_name, what)
                    if payload[0] in waiting:
                        steps, sender, reply_as = waiting.pop(payload[0])
                        value = payload[1]
                        if type(value) is tuple and len(value) == 2 and value[0] == Atom("badrpc"):
                            value = ApplyFailed(value[1])
                        self._drive(steps, value, sender, reply_as, gl, output, waiting)
                elif to == gl and is_io_request(payload):
                    _, sender, reply_as, request = payload
                    self._drive(io_steps(request), None, sender, reply_as, gl, output, waiting)
            elif op == MONITOR_P and msg.control[2] not in (gl, self.caller):
                self._send((MONITOR_P_EXIT, msg.control[2], msg.control[1], msg.control[3], A_NOPROC))
            elif op == UNLINK_ID:
                self._send((UNLINK_ID_ACK, msg.control[1], msg.control[3], msg.control[2]))

    def _drive(self, steps: Any, value: Any, sender: Any, reply_as: Any, gl: Pid, output: list[str],
               waiting: dict) -> None:
        """Run an io_steps generator until it needs a remote call or finishes."""
        try:
            while True:
                step = steps.send(value)
                value = None
                if step[0] == "apply":
                    waiting[self._call_rex(step[1], step[2], step[3], gl)] = (steps, sender, reply_as)
                    return
                output.append(step[1])
        except StopIteration as done:
            control = (SEND_SENDER, gl, sender) if self._flags & SEND_SENDER_FLAG else (SEND, UNUSED, sender)
            self._send(control, (A_IO_REPLY, reply_as, done.value))

    def rpc(self, module: str, function: str, args: list | None = None, timeout: float = 30.0) -> Any:
        return self.rpc_output(module, function, args, timeout).value

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "BlockingNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["BadRpcError", "BlockingNode"]
