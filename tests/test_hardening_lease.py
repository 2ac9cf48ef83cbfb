"""Issue 11, rule 1: a trace stopped by its own lease says so, never "stopped by another client".

The lease is a timer on the node (tracing.py); kzbridge renews it every third of its length. When
renewals fail (the node's timer server does not answer) or stall (the kzbridge process is paused
longer than the lease), the node's timer fires and removes the trace's handler: the summary must
name the lease and why it was not renewed. Real sandbox nodes; the pause is a real SIGSTOP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.session import StoppedBy, TraceSession
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom
from tests.conftest import poll_until_async
from tests.test_hardening_files import kz_refs, traced_files
from tests.test_hardening_node import Running


@pytest.mark.asyncio
async def test_failed_renewals_let_the_lease_stop_the_trace_and_the_summary_says_so(
    fresh_sandbox: Any, tmp_path: Path
) -> None:
    n = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
    ctl = await connect_node(fresh_sandbox.node, fresh_sandbox.cookie)
    try:
        session = await TraceSession.start(
            n, flt.module_filter("kz_json"), local_path=tmp_path / "lease.log", duration=60, lease=3, timeout=1.5
        )
        stops: list[StoppedBy] = []
        running = asyncio.ensure_future(session.run(lambda e: stops.append(e) if isinstance(e, StoppedBy) else None))
        await asyncio.sleep(0.5)
        # The node's timer server stops answering: the next renewal (timer:apply_after) times out.
        await ctl.rpc("sys", "suspend", [Atom("timer_server")])
        try:
            await poll_until_async(lambda: session.trace.keeper_error is not None, timeout=10, interval=0.05)
            assert not running.done(), "the trace runs on while its last lease holds"
        finally:
            # Back: the lease armed by the last good renewal fires (now, or when it is due).
            await ctl.rpc("sys", "resume", [Atom("timer_server")])
        summary = await asyncio.wait_for(running, 30)
        assert await n.rpc("kz_data_tracing", "status", []) == []
        handlers = await n.rpc("gen_event", "which_handlers", [Atom("data_lager_event")])
        assert (Atom("lager_file_backend"), session.trace.remote_path) not in handlers
    finally:
        await n.close()
        await ctl.close()
    assert [s.reason for s in stops] == ["lease"], stops
    assert summary.reason == "its lease", summary.reason
    assert summary.stop_detail.startswith("lease renewals failed: "), summary.stop_detail
    assert "another client" not in " ".join(summary.warnings)
    (warning,) = [w for w in summary.warnings if "was stopped by its lease after" in w]
    assert "(lease renewals failed: " in warning and warning.setting == "lease"
    assert summary.seconds < 20, "stopped within its 3 s lease of the failed renewal, not at the duration"
    assert summary.verified and (tmp_path / "lease.log").stat().st_size == summary.bytes


def test_a_paused_kzbridge_whose_lease_ran_out_says_its_lease_stopped_it(sandbox_gen2: Any, tmp_path: Path) -> None:
    out = tmp_path / "paused.log"
    run = Running(
        "trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "60", "--lease", "5", "-o", str(out), "--json"
    )
    try:
        run.wait_for("(ref ")
        time.sleep(0.5)
        os.kill(run.proc.pid, signal.SIGSTOP)  # no renewal for 8 s: the node's 5 s lease fires
        try:
            time.sleep(8)
        finally:
            os.kill(run.proc.pid, signal.SIGCONT)
        code, stdout, err = run.finish(timeout=30)
    finally:
        run.kill()
    assert code == 0, err
    data = json.loads(stdout)
    assert data["reason"] == "its lease", data
    assert "the lease was not renewed for " in data["stop_detail"], data
    assert "longer than its 5 s" in data["stop_detail"], data
    assert not any("another client" in w for w in data["warnings"]), data
    assert "was stopped by its lease after" in err and "(see --lease)" in err, err
    assert data["verified"] and out.stat().st_size == data["bytes"] == os.path.getsize(data["remote_path"])
    assert data["remote_path"] not in traced_files(sandbox_gen2)
    assert data["ref"] not in kz_refs(sandbox_gen2)


def test_a_trace_stopped_before_its_lease_could_fire_is_still_another_clients(
    sandbox_gen2: Any, tmp_path: Path
) -> None:
    # The other side of the line: a short lease, renewed on time, and a stop from elsewhere.
    from tests.test_hardening_files import kzb

    out = tmp_path / "other.log"
    run = Running(
        "trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "60", "--lease", "5", "-o", str(out), "--json"
    )
    try:
        run.wait_for("(ref ")
        time.sleep(6)  # past one lease length: only the renewals keep it
        res = kzb("stop", "--all", "--no-collect", "-n", sandbox_gen2.node)
        assert res.returncode == 0, res.stderr
        code, stdout, _ = run.finish(timeout=30)
    finally:
        run.kill()
    assert code == 0
    data = json.loads(stdout)
    assert data["reason"] == "another client" and data["stop_detail"] == "", data
