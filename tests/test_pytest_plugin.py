"""The pytest plugin, as a user's CI would run it: a separate pytest process against a node."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def test_plugin_fixtures_against_a_given_node(sandbox_gen2, tmp_path):
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent("""
        from kzbridge.kazoo import filters, tracing
        from kzbridge.wire.terms import Atom

        def test_target(kazoo_target):
            node, cookie = kazoo_target
            assert node.endswith("@127.0.0.1") and cookie

        def test_sync_rpc_and_a_trace(kazoo_sync, tmp_path):
            assert kazoo_sync.rpc("erlang", "whereis", [Atom("kz_data_tracing")]) != Atom("undefined")
            async def trace(node):
                t = await tracing.start_trace(node, filters.module_filter("kz_json"))
                return await tracing.run_trace(t, str(tmp_path / "t.log"), duration=1.5)
            summary = kazoo_sync.run(trace)
            assert summary.lines > 0
    """)
    )
    env = dict(os.environ, KZBRIDGE_COOKIE=sandbox_gen2.cookie)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--kazoo-node",
            sandbox_gen2.node,
            str(tmp_path / "test_user.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed" in res.stdout


@pytest.mark.live
def test_plugin_starts_its_own_sandbox_without_a_node(tmp_path):
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent("""
        from kzbridge.wire.terms import Atom

        def test_sandbox_generation_one(kazoo_sync):
            info = kazoo_sync.rpc("kz_fixture", "info", [])
            assert info[Atom("generation")] == 1
    """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KZBRIDGE_NODE", "KZBRIDGE_COOKIE")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--kazoo-generation",
            "1",
            str(tmp_path / "test_user.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
