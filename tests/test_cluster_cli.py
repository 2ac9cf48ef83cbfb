"""The cluster commands as operators run them: real kzbridge subprocesses against several sandboxes."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kzbridge import sandbox
from kzbridge.wire.node import connect_node

from .conftest import kzb

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def pair(private_epmd: int) -> Iterator[list[sandbox.Sandbox]]:
    tag = secrets.token_hex(3)
    boxes: list[sandbox.Sandbox] = []
    try:
        boxes.append(sandbox.start(f"kzcc1_{tag}", rate=30))
        boxes.append(sandbox.start(f"kzcc2_{tag}", rate=30, faketime="-1.5s", tz="Asia/Kolkata"))
        yield boxes
    finally:
        for b in boxes:
            sandbox.stop(b.name)


def running_traces(box: sandbox.Sandbox) -> list[object]:
    async def body() -> list[object]:
        n = await connect_node(box.node, box.cookie)
        try:
            return list(await n.rpc("kz_data_tracing", "status", []))
        finally:
            await n.close()

    return asyncio.run(body())


def test_trace_module_on_two_nodes_writes_one_directory(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, b = pair
    out = tmp_path / "run"
    r = kzb("trace-module", "kz_json", "-n", f"{a.node},{b.node}", "--duration", "2", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["complete"] and data["failed"] == {}
    nodes = {n["node"]: n for n in data["nodes"]}
    assert set(nodes) == {a.node, b.node}
    for box in pair:
        entry = nodes[box.node]
        local = out / f"{box.node}.log"
        assert entry["verified"] and entry["bytes"] == local.stat().st_size > 0
    assert nodes[b.node]["clock"]["start"]["offset"] == pytest.approx(-1.5, abs=0.3)
    assert nodes[b.node]["utc_offset"] == 5 * 3600 + 1800
    merged = (out / "merged.log").read_text().splitlines()
    assert len(merged) == sum(len((out / f"{x.node}.log").read_text().splitlines()) for x in pair)
    # In order of instant (ISO UTC text sorts as time), except that a node's lines keep their file
    # order: a line lager wrote a millisecond "earlier" than its predecessor stays after it. So the
    # order is by each node's running maximum.
    keys, running = [], {}
    for line in merged:
        label, instant = line.split()[:2]
        running[label] = max(running.get(label, ""), instant)
        keys.append(running[label])
    assert keys == sorted(keys)
    # The offline merge reproduces it byte for byte; a second run into the same directory is refused.
    again = kzb("merge", str(out), "-o", str(tmp_path / "again.log"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.log").read_bytes() == (out / "merged.log").read_bytes()
    refused = kzb("trace-module", "kz_json", "-n", a.node, "-n", b.node, "--duration", "1", "-o", str(out))
    assert refused.returncode == 2 and "already holds" in refused.stderr and refused.stderr.count("\n") == 1
    assert running_traces(a) == [] and running_traces(b) == []


def test_nodes_lists_and_reports_a_wrong_cookie_by_name(pair: list[sandbox.Sandbox]) -> None:
    a, b = pair
    r = kzb("nodes", "-n", a.node, "-n", b.node, "--json")
    assert r.returncode == 0, r.stderr
    reports = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
    assert all(n["answered"] and n["generation"] == 2 for n in reports.values())
    # One cookie for all nodes: the sandbox a's cookie is wrong for b.
    wrong = kzb("nodes", "-n", a.node, "-n", b.node, "--cookie", a.cookie)
    assert wrong.returncode == 3
    line = next(ln for ln in wrong.stdout.splitlines() if ln.startswith(b.node))
    assert "NO ANSWER" in line and "cookie" in line


def test_one_node_down_others_traced_and_require_all(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, _ = pair
    ghost = "kzccghost@127.0.0.1"
    r = kzb("trace-module", "kz_json", "-n", a.node, "-n", ghost, "--duration", "1", "-o", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    assert ghost in r.stderr and "NOT TRACED" in r.stderr
    strict = kzb(
        "trace-module", "kz_json", "-n", a.node, "-n", ghost, "--duration", "1", "--require-all",
        "-o", str(tmp_path / "y"),
    )  # fmt: skip
    assert strict.returncode == 3 and ghost in strict.stderr
    assert running_traces(a) == []


def test_trace_pid_with_several_nodes_needs_the_owner(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, b = pair
    r = kzb("trace-pid", "0.116.0", "-n", a.node, "-n", b.node, "--duration", "1")
    assert r.returncode == 2 and "belongs to one node" in r.stderr
    ok = kzb("trace-pid", f"<{a.node}.116.0>", "-n", a.node, "-n", b.node, "--duration", "1",
             "-o", str(tmp_path / "pid.log"))  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert a.node in ok.stderr and b.node not in ok.stderr


def test_sigkilled_kzbridge_leaves_nothing_running_past_the_lease(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, b = pair
    proc = subprocess.Popen(
        [sys.executable, "-m", "kzbridge", "trace-module", "kz_json", "-n", a.node, "-n", b.node,
         "--duration", "60", "--lease", "5", "-o", str(tmp_path / "k")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (running_traces(a) and running_traces(b)):
            assert time.monotonic() < deadline and proc.poll() is None, "the traces did not start"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while running_traces(a) or running_traces(b):
            assert time.monotonic() < deadline, "a lease did not stop its trace"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_node_killed_mid_trace_keeps_its_partial_and_the_others_complete(
    pair: list[sandbox.Sandbox], tmp_path: Path
) -> None:
    a, _ = pair
    doomed = sandbox.start(f"kzccdoom_{secrets.token_hex(3)}", rate=50)
    try:
        out = tmp_path / "kill"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kzbridge", "trace-module", "kz_json", "-n", a.node, "-n", doomed.node,
             "--duration", "6", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        target = out / f"{doomed.node}.log.partial"
        while not (target.exists() and target.stat().st_size > 0):
            assert time.monotonic() < deadline and proc.poll() is None, "no data from the doomed node"
            time.sleep(0.1)
        os.kill(doomed.os_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert "PARTIAL" in err and f"{doomed.node}.log.partial" in err
        desc = json.loads((out / "cluster.json").read_text())
        by_node = {n["node"]: n for n in desc["nodes"]}
        assert by_node[a.node]["verified"] and not by_node[a.node]["partial"]
        assert by_node[doomed.node]["partial"] and doomed.node in desc["failed"]
        assert (out / "merged.log").stat().st_size > 0
    finally:
        sandbox.stop(doomed.name)
