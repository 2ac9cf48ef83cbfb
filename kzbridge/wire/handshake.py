"""The distribution handshake, initiator side, as a socket-free state machine.

Two generations exist:
  * the old one (protocol version 5): send_name ``n``, 32-bit flags; spoken by
    OTP 18/19 (Kazoo 4.x) and accepted by OTP 25.3+ when it carries the HANDSHAKE_23 flag;
  * the OTP 23+ one (version 6): send_name ``N`` with 64-bit flags and creation.
EPMD's "highest version" decides which we open with. If we open with ``n`` and
the peer answers with an ``N`` challenge, we send the ``c`` complement.

Usage: ``hs = ClientHandshake(...); send(hs.start()); while not hs.done: send(hs.feed(bytes))``.

Over TLS distribution (OTP's inet_tls_dist) the same messages are framed with a 4-byte
length instead of 2 (the TLS socket is in ``{packet, 4}`` from the start): ``tls=True``.
A plain handshake answered with a TLS record (a TLS node's alert) is TlsRequiredError.
"""

from __future__ import annotations

import os
import struct
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

# CPython's built-in md5: hashlib would load OpenSSL's libcrypto (4 ms of a one-shot
# command's start) for the handshake's two digests.
if TYPE_CHECKING:
    from hashlib import md5 as _md5
else:
    try:
        from _md5 import md5 as _md5
    except ImportError:  # a Python built without it
        from hashlib import md5 as _md5

from ..errors import (
    CookieRejectedError,
    NameInUseError,
    NotAllowedError,
    ProtocolError,
    TlsRequiredError,
    VersionMismatchError,
)

# Distribution capability flags (erl_dist_protocol), DFLAG_ as in OTP's own sources.
DFLAG_PUBLISHED = 0x1
DFLAG_ATOM_CACHE = 0x2
DFLAG_EXTENDED_REFERENCES = 0x4
DFLAG_DIST_MONITOR = 0x8
DFLAG_FUN_TAGS = 0x10
DFLAG_DIST_MONITOR_NAME = 0x20
DFLAG_HIDDEN_ATOM_CACHE = 0x40
DFLAG_NEW_FUN_TAGS = 0x80
DFLAG_EXTENDED_PIDS_PORTS = 0x100
DFLAG_EXPORT_PTR_TAG = 0x200
DFLAG_BIT_BINARIES = 0x400
DFLAG_NEW_FLOATS = 0x800
DFLAG_UNICODE_IO = 0x1000
DFLAG_DIST_HDR_ATOM_CACHE = 0x2000
DFLAG_SMALL_ATOM_TAGS = 0x4000
DFLAG_UTF8_ATOMS = 0x10000
DFLAG_MAP_TAG = 0x20000
DFLAG_BIG_CREATION = 0x40000
DFLAG_SEND_SENDER = 0x80000
DFLAG_BIG_SEQTRACE_LABELS = 0x100000
DFLAG_EXIT_PAYLOAD = 0x400000
DFLAG_FRAGMENTS = 0x800000
DFLAG_HANDSHAKE_23 = 0x1000000
DFLAG_UNLINK_ID = 0x2000000
DFLAG_MANDATORY_25_DIGEST = 0x4000000
DFLAG_SPAWN = 1 << 32
DFLAG_NAME_ME = 1 << 33
DFLAG_V4_NC = 1 << 34
DFLAG_ALIAS = 1 << 35

# What we advertise. Never PUBLISHED (we are hidden), no atom cache, no fragments.
OUR_FLAGS = (
    DFLAG_EXTENDED_REFERENCES
    | DFLAG_DIST_MONITOR
    | DFLAG_FUN_TAGS
    | DFLAG_DIST_MONITOR_NAME
    | DFLAG_NEW_FUN_TAGS
    | DFLAG_EXTENDED_PIDS_PORTS
    | DFLAG_EXPORT_PTR_TAG
    | DFLAG_BIT_BINARIES
    | DFLAG_NEW_FLOATS
    | DFLAG_UNICODE_IO
    | DFLAG_SMALL_ATOM_TAGS
    | DFLAG_UTF8_ATOMS
    | DFLAG_MAP_TAG
    | DFLAG_BIG_CREATION
    | DFLAG_SEND_SENDER
    | DFLAG_BIG_SEQTRACE_LABELS
    | DFLAG_EXIT_PAYLOAD
    | DFLAG_HANDSHAKE_23
    | DFLAG_UNLINK_ID
    | DFLAG_MANDATORY_25_DIGEST
    | DFLAG_V4_NC
    # We send SPAWN_REQUEST (rpc the way erpc does, session.py) and answer the peer's with notsup.
    # A high flag: the old handshake's 32 bits never carry it, so peers before OTP 23 see no change.
    | DFLAG_SPAWN
)
# Without these we cannot talk to the peer at all.
REQUIRED_FROM_PEER = DFLAG_EXTENDED_REFERENCES | DFLAG_EXTENDED_PIDS_PORTS

MAX_HANDSHAKE_MESSAGE = 4096


class State(Enum):
    UNSTARTED = "unstarted"
    AWAIT_STATUS = "await_status"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_ACK = "await_ack"
    DONE = "done"
    FAILED = "failed"


class HandshakeResult(NamedTuple):
    """What the connection needs from a finished handshake."""

    peer_name: str
    peer_flags: int
    peer_creation: int | None
    flags: int  # the flags in force: ours AND the peer's
    version: int  # 5 or 6: the send_name we opened with
    rest: bytes  # bytes after the ack (already distribution frames)


def digest(cookie: str, challenge: int) -> bytes:
    """MD5 of the cookie followed by the challenge in decimal, as both sides compute it."""
    return _md5(cookie.encode("latin-1", "replace") + str(challenge).encode("ascii")).digest()


def frame(payload: bytes, length_bytes: int = 2) -> bytes:
    """A handshake message with its length prefix: 2 bytes over TCP, 4 over TLS."""
    return len(payload).to_bytes(length_bytes, "big") + payload


# The first bytes of a TLS record a TLS node answers a plain handshake with: an alert
# (0x15) or a handshake record (0x16), then the major version 3.
_TLS_RECORD_STARTS = (b"\x15\x03", b"\x16\x03")


class ClientHandshake:
    """Initiator side of the handshake; holds no socket."""

    def __init__(
        self,
        own_name: str,
        cookie: str,
        *,
        peer_version: int,
        creation: int,
        flags: int = OUR_FLAGS,
        challenge: int | None = None,
        tls: bool = False,
    ) -> None:
        if peer_version not in (5, 6):
            raise VersionMismatchError(f"the peer speaks distribution version {peer_version}; kzbridge speaks 5 and 6")
        self.own_name = own_name
        self.cookie = cookie
        self.version = peer_version
        self.creation = creation
        self.flags = flags
        self.challenge = challenge if challenge is not None else struct.unpack(">I", os.urandom(4))[0]
        self.tls = tls
        self._len = 4 if tls else 2
        self.state = State.UNSTARTED
        self.buffer = bytearray()
        self.peer_name = ""
        self.peer_flags = 0
        self.peer_creation: int | None = None
        self.result: HandshakeResult | None = None

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def start(self) -> bytes:
        """The send_name message, framed."""
        if self.state is not State.UNSTARTED:
            raise RuntimeError("handshake already started")
        name = self.own_name.encode("utf-8")
        if self.version == 6:
            msg = b"N" + struct.pack(">QIH", self.flags, self.creation, len(name)) + name
        else:
            msg = b"n" + struct.pack(">HI", 5, self.flags & 0xFFFFFFFF) + name
        self.state = State.AWAIT_STATUS
        return frame(msg, self._len)

    def feed(self, data: bytes) -> bytes:
        """Consume bytes from the peer; return bytes to send (possibly empty).

        Bytes after the final ack end up in ``result.rest``; feeding after that is misuse.
        """
        if self.state is State.DONE:
            raise RuntimeError("handshake already finished; later bytes are distribution frames")
        self.buffer += data
        out = bytearray()
        size = self._len
        while self.state not in (State.DONE, State.FAILED):
            if len(self.buffer) < size:
                break
            if not self.tls and self.state is State.AWAIT_STATUS and self.buffer[:2] in _TLS_RECORD_STARTS:
                self.state = State.FAILED
                raise TlsRequiredError(
                    "the node answered with TLS: it runs TLS distribution (-proto_dist inet_tls)",
                    hint="connect with TLS, trusting the CA that signed the cluster's certificates",
                    setting="tls",
                )
            n = int.from_bytes(self.buffer[:size], "big")
            if n == 0 or n > MAX_HANDSHAKE_MESSAGE:
                self.state = State.FAILED
                raise ProtocolError(f"handshake message of {n} bytes from the peer")
            if len(self.buffer) < size + n:
                break
            msg = bytes(self.buffer[size : size + n])
            del self.buffer[: size + n]
            try:
                out += self._handle(msg)
            except Exception:
                self.state = State.FAILED
                raise
        return bytes(out)

    def connection_closed(self) -> Exception:
        """The error to raise when the peer closes the socket in the current state."""
        if self.state is State.AWAIT_ACK:
            return CookieRejectedError(
                "the node closed the connection after our challenge reply: it rejected our cookie",
                hint="check the cookie against the node's",
                setting="cookie",
            )
        if self.state is State.AWAIT_STATUS:
            return NotAllowedError(
                "the node closed the connection before answering our name",
                hint="its distribution may refuse our handshake version or flags "
                "(OTP 25.0-25.2 refuse the old handshake)",
            )
        return ProtocolError(f"the node closed the connection during the handshake ({self.state.value})")

    def _handle(self, msg: bytes) -> bytes:
        if self.state is State.AWAIT_STATUS:
            return self._on_status(msg)
        if self.state is State.AWAIT_CHALLENGE:
            return self._on_challenge(msg)
        if self.state is State.AWAIT_ACK:
            return self._on_ack(msg)
        raise ProtocolError(f"unexpected handshake message in state {self.state.value}")

    def _on_status(self, msg: bytes) -> bytes:
        if msg[:1] != b"s":
            raise ProtocolError(f"expected a status message, got tag {msg[:1]!r}")
        status = msg[1:].decode("latin-1")
        if status in ("ok", "ok_simultaneous"):
            self.state = State.AWAIT_CHALLENGE
            return b""
        if status == "alive":
            # Our name is unique per connection, so an existing one is stale or a clash: give way.
            self.state = State.FAILED
            raise NameInUseError(
                f"the node already has a connection from {self.own_name}",
                hint="another kzbridge with the same name is connected; use another name",
                setting="name",
            )
        if status == "nok":
            self.state = State.FAILED
            raise NameInUseError("the node is busy connecting to a node of our name (nok)")
        if status == "not_allowed":
            self.state = State.FAILED
            raise NotAllowedError(
                f"the node does not allow connections from {self.own_name}",
                hint="check net_kernel:allow/1 on the node and the short/long name form",
                setting="name",
            )
        raise ProtocolError(f"unknown handshake status {status!r}")

    def _on_challenge(self, msg: bytes) -> bytes:
        tag = msg[:1]
        out = b""
        if tag == b"N":
            if len(msg) < 19:
                raise ProtocolError("new-style challenge too short")
            flags, challenge, creation, nlen = struct.unpack_from(">QIIH", msg, 1)
            if len(msg) != 19 + nlen:
                raise ProtocolError("new-style challenge name length does not match")
            self.peer_name = msg[19:].decode("utf-8", "replace")
            self.peer_creation = creation
            if self.version == 5:
                # We opened with 'n'; a v6 peer wants the high flag word and our creation.
                out += frame(b"c" + struct.pack(">II", self.flags >> 32, self.creation), self._len)
        elif tag == b"n":
            if len(msg) < 11:
                raise ProtocolError("old-style challenge too short")
            version, flags, challenge = struct.unpack_from(">HII", msg, 1)
            if version != 5:
                raise VersionMismatchError(f"the node answered with handshake version {version}")
            self.peer_name = msg[11:].decode("utf-8", "replace")
        else:
            raise ProtocolError(f"expected a challenge, got tag {tag!r}")
        if flags & REQUIRED_FROM_PEER != REQUIRED_FROM_PEER:
            raise VersionMismatchError(f"the node lacks extended pids/references (flags {flags:#x})")
        self.peer_flags = flags
        self.state = State.AWAIT_ACK
        return out + frame(b"r" + struct.pack(">I", self.challenge) + digest(self.cookie, challenge), self._len)

    def _on_ack(self, msg: bytes) -> bytes:
        if msg[:1] != b"a" or len(msg) != 17:
            raise ProtocolError(f"expected a challenge ack, got {len(msg)} bytes with tag {msg[:1]!r}")
        if msg[1:] != digest(self.cookie, self.challenge):
            raise CookieRejectedError(
                f"{self.peer_name} answered our challenge with a digest of another cookie",
                hint="the node does not share our cookie",
                setting="cookie",
            )
        self.state = State.DONE
        flags = self.flags & self.peer_flags
        self.result = HandshakeResult(
            self.peer_name, self.peer_flags, self.peer_creation, flags, self.version, bytes(self.buffer)
        )
        self.buffer.clear()
        return b""
