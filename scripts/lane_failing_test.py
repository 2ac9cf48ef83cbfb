"""The container lane's check of the pytest plugin against the running compose stack.

A test suite written the way a user writes one (in a temporary directory, with nothing but
the installed kzbridge and its plugin) has one test that fails on purpose while a trace of
kz_json runs. Its report must show that test's trace (the "kazoo trace" section), its file
must be in --kazoo-trace-dir, and --junitxml must name it as the test's kazoo_trace property.
Run by examples/ci/compose-ci.sh's AFTER_PYTEST hook (so the stack is up); exits 0 when all
of that holds, else 1 with what did not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

TEST = """
import time

import pytest


@pytest.mark.kazoo_trace(module="kz_json")
def test_fails_and_keeps_its_trace(kazoo_sync):
    time.sleep(2)  # the fixture node's traffic logs kz_json meanwhile
    assert False, "failing on purpose: the report must show this test's trace"
"""


def main() -> int:
    node = os.environ.get("NODE", "kazoo_apps@kazoo")
    epmd_port = os.environ["KZBRIDGE_EPMD_PORT"]
    with tempfile.TemporaryDirectory(prefix="kzb-user-suite-") as tmp:
        where = Path(tmp)
        (where / "test_user.py").write_text(TEST)
        traces, junit = where / "traces", where / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "--kazoo-node", node, "--kazoo-address", "127.0.0.1", "--kazoo-epmd-port", epmd_port,
            "--kazoo-trace-dir", str(traces), "--junitxml", str(junit), "test_user.py",
        ]  # fmt: skip
        res = subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=120)
        out = res.stdout + res.stderr
        problems = []
        if res.returncode != 1:
            problems.append(f"pytest exited {res.returncode}, not 1 (one test failing)")
        if "kazoo trace: last" not in out:
            problems.append("the report has no 'kazoo trace' section")
        kept = sorted(traces.rglob("*.log")) if traces.exists() else []
        if not kept or not any(p.stat().st_size > 0 for p in kept):
            problems.append(f"no trace file with lines in {traces}")
        props = []
        if junit.exists():
            props = [p.get("value") for p in ET.parse(junit).iter("property") if p.get("name") == "kazoo_trace"]
        if not props or not all(v and Path(v).exists() for v in props):
            problems.append(f"junit names no existing kazoo_trace file ({props})")
        if problems:
            print("lane-failing-test: " + "; ".join(problems), file=sys.stderr)
            print(out[-4000:], file=sys.stderr)
            return 1
        print(
            f"lane-failing-test: the failing test's report shows its trace; kept {kept[0].name} "
            f"({kept[0].stat().st_size} bytes), named in junit"
        )
        return 0


if __name__ == "__main__":
    sys.exit(main())
