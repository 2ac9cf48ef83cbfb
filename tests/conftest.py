"""Real peers for the tests: a private epmd, plain erl nodes, sandbox fixture nodes, py-interface.

Everything runs on loopback with random names and cookies, uses its own EPMD port
(ERL_EPMD_PORT) and its own kzbridge cache dir, and is killed at the end even when
tests fail. Several pytest runs may share the machine: each run cleans up only what
its own nodes made.

The ``live`` marker
    Tests that need Erlang (erl, epmd, lager) are marked ``live`` automatically: every
    Erlang fixture below depends on ``private_epmd``, and a test whose fixtures reach it
    gets the marker at collection. A test that starts Erlang without such a fixture
    (e.g. runs ``kzbridge demo`` in a subprocess) must say ``@pytest.mark.live``. Pure
    tests (codec, parsers, literals, journal) start no epmd, so
    ``pytest -m "not live"`` runs them on a machine without Erlang.

Session-wide environment (autouse, pure Python): ``run_env``
    Private ``KZBRIDGE_CACHE`` (journal, sandboxes, compiled fixtures), no
    ``KZBRIDGE_COOKIE``/``KZBRIDGE_NODE`` from outside, ``ERL_EPMD_PORT`` of this run,
    ``KZ_FIXTURE_LEDGER`` (fixture nodes append every file kz_data_tracing is asked to
    write), and ``run_env.node_tmp``: a directory of this run for files the nodes write.
    At the end it deletes the files this run's journal and ledger name (plus lager's
    rotated parts ``.0``..``.4``), the default trace files of this run's sandboxes, and
    ``node_tmp``; never files by a glob on a shared prefix.

Fixtures
    ``private_epmd`` (session) -> int: the port of this run's epmd (started on first use).
    ``node_tmp`` (session) -> Path: where tests should put files their nodes write
        (``f"{node_tmp}/x.log"``), instead of fixed names under /tmp.
    ``erl_node`` / ``shared_erl_node`` (module) -> ErlNode: a plain ``erl`` node
        (``.node``, ``.cookie``, ``.pid``, ``.kill()``); ``make_erl_node(*erl_args)`` makes more.
    ``sandbox_gen1`` / ``sandbox_gen2`` (session) -> kzbridge.sandbox.Sandbox;
        ``any_sandbox`` is both (parametrized); ``fresh_sandbox`` is one of its own (gen 2)
        for tests that crash, kill or flood it.
    ``pyinterface_peer`` -> PyInterfacePeer: py-interface 2.3 as a v5-only node.
    Async (pytest-asyncio, strict mode: mark the test ``@pytest.mark.asyncio``), each a
    connected ``kzbridge.wire.node.HiddenNode`` closed in teardown, even when the test fails:
    ``gen1_node`` (on sandbox_gen1), ``gen2_node`` (on sandbox_gen2), ``any_node`` (both
    generations, parametrized), ``erl_hidden_node`` (on erl_node).
    ``open_node`` -> ``await open_node(target, cookie=None, **connect_kw)``: for tests that
    open connections themselves (several, one after another, or to a node they kill);
    ``target`` has ``.node``/``.cookie`` (sandbox, ErlNode, peer) or is a node name. Every
    connection it opened is closed in teardown, even when the test fails or closed it.

Helpers (import from ``tests.conftest``)
    ``poll_until(predicate, timeout=10, interval=0.05, retry_on=())`` and
    ``await poll_until_async(...)`` (the predicate may be a coroutine function): call the
    predicate until it returns something truthy and return that, else fail with an
    AssertionError after ``timeout`` seconds. Use them instead of sleeps that stand in for
    synchronisation. ``retry_on`` lists exceptions that mean "not yet". ``free_port()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kzb(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kzbridge ARGS`` as an operator would; ``env`` replaces the environment (None: ours)."""
    return subprocess.run(
        [sys.executable, "-m", "kzbridge", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def node_call(box: Any, module: str, function: str, args: list[Any]) -> Any:
    """One rpc on ``box`` (anything with ``.node``/``.cookie``) from synchronous test code."""
    from kzbridge.wire.node import connect_node

    async def body() -> Any:
        n = await connect_node(box.node, box.cookie)
        try:
            return await n.rpc(module, function, args)
        finally:
            await n.close()

    return asyncio.run(body())


def poll_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy; return it. AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(f"{message or getattr(predicate, '__name__', 'condition')} not met in {timeout}s{why}")
        time.sleep(interval)


async def poll_until_async(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    message: str | None = None,
) -> Any:
    """``poll_until`` for async tests; ``predicate`` may return an awaitable (a coroutine function)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(f"{message or getattr(predicate, '__name__', 'condition')} not met in {timeout}s{why}")
        await asyncio.sleep(interval)


def _off_the_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end from sync code, also when called inside an async test's running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


# --- the run's environment ------------------------------------------------------------------


@dataclass
class RunEnv:
    """What this pytest run owns: its cache dir, epmd port, node-side tmp dir, ledger, node names."""

    cache: Path
    epmd_port: int
    node_tmp: Path
    ledger: Path
    sandbox_names: list[str] = field(default_factory=list)

    def files_made(self) -> set[str]:
        """Files this run's nodes were asked to write, with lager's rotated parts."""
        from kzbridge.kazoo import journal

        paths = {e.remote_path for e in journal.load()}  # the journal is this run's (private cache)
        with contextlib.suppress(FileNotFoundError):
            paths |= {line for line in self.ledger.read_text().splitlines() if line}
        for name in self.sandbox_names:  # kzbridge's default names for this run's sandboxes
            own = re.compile(rf"kzbridge-{re.escape(name)}-\d{{8}}-\d{{6}}-[0-9a-f]+\.log(\.[0-4])?\Z")
            paths |= {f"/tmp/{f}" for f in os.listdir("/tmp") if own.match(f)}
        return paths | {f"{p}.{i}" for p in paths for i in range(5)}


@pytest.fixture(scope="session", autouse=True)
def run_env() -> Iterator[RunEnv]:
    """This run's private environment (pure Python, no Erlang); removes what the run made."""
    cache = Path(tempfile.mkdtemp(prefix="kzb-test-cache-"))
    node_tmp = Path(tempfile.mkdtemp(prefix="kzb-test-nodes-", dir="/tmp"))
    env = RunEnv(cache, free_port(), node_tmp, cache / "fixture-ledger")
    names = ("ERL_EPMD_PORT", "KZBRIDGE_CACHE", "KZBRIDGE_COOKIE", "KZBRIDGE_NODE", "KZ_FIXTURE_LEDGER")
    old = {k: os.environ.get(k) for k in names}
    os.environ["ERL_EPMD_PORT"] = str(env.epmd_port)
    os.environ["KZBRIDGE_CACHE"] = str(cache)
    os.environ["KZ_FIXTURE_LEDGER"] = str(env.ledger)
    os.environ.pop("KZBRIDGE_COOKIE", None)
    os.environ.pop("KZBRIDGE_NODE", None)
    try:
        yield env
    finally:
        for f in env.files_made():
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                os.unlink(f)
        shutil.rmtree(node_tmp, ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def node_tmp(run_env: RunEnv) -> Path:
    """A directory of this run for files its nodes write; removed at the end."""
    return run_env.node_tmp


def _require_erlang() -> None:
    for tool in ("erl", "erlc", "epmd"):
        if not shutil.which(tool):
            pytest.exit(f"{tool} not found: apt-get install -y erlang-nox erlang-lager", returncode=3)


@pytest.fixture(scope="session")
def private_epmd(run_env: RunEnv) -> Iterator[int]:
    """One epmd on this run's port; every erl and our client use it. Stops this run's sandboxes at the end."""
    _require_erlang()
    port = run_env.epmd_port
    proc = subprocess.Popen(
        ["epmd", "-port", str(port), "-address", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        poll_until(listening, timeout=10, message=f"epmd on port {port}")
        yield port
    finally:
        from kzbridge import sandbox

        for box in sandbox.list_sandboxes():  # the run's private cache: only our sandboxes
            sandbox.stop(box.name)
        proc.terminate()
        proc.wait(5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "private_epmd" in fixtures:
            item.add_marker(pytest.mark.live)


@pytest.fixture(autouse=True)
def _erlang_for_live_tests(request: pytest.FixtureRequest) -> None:
    """Live tests get the run's epmd even when no fixture of theirs asks for it."""
    if request.node.get_closest_marker("live"):
        request.getfixturevalue("private_epmd")


# --- plain erl nodes ---------------------------------------------------------------------------


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
            start_new_session=True,
        )  # fmt: skip
        try:
            self._wait_registered()
        except BaseException:
            self.close()
            raise

    def _wait_registered(self) -> None:
        from kzbridge.errors import KzBridgeError
        from kzbridge.wire import epmd

        def registered() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"erl exited with {self.proc.returncode}")
            return any(n == self.name for n, _ in _off_the_loop(lambda: epmd.names("127.0.0.1", timeout=1)))

        poll_until(registered, timeout=20, interval=0.1, retry_on=(KzBridgeError, OSError),
                   message=f"{self.node} registering with epmd")  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()


@pytest.fixture
def erl_node(private_epmd: int) -> Iterator[ErlNode]:
    node = ErlNode()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def shared_erl_node(private_epmd: int) -> Iterator[ErlNode]:
    node = ErlNode()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def make_erl_node(private_epmd: int) -> Iterator[Callable[..., ErlNode]]:
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
             str(epmd_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
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


# --- sandboxes -----------------------------------------------------------------------------


def _sandbox(run_env: RunEnv, generation: int, rate: float = 50) -> Iterator[Any]:
    from kzbridge import sandbox

    name = f"kzt{generation}_{secrets.token_hex(3)}"
    run_env.sandbox_names.append(name)  # its default trace files are removed at the end of the run
    box = sandbox.start(name, generation=generation, rate=rate)
    try:
        yield box
    finally:
        sandbox.stop(name)


@pytest.fixture(scope="session")
def sandbox_gen1(private_epmd: int, run_env: RunEnv) -> Iterator[Any]:
    yield from _sandbox(run_env, 1)


@pytest.fixture(scope="session")
def sandbox_gen2(private_epmd: int, run_env: RunEnv) -> Iterator[Any]:
    yield from _sandbox(run_env, 2)


@pytest.fixture(params=[1, 2], ids=["gen1", "gen2"])
def any_sandbox(request: pytest.FixtureRequest, private_epmd: int) -> Any:
    """Both kz_data_tracing generations, each a real fixture node."""
    return request.getfixturevalue(f"sandbox_gen{request.param}")


@pytest.fixture
def fresh_sandbox(private_epmd: int, run_env: RunEnv) -> Iterator[Any]:
    """A sandbox of its own, for tests that crash, kill or flood it."""
    yield from _sandbox(run_env, 2, rate=20)


# --- connected nodes (async) ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connected(node: str, cookie: str) -> AsyncIterator[Any]:
    from kzbridge.wire.node import connect_node

    hidden = await connect_node(node, cookie)
    try:
        yield hidden
    finally:
        await hidden.close()


@pytest_asyncio.fixture
async def gen1_node(sandbox_gen1: Any) -> AsyncIterator[Any]:
    """A HiddenNode connected to the generation 1 sandbox; closed after the test."""
    async with _connected(sandbox_gen1.node, sandbox_gen1.cookie) as hidden:
        yield hidden


@pytest_asyncio.fixture
async def gen2_node(sandbox_gen2: Any) -> AsyncIterator[Any]:
    """A HiddenNode connected to the generation 2 sandbox; closed after the test."""
    async with _connected(sandbox_gen2.node, sandbox_gen2.cookie) as hidden:
        yield hidden


@pytest_asyncio.fixture
async def any_node(any_sandbox: Any) -> AsyncIterator[Any]:
    """A HiddenNode connected to each generation's sandbox in turn (parametrized gen1/gen2)."""
    async with _connected(any_sandbox.node, any_sandbox.cookie) as hidden:
        yield hidden


@pytest_asyncio.fixture
async def erl_hidden_node(erl_node: ErlNode) -> AsyncIterator[Any]:
    """A HiddenNode connected to a plain erl node of its own (``erl_node``); closed after the test."""
    async with _connected(erl_node.node, erl_node.cookie) as hidden:
        yield hidden


@pytest_asyncio.fixture
async def open_node() -> AsyncIterator[Callable[..., Coroutine[Any, Any, Any]]]:
    """Connect on demand; every HiddenNode opened through it is closed after the test."""
    from kzbridge.wire.node import connect_node

    opened: list[Any] = []

    async def open_node(target: Any, cookie: str | None = None, **kw: Any) -> Any:
        node = target if isinstance(target, str) else target.node
        hidden = await connect_node(node, cookie if cookie is not None else target.cookie, **kw)
        opened.append(hidden)
        return hidden

    try:
        yield open_node
    finally:
        for hidden in opened:
            await hidden.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
