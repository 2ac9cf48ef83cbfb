"""A fake node that knows the cookie and then misbehaves: the receiving side of the handshake in plain sockets.

It registers with EPMD (so our client finds it as ``name@127.0.0.1``), accepts one
connection, answers the v6 handshake as a real node would (status ok, challenge,
checks our digest, acks with its own), then runs ``after_handshake(conn)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kzbridge.wire.handshake import OUR_FLAGS, digest

FLAGS = OUR_FLAGS | 0x1  # published, like a normal node


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed during the handshake")
        data += chunk
    return data


def send_in_pieces(conn: socket.socket, data: bytes, piece: int = 1 << 20) -> None:
    """``data`` a piece at a time with a pause between (the receiver sees a big frame arrive in parts),
    then a pause for the receiver to answer before the peer closes."""
    for i in range(0, len(data), piece):
        conn.sendall(data[i : i + piece])
        time.sleep(0.01)
    time.sleep(0.5)


def recv_handshake_message(conn: socket.socket) -> bytes:
    n = struct.unpack(">H", recv_exact(conn, 2))[0]
    return recv_exact(conn, n)


def send_handshake_message(conn: socket.socket, msg: bytes) -> None:
    conn.sendall(struct.pack(">H", len(msg)) + msg)


class HostilePeer:
    """See the module docstring. ``error`` holds what went wrong on the peer's side, if anything."""

    def __init__(
        self,
        epmd_port: int,
        cookie: str,
        after_handshake: Callable[[socket.socket], None],
        name: str = "hostile",
        with_ack: bytes = b"",
        claimed_name: str | None = None,
        flags: int = FLAGS,
    ) -> None:
        self.cookie = cookie
        self.claimed_name = claimed_name  # the name it gives in the handshake, if not its own
        self.with_ack = with_ack  # distribution bytes sent in the same write as the ack
        self.flags = flags  # what it announces (without DFLAG_SPAWN: a peer before OTP 23)
        self.after_handshake = after_handshake
        self.node = f"{name}@127.0.0.1"
        self.error: BaseException | None = None
        self.server = socket.create_server(("127.0.0.1", 0))
        port = self.server.getsockname()[1]
        self.epmd = socket.create_connection(("127.0.0.1", epmd_port))
        raw = name.encode()
        body = struct.pack(">BHBBHHH", 120, port, 77, 0, 6, 5, len(raw)) + raw + b"\0\0"
        self.epmd.sendall(struct.pack(">H", len(body)) + body)
        reply = recv_exact(self.epmd, 2)
        if reply not in (b"y\x00", b"v\x00"):
            raise RuntimeError(f"EPMD refused the registration: {reply!r}")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
            with conn:
                send_name = recv_handshake_message(conn)
                assert send_name[:1] == b"N", send_name[:1]
                send_handshake_message(conn, b"sok")
                challenge = 0x12345678
                me = (self.claimed_name or self.node).encode()
                send_handshake_message(conn, b"N" + struct.pack(">QIIH", self.flags, challenge, 77, len(me)) + me)
                reply = recv_handshake_message(conn)
                assert reply[:1] == b"r" and reply[5:21] == digest(self.cookie, challenge), "bad digest"
                their_challenge = struct.unpack(">I", reply[1:5])[0]
                ack = b"a" + digest(self.cookie, their_challenge)
                conn.sendall(struct.pack(">H", len(ack)) + ack + self.with_ack)
                self.after_handshake(conn)
        except BaseException as exc:  # reported to the test through .error
            self.error = exc

    def close(self) -> None:
        self.epmd.close()
        self.server.close()
        self.thread.join(10)


@contextlib.contextmanager
def peers_made(epmd_port: int, cookie: str, prefix: str) -> Iterator[Callable[..., HostilePeer]]:
    """A maker of peers (``make(after_handshake, **HostilePeer options)``), each named PREFIX + random;
    on leaving, each is closed and must have seen no error on its side."""
    made: list[HostilePeer] = []

    def make(after: Callable[[socket.socket], None], **options: Any) -> HostilePeer:
        made.append(HostilePeer(epmd_port, cookie, after, name=f"{prefix}{secrets.token_hex(4)}", **options))
        return made[-1]

    yield make
    for peer in made:
        peer.close()
        assert peer.error is None, peer.error


def rpc_once(peer: HostilePeer, cookie: str, *, via: str | None = None, timeout: float = 20.0) -> Any:
    """``erlang:node()`` once through the asyncio node (by ``via``: "rex" or "spawn"), then close."""
    from kzbridge.wire.node import connect_node

    async def body() -> Any:
        n = await connect_node(peer.node, cookie, timeout=5)
        if via is not None:
            n.session.rpc_via = via
        try:
            return await n.rpc("erlang", "node", [], timeout=timeout)
        finally:
            await n.close()

    return asyncio.run(body())
