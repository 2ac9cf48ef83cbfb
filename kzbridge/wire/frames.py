"""Distribution frames after the handshake, without sockets.

A frame is a 4-byte length and that many bytes; length 0 is a tick. A message
frame is ``p`` (pass-through, as we negotiate no atom cache), a control tuple
and, for some operations, a payload term.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import ProtocolError
from .codec import decode_prefix, encode_into
from .terms import Atom

PASS_THROUGH = 112
UNUSED = Atom("")  # the placeholder field in SEND and REG_SEND control tuples

# Control message operations (erl_dist_protocol), OP_ so they never meet the DFLAG_ capability
# flags of the same name (SEND_SENDER, UNLINK_ID). Plain ints: the receive path compares them per message.
OP_LINK = 1
OP_SEND = 2
OP_EXIT = 3
OP_UNLINK = 4
OP_NODE_LINK = 5
OP_REG_SEND = 6
OP_GROUP_LEADER = 7
OP_EXIT2 = 8
OP_SEND_TT = 12
OP_EXIT_TT = 13
OP_REG_SEND_TT = 16
OP_EXIT2_TT = 18
OP_MONITOR_P = 19
OP_DEMONITOR_P = 20
OP_MONITOR_P_EXIT = 21
OP_SEND_SENDER = 22
OP_SEND_SENDER_TT = 23
OP_PAYLOAD_EXIT = 24
OP_PAYLOAD_EXIT_TT = 25
OP_PAYLOAD_EXIT2 = 26
OP_PAYLOAD_EXIT2_TT = 27
OP_PAYLOAD_MONITOR_P_EXIT = 28
OP_SPAWN_REQUEST = 29
OP_SPAWN_REQUEST_TT = 30
OP_SPAWN_REPLY = 31
OP_SPAWN_REPLY_TT = 32
OP_ALIAS_SEND = 33
OP_ALIAS_SEND_TT = 34
OP_UNLINK_ID = 35
OP_UNLINK_ID_ACK = 36

# Operations followed by a payload term.
WITH_PAYLOAD = frozenset(
    {
        OP_SEND,
        OP_REG_SEND,
        OP_SEND_TT,
        OP_REG_SEND_TT,
        OP_SEND_SENDER,
        OP_SEND_SENDER_TT,
        OP_PAYLOAD_EXIT,
        OP_PAYLOAD_EXIT_TT,
        OP_PAYLOAD_EXIT2,
        OP_PAYLOAD_EXIT2_TT,
        OP_PAYLOAD_MONITOR_P_EXIT,
        OP_SPAWN_REQUEST,
        OP_SPAWN_REQUEST_TT,
        OP_ALIAS_SEND,
        OP_ALIAS_SEND_TT,
    }
)

DEFAULT_MAX_FRAME = 1 << 30
_len = struct.Struct(">I")


class DistMessage:
    """One message: the control tuple, and the payload decoded on first use.

    ``payload`` is safe to keep. ``payload_views()`` decodes large binaries as
    memoryviews into the receive buffer (no copy): only valid until the handler
    returns, for consumers that write the data out at once.
    """

    __slots__ = ("_frame", "_payload", "_pos", "_state", "control")

    def __init__(self, control: tuple[Any, ...], payload: Any = None, frame: Any = None, pos: int = 0) -> None:
        self.control = control
        self._frame = frame
        self._pos = pos
        self._payload = payload
        self._state = 0 if frame is not None else 2  # 0 undecoded, 1 viewed, 2 decoded

    @property
    def op(self) -> int:
        return int(self.control[0])

    @property
    def payload(self) -> Any:
        if self._state != 2:
            frame = self._frame
            source = frame.obj if type(frame) is memoryview else frame
            self._payload = self._decode(source, len(frame))
            self._state = 2
        return self._payload

    def payload_views(self) -> Any:
        frame = self._frame
        if self._state == 2 or frame is None:
            return self._payload
        self._state = 1
        return self._decode(frame if type(frame) is memoryview else memoryview(frame), len(frame))

    def _decode(self, source: Any, end: int) -> Any:
        payload, pos = decode_prefix(source, self._pos)
        if pos != end:
            raise ProtocolError(f"{end - pos} trailing bytes after a distribution message")
        return payload

    def settle(self) -> None:
        """Decode now if nobody has: the receive buffer is about to be reused."""
        if self._state == 0:
            self.payload  # noqa: B018
        self._frame = None

    def __repr__(self) -> str:
        return f"DistMessage({self.control!r}, {self.payload!r})"


class FrameReader:
    """Splits a byte stream into frames; yields ``None`` for ticks and bytes otherwise."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | None]:
        return self.feed_detaching(data, None)[0]

    def feed_detaching(
        self, data: bytes | bytearray | memoryview, threshold: int | None
    ) -> tuple[list[bytes | None], tuple[int, memoryview] | None]:
        """Complete frames in ``data`` (copied out), and optionally the start of a big one.

        If ``threshold`` is given and ``data`` ends with the start of a frame of at least
        that many bytes, that start is not buffered: it comes back as (frame length,
        a view into ``data`` after the length prefix), so the caller can receive the rest
        in place behind it. The view is only as valid as ``data``.
        """
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        elif len(data) >= 4 and _len.unpack_from(data, 0)[0] + 4 == len(data):
            # Fast path: exactly one whole frame in this read (the rpc reply case).
            n = len(data) - 4
            if n > self.max_frame:
                raise ProtocolError(f"distribution frame of {n} bytes exceeds the {self.max_frame} limit")
            return [bytes(data[4:]) if n else None], None
        else:
            src = data
        out: list[bytes | None] = []
        pos = 0
        end = len(src)
        n = -1
        while end - pos >= 4:
            n = _len.unpack_from(src, pos)[0]
            if n > self.max_frame:
                raise ProtocolError(f"distribution frame of {n} bytes exceeds the {self.max_frame} limit")
            if end - pos - 4 < n:
                break
            out.append(bytes(src[pos + 4 : pos + 4 + n]) if n else None)
            pos += 4 + n
            n = -1
        big = None
        if src is buf:
            if threshold is not None and n >= threshold:
                # Hand the started frame over; a copy, as our own buffer is cleared.
                with memoryview(buf) as view:
                    part = bytes(view[pos + 4 :])
                buf.clear()
                big = (n, memoryview(part))
            elif pos:
                del buf[:pos]
        elif pos < end:
            if threshold is not None and n >= threshold:
                big = (n, memoryview(src)[pos + 4 :])
            else:
                buf += memoryview(src)[pos:]
        return out, big

    @property
    def buffered(self) -> int:
        return len(self._buf)


def parse_message(frame: bytes | memoryview) -> DistMessage:
    """Decode one non-tick frame into a DistMessage."""
    if not frame or frame[0] != PASS_THROUGH:
        raise ProtocolError(f"distribution frame starts with {frame[:1]!r}, expected pass-through 'p'")
    control, pos = decode_prefix(frame, 1)
    if type(control) is not tuple or not control or type(control[0]) is not int:
        raise ProtocolError(f"control message is not an operation tuple: {control!r:.80}")
    if control[0] in WITH_PAYLOAD:
        return DistMessage(control, frame=frame, pos=pos)
    if pos != len(frame):
        raise ProtocolError(f"{len(frame) - pos} trailing bytes after a distribution message")
    return DistMessage(control)


def build_message(control: tuple[Any, ...], payload: Any = None, *, has_payload: bool | None = None) -> bytes:
    """A complete framed message, length included."""
    out = bytearray(b"\0\0\0\0p")
    encode_into(control, out)
    if has_payload if has_payload is not None else control[0] in WITH_PAYLOAD:
        encode_into(payload, out)
    _len.pack_into(out, 0, len(out) - 4)
    return bytes(out)


TICK_FRAME = b"\0\0\0\0"
