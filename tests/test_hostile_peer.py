"""A peer that knows the cookie and lies about frame lengths (issue 11, rule 6).

Allocation must follow the bytes that arrived, not the length announced: a 1 GB
frame header followed by a few bytes costs a few megabytes, and the connection
ends with one ConnectionLostError or ProtocolError line, never a MemoryError.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from kzbridge.errors import ConnectionLostError, ProtocolError
from kzbridge.wire.blocking import BlockingNode
from kzbridge.wire.frames import (
    DEFAULT_MAX_FRAME,
    OP_EXIT,
    OP_LINK,
    OP_SEND,
    UNUSED,
    DistMessage,
    build_message,
    parse_message,
)
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, Pid, Reference

from .peers.hostile import HostilePeer, peers_made, recv_exact, rpc_once, send_in_pieces

COOKIE = "hostile-cookie"
LIMIT = 100 << 20  # well above a few in-place buffers, far below the gigabyte announced


def announce(length: int, then: bytes = b"p\x83h\x00", linger: float = 1.0) -> Callable[[socket.socket], None]:
    """After the handshake: a frame header announcing ``length`` bytes, a few of them, then close."""

    def act(conn: socket.socket) -> None:
        conn.sendall(struct.pack(">I", length) + then)
        time.sleep(linger)

    return act


@pytest.fixture
def hostile(private_epmd: int) -> Iterator[Callable[..., HostilePeer]]:
    with peers_made(private_epmd, COOKIE, "hostile") as make:
        yield make


def peak_during(fn: Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("length", [DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME - 1, 300 << 20])
def test_asyncio_node_allocates_by_arrival_not_by_announcement(hostile, length):
    peer = hostile(announce(length))

    async def body() -> BaseException:
        n = await connect_node(peer.node, COOKIE, timeout=5)
        with pytest.raises(ConnectionLostError) as err:
            await n.rpc("erlang", "node", [], timeout=10)
        await n.close()
        return err.value

    peak, exc = peak_during(lambda: asyncio.run(body()))
    assert peak < LIMIT, f"peak {peak >> 20} MB for a frame announced at {length >> 20} MB"
    assert "\n" not in str(exc) and peer.node in str(exc)


def test_blocking_node_allocates_by_arrival_not_by_announcement(hostile):
    peer = hostile(announce(DEFAULT_MAX_FRAME))

    def body() -> BaseException:
        with BlockingNode(peer.node, COOKIE, timeout=5) as n:
            with pytest.raises(ConnectionLostError) as err:
                n.rpc("erlang", "node", [], timeout=10)
            return err.value

    peak, exc = peak_during(body)
    assert peak < LIMIT, f"peak {peak >> 20} MB"
    assert "\n" not in str(exc)


def test_a_frame_over_the_limit_is_a_protocol_error_at_once(hostile):
    peer = hostile(announce(DEFAULT_MAX_FRAME + 1, linger=5.0))

    async def body() -> None:
        n = await connect_node(peer.node, COOKIE, timeout=5)
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError) as err:
            await n.rpc("erlang", "node", [], timeout=10)
        assert time.monotonic() - t0 < 3
        assert "exceeds" in str(err.value)
        await n.close()

    asyncio.run(body())
    peer2 = hostile(announce(DEFAULT_MAX_FRAME + 1, linger=5.0))
    # The header may come with the handshake's ack (then connecting fails) or after it (then the call does).
    with pytest.raises(ProtocolError) as err, BlockingNode(peer2.node, COOKIE, timeout=5) as b:
        b.rpc("erlang", "node", [], timeout=10)
    assert "exceeds" in str(err.value)


def test_a_slow_honest_big_frame_still_arrives_whole(hostile):
    """The in-place buffer grows past its first size as bytes come, and the frame decodes."""

    def send_big(conn: socket.socket) -> None:
        # Wait for our client's rpc frame to learn its caller pid, then send it a 20 MB message in pieces.
        n = struct.unpack(">I", recv_exact(conn, 4))[0]
        msg = parse_message(recv_exact(conn, n))
        caller, ref = msg.payload[1]
        frame = build_message((OP_SEND, UNUSED, caller), (ref, b"x" * (20 << 20)))
        send_in_pieces(conn, frame)

    peer = hostile(send_big)
    value = rpc_once(peer, COOKIE)
    assert type(value) is bytes and len(value) == 20 << 20


@pytest.mark.parametrize("driver", ["asyncio", "blocking"])
def test_frames_that_come_with_the_handshake_ack_are_heard(hostile, driver):
    """A LINK to a pid of ours that does not exist, in the same write as the ack, is answered with EXIT."""
    ghost = Pid(Atom("kzbridge_ghost@127.0.0.1"), 4242, 0, 1)
    linker = Pid(Atom("hostile@127.0.0.1"), 7, 0, 77)
    answers: list[DistMessage] = []

    def expect_exit(conn: socket.socket) -> None:
        conn.settimeout(5)
        while True:
            n = struct.unpack(">I", recv_exact(conn, 4))[0]
            if n:
                msg = parse_message(recv_exact(conn, n))
                if msg.control[0] == OP_EXIT:
                    answers.append(msg)
                    return

    peer = hostile(expect_exit, with_ack=build_message((OP_LINK, linker, ghost)))
    if driver == "asyncio":

        async def body() -> None:
            n = await connect_node(peer.node, COOKIE, timeout=5)
            await asyncio.sleep(0.5)
            await n.close()

        asyncio.run(body())
    else:
        # The blocking node reads while it waits for a call's reply; this one never comes.
        with BlockingNode(peer.node, COOKIE, timeout=5) as b, pytest.raises(ConnectionLostError):
            b.rpc("erlang", "node", [], timeout=5)
    peer.thread.join(5)
    assert [m.control for m in answers] == [(OP_EXIT, ghost, linker, Atom("noproc"))]


@pytest.mark.parametrize("driver", ["asyncio", "blocking"])
@pytest.mark.parametrize("words", [1, 2, 4, 5])
def test_a_reply_whose_ref_names_us_with_other_than_three_words_is_no_reply(hostile, driver, words):
    """A reply to our caller tagged with a reference that names our node but has one, two, four
    or five ID words (ours have three) is an unknown reply, dropped; the real one still counts."""

    def answer_twice(conn: socket.socket) -> None:
        conn.settimeout(5)
        n = 0
        while not n:  # a tick is four zero bytes
            n = struct.unpack(">I", recv_exact(conn, 4))[0]
        msg = parse_message(recv_exact(conn, n))
        caller, ref = msg.payload[1]
        forged = Reference(ref.node, ref.ids[:words] + (7,) * (words - 3), ref.creation, ref.form)
        conn.sendall(
            build_message((OP_SEND, UNUSED, caller), (forged, Atom("forged")))
            + build_message((OP_SEND, UNUSED, caller), (ref, Atom("real")))
        )
        time.sleep(1.0)

    peer = hostile(answer_twice)
    if driver == "asyncio":
        value = rpc_once(peer, COOKIE, timeout=5)
    else:
        with BlockingNode(peer.node, COOKIE, timeout=5) as b:
            value = b.rpc("erlang", "node", [], timeout=5)
    assert value == Atom("real")
