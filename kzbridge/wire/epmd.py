"""EPMD client: where does node X listen, and which names does a host have.

The request builders and reply parsers are pure (``parse_port2_reply``,
``parse_names_reply``); ``lookup`` and ``names`` are thin asyncio wrappers.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from ..errors import HostUnreachableError, NodeNotRegisteredError, ProtocolError
from .socket_errors import TIMEOUTS, describe, map_exceptions

EPMD_PORT = 4369
PORT_PLEASE2_REQ = 122
PORT2_RESP = 119
NAMES_REQ = 110


class NodeInfo(NamedTuple):  # a NamedTuple: a dataclass costs a millisecond at every start
    """What EPMD says about one node; ``highest`` picks the handshake (5 = old, 6 = OTP 23+)."""

    name: str
    port: int
    node_type: int
    protocol: int
    highest: int
    lowest: int
    extra: bytes = b""


def epmd_port() -> int:
    """The EPMD port, honouring ERL_EPMD_PORT as erl itself does."""
    value = os.environ.get("ERL_EPMD_PORT")
    return int(value) if value and value.isdigit() else EPMD_PORT


def port_please2_request(name: str) -> bytes:
    raw = name.encode("utf-8")
    return struct.pack(">HB", len(raw) + 1, PORT_PLEASE2_REQ) + raw


def names_request() -> bytes:
    return struct.pack(">HB", 1, NAMES_REQ)


def parse_port2_reply(data: bytes) -> NodeInfo | None:
    """Parse a complete PORT2_RESP (EPMD closes after it). ``None`` means "no such node"."""
    if len(data) < 2:
        raise ProtocolError(f"EPMD reply too short ({len(data)} bytes)")
    if data[0] != PORT2_RESP:
        raise ProtocolError(f"EPMD replied with unexpected code {data[0]}")
    if data[1] != 0:
        return None
    if len(data) < 12:
        raise ProtocolError("EPMD PORT2_RESP truncated")
    port, node_type, protocol, highest, lowest, nlen = struct.unpack_from(">HBBHHH", data, 2)
    end = 12 + nlen
    if len(data) < end + 2:
        raise ProtocolError("EPMD PORT2_RESP truncated in name")
    name = data[12:end].decode("utf-8", "replace")
    elen = struct.unpack_from(">H", data, end)[0]
    extra = bytes(data[end + 2 : end + 2 + elen])
    if len(extra) != elen:
        raise ProtocolError("EPMD PORT2_RESP truncated in extra")
    if highest < lowest:
        raise ProtocolError(f"EPMD reports version range {lowest}..{highest}")
    return NodeInfo(name, port, node_type, protocol, highest, lowest, extra)


def parse_names_reply(data: bytes) -> list[tuple[str, int]]:
    """Parse a NAMES_RESP: 4 bytes of EPMD port, then lines ``name N at port P``."""
    if len(data) < 4:
        raise ProtocolError("EPMD NAMES reply too short")
    out = []
    for line in data[4:].decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name" and parts[2] == "at" and parts[3] == "port" and parts[4].isdigit():
            out.append((parts[1], int(parts[4])))
        elif line.strip():
            raise ProtocolError(f"unexpected line in EPMD names reply: {line!r}")
    return out


def _exchange_blocking(host: str, request: bytes, timeout: float, port: int | None) -> bytes:
    """One request, the whole reply (EPMD closes after it), with plain sockets."""
    port = port or epmd_port()
    with map_exceptions(
        {
            TIMEOUTS: lambda exc: HostUnreachableError(
                f"EPMD on {host}:{port} did not answer within {timeout:g}s",
                hint="is the host up and the EPMD port reachable?",
                setting="address",
            ),
            OSError: lambda exc: HostUnreachableError(
                f"cannot reach EPMD on {host}:{port}: {describe(exc)}",
                hint="is an Erlang node running there, and is the EPMD port open?",
                setting="address",
            ),
        }
    ):
        sock = socket.create_connection((host, port), timeout=timeout)
    with (
        sock,
        map_exceptions(
            {
                TIMEOUTS: lambda exc: HostUnreachableError(
                    f"EPMD on {host}:{port} did not finish its reply within {timeout:g}s", setting="address"
                ),
                OSError: lambda exc: HostUnreachableError(
                    f"EPMD on {host}:{port} dropped the connection: {describe(exc)}", setting="address"
                ),
            }
        ),
    ):
        sock.sendall(request)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > 1 << 20:
                raise ProtocolError("EPMD reply larger than 1 MiB")


def _not_registered(name: str, host: str, registered: list[str]) -> NodeNotRegisteredError:
    listing = ", ".join(registered) if registered else "none"
    return NodeNotRegisteredError(
        f"no node '{name}' on host {host}; registered: {listing}", registered=registered, setting="node"
    )


def lookup_blocking(name: str, host: str, *, timeout: float = 5.0, port: int | None = None) -> NodeInfo:
    """``lookup`` without asyncio, for one-shot commands."""
    info = parse_port2_reply(_exchange_blocking(host, port_please2_request(name), timeout, port))
    if info is not None:
        return info
    try:
        registered = [n for n, _ in names_blocking(host, timeout=timeout, port=port)]
    except (ProtocolError, HostUnreachableError):
        registered = []
    raise _not_registered(name, host, registered)


def names_blocking(host: str, *, timeout: float = 5.0, port: int | None = None) -> list[tuple[str, int]]:
    return parse_names_reply(_exchange_blocking(host, names_request(), timeout, port))


# EPMD is one short request and reply per connection, so the asyncio versions run the
# blocking exchange in a worker thread rather than keep a second implementation.


async def names(host: str, *, timeout: float = 5.0, port: int | None = None) -> list[tuple[str, int]]:
    """The node names registered on ``host`` with their ports."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: names_blocking(host, timeout=timeout, port=port)
    )


async def lookup(name: str, host: str, *, timeout: float = 5.0, port: int | None = None) -> NodeInfo:
    """Port and protocol range of ``name@host``; a clear error listing the host's names if absent."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: lookup_blocking(name, host, timeout=timeout, port=port)
    )
