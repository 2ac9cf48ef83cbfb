"""Issue 11, rules 1 and 7 on the node: one trace per file, stop cancels what it armed, and a trace
stopped by someone else says so. Real sandbox nodes; concurrency through several kzbridge processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import UsageError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import journal, tracing
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom
from tests.test_hardening_files import kz_refs, kzb, node_call, one_line, traced_files


class Running:
    """A kzbridge subprocess whose stderr is collected by a thread."""

    def __init__(self, *args: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kzbridge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.err: list[str] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = "".join(self.err)
            if text in seen:
                return seen
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}: {''.join(self.err)}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen in {''.join(self.err)!r}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._t.join(5)
        return self.proc.returncode, out, "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.asyncio
async def test_a_remote_path_in_use_or_existing_is_refused(gen2_node: Any, node_tmp: Path) -> None:
    path = f"{node_tmp}/shared-{os.getpid()}.log"
    trace = await tracing.start_trace(gen2_node, flt.module_filter("kz_json"), remote_path=path)
    try:
        for sink in (tracing.DATA_SINK, tracing.LAGER_SINK):
            with pytest.raises(UsageError, match="already being traced") as info:
                await tracing.start_trace(gen2_node, flt.module_filter("kz_json"), remote_path=path, sink=sink)
            assert info.value.setting == "remote_path"
    finally:
        await trace.stop()
    with pytest.raises(UsageError, match="already exists on"):
        await tracing.start_trace(gen2_node, flt.module_filter("kz_json"), remote_path=path)
    # The refused starts armed no lease and left no handler: the file is exactly the first trace's.
    handlers = await gen2_node.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
    assert (Atom("lager_file_backend"), path) not in handlers


def test_two_runs_racing_for_one_remote_path_one_wins_one_is_refused(
    sandbox_gen2: Any, node_tmp: Path, tmp_path: Path
) -> None:
    path = f"{node_tmp}/race-{os.getpid()}.log"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kzbridge",
                "trace-module",
                "kz_json",
                "-n",
                sandbox_gen2.node,
                "-d",
                "3",
                "--remote-path",
                path,
                "-o",
                str(tmp_path / f"r{i}.log"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert "already" in err and "see --remote-path" in err, err
        else:
            assert "size verified" in err and "stopped by duration" in err, err
    (won,) = [i for i, (code, _) in enumerate(results) if code == 0]
    assert (tmp_path / f"r{won}.log").stat().st_size == os.path.getsize(path) > 0
    assert [f for f in os.listdir(tmp_path) if f.startswith("r")] == [f"r{won}.log"]


@pytest.mark.parametrize("path", ["/tmp/caf\u00e9-kzb.log", "/tmp//kzb-double.log", "/tmp/kzb-\x1b[31m.log"])
def test_remote_paths_lager_would_rename_are_refused_before_anything(sandbox_gen2: Any, path: str) -> None:
    before = (kz_refs(sandbox_gen2), traced_files(sandbox_gen2))
    res = kzb("trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "2", "--remote-path", path)
    assert res.returncode == 2, res.stderr
    assert "see --remote-path" in one_line(res)
    assert (kz_refs(sandbox_gen2), traced_files(sandbox_gen2)) == before
    # Nothing was created on the node under the name or its double-encoded form.
    mangled = path.encode().decode("latin-1")
    assert not os.path.exists(path) and not os.path.exists(mangled)


@pytest.mark.live  # its sandbox comes through getfixturevalue, which the automatic marking cannot see
@pytest.mark.parametrize("sink, how", [("data", "stop"), ("lager_event", "stop"), ("data", "clear")])
def test_stop_of_a_detached_trace_cancels_its_lease_timer(
    request: pytest.FixtureRequest, node_tmp: Path, tmp_path: Path, sink: str, how: str
) -> None:
    # clear stops every trace on the node: that case gets a node of its own.
    sandbox_gen2 = request.getfixturevalue("fresh_sandbox" if how == "clear" else "sandbox_gen2")
    path = f"{node_tmp}/lease-{sink}-{how}-{os.getpid()}.log"
    res = kzb("start", "--module", "kz_json", "-n", sandbox_gen2.node, "-d", "4", "--remote-path", path,
              "--sink", sink)  # fmt: skip
    assert res.returncode == 0, res.stderr
    ref = res.stdout.strip()
    entry = journal.find(sandbox_gen2.node, ref)
    assert entry is not None and entry.extra.get("timer"), "the lease timer is journaled"
    if how == "stop":
        res = kzb("stop", ref, "-n", sandbox_gen2.node, "-o", str(tmp_path / "old.log"))
    else:  # generation 2's clear_all_traces stops it; the journaled timer is cancelled too
        res = kzb("clear", "-n", sandbox_gen2.node)
    assert res.returncode == 0, res.stderr
    os.unlink(path)  # the path is free again: a newer trace may use it
    started = time.monotonic()

    async def newer() -> tuple[bool, bool]:
        n = await connect_node(sandbox_gen2.node, sandbox_gen2.cookie)
        try:
            trace = await tracing.start_trace(n, flt.module_filter("kz_json"), remote_path=path, sink=sink, lease=60)
            try:
                # Past the old trace's lease (4 s from its start): its timer must not fire on our file.
                await asyncio.sleep(max(0.0, 6.5 - (time.monotonic() - started)))
                sink_name = "data_lager_event" if sink == "data" else "lager_event"
                handlers = await n.rpc("gen_event", "which_handlers", [Atom(sink_name)])
                alive = (Atom("lager_file_backend"), path) in handlers
                known = True
                if sink == "data":
                    known = await n.rpc("kz_data_tracing", "status", [trace.ref.encode()]) != Atom("false")
                return alive, known
            finally:
                await trace.stop()
        finally:
            await n.close()

    alive, known = asyncio.run(newer())
    assert alive and known, "the stopped trace's lease timer stopped the newer trace"


def test_a_trace_stopped_by_another_client_says_so(sandbox_gen2: Any, tmp_path: Path) -> None:
    out = tmp_path / "early.log"
    run = Running("trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "60", "-o", str(out))
    try:
        run.wait_for("(ref ")
        time.sleep(1.5)  # let it write something first
        res = kzb("stop", "--all", "--no-collect", "-n", sandbox_gen2.node)
        assert res.returncode == 0, res.stderr
        code, _, err = run.finish(timeout=30)
    finally:
        run.kill()
    assert code == 0, err
    assert "stopped by another client after" in err and "stopped by duration" not in err, err
    assert "was stopped by another client after" in err and "kzbridge: warning:" in err, err
    seconds = float(err.split("stopped by another client after ")[1].split("s")[0])
    assert seconds < 20, err  # noticed within seconds, not at the 60 s duration
    remote = err.split("remote: ")[1].split("\n")[0].strip()
    assert out.stat().st_size == os.path.getsize(remote) > 0  # "verified": the bytes the node wrote, whole
    assert remote not in traced_files(sandbox_gen2)


def test_a_trace_cleared_on_the_node_by_kazoo_itself_says_so(fresh_sandbox: Any, tmp_path: Path) -> None:
    out = tmp_path / "cleared.log"
    run = Running("trace", "--filter", "function=*", "-n", fresh_sandbox.node, "-d", "60", "-o", str(out), "--json")
    try:
        run.wait_for("(ref ")
        node_call(fresh_sandbox, "kz_data_tracing", "clear_all_traces", [])  # what sup's clear does
        code, stdout, err = run.finish(timeout=30)
    finally:
        run.kill()
    assert code == 0, err
    assert '"reason": "another client"' in stdout, stdout
    assert '"reason": "duration"' not in stdout


def test_stop_with_an_output_it_cannot_write_leaves_the_trace_running_to_retry(
    sandbox_gen2: Any, tmp_path: Path
) -> None:
    res = kzb("start", "--module", "kz_json", "-n", sandbox_gen2.node, "-d", "60")
    assert res.returncode == 0, res.stderr
    ref = res.stdout.strip()
    (tmp_path / "taken.log").write_text("someone else's")
    for bad in (tmp_path / "missing" / "x.log", tmp_path / "taken.log"):
        res = kzb("stop", ref, "-n", sandbox_gen2.node, "-o", str(bad))
        assert res.returncode == 2 and "see --output" in one_line(res), res.stderr
        assert ref in kz_refs(sandbox_gen2)  # checked before the trace was touched: still running
    assert (tmp_path / "taken.log").read_text() == "someone else's"
    res = kzb("stop", ref, "-n", sandbox_gen2.node, "-o", str(tmp_path / "ok.log"))
    assert res.returncode == 0, res.stderr
    assert ref not in kz_refs(sandbox_gen2) and (tmp_path / "ok.log").stat().st_size > 0
