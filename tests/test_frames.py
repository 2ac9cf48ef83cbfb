"""The frame reader without sockets: any split of a byte stream yields the same frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kzbridge.errors import ProtocolError
from kzbridge.wire.frames import OP_SEND, UNUSED, FrameReader, build_message, parse_message
from kzbridge.wire.terms import Atom


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(stream)]:
        pieces.append(stream[last:p])
        last = p
    return pieces


frames_st = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    frames_st,
    st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
    st.booleans(),
    st.integers(min_value=1, max_value=200),
)
def test_any_split_gives_the_same_frames(payloads, cuts, as_views, threshold):
    """Also with the big-frame hand-over: the caller finishes a detached frame from the stream itself."""
    stream = b"".join(framed(p) for p in payloads)
    expected = [p if p else None for p in payloads]
    reader = FrameReader()
    got: list[bytes | None] = []
    pending: tuple[int, bytearray] | None = None
    for piece in split(stream, cuts):
        data: bytes | memoryview = memoryview(bytearray(piece)) if as_views else piece
        while len(data):
            if pending is not None:  # receiving a detached frame in place
                n, into = pending
                take = min(n - len(into), len(data))
                into += data[:take]
                data = data[take:]
                if len(into) == n:
                    got.append(bytes(into))
                    pending = None
                continue
            frames, big = reader.feed_detaching(data, threshold)
            got.extend(frames)
            if big is not None:
                n, head = big
                assert n >= threshold and len(head) < n
                pending = (n, bytearray(head))
            data = b""
    assert pending is None and reader.buffered == 0
    assert got == expected


def test_frames_are_copies_not_views_of_the_callers_buffer():
    buf = bytearray(framed(b"abc") + framed(b"de"))
    frames = FrameReader().feed(memoryview(buf))
    buf[:] = b"\0" * len(buf)
    assert frames == [b"abc", b"de"]


def test_detached_head_is_a_view_into_the_callers_data_and_nothing_is_buffered():
    data = bytearray(framed(b"x") + struct.pack(">I", 1000) + b"head")
    reader = FrameReader()
    frames, big = reader.feed_detaching(memoryview(data), 100)
    assert frames == [b"x"] and big is not None
    n, head = big
    assert n == 1000 and bytes(head) == b"head" and head.obj is data
    assert reader.buffered == 0


def test_small_partial_frames_stay_buffered():
    reader = FrameReader()
    frames, big = reader.feed_detaching(struct.pack(">I", 10) + b"abc", 100)
    assert frames == [] and big is None and reader.buffered == 7
    assert reader.feed(b"defghij") == [b"abcdefghij"]


def test_ticks_are_none_and_oversized_frames_are_refused():
    reader = FrameReader(max_frame=50)
    assert reader.feed(b"\0\0\0\0" + framed(b"a")) == [None, b"a"]
    with pytest.raises(ProtocolError, match="exceeds"):
        reader.feed(struct.pack(">I", 51))
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader(max_frame=50).feed(framed(b"z" * 51))


def test_a_built_message_parses_back():
    msg = build_message((OP_SEND, UNUSED, Atom("rex")), (Atom("hello"), b"bin", [1000, Atom("x")]))
    (frame,) = FrameReader().feed(msg)
    parsed = parse_message(frame)
    assert parsed.control == (OP_SEND, UNUSED, Atom("rex"))
    assert parsed.payload == (Atom("hello"), b"bin", [1000, Atom("x")])
