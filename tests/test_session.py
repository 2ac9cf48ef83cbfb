"""The node session without sockets: frames in, frames and events out.

Frames from the "peer" are built with frames.build_message and go through the same
readers a driver uses (FrameReader, parse_message), each fed three ways (h11's rule):
whole, one byte at a time, and with the start of another frame trailing.
"""

from __future__ import annotations

import errno
import gc
import itertools
import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kzbridge.errors import (
    ConnectError,
    CookieRejectedError,
    HandshakeTimeoutError,
    HostUnreachableError,
    ProtocolError,
    UsageError,
)
from kzbridge.wire.codec import EncodeError, decode_at, encode_term
from kzbridge.wire.epmd import NodeInfo
from kzbridge.wire.frames import (
    OP_DEMONITOR_P,
    OP_EXIT,
    OP_EXIT2,
    OP_GROUP_LEADER,
    OP_LINK,
    OP_MONITOR_P,
    OP_MONITOR_P_EXIT,
    OP_PAYLOAD_EXIT,
    OP_REG_SEND,
    OP_SEND,
    OP_SEND_SENDER,
    OP_SPAWN_REQUEST,
    OP_UNLINK_ID,
    OP_UNLINK_ID_ACK,
    UNUSED,
    DistMessage,
    FrameReader,
    build_message,
    parse_message,
)
from kzbridge.wire.handshake import DFLAG_BIG_CREATION, DFLAG_SEND_SENDER, DFLAG_SPAWN, OUR_FLAGS, HandshakeResult
from kzbridge.wire.io_protocol import A_IO_REPLY, A_IO_REQUEST
from kzbridge.wire.rex import A_CALL, A_GEN_CALL, A_REX, RpcResult
from kzbridge.wire.session import (
    GROUP_LEADER_GRACE,
    ConnectPlan,
    Deliver,
    Message,
    Output,
    RpcReply,
    Session,
)
from kzbridge.wire.socket_errors import map_exceptions
from kzbridge.wire.terms import Atom, ErlString, Pid, Reference

PEER = Atom("peer@host")
A_OK = Atom("ok")
A_NOPROC = Atom("noproc")


def session(flags: int = OUR_FLAGS) -> Session:
    return Session("kzb_test@127.0.0.1", HandshakeResult("peer@host", flags, 77, flags, 6, b""), creation=0x1234)


def peer_pid(n: int) -> Pid:
    return Pid(PEER, n, 0, 77)


MODES = ["whole", "bytewise", "trailing"]
TRAILING = build_message((OP_SEND, UNUSED, peer_pid(99)), Atom("next"))[:7]


def feed(s: Session, data: bytes, mode: str) -> list[Any]:
    """Split ``data`` into frames as a driver does and hand each message to the session."""
    reader = FrameReader()
    events: list[Any] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
    if mode == "trailing":
        chunks = [data + TRAILING]
    for chunk in chunks:
        for frame in reader.feed(chunk):
            assert frame is not None
            events.extend(s.receive(parse_message(frame)))
    assert reader.buffered == (len(TRAILING) if mode == "trailing" else 0)
    return events


def sent(s: Session) -> list[DistMessage]:
    """The frames the session queued, parsed back (and the outbox emptied)."""
    out = FrameReader().feed(s.data_to_send())
    assert s.outbox == []
    return [parse_message(f) for f in out if f is not None]


class Started(NamedTuple):
    """What ``start_call`` gave, with the call's ref and group leader as the terms the peer sees."""

    ref: Reference
    gl: Pid
    output: list[str]
    frame: bytes
    key: bytes  # the ref, encoded, as start_call names the call
    leader: int  # the group leader's number


def start(s: Session, m: Atom, f: Atom, args: list[Any]) -> Started:
    key, leader, output, frame = s.start_call(m, f, args)
    ref, end = decode_at(key, 0)
    gl = s.own_pid(leader)
    assert end == len(key) and s.ref_bytes(ref) == key and s.own_number(gl) == leader
    return Started(ref, gl, output, frame, key, leader)


def unframe(frame: bytes) -> DistMessage:
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    return parse_message(frame[4:])


# ---------------------------------------------------------------- rpc


def test_rpc_frame_is_the_gen_call_to_rex_that_the_term_form_encodes():
    s = session(OUR_FLAGS & ~DFLAG_SPAWN)  # a peer before OTP 23 (spawn_request: tests/test_spawn_rpc.py)
    assert s.rpc_via == "rex"
    m, f, args = Atom("erlang"), Atom("node"), [1, b"x", [Atom("y")]]
    ref, gl, output, frame, *_ = start(s, m, f, args)
    assert output == []
    msg = unframe(frame)
    assert msg.control == (OP_REG_SEND, s.caller, UNUSED, A_REX)
    assert msg.payload == (A_GEN_CALL, (s.caller, ref), (A_CALL, m, f, args, gl))
    assert frame == build_message(
        (OP_REG_SEND, s.caller, UNUSED, A_REX), (A_GEN_CALL, (s.caller, ref), (A_CALL, m, f, args, gl))
    )
    assert s.is_live(gl) and gl != s.caller


@pytest.mark.parametrize("mode", MODES)
def test_rex_reply_becomes_an_rpc_reply_event(mode):
    s = session(OUR_FLAGS & ~DFLAG_SPAWN)
    ref, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    other, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    data = build_message((OP_SEND, UNUSED, s.caller), (other, Atom("second"))) + build_message(
        (OP_SEND_SENDER, peer_pid(5), s.caller), (ref, [1000, 2])
    )
    assert feed(s, data, mode) == [RpcReply(other, Atom("second")), RpcReply(ref, [1000, 2])]
    assert s.outbox == []


@pytest.mark.parametrize("mode", MODES)
def test_messages_to_our_caller_that_are_no_replies_are_dropped(mode):
    s = session()
    data = (
        build_message((OP_SEND, UNUSED, s.caller), Atom("garbage"))
        + build_message((OP_SEND, UNUSED, s.caller), ([1000, 2], Atom("unhashable_key")))
        + build_message((OP_SEND, UNUSED, peer_pid(3)), Atom("to a pid we never made"))
    )
    assert feed(s, data, mode) == []
    assert s.outbox == []


def test_pids_and_refs_are_fresh_and_take_the_peers_creation_form():
    s = session()
    assert len({s.new_pid() for _ in range(100)} | {s.caller}) == 101
    assert len({s.make_ref() for _ in range(100)}) == 100
    assert s.caller.creation == 0x1234 and not s.caller.old and s.make_ref().form == 90
    old = session(OUR_FLAGS & ~DFLAG_BIG_CREATION)
    assert old.caller.old and old.caller.creation in (1, 2, 3) and old.make_ref().form == 114


@pytest.mark.parametrize("flags", [OUR_FLAGS, OUR_FLAGS & ~DFLAG_BIG_CREATION], ids=["big-creation", "old-creation"])
def test_call_frames_from_pre_encoded_parts_equal_the_generic_encoding(flags):
    s = session(flags)
    m, f, args = Atom("lists"), Atom("seq"), [1, 3]
    for via in ("rex", "spawn"):
        s.rpc_via = via
        ref, gl, _, frame, *_ = start(s, m, f, args)
        if via == "rex":
            expected = build_message(
                (OP_REG_SEND, s.caller, UNUSED, A_REX), (A_GEN_CALL, (s.caller, ref), (A_CALL, m, f, args, gl))
            )
        else:
            control = (OP_SPAWN_REQUEST, ref, s.caller, gl, (Atom("erpc"), Atom("execute_call"), 4), [Atom("monitor")])
            expected = build_message(control, [ref, m, f, args])
        assert frame == expected


def test_pids_stay_unique_past_the_15_bits_of_their_id():
    """One group leader per call: after 32768 calls the ID wraps and the Serial counts on."""
    s = session()
    pids = {s.new_pid() for _ in range(40_000)}
    assert len(pids) == 40_000 and all(p.id <= 0x7FFF and p.serial <= 0x1FFF for p in pids)


# ---------------------------------------------------------------- io requests


def io_request(to: Pid, request: Any, sender: Pid | None = None, reply_as: Any = Atom("r1")) -> bytes:
    return build_message((OP_SEND, UNUSED, to), (A_IO_REQUEST, sender or peer_pid(7), reply_as, request))


@pytest.mark.parametrize("mode", MODES)
def test_io_request_is_answered_and_its_text_emitted(mode):
    s = session()
    _, gl, _, _, _, leader = start(s, Atom("io"), Atom("put_chars"), [])
    data = io_request(gl, (Atom("put_chars"), Atom("unicode"), ErlString("héllo\n")))
    assert feed(s, data, mode) == [Output(leader, "héllo\n")]
    [reply] = sent(s)
    assert reply.control == (OP_SEND_SENDER, gl, peer_pid(7))
    assert reply.payload == (A_IO_REPLY, Atom("r1"), A_OK)


def test_io_reply_is_a_plain_send_when_the_peer_lacks_send_sender():
    s = session(OUR_FLAGS & ~DFLAG_SEND_SENDER)
    _, gl, _, _, _, leader = start(s, Atom("io"), Atom("put_chars"), [])
    assert feed(s, io_request(gl, (Atom("put_chars"), b"x")), "whole") == [Output(leader, "x")]
    [reply] = sent(s)
    assert reply.control == (OP_SEND, UNUSED, peer_pid(7))


@pytest.mark.parametrize("mode", MODES)
def test_io_request_that_needs_an_apply_round_trip(mode):
    s = session()
    main, gl, output, _, _, leader = start(s, Atom("io"), Atom("format"), [])
    fmt_args = [ErlString("~p~n"), [(Atom("a"), 1)]]
    request = (Atom("put_chars"), Atom("unicode"), Atom("io_lib"), Atom("format"), fmt_args)
    assert feed(s, io_request(gl, request), mode) == []
    [apply] = sent(s)
    assert apply.control == (OP_REG_SEND, s.caller, UNUSED, A_REX)
    tag, (caller, apply_ref), call = apply.payload
    assert tag == A_GEN_CALL and caller == s.caller and apply_ref != main
    assert call == (A_CALL, Atom("io_lib"), Atom("format"), fmt_args, gl)
    # The node answers the formatting call; the session resumes the request instead of reporting a reply.
    events = feed(s, build_message((OP_SEND, UNUSED, s.caller), (apply_ref, [ErlString("{a,1}"), 10])), mode)
    assert events == [Output(leader, "{a,1}\n")] and output == ["{a,1}\n"]
    [reply] = sent(s)
    assert reply.payload == (A_IO_REPLY, Atom("r1"), A_OK)
    # A later reply with the same ref is an ordinary (unknown) reply for the driver to drop.
    assert feed(s, build_message((OP_SEND, UNUSED, s.caller), (apply_ref, A_OK)), mode) == [RpcReply(apply_ref, A_OK)]


def test_io_request_whose_apply_fails_is_answered_with_the_error():
    s = session()
    _, gl, _, _, *_ = start(s, Atom("io"), Atom("format"), [])
    request = (Atom("put_chars"), Atom("unicode"), Atom("io_lib"), Atom("format"), [b"~p", []])
    feed(s, io_request(gl, request), "whole")
    [apply] = sent(s)
    apply_ref = apply.payload[1][1]
    reason = (Atom("EXIT"), Atom("badarg"))
    assert feed(s, build_message((OP_SEND, UNUSED, s.caller), (apply_ref, (Atom("badrpc"), reason))), "whole") == []
    [reply] = sent(s)
    assert reply.payload == (A_IO_REPLY, Atom("r1"), (Atom("error"), reason))


def test_io_requests_batch_and_unknown_requests():
    s = session()
    _, gl, _, _, _, leader = start(s, Atom("io"), Atom("put_chars"), [])
    batch = (Atom("requests"), [(Atom("put_chars"), b"a"), (Atom("put_chars"), Atom("unicode"), b"b")])
    assert feed(s, io_request(gl, batch) + io_request(gl, Atom("bogus_request"), reply_as=2), "whole") == [
        Output(leader, "a"),
        Output(leader, "b"),
    ]
    first, second = sent(s)
    assert first.payload == (A_IO_REPLY, Atom("r1"), A_OK)
    assert second.payload == (A_IO_REPLY, 2, (Atom("error"), Atom("request")))


def test_group_leaders_stay_ours_for_a_grace_period_after_the_call():
    s = session()
    call = start(s, Atom("io"), Atom("format"), [])
    request = (Atom("put_chars"), Atom("unicode"), Atom("io_lib"), Atom("format"), [b"x", []])
    feed(s, io_request(call.gl, request), "whole")
    sent(s)  # its formatting is an apply the node has not answered
    s.end_call(call.key, call.leader, now=100.0)
    assert s.is_live(call.gl) and s._applies

    def end_another(now: float) -> Started:
        other = start(s, Atom("erlang"), Atom("node"), [])
        s.end_call(other.key, other.leader, now=now)
        return other

    end_another(100.0 + GROUP_LEADER_GRACE - 0.01)
    end_another(100.0 + GROUP_LEADER_GRACE + 0.01)  # a turn: the call's leader is in the period before
    assert s.is_live(call.gl) and s._applies
    last = end_another(100.0 + 2 * GROUP_LEADER_GRACE + 0.02)  # the next turn drops it, and its apply
    assert not s.is_live(call.gl) and s.is_live(last.gl)
    assert feed(s, io_request(call.gl, (Atom("put_chars"), b"late")), "whole") == []
    assert s.outbox == [] and s._applies == {}


@pytest.mark.parametrize("phase", [0.01, 2.5, GROUP_LEADER_GRACE - 0.01])
def test_a_retired_group_leader_stays_ours_a_whole_grace_period_whenever_the_periods_turn(phase):
    s = session()
    first = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(first.key, first.leader, now=100.0 - phase)  # the periods turn at 100 - phase + k * GRACE
    call = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(call.key, call.leader, now=100.0)
    now = 100.0
    while now < 100.0 + GROUP_LEADER_GRACE:  # other calls ending at any moment of the grace period
        other = start(s, Atom("erlang"), Atom("node"), [])
        s.end_call(other.key, other.leader, now=now)
        assert s.is_live(call.gl), now
        now += 0.25
    for now in (100.0 + 2 * GROUP_LEADER_GRACE + 0.01, 100.0 + 3 * GROUP_LEADER_GRACE + 0.02):
        other = start(s, Atom("erlang"), Atom("node"), [])
        s.end_call(other.key, other.leader, now=now)
    assert not s.is_live(call.gl) and not s.is_live(first.gl)
    assert len(s._retired) + len(s._retired_before) <= 2


def test_a_leader_retired_just_before_a_turn_stays_ours_a_whole_grace_period():
    s = session()
    first = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(first.key, first.leader, now=100.0)
    retired_at = s._retire_turn - 1e-6  # the last moment before the periods turn
    call = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(call.key, call.leader, now=retired_at)
    for step in range(int(GROUP_LEADER_GRACE / 0.01)):
        other = start(s, Atom("erlang"), Atom("node"), [])
        s.end_call(other.key, other.leader, now=retired_at + step * 0.01)
        assert s.is_live(call.gl), step * 0.01


def test_numbers_that_come_round_skip_retired_group_leaders_in_both_periods():
    s = session()
    before = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(before.key, before.leader, now=100.0)
    latest = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(latest.key, latest.leader, now=100.0 + GROUP_LEADER_GRACE)  # a turn between the two
    assert before.leader in s._retired_before and latest.leader in s._retired
    s._pid_ids = itertools.count(1 << 28)  # 2^28 pids later: the numbers start again from 0
    given = {start(s, Atom("erlang"), Atom("node"), []).leader for _ in range(10)}
    assert len(given) == 10 and before.leader not in given and latest.leader not in given


def test_finished_calls_leave_nothing_for_the_garbage_collector():
    # A finished call's group leader stays ours for the grace period; kept as Pid objects that was
    # four tracked objects per call, and at thousands of calls/s collections over them stalled calls.
    s = session()

    def tracked_after(calls: int) -> int:
        for i in range(calls):
            call = start(s, Atom("erlang"), Atom("node"), [])
            s.end_call(call.key, call.leader, now=100.0 + i * 1e-4)  # all within GROUP_LEADER_GRACE of each other
        gc.collect()
        return len(gc.get_objects())

    first = tracked_after(100)
    assert tracked_after(5000) - first < 50
    _, gl, _, _, key, leader = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(key, leader, now=101.0)
    assert s.is_live(gl) and leader not in s.group_leaders  # still ours, as a number
    assert s.is_live(Pid(gl.node, gl.id, gl.serial, gl.creation, gl.old))  # the same pid, decoded anew
    assert not s.is_live(Pid(Atom("other@host"), gl.id, gl.serial, gl.creation, gl.old))
    # A pid naming us with an ID new_pid never makes (over 15 bits) must not alias a retired one:
    # <us.32773.0> is not <us.5.1>.
    s._pid_ids = itertools.count(5 | 1 << 15)
    _, gl, _, _, key, leader = start(s, Atom("erlang"), Atom("node"), [])
    s.end_call(key, leader, now=102.0)
    assert (gl.id, gl.serial) == (5, 1) and s.is_live(gl)
    assert not s.is_live(Pid(gl.node, 5 | 1 << 15, 0, gl.creation, gl.old))


def test_an_rpc_result_is_no_tuple():
    # Returned by rpc_output: a tuple would encode as an Erlang tuple and equal a plain one.
    result = RpcResult(Atom("ok"), "printed")
    assert result == RpcResult(Atom("ok"), "printed") and result != (Atom("ok"), "printed")
    assert repr(result) == "RpcResult(value=Atom('ok'), output='printed')"
    with pytest.raises(EncodeError):
        encode_term(result)
    match result:
        case RpcResult(value, output):
            assert (value, output) == (Atom("ok"), "printed")


# ---------------------------------------------------------------- control messages


@pytest.mark.parametrize("mode", MODES)
def test_monitor_of_a_dead_pid_is_answered_with_monitor_p_exit(mode):
    s = session()
    live = s.open_mailbox()
    dead = Pid(s.caller.node, 999, 0, s.caller.creation)
    ref1, ref2 = Reference(PEER, (1, 2, 3), 77), Reference(PEER, (4, 5, 6), 77)
    data = build_message((OP_MONITOR_P, peer_pid(1), dead, ref1)) + build_message(
        (OP_MONITOR_P, peer_pid(1), live, ref2)
    )
    assert feed(s, data, mode) == []
    [answer] = sent(s)
    assert answer.control == (OP_MONITOR_P_EXIT, dead, peer_pid(1), ref1, A_NOPROC)


@pytest.mark.parametrize("mode", MODES)
def test_unlink_id_is_acknowledged(mode):
    s = session()
    mb = s.open_mailbox()
    assert feed(s, build_message((OP_UNLINK_ID, 42, peer_pid(1), mb)), mode) == []
    [ack] = sent(s)
    assert ack.control == (OP_UNLINK_ID_ACK, 42, mb, peer_pid(1))


@pytest.mark.parametrize("mode", MODES)
def test_link_to_a_dead_pid_is_answered_with_exit(mode):
    s = session()
    live = s.open_mailbox()
    dead = Pid(s.caller.node, 998, 0, s.caller.creation)
    data = build_message((OP_LINK, peer_pid(1), dead)) + build_message((OP_LINK, peer_pid(1), live))
    assert feed(s, data, mode) == []
    [exit_] = sent(s)
    assert exit_.control == (OP_EXIT, dead, peer_pid(1), A_NOPROC)


@pytest.mark.parametrize("mode", MODES)
def test_unknown_and_uninteresting_controls_are_ignored(mode):
    s = session()
    mb = s.open_mailbox()
    data = (
        build_message((OP_GROUP_LEADER, peer_pid(1), mb))
        + build_message((99, Atom("future"), 1))
        + build_message((OP_DEMONITOR_P, peer_pid(1), mb, Reference(PEER, (1, 2, 3), 77)))
        + build_message((OP_REG_SEND, peer_pid(1), UNUSED, Atom("nobody")), Atom("hi"))
    )
    assert feed(s, data, mode) == []
    assert s.outbox == []


@pytest.mark.parametrize("mode", MODES)
def test_monitors_exits_and_messages_reach_mailboxes(mode):
    s = session()
    mb = s.open_mailbox()
    ref, frame = s.monitor_frame(mb, peer_pid(4))
    assert unframe(frame).control == (OP_MONITOR_P, mb, peer_pid(4), ref)
    data = (
        build_message((OP_MONITOR_P_EXIT, peer_pid(4), mb, ref, Atom("killed")))
        + build_message((OP_EXIT2, peer_pid(5), mb, Atom("bye")))
        + build_message((OP_PAYLOAD_EXIT, peer_pid(6), mb), Atom("payload_reason"))
        + build_message((OP_SEND_SENDER, peer_pid(7), mb), (Atom("chunk"), b"data"))
    )
    events = feed(s, data, mode)
    assert events[:3] == [
        Deliver(mb, (Atom("DOWN"), ref, Atom("process"), peer_pid(4), Atom("killed"))),
        Deliver(mb, (Atom("EXIT"), peer_pid(5), Atom("bye"))),
        Deliver(mb, (Atom("EXIT"), peer_pid(6), Atom("payload_reason"))),
    ]
    assert type(events[3]) is Message and events[3].to == mb
    assert events[3].msg.payload == (Atom("chunk"), b"data")
    # A second DOWN for the same ref, and signals to a closed mailbox, go nowhere.
    s.close_mailbox(mb)
    assert feed(s, data, mode) == []


def test_send_frames():
    s = session()
    mb = s.open_mailbox()
    assert unframe(s.send_frame(peer_pid(1), 1, sender=mb)).control == (OP_SEND_SENDER, mb, peer_pid(1))
    assert unframe(s.send_frame(peer_pid(1), 1)).control == (OP_SEND, UNUSED, peer_pid(1))
    assert unframe(session(OUR_FLAGS & ~DFLAG_SEND_SENDER).send_frame(peer_pid(1), 1, sender=mb)).control == (
        OP_SEND,
        UNUSED,
        peer_pid(1),
    )
    assert unframe(s.reg_send_frame(Atom("echo"), 2)).control == (OP_REG_SEND, s.caller, UNUSED, Atom("echo"))
    assert unframe(s.exit_frame(peer_pid(1), Atom("kill"))).control == (OP_EXIT2, s.caller, peer_pid(1), Atom("kill"))
    assert unframe(s.link_frame(mb, peer_pid(1))).control == (OP_LINK, mb, peer_pid(1))


controls = st.tuples(st.integers(0, 40)).flatmap(
    lambda op: st.lists(
        st.one_of(st.integers(), st.binary(max_size=3), st.just(Atom("x")), st.just([1]), st.just(peer_pid(1))),
        max_size=5,
    ).map(lambda rest: op + tuple(rest))
)


@settings(max_examples=500)
@given(controls, st.one_of(st.none(), st.integers(), st.tuples(st.integers(), st.integers())))
def test_fuzz_any_control_tuple_is_handled_or_a_protocol_error(control, payload):
    s = session()
    frame = build_message(control, payload)
    try:
        s.receive(parse_message(frame[4:]))
    except ProtocolError:
        pass


# ---------------------------------------------------------------- connect plan and error mapping


def test_connect_plan_checks_the_cookie_and_picks_the_version():
    with pytest.raises(UsageError) as err:
        ConnectPlan("a@b", "", timeout=1)
    assert err.value.setting == "cookie" and "--" not in str(err.value)
    with pytest.raises(UsageError):
        ConnectPlan("no-at-sign", "c", timeout=1)
    plan = ConnectPlan("kazoo_apps@kazoo1", "c", timeout=1)
    assert (plan.name, plan.host) == ("kazoo_apps", "kazoo1")
    hs6 = plan.handshake(NodeInfo("kazoo_apps", 4000, 77, 0, 6, 5), "10.0.0.1")
    assert hs6.version == 6 and plan.own_name.startswith("kzbridge_") and hs6.own_name == plan.own_name
    assert plan.handshake(NodeInfo("kazoo_apps", 4000, 77, 0, 5, 5), "10.0.0.1").version == 5
    assert plan.creation & 4 and 0 < plan.remaining() <= 1


def test_connect_errors_are_translated_once_with_the_cause_kept():
    plan = ConnectPlan("n@h", "c", timeout=2)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    with pytest.raises(HostUnreachableError) as err, map_exceptions(plan.tcp_errors(4000)):
        raise refused
    assert err.value.__cause__ is refused and "Connection refused" in str(err.value)
    with pytest.raises(HandshakeTimeoutError) as err2, map_exceptions(plan.tcp_errors(4000)):
        raise TimeoutError("timed out")
    assert err2.value.setting == "timeout"
    # the handshake's own connect errors pass unchanged
    with pytest.raises(CookieRejectedError), map_exceptions(plan.handshake_errors()):
        raise CookieRejectedError("rejected")
    with pytest.raises(ConnectError) as err3, map_exceptions(plan.handshake_errors()):
        raise ProtocolError("junk")
    assert type(err3.value) is ConnectError and "handshake failed: junk" in str(err3.value)
    with pytest.raises(ConnectError) as err4, map_exceptions(plan.handshake_errors()):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert "connection failed during the handshake" in str(err4.value)
    # what the mapping does not name is not ours to translate
    with pytest.raises(KeyError), map_exceptions(plan.handshake_errors()):
        raise KeyError("bug")
