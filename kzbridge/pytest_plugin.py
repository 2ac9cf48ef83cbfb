"""pytest plugin: the Kazoo node(s) under test, and a trace of what they logged during each test.

    def test_target(kazoo_target):          # (node name, cookie) of the first node
        ...
    def test_rpc(kazoo_sync):               # a connected SyncNode (plain tests)
        ...
    async def test_async(kazoo_node):       # a connected HiddenNode (pytest-asyncio)
        ...

    @pytest.mark.kazoo_trace(module="kz_json")
    def test_with_a_trace(kazoo_sync, kazoo_trace):
        ...                                  # exercise the node
        assert not [r for r in kazoo_trace.records if r.severity == "error"]

The node under test: ``--kazoo-node NAME@HOST`` (repeatable, or comma-separated in
``KZBRIDGE_NODE``) with ``--kazoo-cookie`` (else ``KZBRIDGE_COOKIE``), reached where
``--kazoo-address`` / ``--kazoo-epmd-port`` say (the command line's ``--address`` and
``--epmd-port``); without ``--kazoo-node`` a sandbox fixture node (generation
``--kazoo-generation``) is started once per session and stopped afterwards.

A trace per test: a test marked ``kazoo_trace`` (or using the ``kazoo_trace`` fixture)
gets a trace started on the node(s) before it runs and stopped and collected right after
its body, before other fixtures are torn down. Marker arguments: ``module=``,
``function=``, ``filters=[...]`` (``"KEY=VALUE"`` strings as ``--filter`` takes them, or
``(Key, Value)`` tuples), ``sink=`` (``data`` or ``lager_event``), ``level=``
(lowest severity traced), ``nodes=[...]`` (default: every ``--kazoo-node``). Without
filters a trace takes everything (``function=*``); the default sink is ``data``.
``kazoo_trace.records`` is what was logged during the test, parsed (kazoo.logparse),
merged across nodes by time; reading it ends the trace (so nothing still buffered on
the node is missed): read it at the end of the test.

Reports: a failed test's report gets a "kazoo trace" section with the last
``--kazoo-trace-lines`` (50) records, terminal-safe, and the trace file(s) are kept under
``--kazoo-trace-dir`` (default ``<basetemp>/kazoo-traces``), each named in the report's
``user_properties`` as ``kazoo_trace`` (``--junitxml`` writes them as properties of the
test case). A passing test's files are deleted unless ``--kazoo-keep-traces``.
``--kazoo-fail-on LEVEL``: a test that passed fails when a traced record at LEVEL or above
appeared during it (and when its trace could not be collected whole), naming the first.

Leases: every trace runs with a lease (``--kazoo-trace-lease``, 60 s by default) that the
plugin renews while the test runs; if the pytest process dies (a killed CI job), the node
stops the trace by itself within the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from .kazoo.logparse import SEVERITIES

if TYPE_CHECKING:
    from .errors import KzBridgeError
    from .kazoo.logparse import LogRecord
    from .kazoo.session import Record, RunSummary, TraceSession
    from .wire.names import Routes
    from .wire.node import HiddenNode

T = TypeVar("T")
MARKER = "kazoo_trace"
PROPERTY = "kazoo_trace"
_TRACE_KEY = pytest.StashKey["KazooTrace"]()
_FAILED_KEY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kzbridge")
    group.addoption(
        "--kazoo-node",
        action="append",
        default=None,
        help="Kazoo node to test against, NAME@HOST; repeatable (default: KZBRIDGE_NODE, comma-separated).",
    )
    group.addoption("--kazoo-cookie", default=None, help="Its cookie (else KZBRIDGE_COOKIE).")
    group.addoption(
        "--kazoo-address",
        action="append",
        default=None,
        metavar="[NODE=]HOST[:PORT]",
        help="Reach the node(s) at HOST instead of the host in the name; :PORT is the distribution port "
        "(no EPMD asked); NODE=HOST[:PORT] for one node. As kzbridge's --address.",
    )
    group.addoption(
        "--kazoo-epmd-port",
        default=None,
        metavar="PORT",
        help="EPMD's port on the nodes' hosts (else ERL_EPMD_PORT, else 4369).",
    )
    group.addoption(
        "--kazoo-generation",
        default="2",
        choices=["1", "2"],
        help="kz_data_tracing generation of the sandbox started when no --kazoo-node is given.",
    )
    group.addoption(
        "--kazoo-trace-dir",
        default=None,
        help="Where trace files of kazoo_trace tests go (default: <basetemp>/kazoo-traces).",
    )
    group.addoption(
        "--kazoo-trace-lines",
        type=int,
        default=50,
        help="Records of the trace shown in a failed test's report (default 50; 0: none).",
    )
    group.addoption(
        "--kazoo-keep-traces",
        action="store_true",
        help="Keep the trace files of passing tests too (default: only failed tests' are kept).",
    )
    group.addoption(
        "--kazoo-fail-on",
        default=None,
        choices=list(SEVERITIES),
        metavar="LEVEL",
        help=f"Fail a test when a traced record at LEVEL or above appeared during it ({', '.join(SEVERITIES)}).",
    )
    group.addoption(
        "--kazoo-trace-lease",
        type=float,
        default=60.0,
        help="Seconds after which a node stops a test's trace by itself if pytest dies (default 60).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(module=None, function=None, filters=None, sink=None, level=None, nodes=None): "
        "trace what the Kazoo node(s) log during this test (kzbridge); see the kazoo_trace fixture.",
    )
    lines = config.getoption("--kazoo-trace-lines", 50)
    lease = config.getoption("--kazoo-trace-lease", 60.0)
    if lines is not None and lines < 0:
        raise pytest.UsageError("--kazoo-trace-lines must be 0 or more")
    if lease is not None and not 5 <= lease <= 7 * 24 * 3600:
        raise pytest.UsageError("--kazoo-trace-lease must be between 5 seconds and a week")
    _check_addresses(config)


def _given_nodes(config: pytest.Config, env: bool = True) -> list[str]:
    """--kazoo-node (repeatable, each may hold commas), else (``env``) KZBRIDGE_NODE; checked."""
    from .errors import UsageError
    from .wire.names import split_node_name

    given = config.getoption("--kazoo-node", None) or ([os.environ.get("KZBRIDGE_NODE") or ""] if env else [])
    nodes = list(dict.fromkeys(n.strip() for value in given for n in value.split(",") if n.strip()))
    try:
        for n in nodes:
            split_node_name(n)
    except UsageError as exc:
        raise pytest.UsageError(f"--kazoo-node: {exc.message}") from None
    return nodes


def _epmd_port(config: pytest.Config) -> str | None:
    return config.getoption("--kazoo-epmd-port", None) or os.environ.get("ERL_EPMD_PORT") or None


def _check_addresses(config: pytest.Config) -> None:
    """--kazoo-node, --kazoo-address and --kazoo-epmd-port, checked before any test runs when given
    (the plugin loads in every pytest run: what comes from the environment is checked when used)."""
    from .errors import UsageError
    from .wire.names import check_port, parse_address, split_node_name

    nodes = _given_nodes(config, env=False)
    try:
        port = config.getoption("--kazoo-epmd-port", None)
        if port is not None:
            check_port(port, "epmd_port")
        for text in config.getoption("--kazoo-address", None) or []:
            node, sep, where = text.partition("=")
            if sep:
                split_node_name(node.strip())
            parse_address(where if sep else text)
    except UsageError as exc:
        raise pytest.UsageError(f"kzbridge: {exc.message} (see --kazoo-address / --kazoo-epmd-port)") from None
    if nodes:
        _routes(config, nodes)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A marked test gets the kazoo_trace fixture even when it does not ask for it."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if item.get_closest_marker(MARKER) is not None and names is not None and MARKER not in names:
            names.append(MARKER)


# ---------------------------------------------------------------- the nodes under test


@dataclass(frozen=True)
class KazooTargets:
    """The nodes under test, their cookie, and where they are reached."""

    nodes: tuple[str, ...]
    cookie: str
    routes: Routes


def _routes(config: pytest.Config, nodes: Sequence[str]) -> Routes:
    from .errors import UsageError
    from .wire.names import Routes

    try:
        return Routes.build(
            list(nodes),
            config.getoption("--kazoo-address") or None,
            _epmd_port(config),
            more_nodes=True,  # a marker's nodes= may name others
        )
    except UsageError as exc:
        raise pytest.UsageError(f"kzbridge: {exc.message} (see --kazoo-address / --kazoo-epmd-port)") from None


@pytest.fixture(scope="session")
def kazoo_targets(request: pytest.FixtureRequest) -> Iterator[KazooTargets]:
    """The node(s) under test: --kazoo-node (repeatable), or a sandbox started for the session."""
    config = request.config
    nodes = _given_nodes(config)
    if nodes:
        cookie = config.getoption("--kazoo-cookie") or os.environ.get("KZBRIDGE_COOKIE")
        if not cookie:
            raise pytest.UsageError("--kazoo-node needs --kazoo-cookie or KZBRIDGE_COOKIE")
        yield KazooTargets(tuple(nodes), cookie, _routes(config, nodes))
        return
    from . import sandbox

    name = f"kzpytest_{secrets.token_hex(4)}"
    box = sandbox.start(name, generation=int(config.getoption("--kazoo-generation")), rate=50)
    try:
        yield KazooTargets((box.node,), box.cookie, _routes(config, [box.node]))
    finally:
        sandbox.stop(name)


@pytest.fixture(scope="session")
def kazoo_target(kazoo_targets: KazooTargets) -> tuple[str, str]:
    """(node, cookie) of the (first) node under test."""
    return kazoo_targets.nodes[0], kazoo_targets.cookie


_async_fixture: Callable[[Callable[..., Any]], Any] = pytest.fixture
try:  # pytest-asyncio in strict mode runs only async fixtures declared through it
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # without it an async fixture needs another asyncio plugin (anyio, auto mode)
    pass


@_async_fixture
async def kazoo_node(kazoo_targets: KazooTargets) -> AsyncIterator[Any]:
    """A connected HiddenNode (needs an asyncio test runner such as pytest-asyncio)."""
    from .wire.node import connect_node

    name = kazoo_targets.nodes[0]
    node = await connect_node(name, kazoo_targets.cookie, route=kazoo_targets.routes.route(name))
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
def kazoo_sync(kazoo_targets: KazooTargets) -> Iterator[Any]:
    """A connected SyncNode for plain (non-async) tests."""
    from .client import SyncNode

    name = kazoo_targets.nodes[0]
    node = SyncNode(name, kazoo_targets.cookie, route=kazoo_targets.routes.route(name))
    try:
        yield node
    finally:
        node.close()


# ---------------------------------------------------------------- traces


class _Loop:
    """An event loop in a thread of its own, with one connection per node kept for the session:
    traces run there, so they work the same for plain and async tests."""

    def __init__(self, targets: KazooTargets) -> None:
        self.targets = targets
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kzbridge-pytest", daemon=True)
        self.thread.start()
        self.nodes: dict[str, HiddenNode] = {}

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def node(self, name: str) -> HiddenNode:
        from .wire.node import connect_node

        found = self.nodes.get(name)
        if found is None or not found.alive:
            found = await connect_node(name, self.targets.cookie, route=self.targets.routes.route(name))
            self.nodes[name] = found
        return found

    async def _close_nodes(self) -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        for node in self.nodes.values():
            await node.close()

    def close(self) -> None:
        try:
            self.call(self._close_nodes())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="session")
def _kazoo_loop(kazoo_targets: KazooTargets) -> Iterator[_Loop]:
    loop = _Loop(kazoo_targets)
    try:
        yield loop
    finally:
        loop.close()


@dataclass
class _NodeRun:
    node: str
    session: TraceSession
    task: asyncio.Future[RunSummary]
    records: list[Record]  # appended on the loop thread while the trace runs
    summary: RunSummary | None = None
    error: KzBridgeError | None = None


class KazooTrace:
    """The trace of one test on its node(s); what the ``kazoo_trace`` fixture gives.

    ``records``: the parsed records of every traced node, in time order (reading it ends the
    trace); ``records_of(node)``; ``files``: the local trace file of each node; ``stop()``.
    """

    def __init__(self, loop: _Loop, nodes: Sequence[str], filters: list[Any], sink: str, level: str) -> None:
        self._loop = loop
        self.nodes = list(nodes)
        self.filters = filters
        self.sink = sink
        self.level = level
        self.files: dict[str, Path] = {}
        self._runs: dict[str, _NodeRun] = {}
        self.stopped = False

    # -- the test's view
    @property
    def records(self) -> list[LogRecord]:
        """What the node(s) logged during the test and the trace caught, parsed, in time order."""
        self.stop()
        return [r.record for r in self._merged()]

    def records_of(self, node: str) -> list[LogRecord]:
        self.stop()
        run = self._runs.get(node)
        return [r.record for r in run.records] if run is not None else []

    @property
    def summaries(self) -> dict[str, RunSummary]:
        self.stop()
        return {n: r.summary for n, r in self._runs.items() if r.summary is not None}

    @property
    def errors(self) -> dict[str, KzBridgeError]:
        """Nodes whose trace could not be collected whole, with why."""
        return {n: r.error for n, r in self._runs.items() if r.error is not None}

    # -- lifecycle
    def start(self, directory: Path, stem: str, lease: float) -> None:
        from .cli.render import safe_text
        from .errors import KzBridgeError

        directory.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            name = stem if len(self.nodes) == 1 else f"{stem}.{_safe_name(node)}"
            self.files[node] = _free_path(directory, name)
        failed: KzBridgeError | None = None
        try:
            self._loop.call(self._start_all(lease))
        except KzBridgeError as exc:
            failed = exc
        if failed is not None:  # outside the except: the report shows one line, not a chain
            self.stop()  # the nodes where it did start
            self.discard_files()
            pytest.fail(safe_text(f"kazoo trace: could not start: {failed}"), pytrace=False)

    async def _start_all(self, lease: float) -> None:
        from .kazoo.session import TraceSession

        for node in self.nodes:
            hidden = await self._loop.node(node)
            session = await TraceSession.start(
                hidden, self.filters, local_path=self.files[node], sink=self.sink, level=self.level, lease=lease
            )
            records: list[Record] = []
            task = asyncio.ensure_future(session.run(lambda event, out=records: _keep_record(out, event)))
            self._runs[node] = _NodeRun(node, session, task, records)

    def stop(self) -> None:
        """Stop every node's trace and collect the rest (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        if self._runs:
            self._loop.call(self._stop_all())

    async def _stop_all(self) -> None:
        from .errors import KzBridgeError

        for run in self._runs.values():
            run.session.request_stop("test ended")
        for run in self._runs.values():
            try:
                run.summary = await run.task
            except KzBridgeError as exc:
                run.error = exc

    def _merged(self) -> list[Record]:
        every = [r for run in self._runs.values() for r in run.records]
        every.sort(key=lambda r: r.instant)  # stable: each node's records keep file order
        return every

    # -- reporting
    def first_at_or_above(self, level: str) -> tuple[str, LogRecord] | None:
        floor = SEVERITIES.index(level)
        for rec in self._merged():
            if rec.record.severity in SEVERITIES and SEVERITIES.index(rec.record.severity) >= floor:
                return rec.node, rec.record
        return None

    def section(self, last: int) -> tuple[str, str]:
        """The report section: its title and the last ``last`` records, terminal-safe."""
        from .cli.render import record_line, safe_text

        merged = self._merged()
        shown = merged[-last:] if last > 0 else []
        several = len(self.nodes) > 1
        lines = [safe_text(f"{node}: {self.files[node]}") for node in self.nodes]
        for node, exc in self.errors.items():
            lines.append(safe_text(f"{node}: trace incomplete: {exc}"))
        if shown and len(shown) < len(merged):
            lines.append(f"... {len(merged) - len(shown)} earlier records in the file(s)")
        for rec in shown:
            line = record_line(rec.record, False)
            lines.append(f"{safe_text(rec.node)} {line}" if several else line)
        if not merged:
            lines.append("(no records)")
        title = f"kazoo trace: last {len(shown)} of {len(merged)} records" if merged else "kazoo trace: no records"
        return title, "\n".join(lines)

    def discard_files(self) -> None:
        for path in self.files.values():
            for p in (path, Path(f"{path}.partial")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def _keep_record(out: list[Record], event: Any) -> None:
    from .kazoo.session import Record

    if isinstance(event, Record):
        out.append(event)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("._")[:120] or "test"


def _free_path(directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.log"
    n = 1
    while path.exists() or Path(f"{path}.partial").exists():
        n += 1
        path = directory / f"{stem}-{n}.log"
    return path


def _marker_trace(item: pytest.Item, targets: KazooTargets) -> tuple[list[str], list[Any], str, str]:
    """Nodes, filters, sink and level from the test's kazoo_trace marker (or the defaults)."""
    from .errors import KzBridgeError
    from .kazoo import filters as flt

    marker = item.get_closest_marker(MARKER)
    kw: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(f"{item.nodeid}: {MARKER} takes keyword arguments only")
    unknown = set(kw) - {"module", "function", "filters", "sink", "level", "nodes"}
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: {MARKER} does not take {', '.join(sorted(unknown))}")
    try:
        out: list[Any] = []
        if kw.get("module"):
            out += flt.module_filter(str(kw["module"]))
        if kw.get("function"):
            out += flt.function_filter(str(kw["function"]))
        for f in kw.get("filters") or []:
            out.append(flt.parse_filter(f) if isinstance(f, str) else f)
        checked = flt.validate(out or flt.function_filter("*"))
        sink = str(kw.get("sink") or flt.DATA_SINK)
        if sink not in (flt.DATA_SINK, flt.LAGER_SINK):
            raise pytest.UsageError(f"{item.nodeid}: sink must be {flt.DATA_SINK!r} or {flt.LAGER_SINK!r}")
        level = str(kw.get("level") or "debug")
        flt.validate_level(level)
    except KzBridgeError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {MARKER}: {exc}") from None
    nodes = kw.get("nodes") or list(targets.nodes)
    if isinstance(nodes, str):
        nodes = [nodes]
    return list(dict.fromkeys(nodes)), checked, sink, level


def _trace_dir(config: pytest.Config) -> Path:
    given = config.getoption("--kazoo-trace-dir")
    if given:
        return Path(given).resolve()
    factory = getattr(config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else Path.cwd()
    return Path(base) / "kazoo-traces"


@pytest.fixture
def kazoo_trace(
    request: pytest.FixtureRequest, _kazoo_loop: _Loop, kazoo_targets: KazooTargets
) -> Iterator[KazooTrace]:
    """A trace of this test on the node(s) under test; see the module docstring and KazooTrace."""
    config = request.config
    item = request.node
    nodes, filters, sink, level = _marker_trace(item, kazoo_targets)
    trace = KazooTrace(_kazoo_loop, nodes, filters, sink, level)
    stem = _safe_name(item.nodeid.replace("::", "__"))  # tests/test_x.py::test_y -> tests_test_x.py__test_y
    trace.start(_trace_dir(config), stem, config.getoption("--kazoo-trace-lease"))
    item.stash[_TRACE_KEY] = trace
    try:
        yield trace
    finally:
        trace.stop()
        if not item.stash.get(_FAILED_KEY, False) and not config.getoption("--kazoo-keep-traces"):
            trace.discard_files()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The test's body is over: stop its trace now, so the report made next can show it."""
    yield
    trace = item.stash.get(_TRACE_KEY, None)
    if trace is not None:
        trace.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    trace = item.stash.get(_TRACE_KEY, None)
    if trace is None:
        if rep.failed:
            item.stash[_FAILED_KEY] = True
        return
    config = item.config
    if rep.when == "call" and rep.passed and not hasattr(rep, "wasxfail"):
        level = config.getoption("--kazoo-fail-on")
        if level:
            _gate(rep, trace, level)
    if rep.failed and not item.stash.get(_FAILED_KEY, False):
        item.stash[_FAILED_KEY] = True
        trace.stop()
        rep.sections.append(trace.section(config.getoption("--kazoo-trace-lines")))
        for path in trace.files.values():
            item.user_properties.append((PROPERTY, str(path)))
            if (PROPERTY, str(path)) not in rep.user_properties:
                rep.user_properties.append((PROPERTY, str(path)))


def _gate(rep: pytest.TestReport, trace: KazooTrace, level: str) -> None:
    """--kazoo-fail-on: a passing test fails on a record at ``level`` or above, or on a trace not read whole."""
    from .cli.render import record_line, safe_text

    found = trace.first_at_or_above(level)
    if found is not None:
        node, rec = found
        rep.outcome = "failed"
        rep.longrepr = safe_text(f"kazoo trace: {node} logged at {level} or above during the test: ") + record_line(
            rec, False
        )
        return
    if trace.errors:
        node, exc = next(iter(trace.errors.items()))
        rep.outcome = "failed"
        rep.longrepr = safe_text(f"kazoo trace: cannot tell whether {node} logged at {level}: {exc}")
