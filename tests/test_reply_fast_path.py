"""Session.reply_of: a rex reply read by its bytes must say what the full parse says, or nothing.

The drivers ask ``reply_of`` first and parse the frame in full (``receive(parse_message(...))``)
only when it answers ``None``. So for every frame it either agrees with the full parse (same
reference, same value) or declines; it never accepts a frame the full parse rejects.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kzbridge.errors import ProtocolError
from kzbridge.wire.codec import encode_term
from kzbridge.wire.frames import OP_SEND, OP_SEND_SENDER, UNUSED, build_message, parse_message
from kzbridge.wire.handshake import DFLAG_BIG_CREATION, OUR_FLAGS, HandshakeResult
from kzbridge.wire.session import RpcReply, Session
from kzbridge.wire.terms import Atom, Pid, Reference

from .strategies import terms
from .test_session import start

PEER = Atom("peer@host")


def session(flags: int = OUR_FLAGS) -> Session:
    return Session("kzb_test@127.0.0.1", HandshakeResult("peer@host", flags, 77, flags, 6, b""), creation=0x1234)


def rex_pid(s: Session) -> Pid:
    return Pid(PEER, 55, 0, 77, old=not s.big_creation)


def reply(s: Session, ref: Reference, value: Any, sender: Pid | None = None, to: Pid | None = None) -> bytes:
    """The frame rex sends back (without its length): SEND_SENDER {Ref, Value} to our caller."""
    return build_message((OP_SEND_SENDER, sender or rex_pid(s), to or s.caller), (ref, value))[4:]


def full(s: Session, frame: bytes) -> list[Any]:
    return list(s.receive(parse_message(frame)))


@pytest.mark.parametrize("flags", [OUR_FLAGS, OUR_FLAGS & ~DFLAG_BIG_CREATION], ids=["new", "old-creation"])
def test_a_reply_to_a_call_is_read_as_the_full_parse_reads_it(flags):
    s = session(flags)
    ref, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    frame = reply(s, ref, PEER)
    assert s.reply_of(frame) == (s.ref_bytes(ref), PEER)
    assert s.ref_bytes(ref) == encode_term(ref)
    assert full(s, frame) == [RpcReply(ref, PEER)]


@settings(max_examples=200, deadline=None)
@given(terms)
def test_any_value_comes_back_as_the_full_parse_decodes_it(value):
    s = session()
    ref, _, _, _, *_ = start(s, Atom("m"), Atom("f"), [])
    frame = reply(s, ref, value)
    key, got = s.reply_of(frame)
    [event] = full(s, frame)
    assert key == encode_term(event.ref) and got == event.value and type(got) is type(event.value)


def test_frames_that_are_not_a_reply_to_our_caller_are_left_to_the_full_parse():
    s = session()
    ref, gl, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    other_node = Pid(Atom("other@host"), 55, 0, 77)
    foreign_ref = Reference(Atom("other@host"), ref.ids, ref.creation, ref.form)
    declined = [
        reply(s, ref, PEER, to=gl),  # to a group leader, not the caller
        reply(s, ref, PEER, sender=other_node),  # from a pid of another node
        reply(s, foreign_ref, PEER),  # a reference that is not ours
        build_message((OP_SEND, UNUSED, s.caller), (ref, PEER))[4:],  # SEND without a sender
        build_message((OP_SEND_SENDER, rex_pid(s), s.caller), (ref, PEER, 1))[4:],  # a 3-tuple
        build_message((OP_SEND_SENDER, rex_pid(s), s.caller), [ref, PEER])[4:],
    ]
    for frame in declined:
        assert s.reply_of(frame) is None
    # Each of them still means what the full parse says (here: a reply, or nothing).
    assert full(s, declined[2]) == [RpcReply(foreign_ref, PEER)]
    assert full(s, declined[3]) == [RpcReply(ref, PEER)]
    assert full(s, declined[4]) == []
    # A view into a receive buffer (a big frame) is parsed in full too.
    assert s.reply_of(memoryview(reply(s, ref, PEER))) is None


@pytest.mark.parametrize("cut", ["truncated", "trailing", "bad-tag", "bad-utf8"])
def test_a_malformed_reply_is_declined_and_the_full_parse_rejects_it(cut):
    s = session()
    ref, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    frame = reply(s, ref, Atom("abc"))
    bad = {
        "truncated": frame[:-1],
        "trailing": frame + b"\x00",
        "bad-tag": frame[:-5] + b"\xff",
        "bad-utf8": frame[:-3] + b"\xff\xfe\xfd",
    }[cut]
    assert s.reply_of(bad) is None
    with pytest.raises(ProtocolError):
        full(s, bad)


@given(st.binary(max_size=40), st.integers(0, 200))
def test_garbage_spliced_into_a_reply_never_reads_as_another_value(garbage, at):
    # Whatever reply_of accepts, the full parse reads the same way.
    s = session()
    ref, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    frame = reply(s, ref, [1, 2, Atom("x")])
    at = min(at, len(frame))
    mangled = frame[:at] + garbage + frame[at:]
    got = s.reply_of(mangled)
    if got is not None:
        [event] = full(s, mangled)
        assert (got[0], got[1]) == (encode_term(event.ref), event.value)
