"""rpc through the distribution's spawn_request (erpc's way) and through rex, side by side.

A peer that announces DFLAG_SPAWN (OTP 23+) can take SPAWN_REQUEST of erpc:execute_call/4
(``Session.rpc_via = "spawn"``; rex stays the default, it measured faster); one without it
(older nodes, py-interface, a fake peer) takes only the gen_server call to rex. Both ways
must give the same values and the same errors, capture the same output, and time out and
lose the connection the same way. The live tests run against real OTP nodes (erl_node).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kzbridge.errors import BadRpcError, ConnectionLostError, RpcTimeoutError, UsageError
from kzbridge.wire.blocking import BlockingNode
from kzbridge.wire.codec import EncodeError
from kzbridge.wire.erpc import A_ERPC, A_EXECUTE_CALL, A_MONITOR, call_value
from kzbridge.wire.frames import (
    OP_MONITOR_P_EXIT,
    OP_PAYLOAD_MONITOR_P_EXIT,
    OP_REG_SEND,
    OP_SEND,
    OP_SPAWN_REPLY,
    OP_SPAWN_REQUEST,
    UNUSED,
    build_message,
    parse_message,
)
from kzbridge.wire.handshake import DFLAG_SPAWN, OUR_FLAGS
from kzbridge.wire.node import connect_node
from kzbridge.wire.rex import A_REX
from kzbridge.wire.session import RpcReply, Session
from kzbridge.wire.terms import Atom, ErlString, Pid, Reference

from .conftest import poll_until_async
from .peers.hostile import FLAGS, HostilePeer, peers_made, recv_exact, rpc_once, send_in_pieces
from .test_session import MODES, feed, peer_pid, sent, session, start, unframe

A_BADRPC = Atom("badrpc")
A_EXIT = Atom("EXIT")


# ---------------------------------------------------------------- without sockets


def spawning() -> Session:
    s = session()
    assert s.spawn_capable and s.rpc_via == "rex"  # rex unless asked
    s.rpc_via = "spawn"
    return s


def test_a_peer_with_the_spawn_flag_can_get_a_spawn_request_of_erpc_execute_call():
    s = spawning()
    m, f, args = Atom("erlang"), Atom("node"), [1, b"x", [Atom("y")]]
    ref, gl, output, frame, *_ = start(s, m, f, args)
    assert (s.spawn_calls, s.rex_calls, output) == (1, 0, [])
    control = (OP_SPAWN_REQUEST, ref, s.caller, gl, (A_ERPC, A_EXECUTE_CALL, 4), [A_MONITOR])
    assert frame == build_message(control, [ref, m, f, args])  # byte for byte, from the pre-encoded parts
    assert unframe(frame).payload == [ref, m, f, args]
    assert s.is_live(gl)


def test_a_peer_without_it_gets_only_the_gen_call_to_rex():
    old = session(OUR_FLAGS & ~DFLAG_SPAWN)
    assert (old.spawn_capable, old.rpc_via) == (False, "rex")
    with pytest.raises(UsageError, match="takes rex"):
        old.rpc_via = "spawn"
    _, _, _, frame, *_ = start(old, Atom("erlang"), Atom("node"), [])
    assert unframe(frame).control == (OP_REG_SEND, old.caller, UNUSED, A_REX)
    back = spawning()
    back.rpc_via = "rex"
    _, _, _, frame, *_ = start(back, Atom("erlang"), Atom("node"), [])
    assert unframe(frame).control[0] == OP_REG_SEND
    assert (back.spawn_calls, back.rex_calls) == (0, 1)


def _exit(s: Any, ref: Reference, reason: Any, payload: bool = True) -> bytes:
    if payload:
        return build_message((OP_PAYLOAD_MONITOR_P_EXIT, peer_pid(9), s.caller, ref), reason)
    return build_message((OP_MONITOR_P_EXIT, peer_pid(9), s.caller, ref, reason))


@pytest.mark.parametrize("mode", MODES)
def test_the_exit_reason_becomes_the_value_rex_would_give(mode):
    s = spawning()
    stack = [(Atom("m"), Atom("f"), 1, [])]
    refs = [start(s, Atom("m"), Atom("f"), [])[0] for _ in range(7)]
    reasons = [
        (refs[0], Atom("return"), [1000, 2]),
        (refs[1], Atom("throw"), Atom("thrown")),  # rpc gives a thrown value as the value
        (refs[2], Atom("exit"), Atom("bye")),
        (refs[3], Atom("error"), Atom("boom"), stack),
        (refs[4], Atom("error"), (A_ERPC, Atom("badarg"))),
        Atom("killed"),  # a signal: no result tuple
        (Atom("not_our_ref"), Atom("return"), 1),
    ]
    pairs = enumerate(zip(refs, reasons, strict=True))
    data = b"".join(_exit(s, ref, reason, payload=i != 2) for i, (ref, reason) in pairs)  # one MONITOR_P_EXIT
    assert feed(s, data, mode) == [
        RpcReply(refs[0], [1000, 2]),
        RpcReply(refs[1], Atom("thrown")),
        RpcReply(refs[2], (A_BADRPC, (A_EXIT, Atom("bye")))),
        RpcReply(refs[3], (A_BADRPC, (A_EXIT, (Atom("boom"), stack)))),
        RpcReply(refs[4], (A_BADRPC, (A_EXIT, Atom("badarg")))),
        RpcReply(refs[5], (A_BADRPC, (A_EXIT, Atom("killed")))),
        RpcReply(refs[6], (A_BADRPC, (A_EXIT, reasons[6]))),
    ]
    assert s._spawned == set() and s.outbox == []


@pytest.mark.parametrize("mode", MODES)
def test_spawn_replies_pass_quietly_or_fail_the_call_and_late_answers_are_dropped(mode):
    s = spawning()
    ok, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    refused, _, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    abandoned, _, _, _, key, leader = start(s, Atom("timer"), Atom("sleep"), [5000])
    s.end_call(key, leader, now=0.0)  # the driver gave up (timeout): whatever comes later is dropped
    data = (
        build_message((OP_SPAWN_REPLY, ok, s.caller, 2, peer_pid(7)))
        + build_message((OP_SPAWN_REPLY, refused, s.caller, 0, Atom("system_limit")))
        + build_message((OP_SPAWN_REPLY, abandoned, s.caller, 2, peer_pid(8)))
        + _exit(s, refused, (refused, Atom("return"), 1))  # cannot happen after a refusal; ignored
        + _exit(s, abandoned, (abandoned, Atom("return"), Atom("ok")))
        + _exit(s, ok, (ok, Atom("return"), Atom("peer@host")))
    )
    assert feed(s, data, mode) == [
        RpcReply(refused, (A_BADRPC, (A_EXIT, (Atom("spawn_request"), Atom("system_limit"))))),
        RpcReply(ok, Atom("peer@host")),
    ]
    assert s._spawned == set()


@pytest.mark.parametrize("words", [1, 2, 4, 5])
def test_a_ref_naming_us_with_other_than_three_words_is_none_of_our_spawn_calls(words):
    # The peer may send a reference of one to five ID words; one naming our node, creation and
    # form is still not ours unless it has three (as make_ref makes them): ignored, not a crash.
    s = spawning()
    ours = start(s, Atom("erlang"), Atom("node"), [])
    forged = Reference(ours.ref.node, ours.ref.ids[:words] + (7,) * (words - 3), ours.ref.creation, ours.ref.form)
    data = build_message((OP_SPAWN_REPLY, forged, s.caller, 0, Atom("system_limit"))) + _exit(
        s, forged, (forged, Atom("return"), 1)
    )
    assert feed(s, data, "whole") == []
    assert s._spawned == {ours.key}
    assert feed(s, _exit(s, ours.ref, (ours.ref, Atom("return"), 2)), "whole") == [RpcReply(ours.ref, 2)]


@pytest.mark.parametrize("mode", MODES)
def test_a_spawn_request_from_the_peer_is_refused_with_notsup(mode):
    s = session()
    req = Reference(Atom("peer@host"), (5, 6, 7), 77)
    control = (OP_SPAWN_REQUEST, req, peer_pid(3), peer_pid(4), (Atom("m"), Atom("f"), 0), [])
    assert feed(s, build_message(control, []), mode) == []
    [reply] = sent(s)
    assert reply.control == (OP_SPAWN_REPLY, req, peer_pid(3), 0, Atom("notsup"))


def test_call_value_reads_only_results_for_its_own_ref():
    ref = Reference(Atom("a@b"), (1, 2, 3), 4)
    other = Reference(Atom("a@b"), (9, 2, 3), 4)
    assert call_value(ref, (ref, Atom("return"), 5)) == 5
    assert call_value(ref, (other, Atom("return"), 5)) == (A_BADRPC, (A_EXIT, (other, Atom("return"), 5)))
    assert call_value(ref, (ref, Atom("weird"), 5)) == (A_BADRPC, (A_EXIT, (ref, Atom("weird"), 5)))
    assert call_value(ref, [ref]) == (A_BADRPC, (A_EXIT, [ref]))


# ---------------------------------------------------------------- against real nodes

CALLS: list[tuple[str, str, list[Any]]] = [
    ("erlang", "node", []),
    ("lists", "reverse", [[1, 2, 3]]),
    ("erlang", "throw", [Atom("thrown")]),
    ("erlang", "error", [Atom("boom")]),
    ("erlang", "exit", [Atom("bye")]),
    ("no_such_module", "f", [1, 2]),
    ("erlang", "atom_to_list", [1]),  # badarg raised by the applied function itself
    ("lists", "nth", [5, [1]]),  # an error further down
    ("gen_server", "call", [Atom("no_such_server"), Atom("x")]),  # noproc exit
    ("io", "format", ["~s and ~p~n", [ErlString("text"), (Atom("a"), 1)]]),  # output, and a nested apply
    ("io", "put_chars", ["plain ünïcode\n"]),
]


def outcome(n: BlockingNode, call: tuple[str, str, list[Any]]) -> tuple[Any, ...]:
    try:
        res = n.rpc_output(*call, timeout=10)
    except BadRpcError as exc:
        return ("badrpc", exc.reason, exc.message, exc.output)
    return ("ok", res.value, res.output)


async def outcome_async(n: Any, call: tuple[str, str, list[Any]]) -> tuple[Any, ...]:
    try:
        res = await n.rpc_output(*call, timeout=10)
    except BadRpcError as exc:
        return ("badrpc", exc.reason, exc.message, exc.output)
    return ("ok", res.value, res.output)


def kill_source(n: Any) -> Any:
    """Abstract forms of ``exit(self(), kill)``: the process the call runs in dies of a signal."""
    tokens = n.rpc("erl_scan", "string", ["exit(self(), kill)."])[1]
    return n.rpc("erl_parse", "parse_exprs", [tokens])[1]


def test_both_paths_give_the_same_values_errors_and_output_blocking(erl_node):
    results: dict[str, list[tuple[Any, ...]]] = {}
    for via in ("spawn", "rex"):
        with BlockingNode(erl_node.node, erl_node.cookie) as n:
            assert n.session.spawn_capable  # OTP 25 announces DFLAG_SPAWN
            n.session.rpc_via = via
            kill = ("erl_eval", "exprs", [kill_source(n), []])
            results[via] = [outcome(n, c) for c in [*CALLS, kill]]
            used = n.session.spawn_calls if via == "spawn" else n.session.rex_calls
            assert used == len(CALLS) + 3 and (n.session.spawn_calls == 0 or n.session.rex_calls == 0)
    assert results["spawn"] == results["rex"]
    by_call = dict(zip([c[1] for c in CALLS] + ["kill"], results["spawn"], strict=True))
    assert by_call["node"] == ("ok", Atom(erl_node.node), "")
    assert by_call["throw"] == ("ok", Atom("thrown"), "")
    assert by_call["format"] == ("ok", Atom("ok"), "text and {a,1}\n")
    assert by_call["put_chars"] == ("ok", Atom("ok"), "plain ünïcode\n")
    assert "undefined function no_such_module:f/2" in by_call["f"][2]
    assert by_call["kill"][1] == (A_EXIT, Atom("killed"))
    assert by_call["error"][1][1][0] == Atom("boom")


@pytest.mark.asyncio
async def test_both_paths_give_the_same_values_errors_and_output_asyncio(erl_node, open_node):
    results: dict[str, list[tuple[Any, ...]]] = {}
    for via in ("spawn", "rex"):
        n = await open_node(erl_node)
        assert n.session.spawn_capable
        n.session.rpc_via = via
        tokens = (await n.rpc("erl_scan", "string", ["exit(self(), kill)."]))[1]
        kill = ("erl_eval", "exprs", [(await n.rpc("erl_parse", "parse_exprs", [tokens]))[1], []])
        results[via] = [await outcome_async(n, c) for c in [*CALLS, kill]]
        # the same calls at once, replies matched to their callers whatever the order
        many = await asyncio.gather(*(outcome_async(n, c) for c in CALLS * 5))
        assert many == results[via][: len(CALLS)] * 5
        used = n.session.spawn_calls if via == "spawn" else n.session.rex_calls
        assert used == 2 + len(CALLS) * 6 + 1 and (n.session.spawn_calls == 0 or n.session.rex_calls == 0)
        await n.close()
    assert results["spawn"] == results["rex"]
    assert results["spawn"][-1][1] == (A_EXIT, Atom("killed"))


@pytest.mark.asyncio
async def test_spawn_path_timeout_then_the_late_answer_is_dropped(erl_node, open_node):
    n = await open_node(erl_node)
    n.session.rpc_via = "spawn"
    t0 = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        await n.rpc("timer", "sleep", [800], timeout=0.3)
    assert time.monotonic() - t0 < 0.8
    assert n.session._spawned == set()
    await asyncio.sleep(1.0)  # the call's process ends and its exit arrives for nobody
    assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)
    assert n.session._spawned == set() and n._pending == {}


def test_spawn_path_timeout_blocking(erl_node):
    with BlockingNode(erl_node.node, erl_node.cookie) as n:
        n.session.rpc_via = "spawn"
        with pytest.raises(RpcTimeoutError):
            n.rpc("timer", "sleep", [800], timeout=0.3)
        time.sleep(1.0)
        assert n.rpc("erlang", "node", []) == Atom(erl_node.node)  # the late exit was read and dropped
        assert n.session._spawned == set()


@pytest.mark.asyncio
async def test_spawn_path_node_killed_mid_call(erl_node, open_node):
    n = await open_node(erl_node)
    n.session.rpc_via = "spawn"
    call = asyncio.ensure_future(n.rpc("timer", "sleep", [30000], timeout=60))
    await poll_until_async(lambda: n.session.spawn_calls == 1, message="the call is on its way")
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    erl_node.kill()
    with pytest.raises(ConnectionLostError) as err:
        await call
    assert time.monotonic() - t0 < 5 and "timer:sleep/1" in str(err.value)


def test_spawn_path_node_killed_mid_call_blocking(erl_node):
    import threading

    with BlockingNode(erl_node.node, erl_node.cookie) as n:
        n.session.rpc_via = "spawn"
        killer = threading.Timer(0.5, erl_node.kill)
        killer.start()
        try:
            with pytest.raises(ConnectionLostError) as err:
                n.rpc("timer", "sleep", [30000], timeout=20)
        finally:
            killer.cancel()
        assert "timer:sleep/1" in str(err.value) and n.session.spawn_calls == 1


@pytest.mark.asyncio
async def test_an_old_handshake_peer_gets_rex(pyinterface_peer, open_node):
    """py-interface speaks the v5 handshake with 32-bit flags: no DFLAG_SPAWN, so rex."""
    n = await open_node(pyinterface_peer)
    assert (n.handshake_version, n.session.spawn_capable, n.session.rpc_via) == (5, False, "rex")
    with BlockingNode(pyinterface_peer.node, pyinterface_peer.cookie) as b:
        assert (b.session.spawn_capable, b.session.rpc_via) == (False, "rex")


# ---------------------------------------------------------------- fake peers

COOKIE = "spawn-cookie"


@pytest.fixture
def fake_peer(private_epmd: int) -> Iterator[Callable[..., HostilePeer]]:
    with peers_made(private_epmd, COOKIE, "fake") as make:
        yield make


def read_message(conn: socket.socket) -> Any:
    while True:
        n = struct.unpack(">I", recv_exact(conn, 4))[0]
        if n:
            return parse_message(recv_exact(conn, n))


@pytest.mark.parametrize("driver", ["asyncio", "blocking"])
def test_a_peer_without_the_spawn_flag_is_called_through_rex(fake_peer, driver):
    def rex_server(conn: socket.socket) -> None:
        msg = read_message(conn)
        assert msg.control[0] == OP_REG_SEND and msg.control[3] == A_REX, msg.control
        _, (caller, ref), call = msg.payload
        conn.sendall(build_message((OP_SEND, UNUSED, caller), (ref, (Atom("answered_by_rex"), call[1]))))
        time.sleep(0.5)

    peer = fake_peer(rex_server, flags=FLAGS & ~DFLAG_SPAWN)
    expected = (Atom("answered_by_rex"), Atom("erlang"))
    if driver == "asyncio":

        async def body() -> tuple[Any, str, int]:
            n = await connect_node(peer.node, COOKIE, timeout=5)
            try:
                assert not n.session.spawn_capable
                return await n.rpc("erlang", "node", [], timeout=5), n.session.rpc_via, n.session.rex_calls
            finally:
                await n.close()

        assert asyncio.run(body()) == (expected, "rex", 1)
    else:
        with BlockingNode(peer.node, COOKIE, timeout=5) as b:
            assert not b.session.spawn_capable
            assert (b.rpc("erlang", "node", [], timeout=5), b.session.rpc_via) == (expected, "rex")


@pytest.mark.parametrize("driver", ["asyncio", "blocking"])
def test_a_refused_spawn_and_a_garbled_exit_are_rpc_errors_not_crashes(fake_peer, driver):
    def spawner(conn: socket.socket) -> None:
        first = read_message(conn)
        assert first.control[0] == OP_SPAWN_REQUEST
        conn.sendall(build_message((OP_SPAWN_REPLY, first.control[1], first.control[2], 0, Atom("system_limit"))))
        second = read_message(conn)
        ref, caller = second.control[1], second.control[2]
        child = Pid(Atom(peer.node), 55, 0, 77)
        conn.sendall(
            build_message((OP_SPAWN_REPLY, ref, caller, 2, child))
            + build_message((OP_PAYLOAD_MONITOR_P_EXIT, child, caller, ref), {"not": [b"a result"]})
        )
        time.sleep(0.5)

    peer = fake_peer(spawner)
    if driver == "asyncio":

        async def body() -> list[str]:
            n = await connect_node(peer.node, COOKIE, timeout=5)
            n.session.rpc_via = "spawn"
            errors = []
            try:
                for _ in range(2):
                    with pytest.raises(BadRpcError) as err:
                        await n.rpc("erlang", "node", [], timeout=5)
                    errors.append(str(err.value))
                assert n.alive
            finally:
                await n.close()
            return errors

        errors = asyncio.run(body())
    else:
        errors = []
        with BlockingNode(peer.node, COOKIE, timeout=5) as b:
            b.session.rpc_via = "spawn"
            for _ in range(2):
                with pytest.raises(BadRpcError) as err:
                    b.rpc("erlang", "node", [], timeout=5)
                errors.append(str(err.value))
    assert "spawn_request: system_limit" in errors[0]
    assert "erlang:node/0 failed" in errors[1]


def test_a_big_result_comes_whole_through_the_spawn_path(fake_peer):
    """A 20 MB exit reason, sent in pieces, is received in place and decoded as the call's value."""

    def spawner(conn: socket.socket) -> None:
        msg = read_message(conn)
        assert msg.control[0] == OP_SPAWN_REQUEST, msg.control
        ref, caller = msg.control[1], msg.control[2]
        child = Pid(Atom(peer.node), 56, 0, 77)
        frame = build_message((OP_SPAWN_REPLY, ref, caller, 2, child)) + build_message(
            (OP_PAYLOAD_MONITOR_P_EXIT, child, caller, ref), (ref, Atom("return"), b"x" * (20 << 20))
        )
        send_in_pieces(conn, frame)

    peer = fake_peer(spawner)
    value = rpc_once(peer, COOKIE, via="spawn")
    assert type(value) is bytes and len(value) == 20 << 20


@pytest.mark.parametrize("via", ["rex", "spawn"])
def test_a_call_whose_arguments_cannot_be_encoded_leaves_nothing_behind(via: str) -> None:
    s = spawning()
    s.rpc_via = via
    before = (dict(s.group_leaders), set(s._spawned), s.rex_calls, s.spawn_calls)
    with pytest.raises(EncodeError):
        s.start_call(Atom("erlang"), Atom("node"), [object()])
    assert (dict(s.group_leaders), set(s._spawned), s.rex_calls, s.spawn_calls) == before


def test_pid_numbers_that_come_round_skip_the_pids_still_in_use() -> None:
    s = spawning()
    _, live_gl, _, _, *_ = start(s, Atom("erlang"), Atom("node"), [])
    mailbox = s.open_mailbox()
    s._pid_ids = itertools.count(1 << 28)  # 2^28 pids later: the numbers start again from 0
    given = [s.new_pid() for _ in range(10)]
    assert s.caller not in given and live_gl not in given and mailbox not in given
    assert len(set(given)) == 10
