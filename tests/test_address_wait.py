"""Reaching a node from the host: --address, --epmd-port, and `kzbridge wait`, against real nodes.

The node whose name does not resolve is a real fixture node (the sandbox's beams, lager,
kz_data_tracing) started with ``-sname kzbw_XXXX@kzbw-unresolvable-XXXX``: a container's
``kazoo_apps@kazoo`` seen from the host, where ``kazoo`` means nothing. It listens on
127.0.0.1 and registers with this run's private EPMD.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import KzBridgeError, UsageError
from kzbridge.wire import epmd
from kzbridge.wire.blocking import BlockingNode
from kzbridge.wire.names import Route, Routes, check_port, parse_address
from kzbridge.wire.terms import Atom

from .conftest import free_port, kzb, poll_until


def dead_port() -> int:
    """A loopback port nothing listens on (checked)."""
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


# --------------------------------------------------------------------- the rules, without a node


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("127.0.0.1", Route("127.0.0.1")),
        ("localhost:9100", Route("localhost", 9100)),
        ("kazoo.example.org", Route("kazoo.example.org")),
        ("[::1]", Route("::1")),
        ("[::1]:4370", Route("::1", 4370)),
        ("::1", Route("::1")),
    ],
)
def test_address_forms(text: str, route: Route) -> None:
    assert parse_address(text) == route


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:65536", "host:x", "-bad", "a b", "[::1", "[::1]x"])
def test_bad_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_address(text)
    assert info.value.setting == "address"


def test_ports_are_checked() -> None:
    assert check_port("4370", "epmd_port") == 4370
    for bad in (0, 65536, -1, "0x10", "", True, 1.5):
        with pytest.raises(UsageError):
            check_port(bad, "epmd_port")


def test_routes_per_node_and_for_all() -> None:
    nodes = ["a@kz1", "b@kz2"]
    routes = Routes.build(nodes, ["127.0.0.1", "b@kz2=10.0.0.2:9100"], 4370)
    assert routes.route("a@kz1") == Route("127.0.0.1", None, 4370)
    assert routes.route("b@kz2") == Route("10.0.0.2", 9100, 4370)
    assert routes.route("c@kz3") == Route(None, None, 4370)  # found later: where its name says
    assert Routes.build(nodes, {"a@kz1": "h1"}).route("a@kz1") == Route("h1")
    assert Routes.build(nodes, None).route("a@kz1") == Route()
    with pytest.raises(UsageError, match="names one node's distribution port"):
        Routes.build(nodes, "127.0.0.1:9100")
    with pytest.raises(UsageError, match="not among the nodes"):
        Routes.build(nodes, "c@kz3=127.0.0.1")
    assert Routes.build(nodes, "c@kz3=127.0.0.1", more_nodes=True).route("c@kz3") == Route("127.0.0.1")
    with pytest.raises(UsageError, match="two addresses"):
        Routes.build(nodes, ["h1", "h2"])
    with pytest.raises(UsageError, match="two addresses for a@kz1"):
        Routes.build(nodes, ["a@kz1=h1", "a@kz1=h2"])


def test_cli_refuses_bad_ports_and_addresses_before_connecting() -> None:
    # A listener as the EPMD port of the valid cases: nothing may connect to it for these usage errors.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        port = str(listener.getsockname()[1])
        for args, option in [
            (["--epmd-port", "0"], "--epmd-port"),
            (["--epmd-port", "70000"], "--epmd-port"),
            (["--epmd-port", port, "--address", "127.0.0.1:0"], "--address"),
            (["--epmd-port", port, "--address", "other@h=127.0.0.1"], "--address"),
            (["--epmd-port", port, "--address", "127.0.0.1", "--address", "127.0.0.2"], "--address"),
        ]:
            res = kzb("ping", "-n", "x@127.0.0.1", "-c", "k", *args, timeout=30)
            assert res.returncode == 2, res.stderr
            assert res.stderr.count("\n") == 1 and f"see {option}" in res.stderr, res.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()
    res = kzb("ping", "-n", "x@h", "-c", "k", timeout=30, env={**os.environ, "ERL_EPMD_PORT": "abc"})
    assert res.returncode == 2 and "see --epmd-port" in res.stderr, res.stderr


# --------------------------------------------------------------------- a node whose host does not resolve


class UnresolvableNode:
    """A fixture node named NAME@HOST where HOST resolves to nothing; listens on 127.0.0.1."""

    def __init__(self, workdir: Path, cookie: str) -> None:
        from kzbridge import sandbox

        tag = secrets.token_hex(3)
        self.host = f"kzbw-unresolvable-{tag}"
        self.node = f"kzbw_{tag}@{self.host}"
        self.name = f"kzbw_{tag}"
        self.cookie = cookie
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(self.host, None)  # the premise of these tests
        build = sandbox.build_fixtures()
        home = workdir / "home"
        home.mkdir(mode=0o700)
        self.proc = subprocess.Popen(
            ["erl", "-noinput", "-sname", self.node, "-setcookie", self.cookie,
             "-pa", str(build / "common"), "-pa", str(build / "gen2"),
             "-config", str(sandbox.fixtures_dir() / "config" / "sys"),
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
             "-eval", "kz_fixture:boot(20)"],
            cwd=workdir, env={**os.environ, "HOME": str(home)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            poll_until(self._ready, timeout=30, interval=0.2, retry_on=(KzBridgeError,), message=f"{self.node} up")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"erl exited with {self.proc.returncode}")
        with BlockingNode(self.node, self.cookie, timeout=2, route=Route("127.0.0.1")) as n:
            return bool(n.rpc("kz_fixture", "ready", [], timeout=2) == Atom("true"))

    @property
    def port(self) -> int:
        return epmd.lookup_blocking(self.name, "127.0.0.1").port

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def unresolvable(sandbox_gen2: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnresolvableNode]:
    """The sandbox's cookie, so that one --cookie serves both in the cluster tests."""
    node = UnresolvableNode(tmp_path_factory.mktemp("unresolvable"), sandbox_gen2.cookie)
    try:
        yield node
    finally:
        node.close()


def test_address_reaches_a_node_whose_host_does_not_resolve(unresolvable: UnresolvableNode) -> None:
    plain = kzb("ping", "-n", unresolvable.node, "-c", unresolvable.cookie)
    assert plain.returncode == 3, plain.stderr
    assert f"cannot reach EPMD on {unresolvable.host}" in plain.stderr
    res = kzb("ping", "-n", unresolvable.node, "-c", unresolvable.cookie, "--address", "127.0.0.1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"pong from {unresolvable.node} ")  # the real name, from the handshake


def test_trace_module_through_address(unresolvable: UnresolvableNode, tmp_path: Path) -> None:
    out = tmp_path / "trace.log"
    res = kzb(
        "trace-module", "kz_json", "-n", unresolvable.node, "-c", unresolvable.cookie,
        "--address", "127.0.0.1", "--duration", "2", "-o", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "get_value" in text and text.count("\n") >= 5, text[:500]  # what kz_json logs
    assert "size verified" in res.stderr


def test_address_with_port_skips_epmd(unresolvable: UnresolvableNode) -> None:
    port, dead = unresolvable.port, dead_port()
    # With a dead EPMD port, the EPMD route fails: the port below is the only way in.
    via_epmd = kzb("ping", "-n", unresolvable.node, "-c", unresolvable.cookie, "--address", "127.0.0.1",
                   "--epmd-port", str(dead))  # fmt: skip
    assert via_epmd.returncode == 3 and f"cannot reach EPMD on 127.0.0.1:{dead}" in via_epmd.stderr, via_epmd.stderr
    direct = kzb("ping", "-n", unresolvable.node, "-c", unresolvable.cookie, "--address", f"127.0.0.1:{port}",
                 "--epmd-port", str(dead), "--json")  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert f'"node": "{unresolvable.node}"' in direct.stdout and '"handshake": 6' in direct.stdout
    # A closed distribution port is a connection error naming the address.
    closed = kzb("ping", "-n", unresolvable.node, "-c", unresolvable.cookie, "--address", f"127.0.0.1:{dead}")
    assert closed.returncode == 3 and f"127.0.0.1:{dead}" in closed.stderr, closed.stderr


class RefusingPort:
    """A port that reads each connection's send_name and closes it, as a node refusing that
    handshake does (OTP 18-22 close on the new-style name); records each name's tag."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.tags: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    head = conn.recv(3)  # length and tag
                    self.tags.append(head[2:3])
        except OSError:
            return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self.thread.join(10)


@pytest.mark.asyncio
async def test_direct_port_tries_the_old_handshake_when_the_new_one_is_refused() -> None:
    """No EPMD says which handshake a node on a given port speaks: the new one first (OTP 23+;
    OTP 25.0-25.2 take nothing else), then the old one (OTP 18-22), then the error."""
    from kzbridge.errors import ConnectError
    from kzbridge.wire.node import connect_node

    refusing = RefusingPort()
    try:
        route = Route("127.0.0.1", refusing.port, epmd_port=1)
        with pytest.raises(ConnectError):
            BlockingNode("old@kazoo-old", "cookie", timeout=5, route=route)
        with pytest.raises(ConnectError):
            await connect_node("old@kazoo-old", "cookie", timeout=5, route=route)
        poll_until(lambda: len(refusing.tags) == 4, timeout=5)
    finally:
        refusing.close()
    assert refusing.tags == [b"N", b"n", b"N", b"n"]


def test_epmd_port_reaches_a_private_epmd(sandbox_gen2: Any, private_epmd: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ERL_EPMD_PORT"}
    node, cookie = sandbox_gen2.node, sandbox_gen2.cookie
    default = kzb("ping", "-n", node, "-c", cookie, env=env)  # 4369: no EPMD there, or one without our node
    assert default.returncode == 3, default.stderr
    res = kzb("ping", "-n", node, "-c", cookie, "--epmd-port", str(private_epmd), env=env)
    assert res.returncode == 0 and res.stdout.startswith(f"pong from {node}"), res.stderr
    by_env = kzb("ping", "-n", node, "-c", cookie, env={**env, "ERL_EPMD_PORT": str(private_epmd)})
    assert by_env.returncode == 0, by_env.stderr


def test_python_api_takes_address_and_epmd_port(
    unresolvable: UnresolvableNode, private_epmd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kzbridge

    monkeypatch.delenv("ERL_EPMD_PORT")
    with kzbridge.connect_sync(
        unresolvable.node, unresolvable.cookie, address="127.0.0.1", epmd_port=private_epmd
    ) as n:
        assert n.rpc("erlang", "node", []) == Atom(unresolvable.node)
        assert n.run(lambda a: a.rpc("erlang", "node", [])) == Atom(unresolvable.node)  # the asyncio side too


def test_cluster_with_a_per_node_address(unresolvable: UnresolvableNode, sandbox_gen2: Any, tmp_path: Path) -> None:
    both = ["-n", sandbox_gen2.node, "-n", unresolvable.node, "-c", unresolvable.cookie]
    without = kzb("nodes", *both)
    assert without.returncode == 3 and "NO ANSWER" in without.stdout
    res = kzb("nodes", *both, "--address", f"{unresolvable.node}=127.0.0.1", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count('"answered": true') == 2
    many = kzb("nodes", *both, "--address", f"127.0.0.1:{unresolvable.port}")
    assert many.returncode == 2 and "NODE=HOST:PORT" in many.stderr, many.stderr
    out = tmp_path / "run"
    run = kzb("trace-module", "kz_json", *both, "--address", f"{unresolvable.node}=127.0.0.1:{unresolvable.port}",
              "--duration", "2", "-o", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 of 2 nodes collected" in run.stderr
    assert (out / f"{unresolvable.node}.log").read_text().count("get_value") > 0


def test_detached_commands_on_several_nodes_take_a_per_node_address(
    unresolvable: UnresolvableNode, sandbox_gen2: Any
) -> None:
    both = ["-n", sandbox_gen2.node, "-n", unresolvable.node, "-c", unresolvable.cookie]
    without = kzb("status", *both)
    assert without.returncode == 3 and "NO ANSWER" in without.stdout, without.stdout + without.stderr
    res = kzb("status", *both, "--address", f"{unresolvable.node}=127.0.0.1", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [n["answered"] for n in json.loads(res.stdout)["nodes"]] == [True, True]


# --------------------------------------------------------------------- wait


def test_wait_on_a_running_sandbox(sandbox_gen2: Any) -> None:
    res = kzb("wait", "-n", sandbox_gen2.node)
    assert res.returncode == 0, res.stderr
    assert f"{sandbox_gen2.node} is ready: kz_data_tracing is registered" in res.stdout
    lager = kzb("wait", "-n", sandbox_gen2.node, "--sink", "lager_event", "--json")
    assert lager.returncode == 0, lager.stderr
    assert '"waited_for": "lager_event"' in lager.stdout and '"ready": true' in lager.stdout


def test_wait_through_address(unresolvable: UnresolvableNode) -> None:
    res = kzb("wait", "-n", unresolvable.node, "-c", unresolvable.cookie, "--address", "127.0.0.1", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "is ready: kz_data_tracing is registered" in res.stdout


def test_wait_for_a_node_that_comes_up_later(private_epmd: int, run_env: Any) -> None:
    from kzbridge import sandbox

    name = f"kzw_{secrets.token_hex(3)}"
    run_env.sandbox_names.append(name)
    cookie = secrets.token_hex(12)
    started: list[float] = []

    def start_later() -> None:
        time.sleep(1.5)
        started.append(time.monotonic())
        sandbox.start(name, cookie=cookie, rate=5)

    t0 = time.monotonic()
    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        res = kzb("wait", "-n", f"{name}@127.0.0.1", "-c", cookie, "--timeout", "60")
        done = time.monotonic()
    finally:
        thread.join(60)
        sandbox.stop(name)
    assert res.returncode == 0, res.stderr
    assert "is ready: kz_data_tracing is registered" in res.stdout
    assert started and done > started[0] > t0
    assert f"waiting for {name}@127.0.0.1: no node '{name}'" in res.stderr  # what it saw before
    assert int(res.stdout.rsplit(", ", 1)[1].split()[0]) > 1  # attempts


def test_wait_times_out_on_a_ghost(private_epmd: int) -> None:
    ghost = f"ghost_{secrets.token_hex(3)}@127.0.0.1"
    t0 = time.monotonic()
    res = kzb("wait", "-n", ghost, "-c", "x", "--timeout", "2")
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stderr
    assert elapsed < 2 + 3, elapsed  # the deadline, plus the interpreter's start
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kzbridge: error: {ghost} was not ready within 2s; last seen: no node 'ghost_")
    dead = dead_port()
    res = kzb("wait", "-n", ghost, "-c", "x", "--timeout", "1.5", "--epmd-port", str(dead), "-q")
    assert res.returncode == 3
    assert res.stderr.count("\n") == 1 and f"last seen: cannot reach EPMD on 127.0.0.1:{dead}" in res.stderr


def test_wait_on_a_node_without_tracing(erl_node: Any) -> None:
    res = kzb("wait", "-n", erl_node.node, "-c", erl_node.cookie, "--timeout", "1.5")
    assert res.returncode == 3
    assert "kz_data_tracing is not registered yet" in res.stderr.strip().splitlines()[-1]
