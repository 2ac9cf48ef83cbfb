"""HiddenNode: our side of one connection, with pids, mailboxes, rpc and a group leader.

``rpc`` talks to the node's ``rex`` server in the gen_server form that every OTP
from 19 to 28 accepts. Each call gets its own group-leader pid, so whatever the
remote function prints arrives here as io_requests, is answered (or the call
would block forever) and is handed back with the result.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
from collections import deque
from typing import Any, Callable

from ..errors import BadRpcError, ConnectionLostError, KzBridgeError, RpcTimeoutError
from .connection import DEFAULT_TICKTIME, Connection, open_connection
from .frames import (
    DEMONITOR_P,
    EXIT,
    EXIT2,
    LINK,
    MONITOR_P,
    MONITOR_P_EXIT,
    PAYLOAD_EXIT,
    PAYLOAD_EXIT2,
    PAYLOAD_EXIT2_TT,
    PAYLOAD_EXIT_TT,
    PAYLOAD_MONITOR_P_EXIT,
    REG_SEND,
    SEND,
    SEND_SENDER,
    SEND_SENDER_TT,
    SEND_TT,
    UNLINK,
    UNLINK_ID,
    UNLINK_ID_ACK,
    UNUSED,
    DistMessage,
    build_message,
)
from .codec import encode_term
from .io_protocol import A_ERROR, A_IO_REPLY, ApplyFailed, io_steps, is_io_request
from .rex import A_CALL, A_EXIT, A_GEN_CALL, A_NOPROC, A_REX, RpcResult, rpc_result
from .terms import Atom, Pid, Reference

log = logging.getLogger("kzbridge.wire")
_FRAME_LEN = struct.Struct(">I").pack

A_DOWN = Atom("DOWN")
A_PROCESS = Atom("process")


class Mailbox:
    """A pid of ours with a queue; used for streamed replies and monitors.

    When more than ``high_water`` messages wait, the socket stops being read
    (TCP then pushes back on the node) until the queue drains below half.
    """

    def __init__(self, node: "HiddenNode", pid: Pid, high_water: int = 64,
                 sink: Callable[[Any], bool] | None = None) -> None:
        self.node = node
        self.pid = pid
        # Called synchronously with each message, large binaries as views into the receive
        # buffer; returning True consumes it (it must not keep the views).
        self.sink = sink
        self.high_water = high_water
        self._queue: deque[Any] = deque()
        self._waiter: asyncio.Future | None = None
        self._closed_with: KzBridgeError | None = None

    def deliver(self, msg: Any) -> None:
        self._queue.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if len(self._queue) >= self.high_water:
            self.node._pause_for(self)

    def fail(self, exc: KzBridgeError) -> None:
        self._closed_with = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self, timeout: float | None = None) -> Any:
        """The next message; RpcTimeoutError after ``timeout``, ConnectionLostError if the node goes."""
        while not self._queue:
            if self._closed_with is not None:
                raise self._closed_with
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise RpcTimeoutError(f"no message from {self.node.peer_name} within {timeout:g}s") from None
            finally:
                self._waiter = None
        msg = self._queue.popleft()
        if len(self._queue) < self.high_water // 2:
            self.node._resume_for(self)
        return msg

    def __len__(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self.node._mailboxes.pop(self.pid, None)
        self.node._resume_for(self)


class HiddenNode:
    """Our hidden node on one connection to one peer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = conn.own_name
        self.peer_name = conn.peer_name
        self._atom = Atom(conn.own_name)
        self._pid_ids = itertools.count(1)
        self._ref_ids = itertools.count(1)
        self._ref_salt = int.from_bytes(os.urandom(4), "big")
        self.caller = self.new_pid()
        # ref -> (future, group leader, "m:f/a", deadline or None)
        self._pending: dict[Reference, tuple[asyncio.Future, Pid, str, float | None]] = {}
        self._sweeper: asyncio.Task | None = None
        self._group_leaders: dict[Pid, list[str]] = {}
        self._output_callbacks: dict[Pid, Callable[[str], None]] = {}
        self._mailboxes: dict[Pid, Mailbox] = {}
        self._monitors: dict[Reference, Pid] = {}
        self._pausers: set[Pid] = set()
        self._lost: KzBridgeError | None = None
        self._bg: set[asyncio.Task] = set()
        self._retired_gls: deque[tuple[float, Pid]] = deque()
        # The rpc request's constant parts, encoded once: 'p', the REG_SEND control, and
        # the payload's head up to the ref ({'$gen_call', {Caller, ...).
        self._rpc_head = (b"p\x83" + encode_term((REG_SEND, self.caller, UNUSED, A_REX))
                          + b"\x83h\x03" + encode_term(A_GEN_CALL) + b"h\x02" + encode_term(self.caller))
        self.calls_made = 0
        p = conn.protocol
        p.on_message = self._on_message
        p.on_lost = self._on_lost
        conn.start_ticking(self._on_lost)

    # ------------------------------------------------------------ identity
    @property
    def flags(self) -> int:
        return self.conn.flags

    @property
    def handshake_version(self) -> int:
        return self.conn.version

    @property
    def alive(self) -> bool:
        return self._lost is None and not self.conn.protocol.closed

    def new_pid(self) -> Pid:
        return Pid(self._atom, next(self._pid_ids) & 0x7FFF, 0, self.conn.creation, old=not self.conn.big_creation)

    def make_ref(self) -> Reference:
        n = next(self._ref_ids)
        ids = (n & 0x3FFFF, (n >> 18) & 0xFFFFFFFF, self._ref_salt)
        form = 90 if self.conn.big_creation else 114
        return Reference(self._atom, ids, self.conn.creation, form)

    # ------------------------------------------------------------ sending
    def _send(self, control: tuple, payload: Any = None) -> None:
        if self._lost is not None:
            raise self._lost
        self.conn.protocol.send_raw(build_message(control, payload))

    def send(self, to: Pid, msg: Any, sender: Pid | None = None) -> None:
        """``To ! Msg``."""
        if sender is not None and self.conn.flags & 0x80000:
            self._send((SEND_SENDER, sender, to), msg)
        else:
            self._send((SEND, UNUSED, to), msg)

    def send_registered(self, name: str | Atom, msg: Any, sender: Pid | None = None) -> None:
        """``{Name, Node} ! Msg``."""
        self._send((REG_SEND, sender or self.caller, UNUSED, Atom(str(name))), msg)

    def mailbox(self, high_water: int = 64, sink: Callable[[Any], bool] | None = None) -> Mailbox:
        mb = Mailbox(self, self.new_pid(), high_water, sink)
        if self._lost is not None:
            mb.fail(self._lost)
        self._mailboxes[mb.pid] = mb
        return mb

    def monitor(self, mailbox: Mailbox, target: Pid | Atom) -> Reference:
        """Monitor a remote process; its DOWN arrives in ``mailbox`` as ``('DOWN', Ref, process, Pid, Reason)``."""
        ref = self.make_ref()
        self._monitors[ref] = mailbox.pid
        self._send((MONITOR_P, mailbox.pid, target, ref))
        return ref

    def demonitor(self, mailbox: Mailbox, target: Pid | Atom, ref: Reference) -> None:
        self._monitors.pop(ref, None)
        if self.alive:
            self._send((DEMONITOR_P, mailbox.pid, target, ref))

    def link(self, mailbox: Mailbox, target: Pid) -> None:
        self._send((LINK, mailbox.pid, target))

    def exit(self, target: Pid, reason: Any, sender: Pid | None = None) -> None:
        """``exit(Target, Reason)`` from one of our pids."""
        self._send((EXIT2, sender or self.caller, target, reason))

    # ------------------------------------------------------------ rpc
    async def rpc(self, module: str | Atom, function: str | Atom, args: list | None = None,
                  timeout: float | None = 30.0) -> Any:
        """Call ``module:function(args...)`` on the node; raise BadRpcError on ``{badrpc, _}``."""
        return (await self.rpc_output(module, function, args, timeout=timeout)).value

    async def rpc_output(self, module: str | Atom, function: str | Atom, args: list | None = None,
                         timeout: float | None = 30.0, on_output: Callable[[str], None] | None = None) -> RpcResult:
        """As ``rpc``, also returning what the function printed (``on_output`` sees it as it comes)."""
        if self._lost is not None:
            raise self._lost
        m = module if type(module) is Atom else Atom(str(module))
        f = function if type(function) is Atom else Atom(str(function))
        args = list(args or [])
        ref = self.make_ref()
        gl = self.new_pid()
        output: list[str] = []
        self._group_leaders[gl] = output
        if on_output is not None:
            self._output_callbacks[gl] = on_output
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        what = f"{m.name}:{f.name}/{len(args)}"
        if timeout is not None:
            # One sweeper for all deadlines: a timer per call costs more than the call's own work.
            self._pending[ref] = (fut, gl, what, loop.time() + timeout)
            if self._sweeper is None:
                self._sweeper = loop.create_task(self._sweep())
        else:
            self._pending[ref] = (fut, gl, what, None)
        self.calls_made += 1
        try:
            body = self._rpc_head + encode_term(ref) + b"h\x05" + encode_term(A_CALL) + encode_term(m) \
                + encode_term(f) + encode_term(args) + encode_term(gl)
            if self._lost is not None:
                raise self._lost
            self.conn.protocol.send_raw(_FRAME_LEN(len(body)) + body)
            value = await fut
        finally:
            self._pending.pop(ref, None)
            self._output_callbacks.pop(gl, None)
            # Keep the group leader alive briefly: processes spawned by the call may still print.
            now = loop.time()
            retired = self._retired_gls
            retired.append((now + 5.0, gl))
            while retired and retired[0][0] < now:
                self._group_leaders.pop(retired.popleft()[1], None)
        return rpc_result(value, "".join(output), self.peer_name, what)

    SWEEP_INTERVAL = 0.05

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._lost is None:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            now = loop.time()
            for fut, _, what, deadline in list(self._pending.values()):
                if deadline is not None and now >= deadline and not fut.done():
                    fut.set_exception(RpcTimeoutError(
                        f"{self.peer_name}: {what} did not answer in time",
                        hint="raise --timeout, or check the node's load"))

    # ------------------------------------------------------------ receiving
    def _on_message(self, msg: DistMessage) -> None:
        ctl = msg.control
        op = ctl[0]
        if op == SEND or op == SEND_SENDER or op == SEND_TT or op == SEND_SENDER_TT:
            mb = self._mailboxes.get(ctl[2])
            if mb is not None and mb.sink is not None and mb.sink(msg.payload_views()):
                return
            self._deliver(ctl[2], msg.payload)
        elif op == REG_SEND:
            log.debug("dropping message to unregistered name %s", ctl[3])
        elif op == MONITOR_P:
            # {19, FromPid, ToProc, Ref}: fine for live pids; otherwise DOWN at once.
            target = ctl[2]
            if not self._is_live(target):
                self._send((MONITOR_P_EXIT, target, ctl[1], ctl[3], A_NOPROC))
        elif op == DEMONITOR_P:
            pass
        elif op == MONITOR_P_EXIT or op == PAYLOAD_MONITOR_P_EXIT:
            ref = ctl[3]
            reason = ctl[4] if op == MONITOR_P_EXIT else msg.payload
            owner = self._monitors.pop(ref, None)
            if owner is not None and owner in self._mailboxes:
                self._mailboxes[owner].deliver((A_DOWN, ref, A_PROCESS, ctl[1], reason))
        elif op in (EXIT, EXIT2, PAYLOAD_EXIT, PAYLOAD_EXIT2, 13, 18, PAYLOAD_EXIT_TT, PAYLOAD_EXIT2_TT):
            frm, to = ctl[1], ctl[2]
            reason = msg.payload if op >= PAYLOAD_EXIT else ctl[-1]
            if to in self._mailboxes:
                self._mailboxes[to].deliver((A_EXIT, frm, reason))
        elif op == UNLINK_ID:
            # {35, Id, From, To}: acknowledge so the peer's link state settles.
            self._send((UNLINK_ID_ACK, ctl[1], ctl[3], ctl[2]))
        elif op in (LINK, UNLINK, UNLINK_ID_ACK):
            if op == LINK and not self._is_live(ctl[2]):
                self._send((EXIT, ctl[2], ctl[1], A_NOPROC))
        else:
            log.debug("ignoring control message %r", ctl)

    def _is_live(self, target: Any) -> bool:
        return target == self.caller or target in self._mailboxes or target in self._group_leaders

    def _deliver(self, to: Any, payload: Any) -> None:
        if to == self.caller:
            if type(payload) is tuple and len(payload) == 2 and type(payload[0]) is Reference:
                entry = self._pending.get(payload[0])
                if entry is not None:
                    if not entry[0].done():
                        entry[0].set_result(payload[1])
                    return
            log.debug("late or unknown reply to caller: %.200r", payload)
            return
        mb = self._mailboxes.get(to)
        if mb is not None:
            mb.deliver(payload)
            return
        if to in self._group_leaders:
            if is_io_request(payload):
                task = asyncio.get_running_loop().create_task(self._io_request(to, payload))
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
            return
        log.debug("message to unknown pid %s dropped", to)

    async def _io_request(self, gl: Pid, msg: tuple) -> None:
        _, sender, reply_as, request = msg
        steps = io_steps(request)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                value = None
                if step[0] == "apply":
                    try:
                        value = await self.rpc(step[1], step[2], step[3], timeout=30.0)
                    except BadRpcError as exc:
                        value = ApplyFailed(exc.reason)
                else:
                    self._emit(gl, step[1])
        except StopIteration as done:
            reply = done.value
        except KzBridgeError as exc:
            reply = (A_ERROR, Atom(f"kzbridge: {exc}"[:200]))
        if self.alive:
            self.send(sender, (A_IO_REPLY, reply_as, reply), sender=gl)

    def _emit(self, gl: Pid, text: str) -> None:
        sink = self._group_leaders.get(gl)
        if sink is not None:
            sink.append(text)
        cb = self._output_callbacks.get(gl)
        if cb is not None:
            cb(text)

    # ------------------------------------------------------------ flow control and loss
    def _pause_for(self, mb: Mailbox) -> None:
        self._pausers.add(mb.pid)
        self.conn.protocol.pause()

    def _resume_for(self, mb: Mailbox) -> None:
        self._pausers.discard(mb.pid)
        if not self._pausers:
            self.conn.protocol.resume()

    def _on_lost(self, exc: KzBridgeError) -> None:
        if self._lost is not None:
            return
        self._lost = ConnectionLostError(f"lost the connection to {self.peer_name}: {exc.message}", hint=exc.hint)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for fut, _, what, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(ConnectionLostError(
                    f"{self.peer_name} went away during {what}: {exc.message}", hint=exc.hint))
        for mb in list(self._mailboxes.values()):
            mb.fail(self._lost)
        self.conn.close()

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionLostError."""
        self._on_lost(ConnectionLostError("closed by kzbridge"))
        self.conn.close()
        await asyncio.sleep(0)


async def connect_node(node: str, cookie: str, *, timeout: float = 10.0,
                       ticktime: float = DEFAULT_TICKTIME, name_prefix: str = "kzbridge") -> HiddenNode:
    """Open a connection and wrap it in a HiddenNode."""
    conn = await open_connection(node, cookie, timeout=timeout, ticktime=ticktime, name_prefix=name_prefix)
    return HiddenNode(conn)
