"""kzbridge as users install it: a wheel in a fresh virtualenv outside the checkout.

The sandbox (``kzbridge demo``, ``kzbridge sandbox``, the pytest plugin's fixtures)
compiles the Erlang fixtures shipped as package data; this checks they are in the wheel
and found there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from typing import Any

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

USER_TEST = textwrap.dedent("""
    import kzbridge
    from kzbridge.wire.terms import Atom

    def test_installed_plugin_sandbox_answers_rpc(kazoo_sync, kazoo_target):
        node, cookie = kazoo_target
        assert "site-packages" in kzbridge.__file__, kzbridge.__file__
        assert kazoo_sync.rpc("erlang", "node", []) == Atom(node)
        info = kazoo_sync.rpc("kz_fixture", "info", [])
        assert info[Atom("generation")] == 2
        assert kazoo_sync.rpc("lists", "sum", [[100, 200, 300]]) == 600
""")


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    res: subprocess.CompletedProcess[str] = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def test_wheel_in_a_fresh_venv_runs_the_demo_and_the_plugins_sandbox(private_epmd, tmp_path, monkeypatch):
    # The tracked sources only (no .venv, build output or caches), built elsewhere.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "kzbridge", src / "kzbridge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)], timeout=300)
    (wheel,) = wheels.glob("kzbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("kzbridge/py.typed", "kzbridge/erlang_fixtures/src/kz_data_tracing.erl",
                 "kzbridge/erlang_fixtures/bin/build.sh", "kzbridge/erlang_fixtures/config/sys.config"):  # fmt: skip
        assert part in names, f"{part} missing from the wheel"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel), "pytest"], timeout=300)

    cache = tmp_path / "cache"  # compile the fixtures afresh, from the installed package
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KZBRIDGE_FIXTURES", "KZBRIDGE_NODE")}
    env.update(KZBRIDGE_CACHE=str(cache), ERL_EPMD_PORT=str(private_epmd))
    work = tmp_path / "work"
    work.mkdir()
    try:
        demo = _run([str(venv / "bin" / "kzbridge"), "demo", "--duration", "2"], cwd=work, env=env, timeout=180)
        said = demo.stdout + demo.stderr
        assert "trace-module kz_json" in said and "size verified" in said, said
        (log,) = work.glob("demo-*.log")
        assert log.stat().st_size > 0 and re.search(r"first events of [1-9]\d* parsed", demo.stdout), demo.stdout
        assert list(cache.glob("fixtures/*/gen2/kz_data_tracing.beam")), "compiled from the wheel's fixtures"
        # report's worker processes start from the installed package (python -m kzbridge.kazoo.report_work)
        page = _run([str(venv / "bin" / "kzbridge"), "report", str(log), "--jobs", "2", "-o", "r.html"], cwd=work,
                    env=env, timeout=120)  # fmt: skip
        assert "report of" in page.stderr and (work / "r.html").stat().st_size > 20_000, page.stderr

        (work / "test_user.py").write_text(USER_TEST)
        pytest_cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"]
        res = subprocess.run(pytest_cmd, cwd=work, env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "1 passed" in res.stdout
    finally:
        # Whatever a failed run left running in that cache is stopped here.
        from kzbridge import sandbox

        monkeypatch.setenv("KZBRIDGE_CACHE", str(cache))
        for box in sandbox.list_sandboxes():
            sandbox.stop(box.name)
