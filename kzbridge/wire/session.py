"""One node session, without I/O: what both drivers (asyncio and blocking) share.

A ``Session`` is our hidden node's side of one established connection. It mints
our pids and references, builds the frames we send (the rpc request from pre-encoded
parts: the gen_server call to ``rex``, or on request, OTP 23+, a spawn_request of
``erpc:execute_call/4``; sends, monitors, links, exits), and eats the peer's messages:
``receive(msg)`` answers what the protocol wants answered on its own (MONITOR_P to a
dead pid, UNLINK_ID, LINK to a dead pid, every io_request to one of our group
leaders, including the nested "apply" rex calls ``io_steps`` asks for, SPAWN_REQUEST from
the peer with ``notsup``) by queuing frames in ``outbox``, and returns the events the driver
must act on: a reply to one of its rpc calls (``RpcReply``, the same rex-shaped value on
both paths), a message or signal for a mailbox (``Message``,
``Deliver``), text a remote call printed (``Output``). Timers, sockets and waiting
(futures, a loop over ``recv``) stay in the drivers.

``ConnectPlan`` is the connect setup both drivers follow step by step: the cookie
check, our creation, the handshake version from EPMD's answer, our per-connection
name, TLS (the context, the name the node's certificate must hold, the handshake's
4-byte framing) when the route asks for it, and the error each failing step raises.

Why an object that eats and emits data rather than one async implementation from
which the sync driver is generated (httpcore's unasync)? The two drivers are not the
same program with the awaits taken out. The blocking one exists because importing
asyncio costs more than a one-shot command's whole rpc; it serves one call at a time
from one loop over ``recv``, and io_requests are answered inline in that loop. The
asyncio one multiplexes hundreds of calls, mailboxes with back-pressure, monitors and
a deadline sweeper over a buffered protocol that receives big frames in place.
Generated code would have to share the asyncio structure (tasks for io_requests,
futures per call) and push it into the sync driver, or fill the shared code with
``if sync`` branches that unasync cannot express. What both genuinely share is the
protocol logic, and that needs no I/O at all: as a sans-IO object (h11's shape) it is
written once, tested frame by frame without sockets (tests/test_session.py), and
each driver stays a thin loop of its own kind.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import (
    ConnectError,
    ConnectionLostError,
    DecodeError,
    HandshakeTimeoutError,
    HostUnreachableError,
    KzBridgeError,
    ProtocolError,
    UsageError,
)
from .codec import decode_at, encode_append, encode_term
from .epmd import NodeInfo
from .erpc import A_NOTSUP, ENTRY, OPTIONS, call_value, spawn_failed
from .frames import (
    OP_DEMONITOR_P,
    OP_EXIT,
    OP_EXIT2,
    OP_EXIT2_TT,
    OP_EXIT_TT,
    OP_LINK,
    OP_MONITOR_P,
    OP_MONITOR_P_EXIT,
    OP_PAYLOAD_EXIT,
    OP_PAYLOAD_EXIT2,
    OP_PAYLOAD_EXIT2_TT,
    OP_PAYLOAD_EXIT_TT,
    OP_PAYLOAD_MONITOR_P_EXIT,
    OP_REG_SEND,
    OP_SEND,
    OP_SEND_SENDER,
    OP_SEND_SENDER_TT,
    OP_SEND_TT,
    OP_SPAWN_REPLY,
    OP_SPAWN_REPLY_TT,
    OP_SPAWN_REQUEST,
    OP_SPAWN_REQUEST_TT,
    OP_UNLINK,
    OP_UNLINK_ID,
    OP_UNLINK_ID_ACK,
    UNUSED,
    DistMessage,
    build_message,
)
from .handshake import (
    DFLAG_BIG_CREATION,
    DFLAG_SEND_SENDER,
    DFLAG_SPAWN,
    OUR_FLAGS,
    ClientHandshake,
    HandshakeResult,
    State,
)
from .io_protocol import A_IO_REPLY, A_STD_ERROR, ApplyFailed, io_steps, is_io_request
from .names import Route, own_node_name, split_node_name
from .rex import A_BADRPC, A_CALL, A_EXIT, A_GEN_CALL, A_NOPROC, A_REX
from .socket_errors import TIMEOUTS, ExceptionMapping, describe
from .terms import Atom, Pid, Reference

if TYPE_CHECKING:
    import ssl


def _debug(msg: str, *args: Any) -> None:
    """Log at debug level; logging is imported on first use (6 ms of a one-shot command's start)."""
    import logging

    logging.getLogger("kzbridge.wire").debug(msg, *args)


_FRAME_LEN = struct.Struct(">I").pack_into  # a frame's length, written over its first 4 bytes
_U32 = struct.Struct(">I").pack
_PID_NUMBER = struct.Struct(">II").pack  # a pid's ID and Serial
_REF_IDS = struct.Struct(">III").pack
_CALL_HEAD = b"h\x05" + encode_term(A_CALL)  # {call, M, F, A, GroupLeader}: its constant head
# SPAWN_REQUEST's constant parts: 'p', the control tuple's head, and what follows the group
# leader up to the argument list's first element ({M, F, Arity}, the options, the list head).
_SPAWN_HEAD = b"\0\0\0\0p\x83h\x06" + encode_term(OP_SPAWN_REQUEST)  # room for the frame's length first
_SPAWN_MIDDLE = encode_term(ENTRY) + encode_term(OPTIONS) + b"\x83l\x00\x00\x00\x04"

A_DOWN = Atom("DOWN")
A_PROCESS = Atom("process")

_SENDS = frozenset({OP_SEND, OP_SEND_SENDER, OP_SEND_TT, OP_SEND_SENDER_TT})
_EXITS = frozenset(
    {
        OP_EXIT,
        OP_EXIT2,
        OP_EXIT_TT,
        OP_EXIT2_TT,
        OP_PAYLOAD_EXIT,
        OP_PAYLOAD_EXIT2,
        OP_PAYLOAD_EXIT_TT,
        OP_PAYLOAD_EXIT2_TT,
    }
)
_EXITS_WITH_PAYLOAD = frozenset({OP_PAYLOAD_EXIT, OP_PAYLOAD_EXIT2, OP_PAYLOAD_EXIT_TT, OP_PAYLOAD_EXIT2_TT})

# How rpc goes to a peer that takes both ways (OTP 23+). The gen_server call to rex: against
# OTP 25 here, spawn_request measured 1.3x its p50 (asyncio and blocking alike) and 0.7x its
# throughput with 100 callers, because each call brings two frames to decode, the
# SPAWN_REPLY and the monitor exit, against rex's one reply (README, Performance).
DEFAULT_RPC_VIA = "rex"

# How long a call's group leader stays ours after the call: processes it spawned may still print.
GROUP_LEADER_GRACE = 5.0


# ---------------------------------------------------------------- events for the driver


class RpcReply(NamedTuple):
    """``{Ref, Value}`` arrived for our caller pid and is not one of the session's own calls."""

    ref: Reference
    value: Any


class Message(NamedTuple):
    """A message sent to a mailbox pid; ``msg`` can still decode its payload as views."""

    to: Pid
    msg: DistMessage


class Deliver(NamedTuple):
    """A term for a mailbox: ``('DOWN', Ref, process, Pid, Reason)`` or ``('EXIT', From, Reason)``."""

    to: Pid
    term: Any


class Output(NamedTuple):
    """Text a remote call printed through the group leader numbered ``leader`` (the number
    ``start_call`` gave), also collected in the call's output list."""

    leader: int
    text: str


Event = RpcReply | Message | Deliver | Output
_tuple_new = tuple.__new__
_NO_EVENTS: tuple[Event, ...] = ()


class _IoRequest(NamedTuple):
    """An io_request waiting for the reply to the rex call its formatting needed."""

    steps: Generator[tuple[Any, ...], Any, Any]
    gl: Pid
    leader: int  # gl's number (Session.own_number)
    sender: Any
    reply_as: Any


# ---------------------------------------------------------------- connect setup


class ConnectPlan:
    """The connect setup, decided without I/O; each driver walks it with its own sockets.

    plan = ConnectPlan(node, cookie, timeout=10, route=Route(...))  # UsageError for an empty cookie or bad name
    for info in plan.attempts() or [<EPMD lookup of plan.name on plan.host, port plan.epmd_port>]:
        with map_exceptions(plan.tcp_errors(info.port)):
            <TCP connect to (plan.host, info.port) within plan.remaining()>
            <with plan.tls: wrap it in TLS, plan.ssl_context(), server_hostname=plan.server_name>
        hs = plan.handshake(info, local_ip)
        with map_exceptions(plan.handshake_errors()):
            <send hs.start(); feed hs what arrives and send what it returns, until hs.done>
        <on an error: try the next attempt only if plan.retry_older(info, error)>
    session = plan.session(hs.result)

    ``plan.host`` is where we connect: the route's host when one is given, else the host in
    the node's name; ``plan.name_host`` is always the latter (it decides our name's form).
    With a distribution port in the route, EPMD is not asked: ``attempts()`` lists the
    handshakes to try on that port (see there).
    """

    def __init__(
        self, node: str, cookie: str, *, timeout: float, name_prefix: str = "kzbridge", route: Route | None = None
    ) -> None:
        if not cookie:
            raise UsageError(
                "empty cookie", hint="give the node's cookie, or create ~/.erlang.cookie", setting="cookie"
            )
        self.node = node
        self.name, self.name_host = split_node_name(node)
        self.route = route or Route()
        self.host = self.route.host or self.name_host
        self.epmd_port = self.route.epmd_port
        self.cookie = cookie
        self.timeout = timeout
        self.name_prefix = name_prefix
        self.deadline = time.monotonic() + timeout
        self.creation = int.from_bytes(os.urandom(4), "big") | 4
        self.own_name = ""
        self.current: ClientHandshake | None = None  # the latest attempt's handshake
        self.tls = self.route.tls
        # The name the node's certificate must hold: the name's host, as OTP's own client checks.
        self.server_name = self.tls.name_for(self.name_host) if self.tls is not None else ""

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS client context (built once per settings; imports ssl)."""
        from .tls import client_context

        assert self.tls is not None, "no TLS in this route"
        return client_context(self.tls)

    def remaining(self, floor: float = 0.1) -> float:
        """Seconds left of the timeout, at least ``floor``."""
        return max(floor, self.deadline - time.monotonic())

    def attempts(self) -> list[NodeInfo]:
        """With a distribution port in the route (no EPMD to say which handshake the node speaks):
        the new handshake (OTP 23+; OTP 25.0-25.2 take nothing else), then the old one with the
        OTP 23 flag (OTP 18-22; newer nodes answer it too). Without a port: none, ask EPMD."""
        port = self.route.port
        if port is None:
            return []
        return [NodeInfo(self.name, port, 72, 0, 6, 5), NodeInfo(self.name, port, 72, 0, 5, 5)]

    def retry_older(self, info: NodeInfo, exc: BaseException) -> bool:
        """After a failed attempt on a given port: try the old handshake? Only when the node closed
        (or reset) the connection on our new-style name without a word, what a node older than
        OTP 23 does; not after a timeout, a status or anything later in the handshake."""
        hs = self.current
        return (
            self.route.port is not None
            and isinstance(exc, ConnectError)
            and not isinstance(exc, HandshakeTimeoutError)
            and info.highest >= 6
            and hs is not None
            and hs.state is State.AWAIT_STATUS
            and self.deadline - time.monotonic() > 0.05
        )

    def handshake(self, info: NodeInfo, local_ip: str) -> ClientHandshake:
        """Our name for this connection and the handshake, opened with the highest version EPMD reports."""
        self.own_name = own_node_name(self.name_host, local_ip, self.name_prefix)
        version = 6 if info.highest >= 6 else 5
        self.current = ClientHandshake(
            self.own_name,
            self.cookie,
            peer_version=version,
            creation=self.creation,
            flags=OUR_FLAGS,
            tls=self.tls is not None,
        )
        return self.current

    def _tls_errors(self, in_tls_handshake: bool) -> ExceptionMapping:
        if self.tls is None:
            return {}
        from .tls import error_mapping

        return error_mapping(self.node, self.tls, self.server_name, in_tls_handshake=in_tls_handshake)

    def tcp_errors(self, port: int) -> ExceptionMapping:
        """How a failed TCP connect to the distribution port reads (and, with TLS, its TLS handshake)."""
        where = f"{self.host}:{port}" if self.route.host else f"port {port}"
        if self.tls is not None:
            timed_out = HandshakeTimeoutError(
                f"{self.node}: TCP connect and TLS handshake on {where} did not finish within {self.timeout:g}s",
                hint="a node that runs plain distribution never answers TLS; or a firewall blocks the port",
                setting="timeout",
            )
        else:
            timed_out = HandshakeTimeoutError(
                f"{self.node}: TCP connect to {where} timed out after {self.timeout:g}s",
                hint="a firewall may block the node's distribution port",
                setting="timeout",
            )
        return {
            TIMEOUTS: lambda exc: timed_out,
            ConnectError: None,
            **self._tls_errors(True),
            OSError: lambda exc: HostUnreachableError(
                f"{self.node}: cannot connect to distribution port {where}: {describe(exc)}",
                hint="a firewall may block the node's distribution port range",
                setting="address",
            ),
        }

    def handshake_errors(self) -> ExceptionMapping:
        """How a failed handshake reads: its own ConnectError classes pass, the rest are wrapped."""
        return {
            TIMEOUTS: lambda exc: HandshakeTimeoutError(
                f"{self.node}: the handshake did not finish within {self.timeout:g}s", setting="timeout"
            ),
            ConnectError: None,
            KzBridgeError: lambda exc: ConnectError(f"{self.node}: handshake failed: {exc}"),
            **self._tls_errors(False),
            OSError: lambda exc: ConnectError(f"{self.node}: connection failed during the handshake: {describe(exc)}"),
        }

    def session(self, result: HandshakeResult | None) -> Session:
        assert result is not None, "the handshake is not done"
        return Session(self.own_name, result, self.creation)


# ---------------------------------------------------------------- the session


class Session:
    """Our hidden node on one connection; see the module docstring."""

    def __init__(self, own_name: str, result: HandshakeResult, creation: int) -> None:
        self.name = own_name
        self.peer_name = result.peer_name
        self.flags = result.flags
        self.version = result.version
        self.big_creation = bool(result.flags & DFLAG_BIG_CREATION)
        self.creation = creation if self.big_creation else (creation % 3) + 1
        self._send_sender = bool(result.flags & DFLAG_SEND_SENDER)
        # Both sides announced DFLAG_SPAWN (OTP 23+): rpc may go by spawn_request (see rpc_via).
        self.spawn_capable = bool(result.flags & DFLAG_SPAWN)
        self._rpc_via = DEFAULT_RPC_VIA if self.spawn_capable else "rex"
        self.spawn_calls = 0  # calls made each way, so tests and benchmarks can tell
        self.rex_calls = 0
        self._atom = Atom(own_name)
        self._pid_ids = itertools.count(1)
        self._ref_ids = itertools.count(1)
        self._ref_salt = int.from_bytes(os.urandom(4), "big")
        self._ref_form = 90 if self.big_creation else 114
        self.caller = self.new_pid()
        self.mailboxes: set[Pid] = set()
        # The group leaders of calls in flight (one per call), each with the text printed through
        # it, by number (own_number): a call's ref and group leader are never made as objects
        # (start_call), and numbers are nothing for the garbage collector to scan.
        self.group_leaders: dict[int, list[str]] = {}
        # Those of finished calls stay ours GROUP_LEADER_GRACE seconds more, kept in two
        # generations, those retired since the last turn and those of the period before, which
        # the next turn (_turn_retired) drops: each stays one grace period at least. Kept as
        # Pids with a deadline each, they were four objects per call for the garbage collector,
        # a hundred thousand at 20 000 calls/s: collections every ~200 calls, full ones of tens
        # of milliseconds.
        self._retired: set[int] = set()
        self._retired_before: set[int] = set()
        self._retire_turn = 0.0
        self._monitors: dict[Reference, Pid] = {}
        self._applies: dict[Reference, _IoRequest] = {}
        self._spawned: set[bytes] = set()  # calls sent by spawn_request and not answered yet, by ref_bytes
        self.outbox: list[bytes] = []
        # The rpc request's constant parts, encoded once: room for the frame's length, 'p',
        # the REG_SEND control, and the payload's head up to the ref ({'$gen_call', {Caller, ...).
        self._rpc_head = (
            b"\0\0\0\0p\x83"
            + encode_term((OP_REG_SEND, self.caller, UNUSED, A_REX))
            + b"\x83h\x03"
            + encode_term(A_GEN_CALL)
            + b"h\x02"
            + encode_term(self.caller)
        )
        self._caller_bytes = encode_term(self.caller)
        # Our pids and refs encoded around their numbers (see _own_pid_bytes): the node name
        # and creation once, in the form the peer's flags chose.
        name = encode_term(self._atom)
        our_creation = _U32(self.creation) if self.big_creation else bytes((self.creation,))
        self._pid_head = (b"X" if self.big_creation else b"g") + name
        self._pid_tail: bytes = our_creation
        self._ref_head: bytes = (b"Z" if self.big_creation else b"r") + b"\x00\x03" + name + our_creation
        # How a rex reply to our caller starts (see reply_of): SEND_SENDER from a pid on the
        # peer (whose ID, serial and creation, _reply_pid_rest bytes, are skipped), then our
        # caller and the payload's head up to the reference's IDs.
        peer_pid_head = (b"X" if self.big_creation else b"g") + encode_term(Atom(self.peer_name))
        self._reply_from = b"p\x83h\x03a\x16" + peer_pid_head
        self._reply_pid_rest = 12 if self.big_creation else 9
        self._reply_to = self._caller_bytes + b"\x83h\x02" + self._ref_head

    @property
    def rpc_via(self) -> str:
        """How ``start_call`` sends: "rex" (the gen_server call, every OTP) or "spawn"
        (spawn_request of erpc:execute_call/4, only when ``spawn_capable``)."""
        return self._rpc_via

    @rpc_via.setter
    def rpc_via(self, via: str) -> None:
        if via not in ("rex", "spawn") or (via == "spawn" and not self.spawn_capable):
            raise UsageError(
                f"rpc via {via!r}: {self.peer_name} takes {'rex or spawn' if self.spawn_capable else 'rex'}"
            )
        self._rpc_via = via

    # ------------------------------------------------------------ identities
    # Our pids are numbered by one count: a pid's number is its ID (15 bits) and Serial (13
    # bits) as one int, ``ID | Serial << 15``, as a node numbers its pids (the old pid format
    # holds no more). One group leader per call: 15 bits alone would come round again within
    # GROUP_LEADER_GRACE at 6500 calls/s, and a retired leader would take a live one's place.
    def _new_pid_number(self) -> int:
        n = next(self._pid_ids)
        while n >> 28 and self.is_live(self.own_pid(n & 0xFFFFFFF)):  # come round: skip those in use
            n = next(self._pid_ids)
        return n & 0xFFFFFFF

    def new_pid(self) -> Pid:
        return self.own_pid(self._new_pid_number())

    def own_pid(self, number: int) -> Pid:
        """Our pid numbered ``number`` (see above): a group leader's from ``start_call``, say."""
        return Pid(self._atom, number & 0x7FFF, number >> 15, self.creation, old=not self.big_creation)

    def own_number(self, pid: Any) -> int:
        """A pid of ours as its number; -1 for any other (also one naming us with numbers
        ``new_pid`` never makes, which would alias one that it did)."""
        ours = type(pid) is Pid and pid.node == self._atom and pid.creation == self.creation
        if ours and pid.id < 0x8000 and pid.serial < 0x2000:
            return int(pid.id | pid.serial << 15)
        return -1

    def _new_ref_ids(self) -> tuple[int, int, int]:
        n = next(self._ref_ids)
        return (n & 0x3FFFF, (n >> 18) & 0xFFFFFFFF, self._ref_salt)

    def make_ref(self) -> Reference:
        return Reference(self._atom, self._new_ref_ids(), self.creation, self._ref_form)

    def _own_pid_bytes(self, number: int) -> bytes:
        """``encode_term(self.own_pid(number))`` from the pre-encoded parts (a third of the time)."""
        return self._pid_head + _PID_NUMBER(number & 0x7FFF, number >> 15) + self._pid_tail

    def _own_ref_bytes(self, ref: Reference) -> bytes:
        """``encode_term(ref)`` for a reference this session made, likewise."""
        return self._ref_head + _REF_IDS(*ref.ids)

    def ref_bytes(self, ref: Reference) -> bytes:
        """``encode_term(ref)``: how drivers key their calls, as ``reply_of`` names them."""
        # A shortcut for refs of our shape: our node (``is``: decoded atoms are interned, so a
        # peer's ref naming us passes too), creation, form and three ID words (a peer may send
        # one to five). Any other goes the long way, and cannot equal a key of ours.
        if (
            ref.node is self._atom
            and ref.creation == self.creation
            and ref.form == self._ref_form
            and len(ref.ids) == 3
        ):
            return self._own_ref_bytes(ref)
        return encode_term(ref)

    def open_mailbox(self) -> Pid:
        pid = self.new_pid()
        self.mailboxes.add(pid)
        return pid

    def close_mailbox(self, pid: Pid) -> None:
        self.mailboxes.discard(pid)

    def is_live(self, target: Any) -> bool:
        return target == self.caller or target in self.mailboxes or self._is_leader(self.own_number(target))

    def _is_leader(self, number: int) -> bool:
        """A group leader of a call in flight, or of one within its grace period."""
        return number in self.group_leaders or number in self._retired or number in self._retired_before

    # ------------------------------------------------------------ rpc
    def rpc_frame(self, module: Atom, function: Atom, args: list[Any], leader: int, ref_bytes: bytes) -> bytes:
        """``{'$gen_call', {Caller, Ref}, {call, M, F, A, GroupLeader}}`` to rex, framed, from the
        pre-encoded head; the group leader is our pid numbered ``leader``, the ref one of ours
        given encoded."""
        out = bytearray(self._rpc_head)
        out += ref_bytes
        out += _CALL_HEAD
        encode_append(module, out)
        encode_append(function, out)
        encode_append(args, out)
        out += self._own_pid_bytes(leader)
        _FRAME_LEN(out, 0, len(out) - 4)
        return bytes(out)

    def spawn_frame(self, module: Atom, function: Atom, args: list[Any], leader: int, ref_bytes: bytes) -> bytes:
        """SPAWN_REQUEST of ``erpc:execute_call(Ref, M, F, A)`` with our pid numbered ``leader`` as
        group leader, monitored under the ref (erpc.py), framed, from the pre-encoded parts. The
        ref is both the request's id and the tag of the result, as one reference serves for both."""
        out = bytearray(_SPAWN_HEAD)
        out += ref_bytes
        out += self._caller_bytes
        out += self._own_pid_bytes(leader)
        out += _SPAWN_MIDDLE
        out += ref_bytes
        encode_append(module, out)
        encode_append(function, out)
        encode_append(args, out)
        out += b"j"
        _FRAME_LEN(out, 0, len(out) - 4)
        return bytes(out)

    def start_call(self, module: Atom, function: Atom, args: list[Any]) -> tuple[bytes, int, list[str], bytes]:
        """A new call: its ref, encoded (how ``reply_of`` and ``ref_bytes`` name it), the number
        of its own group leader (ours until ``end_call``; ``own_pid`` makes the pid), the list
        that collects what the call prints through it, and the frame to send (``rpc_via``'s way).

        Neither the ref nor the group leader is made as an object: on a lone call, every
        object and function call here is paid on a cold CPU (README, Performance)."""
        call = self._ref_head + _REF_IDS(*self._new_ref_ids())
        leader = self._new_pid_number()
        # The frame first: arguments that cannot be encoded leave nothing of the call behind.
        spawn = self._rpc_via == "spawn"
        frame = (self.spawn_frame if spawn else self.rpc_frame)(module, function, args, leader, call)
        output: list[str] = []
        self.group_leaders[leader] = output
        if spawn:
            self._spawned.add(call)
            self.spawn_calls += 1
        else:
            self.rex_calls += 1
        return call, leader, output, frame

    def end_call(self, call: bytes, leader: int, now: float) -> None:
        """The call ``start_call`` named ``call`` is over (answered, timed out or abandoned): a late
        answer is dropped, and its group leader stays ours ``GROUP_LEADER_GRACE`` more, at least
        (twice that at most, while calls go on)."""
        if self._spawned:
            self._spawned.discard(call)
        self.group_leaders.pop(leader, None)
        if now >= self._retire_turn:
            self._turn_retired(now)
        self._retired.add(leader)

    def _turn_retired(self, now: float) -> None:
        """A grace period is over: the group leaders retired before it are ours no more."""
        dropped = self._retired_before
        self._retired_before = self._retired
        self._retired = set()
        self._retire_turn = now + GROUP_LEADER_GRACE
        if self._applies and dropped:
            for ref in [r for r, req in self._applies.items() if req.leader in dropped]:
                del self._applies[ref]

    # ------------------------------------------------------------ frames we send
    def send_frame(self, to: Pid, msg: Any, sender: Pid | None = None) -> bytes:
        """``To ! Msg``, naming ``sender`` when the peer takes SEND_SENDER."""
        if sender is not None and self._send_sender:
            return build_message((OP_SEND_SENDER, sender, to), msg)
        return build_message((OP_SEND, UNUSED, to), msg)

    def reg_send_frame(self, name: Atom, msg: Any, sender: Pid | None = None) -> bytes:
        """``{Name, Node} ! Msg``."""
        return build_message((OP_REG_SEND, sender or self.caller, UNUSED, name), msg)

    def monitor_frame(self, owner: Pid, target: Pid | Atom) -> tuple[Reference, bytes]:
        """Monitor ``target`` for mailbox ``owner``; its DOWN comes back as a ``Deliver`` to ``owner``."""
        ref = self.make_ref()
        self._monitors[ref] = owner
        return ref, build_message((OP_MONITOR_P, owner, target, ref))

    def demonitor_frame(self, owner: Pid, target: Pid | Atom, ref: Reference) -> bytes:
        self._monitors.pop(ref, None)
        return build_message((OP_DEMONITOR_P, owner, target, ref))

    def link_frame(self, owner: Pid, target: Pid) -> bytes:
        return build_message((OP_LINK, owner, target))

    def exit_frame(self, target: Pid, reason: Any, sender: Pid | None = None) -> bytes:
        """``exit(Target, Reason)`` from one of our pids."""
        return build_message((OP_EXIT2, sender or self.caller, target, reason))

    def data_to_send(self) -> bytes:
        """The frames ``receive`` queued, joined; the outbox is empty afterwards."""
        out = b"".join(self.outbox)
        self.outbox.clear()
        return out

    # ------------------------------------------------------------ receiving
    def reply_of(self, frame: bytes | memoryview) -> tuple[bytes, Any] | None:
        """The rex reply ``{Ref, Value}`` to our caller in ``frame``, found by its bytes: the
        reference's encoding (``ref_bytes``) and the decoded value. Only the value is decoded,
        the one part of the reply that is not known in advance; a reply is most of what a
        busy connection receives, and decoding the control message and the reference cost
        more than the rest of the call's handling. ``None`` for any other frame, and for one
        that is not well-formed: ``receive(parse_message(frame))`` handles those (and raises
        what it raises), as it does a reply the driver does not know (``_applies``, late ones).
        """
        if type(frame) is not bytes or not frame.startswith(self._reply_from):
            return None
        pos = len(self._reply_from) + self._reply_pid_rest
        if not frame.startswith(self._reply_to, pos):
            return None
        pos += len(self._reply_to) + 12  # the reference's three ID words
        try:
            value, end = decode_at(frame, pos)
        except DecodeError:
            return None
        if end != len(frame):
            return None
        return frame[pos - 12 - len(self._ref_head) : pos], value

    def receive(self, msg: DistMessage) -> Sequence[Event]:
        """Handle one message from the peer; return the events for the driver (frames go to ``outbox``)."""
        ctl = msg.control
        op = ctl[0]
        try:
            if op in _SENDS:
                to = ctl[2]
                if to == self.caller:
                    payload = msg.payload
                    if type(payload) is tuple and len(payload) == 2 and type(payload[0]) is Reference:
                        if self._applies and payload[0] in self._applies:
                            return self._applied(self._applies.pop(payload[0]), payload[1])
                        return (_tuple_new(RpcReply, payload),)  # RpcReply(ref, value), built the fast way
                    _debug("message to our caller pid that is no reply: %.200r", payload)
                    return _NO_EVENTS
                if to in self.mailboxes:
                    return (Message(to, msg),)
                leader = self.own_number(to)
                if self._is_leader(leader):
                    payload = msg.payload
                    if is_io_request(payload):
                        _, sender, reply_as, request = payload
                        return self._drive(_IoRequest(io_steps(request), to, leader, sender, reply_as), None)
                    return _NO_EVENTS
                _debug("message to unknown pid %s dropped", to)
                return _NO_EVENTS
            if op == OP_PAYLOAD_MONITOR_P_EXIT or op == OP_MONITOR_P_EXIT:
                ref = ctl[3]
                key = self._spawned_key(ref)
                if key is not None:
                    # The process a spawn_request call ran in ended: its reason is the result.
                    self._spawned.discard(key)
                    reason = msg.payload if op == OP_PAYLOAD_MONITOR_P_EXIT else ctl[4]
                    return (RpcReply(ref, call_value(ref, reason)),)
                owner = self._monitors.pop(ref, None)
                if owner is not None and owner in self.mailboxes:
                    reason = msg.payload if op == OP_PAYLOAD_MONITOR_P_EXIT else ctl[4]
                    return (Deliver(owner, (A_DOWN, ref, A_PROCESS, ctl[1], reason)),)
            elif op == OP_SPAWN_REPLY or op == OP_SPAWN_REPLY_TT:
                # {31, ReqId, To, Flags, Result}: a pid means the call runs; its exit follows.
                ref, result = ctl[1], ctl[4]
                key = self._spawned_key(ref)
                if key is not None and type(result) is not Pid:
                    self._spawned.discard(key)
                    return (RpcReply(ref, spawn_failed(result)),)
            elif op == OP_SPAWN_REQUEST or op == OP_SPAWN_REQUEST_TT:
                # {29, ReqId, From, GroupLeader, MFA, Opts}: we run no Erlang code.
                self.outbox.append(build_message((OP_SPAWN_REPLY, ctl[1], ctl[2], 0, A_NOTSUP)))
            elif op == OP_MONITOR_P:
                # {19, FromPid, ToProc, Ref}: fine for live pids; otherwise DOWN at once.
                if not self.is_live(ctl[2]):
                    self.outbox.append(build_message((OP_MONITOR_P_EXIT, ctl[2], ctl[1], ctl[3], A_NOPROC)))
            elif op in _EXITS:
                frm, to = ctl[1], ctl[2]
                reason = msg.payload if op in _EXITS_WITH_PAYLOAD else ctl[-1]
                if to in self.mailboxes:
                    return (Deliver(to, (A_EXIT, frm, reason)),)
            elif op == OP_UNLINK_ID:
                # {35, Id, From, To}: acknowledge so the peer's link state settles.
                self.outbox.append(build_message((OP_UNLINK_ID_ACK, ctl[1], ctl[3], ctl[2])))
            elif op == OP_LINK:
                if not self.is_live(ctl[2]):
                    self.outbox.append(build_message((OP_EXIT, ctl[2], ctl[1], A_NOPROC)))
            elif op == OP_REG_SEND:
                _debug("dropping message to unregistered name %s", ctl[3])
            elif op == OP_DEMONITOR_P or op == OP_UNLINK or op == OP_UNLINK_ID_ACK:
                pass
            else:
                _debug("ignoring control message %r", ctl)
            return _NO_EVENTS
        except (IndexError, TypeError, ValueError) as exc:
            # A control tuple of the wrong arity, or an unhashable where a pid belongs.
            raise ProtocolError(f"malformed control message from {self.peer_name}: {ctl!r:.120}") from exc

    def _spawned_key(self, ref: Any) -> bytes | None:
        """``ref_bytes(ref)`` when ``ref`` names a spawn_request call not answered yet."""
        if not self._spawned or type(ref) is not Reference:
            return None
        key = self.ref_bytes(ref)
        return key if key in self._spawned else None

    # ------------------------------------------------------------ io_requests
    def _applied(self, req: _IoRequest, value: Any) -> Sequence[Event]:
        if type(value) is tuple and len(value) == 2 and value[0] == A_BADRPC:
            value = ApplyFailed(value[1])
        return self._drive(req, value)

    def _drive(self, req: _IoRequest, value: Any) -> Sequence[Event]:
        """Run an io_steps generator until it needs a rex call (queued) or finishes (reply queued)."""
        events: list[Event] = []
        try:
            while True:
                step = req.steps.send(value)
                value = None
                if step[0] == "apply":
                    ref = self.make_ref()
                    self._applies[ref] = req
                    self.outbox.append(self.rpc_frame(step[1], step[2], step[3], req.leader, self._own_ref_bytes(ref)))
                    return events
                output = self.group_leaders.get(req.leader)
                if output is not None:
                    output.append(step[1])
                events.append(Output(req.leader, step[1]))
        except StopIteration as done:
            reply = done.value
        except KzBridgeError as exc:
            reply = (A_STD_ERROR, Atom(f"kzbridge: {exc}"[:200]))
        self.outbox.append(self.send_frame(req.sender, (A_IO_REPLY, req.reply_as, reply), sender=req.gl))
        return events


def lost_error(peer_name: str, what: str, exc: KzBridgeError) -> ConnectionLostError:
    """What a call in flight fails with when the connection goes."""
    return ConnectionLostError(
        f"{peer_name} went away during {what}: {exc.message}", hint=exc.hint, setting=exc.setting
    )


def call_name(module: Atom, function: Atom, args: list[Any]) -> str:
    """``m:f/arity`` for messages."""
    return f"{module.name}:{function.name}/{len(args)}"
