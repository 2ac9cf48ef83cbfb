"""The container lane: docker-compose.yml built and run for real under podman.

scripts/containers.sh installs podman and podman-compose, makes the adjustments this machine
needs (base image, runtime configuration, CA for pip), runs examples/ci/compose-ci.sh (both
images built, the kazoo service up, waited for, traced from the host and from the tools
container, the example pytest suite, down) and checks that nothing is left behind.

Skipped only when KZBRIDGE_SKIP_CONTAINERS=1 is set, and the skip says so. A machine where
podman cannot run at all fails here, with the lane's reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(780)]

LANE_DEADLINE = 720  # seconds: the budget is 4 minutes cold; this is the point of giving up


def run_lane(report: str) -> tuple[int, str]:
    """Run the lane in its own process group; past the deadline TERM it (so compose-ci.sh
    still takes the stack down), then KILL it."""
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts/containers.sh")],
        env=dict(os.environ, KZBRIDGE_CONTAINERS_REPORT=report),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=LANE_DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"the container lane passed its {LANE_DEADLINE}s deadline:\n{output[-6000:]}")
    return proc.returncode, output


def podman_lines(*args: str) -> list[str]:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]


def test_compose_stack_builds_runs_traces_and_leaves_nothing_under_podman(tmp_path):
    if os.environ.get("KZBRIDGE_SKIP_CONTAINERS") == "1":
        pytest.skip("KZBRIDGE_SKIP_CONTAINERS=1: the container lane (scripts/containers.sh) was not run")
    report = tmp_path / "lane.json"
    with open("/etc/hosts", "rb") as f:
        hosts_before = f.read()
    rc, output = run_lane(str(report))
    assert report.exists(), f"the lane wrote no report (exit {rc}):\n{output[-6000:]}"
    outcome = json.loads(report.read_text())
    assert rc == 0 and outcome["outcome"] == "OK", f"{outcome['reason']}\n{output[-6000:]}"

    # Every step ran and was timed; both traces came back with lines, size verified.
    steps = ("base-image", "runtime-probe", "up", "wait", "trace-host", "trace-tools", "pytest", "after-pytest", "down")
    for step in steps:
        assert step in outcome["timings"], f"{step} did not run:\n{output[-4000:]}"
    traces = outcome["traces"]
    assert [t.split(":")[0].rsplit("/", 1)[-1] for t in traces] == ["host-kz_json.log", "tools-kz_json.log"]
    for line in traces:
        lines = int(line.split(": ", 1)[1].split()[0])
        assert lines > 0 and line.endswith("size verified"), line
    assert "2 passed" in output, "the example suite ran its two tests against the container"
    # A user's suite in a temporary directory, only the installed plugin: its failing test's report
    # shows the trace, the file is in --kazoo-trace-dir and junit names it (lane_failing_test.py).
    assert "lane-failing-test: the failing test's report shows its trace" in output, output[-4000:]

    # Nothing left: the lane's own comparison, and podman asked again here.
    assert outcome["leftovers"] == []
    project = outcome["project"]
    assert project.startswith("kzbridge-lane-")
    label = f"label=io.podman.compose.project={project}"
    assert podman_lines("ps", "-a", "--external", "--filter", label, "--format", "{{.ID}}") == []
    assert podman_lines("pod", "ls", "--filter", f"name={project}", "--format", "{{.Name}}") == []
    assert podman_lines("network", "ls", "--filter", f"name={project}", "--format", "{{.Name}}") == []
    with open("/etc/hosts", "rb") as f:
        assert f.read() == hosts_before, "the lane reached the node without editing /etc/hosts"
