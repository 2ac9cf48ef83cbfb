"""Real peers for the tests: a private epmd, plain erl nodes, sandbox fixture nodes, py-interface.

Everything runs on loopback with random names and cookies, uses its own EPMD port
(ERL_EPMD_PORT) and its own kzbridge cache dir, and is killed at the end even
when tests fail.
"""
from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_erlang() -> None:
    for tool in ("erl", "erlc", "epmd"):
        if not shutil.which(tool):
            pytest.exit(f"{tool} not found: apt-get install -y erlang-nox erlang-lager", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def private_epmd() -> Iterator[int]:
    """One epmd on a random port for the whole run; every erl and our client use it."""
    _require_erlang()
    port = free_port()
    cache = tempfile.mkdtemp(prefix="kzb-test-cache-")
    old = {k: os.environ.get(k) for k in ("ERL_EPMD_PORT", "KZBRIDGE_CACHE", "KZBRIDGE_COOKIE", "KZBRIDGE_NODE")}
    os.environ["ERL_EPMD_PORT"] = str(port)
    os.environ["KZBRIDGE_CACHE"] = cache
    os.environ.pop("KZBRIDGE_COOKIE", None)
    os.environ.pop("KZBRIDGE_NODE", None)
    proc = subprocess.Popen(["epmd", "-port", str(port), "-address", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    started = time.time() - 1
    try:
        yield port
    finally:
        # Files this run's tests made on the (local) nodes: /tmp/kzb-*, trace files named after
        # test nodes (started outside the sandbox module), and kz_data_tracing's
        # default /tmp/<32 hex>.log (plus lager's rotated parts). Only files made since it started.
        kazoo_default = re.compile(r"/tmp/[0-9a-f]{32}\.log(\.[0-4])?\Z")
        made = glob.glob("/tmp/kzb-*") + glob.glob("/tmp/kzbridge-kz*")  # our test nodes are all named kz...
        for f in made + [f for f in glob.glob("/tmp/*.log*") if kazoo_default.match(f)]:
            with contextlib.suppress(OSError):
                if os.path.isfile(f) and os.path.getmtime(f) >= started:
                    os.unlink(f)
        from kzbridge import sandbox
        for box in sandbox.list_sandboxes():
            sandbox.stop(box.name)
        proc.terminate()
        proc.wait(5)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cache, ignore_errors=True)


class ErlNode:
    """A plain erl node we own (Popen, not detached), killed on close."""

    def __init__(self, *extra: str, name: str | None = None, cookie: str | None = None) -> None:
        self.name = name or f"t{secrets.token_hex(4)}"
        self.node = f"{self.name}@127.0.0.1"
        self.cookie = cookie or secrets.token_hex(12)
        self.proc = subprocess.Popen(
            ["erl", "-noinput", "-name", self.node, "-setcookie", self.cookie,
             "-kernel", "inet_dist_use_interface", "{127,0,0,1}", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._wait_registered()

    def _wait_registered(self) -> None:
        from kzbridge.wire import epmd
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"erl exited with {self.proc.returncode}")
            try:
                if any(n == self.name for n, _ in asyncio.run(epmd.names("127.0.0.1", timeout=1))):
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.node} did not register with epmd")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()


@pytest.fixture
def erl_node() -> Iterator[ErlNode]:
    node = ErlNode()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def shared_erl_node() -> Iterator[ErlNode]:
    node = ErlNode()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def make_erl_node() -> Iterator:
    made: list[ErlNode] = []

    def make(*extra: str, **kw: str) -> ErlNode:
        node = ErlNode(*extra, **kw)
        made.append(node)
        return node
    try:
        yield make
    finally:
        for n in made:
            n.close()


class PyInterfacePeer:
    """py-interface 2.3 running as an independent, v5-only node in a subprocess."""

    def __init__(self, epmd_port: int) -> None:
        self.name = f"pyi{secrets.token_hex(3)}"
        self.node = f"{self.name}@127.0.0.1"
        self.cookie = secrets.token_hex(8)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "peers" / "pyinterface_echo.py"), self.node, self.cookie,
             str(epmd_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "READY" not in line:
            self.close()
            raise RuntimeError(f"py-interface peer did not start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def pyinterface_peer(private_epmd: int) -> Iterator[PyInterfacePeer]:
    peer = PyInterfacePeer(private_epmd)
    try:
        yield peer
    finally:
        peer.close()


def _sandbox(generation: int, rate: float = 50) -> Iterator:
    from kzbridge import sandbox
    name = f"kzt{generation}_{secrets.token_hex(3)}"
    box = sandbox.start(name, generation=generation, rate=rate)
    try:
        yield box
    finally:
        sandbox.stop(name)
        # The node was local: its default trace files (and lager's rotated parts) are ours to remove.
        for f in glob.glob(f"/tmp/kzbridge-{name}-*"):
            with contextlib.suppress(OSError):
                os.unlink(f)


@pytest.fixture(scope="session")
def sandbox_gen1() -> Iterator:
    yield from _sandbox(1)


@pytest.fixture(scope="session")
def sandbox_gen2() -> Iterator:
    yield from _sandbox(2)


@pytest.fixture(params=[1, 2], ids=["gen1", "gen2"])
def any_sandbox(request: pytest.FixtureRequest) -> object:
    """Both kz_data_tracing generations, each a real fixture node."""
    return request.getfixturevalue(f"sandbox_gen{request.param}")


@pytest.fixture
def fresh_sandbox() -> Iterator:
    """A sandbox of its own, for tests that crash, kill or flood it."""
    yield from _sandbox(2, rate=20)


def run(coro):  # noqa: ANN001, ANN201 - tiny helper for sync tests
    return asyncio.run(coro)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
