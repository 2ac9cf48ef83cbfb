"""`pytest -m "not live"` runs the pure tests on a machine without Erlang; everything needing it is marked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

ERLANG_TOOLS = {"erl", "erlc", "epmd", "escript", "run_erl", "to_erl", "ct_run", "dialyzer", "typer", "erl_call"}


def _path_without_erlang(where: Path) -> str:
    """A PATH directory holding every command of this machine except Erlang's."""
    where.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = Path(d) / name
            if name not in ERLANG_TOOLS and not (where / name).exists() and os.access(target, os.X_OK):
                (where / name).symlink_to(target)
    return str(where)


def _pytest(args: list[str], path: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_not_live_runs_without_erlang_and_live_tests_are_marked(tmp_path):
    path = _path_without_erlang(tmp_path / "bin")
    env_check = subprocess.run(["sh", "-c", "command -v erl epmd || true"], env=dict(os.environ, PATH=path),
                               capture_output=True, text=True)  # fmt: skip
    assert env_check.stdout == "", "Erlang is hidden from the inner run"

    live = _pytest(["--collect-only", "-m", "live"], path)
    assert live.returncode == 0, live.stdout + live.stderr
    must = [
        "tests/test_sandbox.py::",
        "tests/test_wheel.py::",
        "tests/test_node_live.py::test_rpc_values",
        "tests/test_cli.py::test_demo_runs_the_main_job_end_to_end",
        "tests/test_tracing_live.py::",
    ]
    for nodeid in must:
        assert nodeid in live.stdout, f"{nodeid} should be live"
    assert "tests/test_codec.py::" not in live.stdout and "tests/test_journal.py::" not in live.stdout

    # The pure tests without Erlang; the slow ones among them (a 1000-example fuzz, 16 writer
    # processes) ran in the outer run already and need no Erlang either.
    pure = _pytest(["-m", "not live and not slow", "--ignore", str(Path(__file__).relative_to(ROOT))], path)
    assert pure.returncode == 0, pure.stdout[-5000:] + pure.stderr[-3000:]
    tail = pure.stdout.strip().splitlines()[-1]
    assert " passed" in tail and "failed" not in tail and "error" not in tail, tail
    assert int(tail.split()[0]) >= 40, f"the codec, parser, literal and journal tests ran: {tail}"
