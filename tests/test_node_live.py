"""The wire against real BEAM nodes (Debian's OTP) and an independent v5 node (py-interface)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings

from kzbridge import connect, connect_sync
from kzbridge.errors import (
    BadRpcError,
    ConnectionLostError,
    CookieRejectedError,
    KzBridgeError,
    NotAllowedError,
    RpcTimeoutError,
)
from kzbridge.wire.codec import binary_to_term, term_to_binary
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, ErlString, Pid

from .conftest import poll_until_async
from .strategies import terms
from .test_codec import canon


class LiveNode:
    """One connection kept open across many Hypothesis examples (on its own loop)."""

    def __init__(self, node: str, cookie: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.node = self.loop.run_until_complete(connect_node(node, cookie))

    def rpc(self, *args, **kw):
        return self.loop.run_until_complete(self.node.rpc(*args, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.node.close())
        self.loop.close()


@pytest.fixture(scope="module")
def live(shared_erl_node):
    conn = LiveNode(shared_erl_node.node, shared_erl_node.cookie)
    yield conn
    conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(terms)
def test_python_encoded_terms_decode_on_the_node_as_expected(live, term):
    # The node decodes our bytes, then hands the term back through its own encoder.
    back = live.rpc("erlang", "binary_to_term", [term_to_binary(term)])
    assert canon(back) == canon(term)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(terms)
def test_node_encoded_terms_reencode_byte_identically(live, term):
    node_bytes = live.rpc("erlang", "term_to_binary", [term, [(Atom("minor_version"), 2)]])
    assert term_to_binary(binary_to_term(node_bytes)) == node_bytes


def test_node_made_identifiers_and_funs_round_trip_byte_exactly(live):
    src = (
        "[self(), make_ref(), hd(erlang:ports()), fun lists:map/2, fun(X) -> X end, "
        "maps:from_list([{I, I} || I <- lists:seq(1, 40)]), <<1:3>>, 1 bsl 2100, 'ñ∂', \"héllo\", 1.0e300]."
    )
    tokens = live.rpc("erl_scan", "string", [src])[1]
    forms = live.rpc("erl_parse", "parse_exprs", [tokens])[1]
    value = live.rpc("erl_eval", "exprs", [forms, []])[1]
    node_bytes = live.rpc("erlang", "term_to_binary", [value, [(Atom("minor_version"), 2)]])
    decoded = binary_to_term(node_bytes)
    assert term_to_binary(decoded) == node_bytes
    assert type(decoded[0]) is Pid and decoded[9] == "héllo"
    assert len(decoded[5]) == 40


@pytest.mark.asyncio
async def test_rpc_values_output_and_errors(erl_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)
        assert await n.rpc("lists", "reverse", [[1, 2, 3]]) == ErlString("\x03\x02\x01")
        res = await n.rpc_output("io", "format", ["~s and ~p~n", [ErlString("text"), (Atom("a"), 1)]])
        assert res.value == Atom("ok") and res.output == "text and {a,1}\n"
        res = await n.rpc_output("io", "put_chars", ["plain ünïcode\n"])
        assert res.output == "plain ünïcode\n"
        with pytest.raises(BadRpcError) as err:
            await n.rpc("no_such_module", "f", [1, 2])
        assert "undefined function no_such_module:f/2" in str(err.value)
        with pytest.raises(BadRpcError) as err:
            await n.rpc("gen_server", "call", [Atom("kz_data_tracing"), Atom("status")])
        assert "noproc" in str(err.value)
        with pytest.raises(BadRpcError) as err:
            await n.rpc("erlang", "error", [Atom("boom")])
        assert "boom" in str(err.value) and err.value.reason[0] == Atom("EXIT")
        assert await n.rpc("erlang", "throw", [Atom("thrown")]) == Atom("thrown")


@pytest.mark.asyncio
async def test_large_replies_are_received_whole_and_their_buffer_is_not_kept(erl_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        proto = n.conn.protocol
        for size in (5 << 20, 40 << 20, 5 << 20, 100_000):
            value = await n.rpc("binary", "copy", [b"ab", size // 2])
            assert type(value) is bytes and len(value) == size and value[:4] == b"abab" and value[-2:] == b"ab"
            # kept for the next file chunk up to 16 MB; a one-off 40 MB reply's buffer is let go
            assert len(proto._big_store) <= proto.KEEP_BIG
        assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)


@pytest.mark.asyncio
async def test_timeout_many_concurrent_calls_and_sync_wrapper(erl_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        with pytest.raises(RpcTimeoutError):
            await n.rpc("timer", "sleep", [2000], timeout=0.3)
        results = await asyncio.gather(*(n.rpc("erlang", "abs", [-i]) for i in range(100)))
        assert results == list(range(100))
        assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)

    with connect_sync(erl_node.node, erl_node.cookie) as s:
        assert s.rpc("erlang", "abs", [-5]) == 5


@pytest.mark.asyncio
async def test_monitor_link_and_exit_signals(erl_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        mb = n.mailbox()
        target = await n.rpc("erlang", "spawn", [Atom("timer"), Atom("sleep"), [Atom("infinity")]])
        ref = n.monitor(mb, target)
        n.exit(target, Atom("kill"))
        down = await mb.receive(5)
        assert down[0] == Atom("DOWN") and down[1] == ref and down[4] == Atom("killed")
        gone = n.monitor(mb, target)
        assert (await mb.receive(5))[1] == gone  # monitoring a dead pid: DOWN at once (noproc)
        linked = await n.rpc("erlang", "spawn", [Atom("timer"), Atom("sleep"), [Atom("infinity")]])
        n.link(mb, linked)

        async def link_in_place():
            links = await n.rpc("erlang", "process_info", [linked, Atom("links")])
            return mb.pid in links[1]

        await poll_until_async(link_in_place)
        n.exit(linked, Atom("bye"))
        ex = await mb.receive(5)
        assert ex[0] == Atom("EXIT") and ex[1] == linked and ex[2] == Atom("bye")
        # A remote process links to us, unlinks (UNLINK_ID, which we must ack), then messages us.
        src = "link(Owner), unlink(Owner), Owner ! {done, self()}."
        tokens = (await n.rpc("erl_scan", "string", [src]))[1]
        forms = (await n.rpc("erl_parse", "parse_exprs", [tokens]))[1]
        await n.rpc("erlang", "spawn", [Atom("erl_eval"), Atom("exprs"), [forms, [(Atom("Owner"), mb.pid)]]])
        assert (await mb.receive(5))[0] == Atom("done")
        assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)


@pytest.mark.asyncio
async def test_wrong_cookie_is_rejected(erl_node, open_node):
    with pytest.raises(CookieRejectedError):
        await open_node(erl_node, "not-the-cookie")


@pytest.mark.asyncio
async def test_not_allowed(erl_node, open_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        await n.rpc("net_kernel", "allow", [[Atom("somebody@127.0.0.1")]])
    with pytest.raises(NotAllowedError):
        await open_node(erl_node, timeout=5)


@pytest.mark.asyncio
async def test_peer_killed_mid_call_fails_fast(erl_node, open_node):
    n = await open_node(erl_node)
    sent = n.calls_made
    call = asyncio.ensure_future(n.rpc("timer", "sleep", [30000], timeout=60))
    await poll_until_async(lambda: n.calls_made > sent, message="the call is on its way")
    t0 = time.monotonic()
    erl_node.kill()
    with pytest.raises(ConnectionLostError) as err:
        await call
    assert time.monotonic() - t0 < 5
    assert "timer:sleep/1" in str(err.value)
    with pytest.raises(ConnectionLostError):
        await n.rpc("erlang", "node", [])


def _all_threads_stopped(pid: int) -> bool:
    tasks = os.listdir(f"/proc/{pid}/task")
    return all(open(f"/proc/{pid}/task/{t}/stat").read().rsplit(") ", 1)[1][:1] in "tT" for t in tasks)


@pytest.mark.asyncio
async def test_peer_that_stops_ticking_is_declared_lost(erl_node, open_node):
    n = await open_node(erl_node, ticktime=2.0)
    os.kill(erl_node.pid, signal.SIGSTOP)
    try:
        # SIGSTOP reaches a busy BEAM's threads a moment later: a call sent at once could
        # still be answered (it was, under load). Wait until every thread is stopped.
        await poll_until_async(lambda: _all_threads_stopped(erl_node.pid), timeout=10, message="the node stopped")
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError):
            await n.rpc("erlang", "node", [], timeout=30)
        assert time.monotonic() - t0 < 6
    finally:
        os.kill(erl_node.pid, signal.SIGCONT)


@pytest.mark.asyncio
async def test_idle_connection_survives_the_nodes_tick_time(make_erl_node, open_node):
    node = make_erl_node("-kernel", "net_ticktime", "2")
    n = await open_node(node, ticktime=2.0)
    await asyncio.sleep(7)  # the sleep is the test: several tick periods with no traffic from us but ticks
    assert await n.rpc("erlang", "node", []) == Atom(node.node)


@pytest.mark.asyncio
async def test_garbage_from_a_fake_peer_is_a_protocol_error(private_epmd, open_node):
    """A fake node registered in EPMD that answers our send_name with junk."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    reg = socket.create_connection(("127.0.0.1", private_epmd))
    name = b"fakepeer"
    body = struct.pack(">BHBBHHH", 120, port, 77, 0, 6, 5, len(name)) + name + b"\0\0"
    reg.sendall(struct.pack(">H", len(body)) + body)
    assert reg.recv(4)[:2] in (b"y\x00", b"v\x00")
    import threading

    def serve():
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"\x00\x05sok\x00\x00" + b"\xff" * 50)
        time.sleep(3)  # the peer's behaviour, not synchronisation: junk, then silence with the socket open
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(KzBridgeError):
            await open_node("fakepeer@127.0.0.1", "c", timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        reg.close()
        server.close()


@pytest.mark.asyncio
async def test_v5_handshake_against_independent_py_interface_node(pyinterface_peer, open_node):
    n = await open_node(pyinterface_peer)
    assert n.handshake_version == 5
    mb = n.mailbox()
    payload = [1, 2.5, b"bin", Atom("x"), (1, "str"), 2**70]
    n.send_registered("echo", (mb.pid, payload), sender=mb.pid)
    reply = await mb.receive(5)
    assert reply[0] == Atom("echo") and canon(reply[1]) == canon(payload)


@pytest.mark.asyncio
async def test_v5_wrong_cookie_against_py_interface(pyinterface_peer, open_node):
    with pytest.raises(CookieRejectedError):
        await open_node(pyinterface_peer, "wrong", timeout=5)


def test_blocking_node_for_one_shot_commands(erl_node):
    from kzbridge.wire.blocking import BlockingNode

    with BlockingNode(erl_node.node, erl_node.cookie) as n:
        assert n.handshake_version == 6
        res = n.rpc_output("io", "format", ["~s|~p~n", [ErlString("a"), (Atom("b"), 2)]])
        assert res.value == Atom("ok") and res.output == "a|{b,2}\n"
        with pytest.raises(BadRpcError):
            n.rpc("nomod", "nofun", [])
        with pytest.raises(RpcTimeoutError):
            n.rpc("timer", "sleep", [2000], timeout=0.3)
    with pytest.raises(CookieRejectedError):
        BlockingNode(erl_node.node, "wrong")


def test_blocking_node_speaks_v5_to_py_interface(pyinterface_peer):
    from kzbridge.wire.blocking import BlockingNode

    with BlockingNode(pyinterface_peer.node, pyinterface_peer.cookie) as n:
        assert n.handshake_version == 5


@pytest.mark.asyncio
async def test_stray_messages_to_our_pids_do_not_break_the_connection(erl_node):
    async with connect(erl_node.node, erl_node.cookie) as n:
        mb = n.mailbox()
        src = (
            "Caller ! {[1000, 2], unhashable_key}, Caller ! {make_ref(), late_reply}, Caller ! garbage, "
            "Gl ! {io_request, self(), ref, bogus_request}, Owner ! ok."
        )
        tokens = (await n.rpc("erl_scan", "string", [src]))[1]
        forms = (await n.rpc("erl_parse", "parse_exprs", [tokens]))[1]
        binds = sorted(
            [(Atom("Caller"), n.caller), (Atom("Gl"), n.new_pid()), (Atom("Owner"), mb.pid)],
            key=lambda kv: kv[0].name,
        )
        await n.rpc("erlang", "spawn", [Atom("erl_eval"), Atom("exprs"), [forms, binds]])
        assert await mb.receive(5) == Atom("ok")
        assert await n.rpc("erlang", "node", []) == Atom(erl_node.node)


def test_sync_node_stays_connected_while_idle_and_runs_async_helpers(make_erl_node):
    node = make_erl_node("-kernel", "net_ticktime", "2")
    with connect_sync(node.node, node.cookie, ticktime=2.0) as s:
        assert s.rpc("erlang", "abs", [-1]) == 1
        time.sleep(6)  # the sleep is the test: idle for three tick times, only the tick thread speaks
        assert s.rpc("erlang", "node", []) == Atom(node.node)
        assert s.run(lambda n: n.rpc("erlang", "abs", [-2])) == 2
        assert s.rpc_output("io", "format", ["hi~n"]).output == "hi\n"


@pytest.mark.asyncio
async def test_both_drivers_answer_io_with_apply_round_trips_through_the_shared_session(erl_node, erl_hidden_node):
    """io:format needs an io_lib:format rex call per request: the session's own nested call, in both drivers."""
    from kzbridge.wire.blocking import BlockingNode

    fmt = [ErlString("~s|~p|~w~n"), [ErlString("ä"), (Atom("t"), [1, 2]), 3.5]]

    n = erl_hidden_node
    seen: list[str] = []
    res = await n.rpc_output("io", "format", fmt, on_output=seen.append)
    assert res.value == Atom("ok") and res.output == "ä|{t,[1,2]}|3.5\n" and seen == [res.output]
    # Many calls printing at once: each output stays with its own call.
    outs = await asyncio.gather(*(n.rpc_output("io", "format", ["~p~n", [i]]) for i in range(50)))
    assert [o.output for o in outs] == [f"{i}\n" for i in range(50)]
    with BlockingNode(erl_node.node, erl_node.cookie) as b:
        res = b.rpc_output("io", "format", fmt)
        assert res.value == Atom("ok") and res.output == "ä|{t,[1,2]}|3.5\n"
        assert [b.rpc_output("io", "format", ["~p~n", [i]]).output for i in range(5)] == [f"{i}\n" for i in range(5)]


def test_blocking_node_answers_monitors_and_links_from_the_node(erl_node):
    """The blocking driver now handles every control message the asyncio one does (one session)."""
    from kzbridge.wire.blocking import BlockingNode

    with BlockingNode(erl_node.node, erl_node.cookie) as b:
        dead = Pid(Atom(b.name), 30000, 0, b.session.creation, old=not b.session.big_creation)
        src = (
            "Ref = erlang:monitor(process, Dead), "
            "R1 = receive {'DOWN', Ref, process, _, Why} -> Why after 3000 -> timeout end, "
            "process_flag(trap_exit, true), catch link(Dead), "
            "R2 = receive {'EXIT', Dead, Why2} -> Why2 after 3000 -> timeout end, {R1, R2}."
        )
        tokens = b.rpc("erl_scan", "string", [src])[1]
        forms = b.rpc("erl_parse", "parse_exprs", [tokens])[1]
        value = b.rpc("erl_eval", "exprs", [forms, [(Atom("Dead"), dead)]], timeout=10)[1]
        assert value == (Atom("noproc"), Atom("noproc"))


@pytest.mark.asyncio
async def test_frames_sent_just_before_close_still_reach_the_node(erl_node, open_node):
    # Sends made in one loop iteration leave in one write at the end of it: a close right after
    # must flush them, not drop them.
    watcher = await open_node(erl_node)
    pid = await watcher.rpc("erlang", "spawn", [Atom("timer"), Atom("sleep"), [60000]])
    n = await open_node(erl_node)
    for i in range(50):
        n.send(pid, (Atom("hello"), i))
    await n.close()

    async def all_arrived():
        reply = await watcher.rpc("erlang", "process_info", [pid, Atom("message_queue_len")])
        return reply == (Atom("message_queue_len"), 50)

    await poll_until_async(all_arrived, timeout=5)
    await watcher.rpc("erlang", "exit", [pid, Atom("kill")])
