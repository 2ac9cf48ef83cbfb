"""EPMD and handshake: sans-IO parsers fed whole, byte by byte and with trailing bytes; fuzzed; live."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kzbridge.errors import (
    CookieRejectedError,
    HostUnreachableError,
    KzBridgeError,
    NameInUseError,
    NodeNotRegisteredError,
    NotAllowedError,
    ProtocolError,
    VersionMismatchError,
)
from kzbridge.wire import epmd
from kzbridge.wire.handshake import (
    DFLAG_BIG_CREATION,
    DFLAG_HANDSHAKE_23,
    DFLAG_PUBLISHED,
    DFLAG_UNLINK_ID,
    DFLAG_V4_NC,
    OUR_FLAGS,
    ClientHandshake,
    State,
    digest,
    frame,
)

from .conftest import free_port

PEER_FLAGS = OUR_FLAGS | DFLAG_PUBLISHED


def port2(name: bytes, port: int = 4000, highest: int = 6) -> bytes:
    return bytes([119, 0]) + struct.pack(">HBBHHH", port, 77, 0, highest, 5, len(name)) + name + b"\0\0"


def test_port2_reply_parses_and_reports_version_range():
    info = epmd.parse_port2_reply(port2(b"kazoo_apps"))
    assert (info.name, info.port, info.highest, info.lowest) == ("kazoo_apps", 4000, 6, 5)
    assert epmd.parse_port2_reply(bytes([119, 1])) is None
    with pytest.raises(ProtocolError):
        epmd.parse_port2_reply(port2(b"kazoo_apps")[:9])
    with pytest.raises(ProtocolError):
        epmd.parse_port2_reply(b"\x00\x00")


def test_names_reply_parses():
    data = struct.pack(">I", 4369) + b"name kazoo_apps at port 11500\nname ecallmgr at port 11501\n"
    assert epmd.parse_names_reply(data) == [("kazoo_apps", 11500), ("ecallmgr", 11501)]
    with pytest.raises(ProtocolError):
        epmd.parse_names_reply(struct.pack(">I", 4369) + b"garbage here\n")


@settings(max_examples=2000)
@given(st.binary(max_size=64))
def test_fuzz_epmd_parsers(data):
    for parse in (epmd.parse_port2_reply, epmd.parse_names_reply):
        try:
            parse(data)
        except ProtocolError:
            pass


def test_request_bytes_match_the_protocol_document():
    assert epmd.port_please2_request("kazoo") == b"\x00\x06zkazoo"
    assert epmd.names_request() == b"\x00\x01n"


# ---------------------------------------------------------------- handshake, scripted peer


def new_challenge(challenge: int, name: bytes = b"peer@h", flags: int = PEER_FLAGS) -> bytes:
    return frame(b"N" + struct.pack(">QIIH", flags, challenge, 77, len(name)) + name)


def old_challenge(challenge: int, name: bytes = b"peer@h", flags: int = 0x3FFFF) -> bytes:
    return frame(b"n" + struct.pack(">HII", 5, flags & 0xFFFFFFFF, challenge) + name)


def ack(cookie: str, our_challenge: int) -> bytes:
    return frame(b"a" + digest(cookie, our_challenge))


def feed(hs: ClientHandshake, data: bytes, bytewise: bool) -> bytes:
    if not bytewise:
        return hs.feed(data)
    out = b""
    for i in range(len(data)):
        if hs.done:
            hs.leftover = data[i:]
            break
        out += hs.feed(data[i : i + 1])
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_v6_handshake_happy_path(bytewise):
    hs = ClientHandshake("kzbridge_x@h", "secret", peer_version=6, creation=1234, challenge=42)
    send_name = hs.start()
    assert send_name[2:3] == b"N"
    flags, creation, _nlen = struct.unpack(">QIH", send_name[3:17])
    assert flags & DFLAG_PUBLISHED == 0, "a hidden node must not advertise DFLAG_PUBLISHED"
    wanted = DFLAG_V4_NC | DFLAG_UNLINK_ID | DFLAG_HANDSHAKE_23 | DFLAG_BIG_CREATION
    assert flags & wanted == wanted
    assert creation == 1234 and send_name[17:] == b"kzbridge_x@h"
    assert feed(hs, frame(b"sok"), bytewise) == b""
    reply = feed(hs, new_challenge(99), bytewise)
    assert reply == frame(b"r" + struct.pack(">I", 42) + digest("secret", 99))
    trailing = b"\0\0\0\0"
    assert feed(hs, ack("secret", 42) + trailing, bytewise) == b""
    assert hs.done and hs.result.peer_name == "peer@h"
    assert hs.result.rest + getattr(hs, "leftover", b"") == trailing
    assert hs.result.flags == OUR_FLAGS & PEER_FLAGS


def test_v5_handshake_with_old_peer_and_with_complement():
    hs = ClientHandshake("kzb@h", "c", peer_version=5, creation=7, challenge=5)
    name = hs.start()
    assert name[2:3] == b"n" and struct.unpack(">H", name[3:5])[0] == 5
    assert struct.unpack(">I", name[5:9])[0] & DFLAG_HANDSHAKE_23, "OTP 25.3+ wants the OTP 23 flags in 'n'"
    hs.feed(frame(b"sok"))
    assert hs.feed(old_challenge(11))[2:3] == b"r"
    hs.feed(ack("c", 5))
    assert hs.done and hs.result.version == 5

    hs = ClientHandshake("kzb@h", "c", peer_version=5, creation=7, challenge=5)
    hs.start()
    hs.feed(frame(b"sok"))
    out = hs.feed(new_challenge(11))
    complement = frame(b"c" + struct.pack(">II", OUR_FLAGS >> 32, 7))
    assert out.startswith(complement) and out[len(complement) + 2 : len(complement) + 3] == b"r"


@pytest.mark.parametrize(
    "status,error",
    [
        (b"salive", NameInUseError),
        (b"snok", NameInUseError),
        (b"snot_allowed", NotAllowedError),
        (b"swhat", ProtocolError),
    ],
)
def test_status_refusals_have_their_own_errors(status, error):
    hs = ClientHandshake("kzb@h", "c", peer_version=6, creation=7)
    hs.start()
    with pytest.raises(error):
        hs.feed(frame(status))
    assert hs.state is State.FAILED


def test_wrong_ack_digest_is_a_cookie_error_and_close_after_reply_too():
    hs = ClientHandshake("kzb@h", "mine", peer_version=6, creation=7, challenge=5)
    hs.start()
    hs.feed(frame(b"sok") + new_challenge(3))
    with pytest.raises(CookieRejectedError):
        hs.feed(ack("theirs", 5))
    hs2 = ClientHandshake("kzb@h", "mine", peer_version=6, creation=7)
    hs2.start()
    hs2.feed(frame(b"sok") + new_challenge(3))
    assert isinstance(hs2.connection_closed(), CookieRejectedError)


def test_peer_without_extended_pids_is_refused():
    hs = ClientHandshake("kzb@h", "c", peer_version=5, creation=7)
    hs.start()
    hs.feed(frame(b"sok"))
    with pytest.raises(VersionMismatchError):
        hs.feed(old_challenge(1, flags=0))


@settings(max_examples=2000)
@given(st.binary(max_size=120), st.sampled_from([5, 6]))
def test_fuzz_handshake_gives_protocol_errors_only(data, version):
    hs = ClientHandshake("kzb@h", "c", peer_version=version, creation=7)
    hs.start()
    try:
        hs.feed(frame(b"sok") + data)
    except KzBridgeError:
        pass


# ---------------------------------------------------------------- live


def test_epmd_lookup_and_unknown_name_lists_registered(erl_node):
    info = asyncio.run(epmd.lookup(erl_node.name, "127.0.0.1"))
    assert info.highest == 6 and info.port > 0
    with pytest.raises(NodeNotRegisteredError) as err:
        asyncio.run(epmd.lookup("kazoo", "127.0.0.1"))
    assert erl_node.name in err.value.registered
    assert "registered:" in str(err.value) and erl_node.name in str(err.value)


def test_unreachable_epmd_is_a_clear_error():
    with pytest.raises(HostUnreachableError):
        asyncio.run(epmd.lookup("x", "127.0.0.1", port=free_port(), timeout=2))
