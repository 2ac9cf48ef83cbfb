"""Detached traces on several nodes as operators run them: real kzbridge subprocesses, two sandboxes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kzbridge import sandbox
from kzbridge.wire.terms import Atom

from .conftest import kzb, node_call, poll_until
from .peers.hostile import HostilePeer
from .test_hardening_limits import swallow

pytestmark = pytest.mark.live

GHOST = "kzdcghost@127.0.0.1"  # a name with no BEAM behind it


@pytest.fixture(scope="module")
def pair(private_epmd: int) -> Iterator[list[sandbox.Sandbox]]:
    tag = secrets.token_hex(3)
    boxes: list[sandbox.Sandbox] = []
    try:
        boxes.append(sandbox.start(f"kzdc1_{tag}", rate=30))
        boxes.append(sandbox.start(f"kzdc2_{tag}", rate=30))
        a, b = boxes
        node_call(a, "kz_nodes", "join", [[Atom(b.node)]])  # what AMQP heartbeats do on Kazoo: --cluster finds b
        yield boxes
    finally:
        for box in boxes:
            sandbox.stop(box.name)


def node_state(box: sandbox.Sandbox) -> tuple[list[Any], list[Any]]:
    """What runs on the node: kz_data_tracing's traces and the data sink's file handlers."""
    handlers = node_call(box, "gen_event", "which_handlers", [Atom("data_lager_event")])
    return list(node_call(box, "kz_data_tracing", "status", [])), [
        h for h in handlers if type(h) is tuple and h[0] == Atom("lager_file_backend")
    ]


def clean(box: sandbox.Sandbox) -> bool:
    return node_state(box) == ([], [])


def started(res: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """``start`` with several nodes: node -> (ref, remote file), one stdout line each."""
    assert res.returncode == 0, res.stderr
    return {node: (ref, path) for node, ref, path in (line.split() for line in res.stdout.splitlines())}


def test_start_status_and_stop_all_on_two_nodes(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, b = pair
    res = kzb("start", "--module", "kz_json", "-n", a.node, "-n", b.node, "--duration", "60")
    traces = started(res)
    assert set(traces) == {a.node, b.node}
    assert f"kzbridge stop --all -n {a.node} -n {b.node} -o DIR" in res.stderr
    refs = {node: ref for node, (ref, _) in traces.items()}

    # One table, the node first: every node's traces.
    res = kzb("status", "-n", a.node, "-n", b.node)
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()]
    assert {(r[0], r[1]) for r in rows} == {(a.node, refs[a.node]), (b.node, refs[b.node])}
    assert all(r[2] == "data" and r[3] == "ours" and r[4] == traces[r[0]][1] for r in rows)
    assert "2 traces on 2 of 2 nodes" in res.stderr
    # --cluster finds b through a's kz_nodes table; the same table.
    res = kzb("status", "--cluster", a.node, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["source"] == "kz_nodes"
    by_node = {n["node"]: n for n in data["nodes"]}
    assert set(by_node) == {a.node, b.node}
    for node, entry in by_node.items():
        assert entry["answered"] and entry["error"] is None and entry["generation"] == 2
        assert [t["ref"] for t in entry["traces"]] == [refs[node]] and entry["traces"][0]["ours"]
    # One node: the table without the node column, as ever.
    res = kzb("status", "-n", a.node)
    assert res.stdout.split()[0] == refs[a.node]

    for _, path in traces.values():
        poll_until(lambda path=path: os.path.getsize(path) > 0, timeout=20, message=f"{path} written")
    out = tmp_path / "collected"
    out.mkdir()
    res = kzb("stop", "--all", "-n", f"{a.node},{b.node}", "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    stopped = {n["node"]: n for n in json.loads(res.stdout)["nodes"]}
    assert list(stopped) == [a.node, b.node]  # in the order given, whichever finished first
    for box in pair:
        [item] = stopped[box.node]["stopped"]
        ref, remote = traces[box.node]
        local = out / f"{box.name}-{ref}.log"
        assert item["ref"] == ref and item["verified"] and item["local_path"] == str(local)
        # The whole file: the node's bytes, byte for byte (stopped first, so it no longer grows).
        assert local.read_bytes() == Path(remote).read_bytes() and item["bytes"] == local.stat().st_size > 0
        assert f"{box.node}: stopped 1 trace, collected {item['bytes']} bytes, size verified" in res.stderr
        assert clean(box)
    res = kzb("status", "-n", a.node, "-n", b.node, "--json")
    assert all(n["traces"] == [] for n in json.loads(res.stdout)["nodes"])


def test_a_node_that_does_not_answer_is_named(pair: list[sandbox.Sandbox]) -> None:
    a, _ = pair
    res = kzb("status", "-n", a.node, "-n", GHOST)
    assert res.returncode == 3, res.stderr
    ghost_row = next(line for line in res.stdout.splitlines() if line.startswith(GHOST))
    assert "NO ANSWER" in ghost_row and "kzdcghost" in ghost_row
    assert any(line.startswith(a.node) for line in res.stdout.splitlines())
    data = json.loads(kzb("status", "-n", a.node, "-n", GHOST, "--json").stdout)
    assert [(n["node"], n["answered"], bool(n["error"])) for n in data["nodes"]] == [
        (a.node, True, False),
        (GHOST, False, True),
    ]

    # Without --require-all the node that answers is traced; the ghost is named.
    res = kzb("start", "--module", "kz_json", "-n", a.node, "-n", GHOST, "-d", "60")
    assert list(started(res)) == [a.node]
    assert f"{GHOST}: not started" in res.stderr
    # clear: a's trace stopped, the ghost named, exit 3.
    res = kzb("clear", "-n", a.node, "-n", GHOST)
    assert res.returncode == 3, res.stderr
    assert res.stdout.split()[:2] == [a.node, "stopped"] and f"{GHOST}: error:" in res.stderr
    assert clean(a)

    # With --require-all the trace started on a is stopped again, and the run fails.
    res = kzb("start", "--module", "kz_json", "-n", a.node, "-n", GHOST, "-d", "60", "--require-all", "--json")
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and GHOST in res.stderr
    assert f"stopped the traces started on {a.node}" in res.stderr
    assert clean(a)
    assert json.loads(kzb("status", "-n", a.node, "--json").stdout)["traces"] == []


def test_a_stalled_node_costs_the_others_nothing(pair: list[sandbox.Sandbox], private_epmd: int) -> None:
    """--timeout is each node's deadline, connecting included: the node that answers is listed, the
    one that completes the handshake and then swallows every call is named, all in about 3 s."""
    a, _ = pair
    stall = HostilePeer(private_epmd, a.cookie, swallow(), name=f"kzdcstall{secrets.token_hex(3)}")
    try:
        t0 = time.monotonic()
        res = kzb("status", "-n", stall.node, "-n", a.node, "--cookie", a.cookie, "--timeout", "3", "--json")
        took = time.monotonic() - t0
        assert res.returncode == 3, res.stderr
        first, second = json.loads(res.stdout)["nodes"]
        assert first["node"] == stall.node and not first["answered"]
        assert "did not finish answering within 3s" in first["error"]
        assert second == {**second, "node": a.node, "answered": True, "error": None, "traces": []}
        assert 2.5 < took < 7, f"took {took:.1f}s for --timeout 3"
    finally:
        stall.close()


def test_clear_and_orphans_on_two_nodes_in_json(pair: list[sandbox.Sandbox]) -> None:
    a, b = pair
    traces = started(kzb("start", "--filter", "request=*", "-n", a.node, "-n", b.node, "-d", "60"))
    res = kzb("clear", "-n", a.node, "-n", b.node, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data == {
        "nodes": [
            {"node": a.node, "answered": True, "error": None, "stopped": [traces[a.node][0]]},
            {"node": b.node, "answered": True, "error": None, "stopped": [traces[b.node][0]]},
        ]
    }
    assert clean(a) and clean(b)
    res = kzb("status", "--orphans", "-n", a.node, "-n", b.node, "--json")
    assert res.returncode == 0, res.stderr
    assert [n["orphans"] for n in json.loads(res.stdout)["nodes"]] == [[], []]
    res = kzb("clear", "--orphans", "-n", a.node, "-n", b.node, "--json")
    assert res.returncode == 0, res.stderr
    entry = {"answered": True, "error": None, "stopped": [], "removed": [], "still_there": []}
    assert json.loads(res.stdout) == {"nodes": [{"node": a.node, **entry}, {"node": b.node, **entry}]}


def test_usage_that_needs_one_node_is_refused_before_any_node_is_touched(pair: list[sandbox.Sandbox]) -> None:
    a, b = pair
    nodes = ["-n", a.node, "-n", b.node]
    for args, fragment in (
        (["start", "--module", "kz_json", "--remote-path", "/tmp/x.log"], "see --remote-path"),
        (["start", "--pid", "0.116.0"], "a pid belongs to one node"),
        (["stop", "--all"], "give --output DIR"),
        (["stop", "ffffffffffff"], f"no trace ffffffffffff on {a.node}, {b.node}"),
    ):
        res = kzb(*args, *nodes)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
    res = kzb("start", "--module", "kz_json", "--require-all", "-n", a.node)
    assert res.returncode == 2 and "several nodes" in res.stderr
    assert clean(a) and clean(b)


def test_a_pid_of_one_node_traces_that_node_and_stop_finds_it_by_ref(pair: list[sandbox.Sandbox]) -> None:
    a, b = pair
    pid = node_call(a, "erlang", "whereis", [Atom("kz_data_tracing")])
    printed = f"<{a.node}.{pid.id}.{pid.serial}>"
    res = kzb("start", "--pid", printed, "-n", a.node, "-n", b.node, "-d", "60", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # narrowed to the pid's node: the one-node form
    assert data["node"] == a.node
    [row] = json.loads(kzb("status", "-n", a.node, "--json").stdout)["traces"]
    assert row["ref"] == data["ref"] and f'{{pid,"<0.{pid.id}.{pid.serial}>"}}' in row["filters"], row
    assert clean(b)
    # stop REF with both nodes: this machine's journal says a holds it.
    res = kzb("stop", data["ref"], "-n", b.node, "-n", a.node, "--no-collect")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"stopped {data['ref']} ")
    assert clean(a)


def test_a_trace_stopped_by_someone_else_is_not_called_ours(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    # sup (or another machine) stops the trace first: kzbridge still collects it, and says the
    # stop was not its own.
    a, _ = pair
    res = kzb("start", "--module", "kz_json", "-n", a.node, "-d", "60")
    assert res.returncode == 0, res.stderr
    ref = res.stdout.split()[0]
    assert node_call(a, "kz_data_tracing", "stop_trace", [ref.encode()])[0] == Atom("ok")
    res = kzb("stop", ref, "-n", a.node, "-o", str(tmp_path / "t.log"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{ref} was already stopped, by its lease, another client or sup ("), res.stdout
    assert not res.stdout.startswith("stopped") and (tmp_path / "t.log").exists()
    assert clean(a)


def test_stop_all_checks_every_output_before_it_stops_any_trace(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    # All of a node's traces are stopped before the first is collected, so an output that cannot
    # be written (here the second trace's file exists) must stop the run before any trace is:
    # else the first would be stopped, marked stopped in the journal, and never collected.
    a, _ = pair
    refs = []
    for module in ("kz_json", "kz_term"):
        res = kzb("start", "--module", module, "-n", a.node, "-d", "60")  # one node: the ref alone on stdout
        assert res.returncode == 0, res.stderr
        refs.append(res.stdout.split()[0])
    first, second = refs
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{a.name}-{second}.log").write_text("an earlier run's file\n")
    try:
        res = kzb("stop", "--all", "-n", a.node, "-o", str(out))
        assert res.returncode == 2 and "already exists; kzbridge never overwrites" in res.stderr, res.stderr
        assert sorted(ref.decode() for ref, *_ in node_state(a)[0]) == sorted([first, second])  # both still run
        assert sorted(p.name for p in out.iterdir()) == [f"{a.name}-{second}.log"]
    finally:
        kept = tmp_path / "kept"
        kept.mkdir()
        res = kzb("stop", "--all", "-n", a.node, "-o", str(kept))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in kept.iterdir()) == sorted(f"{a.name}-{r}.log" for r in (first, second))
    assert clean(a)


def test_ctrl_c_during_stop_all_names_every_partial_file(pair: list[sandbox.Sandbox], tmp_path: Path) -> None:
    a, b = pair
    traces = started(kzb("start", "--module", "kz_json", "-n", a.node, "-n", b.node, "-d", "60"))
    try:
        for _, remote in traces.values():
            os.truncate(remote, 1 << 30)  # sparse: no disk, and the collections take seconds
        proc = subprocess.Popen(
            [sys.executable, "-m", "kzbridge", "stop", "--all", "-n", a.node, "-n", b.node, "-o", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Collections from nodes on this machine take turns (kazoo.collect's transfer slots:
            # half the CPUs), so on 2 cores one file is arriving and the other waits its turn.
            def arriving() -> bool:
                parts = list(tmp_path.glob("*.partial"))
                return len(parts) >= 1 and all(p.stat().st_size > 0 for p in parts)

            poll_until(arriving, timeout=30, interval=0.01, message="a collection under way")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        for _, remote in traces.values():
            os.unlink(remote)
    assert proc.returncode == 130, err
    parts = sorted(tmp_path.glob("*.partial"))
    assert len(parts) >= 1
    assert err.count("(partial)") == len(parts), err  # every partial file kept is named, and only those
    for part in parts:
        assert f"kzbridge: interrupted; kept {part.stat().st_size} bytes in {part} (partial)" in err
        assert 0 < part.stat().st_size < 1 << 30
    assert "Traceback" not in err
    assert clean(a) and clean(b)  # stopped before the collections began
