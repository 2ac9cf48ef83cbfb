"""The pytest plugin's trace per test, run the way a user's CI runs it: an inner test suite in a
temporary directory (pytester), a separate pytest process using only the installed plugin,
against a real sandbox node."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kzbridge.kazoo import journal, tracing
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

from .conftest import poll_until

pytest_plugins = ["pytester"]

INNER = '''
import pytest
from kzbridge.wire.terms import Atom, ErlString

def log(node, level, text):
    """lager:log/4 with kz_json's metadata: what the trace's module filter matches."""
    node.rpc("lager", "log", [Atom(level), [(Atom("module"), Atom("kz_json"))], ErlString("~s"), [ErlString(text)]])

@pytest.mark.kazoo_trace(module="kz_json", sink="lager_event")
def test_passes(kazoo_sync, kazoo_trace):
    log(kazoo_sync, "info", "marker-pass")
    assert any(r.message == "marker-pass" and r.module == "kz_json" for r in kazoo_trace.records)

@pytest.mark.kazoo_trace(module="kz_json", sink="lager_event")
def test_fails(kazoo_sync):
    log(kazoo_sync, "warning", "marker-fail \\x1b[31mred\\x1b[0m")
    assert False, "deliberate failure"

@pytest.mark.kazoo_trace(module="kz_json", sink="lager_event")
def test_logs_an_error(kazoo_sync):
    log(kazoo_sync, "error", "marker-error")

def test_untraced(kazoo_sync):
    assert kazoo_sync.rpc("erlang", "node", []) == Atom(kazoo_sync.peer_name)
'''


def run_inner(pytester: pytest.Pytester, box: Any, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    os.environ["KZBRIDGE_COOKIE"] = box.cookie  # pytester's subprocess takes os.environ (restored below)
    try:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--kazoo-node", box.node, *args, timeout=180
        )  # fmt: skip
    finally:
        del os.environ["KZBRIDGE_COOKIE"]


def hidden_nodes(box: Any) -> set[str]:
    async def ask() -> set[str]:
        n = await connect_node(box.node, box.cookie)
        try:
            return {a.name for a in await n.rpc("erlang", "nodes", [Atom("hidden")])} - {n.name}
        finally:
            await n.close()

    return asyncio.run(ask())


def file_traces(box: Any) -> list[tuple[str, str]]:
    async def ask() -> list[tuple[str, str]]:
        n = await connect_node(box.node, box.cookie)
        try:
            return await tracing.lager_file_traces(n)
        finally:
            await n.close()

    return asyncio.run(ask())


def inner_remote_paths(box: Any, since: float) -> list[str]:
    return [e.remote_path for e in journal.load() if e.node == box.node and e.started >= since]


def test_a_failing_test_shows_its_trace_and_keeps_its_file(pytester: pytest.Pytester, sandbox_gen2: Any) -> None:
    box = sandbox_gen2
    pytester.makepyfile(test_user=INNER)
    before = hidden_nodes(box)
    t0 = time.time()
    trace_dir = pytester.path / "traces"
    junit = pytester.path / "junit.xml"
    result = run_inner(pytester, box, "--kazoo-trace-dir", str(trace_dir), f"--junitxml={junit}")
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=1)

    # The failed test's report: the trace section, its last records, terminal-safe.
    section = out[out.index("kazoo trace: last") :]
    assert "marker-fail" in section
    assert "\x1b" not in out and "marker-fail \\x1b[31mred\\x1b[0m" in section
    assert "marker-pass" not in section  # another test's record

    # Its file is kept and named in the junit properties; the passing tests' files are not kept.
    kept = sorted(trace_dir.iterdir())
    assert [p.name for p in kept] == ["test_user.py__test_fails.log"], kept
    assert "marker-fail" in kept[0].read_text()
    assert str(kept[0]) in section
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = [(p.get("name"), p.get("value")) for p in cases["test_fails"].iter("property")]
    assert props == [("kazoo_trace", str(kept[0]))]
    assert not list(cases["test_passes"].iter("property"))

    # Nothing left running on the node: every trace of the inner run stopped, its connections gone.
    paths = inner_remote_paths(box, t0)
    assert len(paths) == 3
    handlers = {f for _, f in file_traces(box)}
    assert not handlers & set(paths), handlers
    assert all(e.stopped for e in journal.load() if e.remote_path in paths)
    poll_until(lambda: hidden_nodes(box) <= before, timeout=10, message="the inner run's connections closed")


def test_fail_on_error_fails_the_test_that_logged_one(pytester: pytest.Pytester, sandbox_gen2: Any) -> None:
    box = sandbox_gen2
    pytester.makepyfile(test_user=INNER)
    trace_dir = pytester.path / "traces"
    result = run_inner(
        pytester, box, "--kazoo-fail-on", "error", "--kazoo-trace-dir", str(trace_dir), "--kazoo-keep-traces"
    )
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert re.search(r"kazoo trace: .* logged at error or above during the test: .*marker-error", out), out
    result.stdout.fnmatch_lines(["FAILED test_user.py::test_fails*", "FAILED test_user.py::test_logs_an_error*"])
    # --kazoo-keep-traces: every traced test's file is there, the untraced test has none.
    names = sorted(p.name for p in trace_dir.iterdir())
    assert names == [f"test_user.py__test_{t}.log" for t in ("fails", "logs_an_error", "passes")]


def test_records_default_filters_and_options(pytester: pytest.Pytester, sandbox_gen2: Any) -> None:
    """The fixture alone (no marker) traces everything on the data sink; bad options are usage errors."""
    box = sandbox_gen2
    pytester.makepyfile(
        test_user="""
        import pytest

        def test_fixture_alone(kazoo_sync, kazoo_trace):
            kazoo_sync.rpc("kz_fixture", "burst", [__import__("kzbridge").Atom("data"), 3, 4])
            recs = kazoo_trace.records
            assert kazoo_trace.sink == "data" and [r.message for r in recs if r.message.startswith("burst ")]
            assert kazoo_trace.records_of("nobody@nowhere") == []

        @pytest.mark.kazoo_trace(nodes=["ghost_kzb@127.0.0.1"])
        def test_unreachable():
            pass
    """
    )
    result = run_inner(pytester, box)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_unreachable*", "kazoo trace: could not start: no node 'ghost_kzb' on host 127.0.0.1*"]
    )
    assert "During handling" not in result.stdout.str()
    bad = run_inner(pytester, box, "--kazoo-epmd-port", "0")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "EPMD port must be a number from 1 to 65535" in bad.stderr.str()


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_running(pytester: pytest.Pytester, sandbox_gen2: Any) -> None:
    """SIGKILL the inner pytest mid-test: the lease stops its trace on the node."""
    box = sandbox_gen2
    pytester.makepyfile(
        test_user="""
        import pytest, time

        @pytest.mark.kazoo_trace(module="kz_json")
        def test_slow(kazoo_trace):
            print("TRACING", flush=True)
            time.sleep(120)
    """
    )
    t0 = time.time()
    env = dict(os.environ, KZBRIDGE_COOKIE=box.cookie)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", "--kazoo-node", box.node,
         "--kazoo-trace-lease", "5", "test_user.py"],
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "TRACING" in line:
                break
        paths = inner_remote_paths(box, t0)
        assert len(paths) == 1 and ("data_lager_event", paths[0]) in file_traces(box)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    killed = time.monotonic()
    poll_until(lambda: ("data_lager_event", paths[0]) not in file_traces(box), timeout=15, interval=0.25)
    assert time.monotonic() - killed < 5 + 3  # the lease, and a renewal's worth of slack
    Path(paths[0]).unlink(missing_ok=True)


def test_two_nodes_one_reached_by_address(
    pytester: pytest.Pytester, sandbox_gen2: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Several --kazoo-node, one of them a container-like name reached with --kazoo-address: both traced,
    the section merges them by time with each line's node, each node's file kept and named."""
    from .test_address_wait import UnresolvableNode

    box = sandbox_gen2
    other = UnresolvableNode(tmp_path_factory.mktemp("plugin-unresolvable"), box.cookie)
    try:
        pytester.makepyfile(
            test_user="""
            import pytest
            import kzbridge
            from kzbridge.client import SyncNode
            from kzbridge.wire.terms import Atom, ErlString

            @pytest.mark.kazoo_trace(module="kz_json", sink="lager_event")
            def test_both(kazoo_targets, kazoo_trace):
                for node in kazoo_targets.nodes:
                    with SyncNode(node, kazoo_targets.cookie, route=kazoo_targets.routes.route(node)) as n:
                        n.rpc("lager", "log", [Atom("warning"), [(Atom("module"), Atom("kz_json"))],
                                               ErlString("hello from ~s"), [ErlString(node)]])
                seen = {r.message for r in kazoo_trace.records}
                assert {f"hello from {n}" for n in kazoo_targets.nodes} <= seen
                assert False, "to see the report"
        """
        )
        trace_dir = pytester.path / "traces"
        result = run_inner(
            pytester, box, "--kazoo-node", other.node, "--kazoo-address", f"{other.node}=127.0.0.1",
            "--kazoo-trace-dir", str(trace_dir), f"--junitxml={pytester.path / 'junit.xml'}",
        )  # fmt: skip
        result.assert_outcomes(failed=1)
        out = result.stdout.str()
        assert "assert False" in out  # the records assertion above held
        section = out[out.index("kazoo trace: last") :]
        for node in (box.node, other.node):
            assert re.search(
                rf"^{re.escape(node)} \S+ warning +kz_json:\?  hello from {re.escape(node)}$", section, re.M
            )
        files = sorted(trace_dir.iterdir())
        assert [p.name for p in files] == sorted(f"test_user.py__test_both.{n}.log" for n in (box.node, other.node))
        props = [p.get("value") for p in ET.parse(pytester.path / "junit.xml").getroot().iter("property")]
        assert sorted(props) == [str(p) for p in files]
    finally:
        other.close()
