"""The kzbridge command as operators run it: real subprocesses, real signals, real nodes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kzbridge.errors import BadRpcError
from kzbridge.wire.blocking import BlockingNode
from kzbridge.wire.terms import Atom

from .conftest import kzb, poll_until


class Running:
    """A kzbridge subprocess whose stderr is read by a thread, so tests can wait on messages."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kzbridge", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        def seen() -> str:
            err = "".join(self.err)
            if text in err:
                return err
            if self.proc.poll() is not None:
                self._reader.join(5)  # the process is gone: read what it wrote, then decide
                err = "".join(self.err)
                if text in err:
                    return err
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}: {err}")
            return ""

        return poll_until(seen, timeout=timeout, message=f"{text!r} in kzbridge's stderr")

    def ref(self) -> str:
        return self.wait_for("(ref ").split("(ref ")[1].split(",")[0]

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._reader.join(5)
        return self.proc.returncode, out, "".join(self.err)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def node_rpc(box, *args):
    """One call on its own blocking connection, closed whatever happens (the tests here are synchronous)."""
    with BlockingNode(box.node, box.cookie) as n:
        return n.rpc(*args)


def written(path: Path) -> bool:
    """The local file (or its ``.partial`` while the run goes on) has bytes in it."""
    return any(p.exists() and p.stat().st_size > 0 for p in (path, path.with_name(path.name + ".partial")))


def no_traceback(res) -> None:
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_ping_rpc_and_json(sandbox_gen2):
    res = kzb("ping", "--node", sandbox_gen2.node)
    assert res.returncode == 0 and res.stdout.startswith(f"pong from {sandbox_gen2.node}")
    res = kzb("rpc", "--node", sandbox_gen2.node, "lists", "reverse", '[1, a, <<"b">>, "str"]')
    assert res.returncode == 0 and res.stdout.strip() == '["str",<<"b">>,a,1]'
    res = kzb("rpc", "--node", sandbox_gen2.node, "--json", "kz_fixture", "info")
    assert res.returncode == 0 and json.loads(res.stdout)["result"]["generation"] == 2


def test_pids_typed_or_pasted_back_from_our_output_reach_the_node_as_its_pids(sandbox_gen2):
    node = sandbox_gen2.node
    printed = kzb("rpc", "--node", node, "erlang", "whereis", "kz_data_tracing").stdout.strip()
    assert printed.startswith(f"<{node}.")
    res = kzb("rpc", "--node", node, "erlang", "is_process_alive", printed)
    assert res.returncode == 0 and res.stdout.strip() == "true", res.stderr
    local = "<0." + printed.rsplit(".", 2)[1] + ".0>"  # the same process as the node's shell shows it
    res = kzb("rpc", "--node", node, "erlang", "process_info", local, "registered_name")
    assert res.stdout.strip() == "{registered_name,kz_data_tracing}", res.stderr
    res = kzb("rpc", "--node", node, "erlang", "is_pid", "<nobody@127.0.0.1.1.0>")
    assert res.returncode == 2 and "cannot turn <nobody@127.0.0.1.1.0> into a pid" in res.stderr
    no_traceback(res)


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["ping", "--node", "nobody@127.0.0.1", "--cookie", "x"], 3, "registered:"),
        (["ping", "--node", "no-at-sign", "--cookie", "x"], 2, "name@host"),
        (["rpc", "--node", "{node}", "erlang", "node", "[1"], 2, "cannot parse"),
        (["rpc", "--node", "{node}", "nomod", "nofun"], 4, "undefined function nomod:nofun/0"),
        (["ping", "--node", "{node}", "--cookie", "wrong"], 3, "rejected our cookie"),
        (["trace", "--node", "{node}", "--filter", "Bad"], 2, "bad filter"),
        (["trace-pid", "--node", "{node}", "12"], 2, "is not a pid"),
        (["stop", "--node", "{node}", "ffffffffffff"], 6, "knows no trace"),
        (["collect", "--node", "{node}", "/nonexistent/file.log"], 6, "no such file"),
        (["trace-module", "kz_json", "--node", "{node}", "--max-size", "lots"], 2, "bad size"),
        (
            ["trace-module", "kz_json", "--node", "{node}", "--remote-path", "rel.log"],
            2,
            "own log root (see --remote-path)",
        ),
    ],
)
def test_bad_input_gives_one_line_and_a_documented_exit_code(sandbox_gen2, tmp_path, args, code, fragment):
    res = kzb(*[a.replace("{node}", sandbox_gen2.node) for a in args], cwd=str(tmp_path))
    assert res.returncode == code, (res.returncode, res.stderr)
    assert fragment in res.stderr
    no_traceback(res)
    assert not list(tmp_path.glob("*.partial")), "nothing was received, so no partial file is kept"


def test_sup_prints_what_the_function_prints_with_sups_exit_codes(sandbox_gen1):
    res = kzb("sup", "--node", sandbox_gen1.node, "kazoo_data_maintenance", "trace_module", "kz_json")
    assert res.returncode == 0
    ref = res.stdout.strip().split()[-1].strip("'")
    assert res.stdout.startswith("trace started") and len(ref) == 12
    res = kzb("sup", "--node", sandbox_gen1.node, "kazoo_data_maintenance", "stop_trace", ref)
    assert res.returncode == 0 and res.stdout.startswith("trace stopped, see log at /tmp/")
    res = kzb("sup", "--node", sandbox_gen1.node, "-e", "erlang", "abs", "-3")
    assert res.returncode == 2 and res.stdout.strip() == "3"
    res = kzb("sup", "--node", sandbox_gen1.node, "nomod", "nofun")
    assert res.returncode == 3
    res = kzb("sup", "--node", sandbox_gen1.node, "--timeout", "0.5", "-e", "timer", "sleep", "3000")
    assert res.returncode == 4


def test_trace_module_runs_to_its_duration(sandbox_gen1, tmp_path):
    out = tmp_path / "t.log"
    res = kzb("trace-module", "kz_json", "--node", sandbox_gen1.node, "--duration", "2", "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["reason"] == "duration" and summary["verified"] and summary["lines"] > 0
    assert out.stat().st_size == summary["bytes"] and summary["local_path"] == str(out)


def test_follow_prints_json_lines_as_they_arrive(sandbox_gen2, tmp_path):
    res = kzb(
        "trace",
        "--filter",
        "request=req-3",
        "--node",
        sandbox_gen2.node,
        "--duration",
        "2.5",
        "--follow",
        "--json",
        "-o",
        str(tmp_path / "f.log"),
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    events, summary = lines[:-1], lines[-1]["summary"]
    assert events and all(e["callid"].startswith("call-3-") for e in events)
    assert summary["records"] == len(events) <= summary["lines"]


def test_trace_pid_and_trace_function_match_only_their_events(sandbox_gen2, tmp_path):
    worker = node_rpc(sandbox_gen2, "kz_traffic", "workers", [])[1]
    bare = f"0.{worker.id}.{worker.serial}"  # the form operators copy off Kazoo's console
    res = kzb(
        "trace-pid",
        bare,
        "--node",
        sandbox_gen2.node,
        "--duration",
        "2.5",
        "--follow",
        "--json",
        "-o",
        str(tmp_path / "p.log"),
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()][:-1]
    assert events and {e["pid"] for e in events} == {f"<{bare}>"}

    res = kzb(
        "trace-function",
        "kz_json",
        "set_value",
        "--node",
        sandbox_gen2.node,
        "--duration",
        "2.5",
        "--follow",
        "--json",
        "-o",
        str(tmp_path / "f.log"),
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()][:-1]
    assert events and all(e["message"].startswith("set_value") for e in events)
    assert len({e["pid"] for e in events}) > 1, "every worker's calls, not one process's"


def run_on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run kzbridge with stderr on a pseudo-terminal (progress is only drawn for a person)."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kzbridge", *args], stdout=subprocess.PIPE, stderr=secondary, text=True
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout)
    os.close(primary)
    return proc.returncode, seen.decode("utf-8", "replace")


def test_progress_is_drawn_on_a_terminal_for_runs_and_large_collections(sandbox_gen2, tmp_path, node_tmp):
    code, err = run_on_a_terminal(
        "trace-module", "kz_json", "--node", sandbox_gen2.node, "--duration", "2.5", "-o", str(tmp_path / "t.log")
    )
    assert code == 0, err
    assert re.search(r"\r\s+\d+\.\ds\s+[\d.]+ [KMG]?B\s+\d+ records", err), err  # elapsed, bytes, records

    big = f"{node_tmp}/kzb-progress-{time.time_ns()}.bin"
    node_rpc(sandbox_gen2, "file", "write_file", [big, b"x" * (24 << 20)])
    try:
        code, err = run_on_a_terminal("collect", big, "--node", sandbox_gen2.node, "-o", str(tmp_path / "b.bin"))
    finally:
        node_rpc(sandbox_gen2, "file", "delete", [big])
    assert code == 0, err
    assert "[" + "#" * 30 + "] 100.0%  24.0 MB / 24.0 MB" in err, err
    assert (tmp_path / "b.bin").stat().st_size == 24 << 20


def test_ctrl_c_during_a_collection_keeps_the_partial_file_and_says_where(sandbox_gen2, tmp_path, node_tmp):
    import pty

    big = f"{node_tmp}/kzb-sparse-{time.time_ns()}.bin"
    node_rpc(sandbox_gen2, "os", "cmd", [f"truncate -s 1G {big}"])  # sparse: no disk, reads fast
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kzbridge",
            "collect",
            big,
            "--node",
            sandbox_gen2.node,
            "-o",
            str(tmp_path / "big.bin"),
        ],
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
    )
    os.close(secondary)
    seen = b""
    try:
        while b"MB / 1.0 GB" not in seen:  # the bar's first draw: bytes are arriving
            seen += os.read(primary, 4096)
        proc.send_signal(signal.SIGINT)
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(30)
    finally:
        os.close(primary)
        node_rpc(sandbox_gen2, "file", "delete", [big])
    text = seen.decode()
    partial = tmp_path / "big.bin.partial"
    assert proc.returncode == 130, text
    assert f"interrupted; kept {partial.stat().st_size} bytes in {partial} (partial)" in text
    assert 0 < partial.stat().st_size < 1 << 30 and not (tmp_path / "big.bin").exists()
    assert "Traceback" not in text


def test_sigint_stops_and_collects_second_sigint_stops_without_collecting(sandbox_gen2, tmp_path):
    out = tmp_path / "int.log"
    run = Running(
        "trace-module",
        "kz_json",
        "--node",
        sandbox_gen2.node,
        "--duration",
        "60",
        "-o",
        str(out),
        "--json",
        cwd=str(tmp_path),
    )
    ref = run.ref()
    poll_until(lambda: written(out), timeout=20, message="records arriving")
    run.send_signal(signal.SIGINT)
    code, stdout, stderr = run.finish()
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["reason"] == "interrupted" and summary["verified"] and out.exists() and summary["lines"] > 0
    assert node_rpc(sandbox_gen2, "kz_data_tracing", "status", [ref.encode()]) == Atom("false")


def test_second_sigint_during_the_stop_stops_without_collecting(fresh_sandbox, tmp_path):
    out = tmp_path / "int2.log"
    run = Running(
        "trace-module", "kz_json", "--node", fresh_sandbox.node, "--duration", "60", "-o", str(out), cwd=str(tmp_path)
    )
    ref = run.ref()
    # Following for real (setup calls done, records arriving) before the node is frozen.
    poll_until(lambda: written(out), timeout=20, message="records arriving")
    # Freeze the node: the stop that the first Ctrl-C starts cannot finish, so the second
    # Ctrl-C lands while it is under way, every time.
    os.kill(fresh_sandbox.os_pid, signal.SIGSTOP)
    try:
        run.send_signal(signal.SIGINT)
        run.wait_for("stopping the trace and collecting")
        run.send_signal(signal.SIGINT)
        run.wait_for("stopping the trace without collecting")
    finally:
        os.kill(fresh_sandbox.os_pid, signal.SIGCONT)
    code, _stdout, stderr = run.finish()
    assert code == 130, stderr
    assert not out.exists() and (tmp_path / "int2.log.partial").exists(), "nothing collected, what came is kept"
    assert "stopped by abandoned" in stderr and "Traceback" not in stderr
    assert node_rpc(fresh_sandbox, "kz_data_tracing", "status", [ref.encode()]) == Atom("false"), "yet stopped"


def test_sigterm_stops_and_collects(sandbox_gen1, tmp_path):
    out = tmp_path / "term.log"
    run = Running("trace-module", "kz_json", "--node", sandbox_gen1.node, "-o", str(out), cwd=str(tmp_path))
    run.ref()
    poll_until(lambda: written(out), timeout=20, message="records arriving")
    run.send_signal(signal.SIGTERM)
    code, _, stderr = run.finish()
    assert code == 0 and "stopped by terminated" in stderr and out.stat().st_size > 0


def test_sigkill_leaves_no_trace_beyond_the_lease(sandbox_gen2, tmp_path):
    out = tmp_path / "k.log"
    run = Running(
        "trace-module",
        "kz_json",
        "--node",
        sandbox_gen2.node,
        "--lease",
        "5",
        "-o",
        str(out),
        cwd=str(tmp_path),
    )
    ref = run.ref()
    poll_until(lambda: written(out), timeout=20, message="records arriving")
    run.send_signal(signal.SIGKILL)
    run.finish()
    assert node_rpc(sandbox_gen2, "kz_data_tracing", "status", [ref.encode()]) != Atom("false")
    time.sleep(6)  # the sleep is the test: the 5 s lease runs out with nobody renewing it
    assert node_rpc(sandbox_gen2, "kz_data_tracing", "status", [ref.encode()]) == Atom("false")
    assert (tmp_path / "k.log.partial").exists(), "what arrived before the kill is kept, marked partial"


def test_detached_start_status_stop_clear_and_collect(sandbox_gen2, tmp_path):
    node = sandbox_gen2.node
    res = kzb("start", "--node", node, "--module", "kz_json", "--duration", "120")
    assert res.returncode == 0, res.stderr
    ref = res.stdout.strip()
    res = kzb("start", "--node", node, "--filter", "request=req-1", "--json")
    other = json.loads(res.stdout)["ref"]
    res = kzb("status", "--node", node, "--json")
    rows = {r["ref"]: r for r in json.loads(res.stdout)["traces"]}
    assert rows[ref]["ours"] and rows[ref]["lease_until"] > time.time() + 60 and other in rows
    remote = rows[ref]["remote_path"]
    poll_until(lambda: node_rpc(sandbox_gen2, "filelib", "file_size", [remote]) > 0, message=f"{remote} written")
    res = kzb("stop", ref, "--node", node, "-o", str(tmp_path / "d.log"), "--json")
    assert res.returncode == 0, res.stderr
    item = json.loads(res.stdout)[0]
    assert item["verified"] and item["bytes"] > 0 and (tmp_path / "d.log").stat().st_size == item["bytes"]
    res = kzb("collect", item["remote_path"], "--node", node, "-o", str(tmp_path / "again.log"))
    assert res.returncode == 0 and (tmp_path / "again.log").read_bytes() == (tmp_path / "d.log").read_bytes()
    res = kzb("clear", "--node", node, "--json")
    assert other in json.loads(res.stdout)["stopped"]
    res = kzb("status", "--node", node, "--json")
    assert json.loads(res.stdout)["traces"] == []


@pytest.mark.live
def test_sandbox_commands(tmp_path):
    name = f"kzcli{os.getpid()}"
    res = kzb("sandbox", "start", "--name", name, "--generation", "1", "--rate", "5")
    try:
        assert res.returncode == 0, res.stderr
        node = res.stdout.strip()
        assert node == f"{name}@127.0.0.1"
        listed = kzb("sandbox", "list", "--json")
        assert any(b["node"] == node and b["generation"] == 1 for b in json.loads(listed.stdout))
        again = kzb("sandbox", "start", "--name", name)
        assert again.returncode == 7 and "already running" in again.stderr
        traced = kzb(
            "trace-module", "kz_json", "--node", node, "--duration", "1", "-o", str(tmp_path / "s.log"), "--json"
        )
        remote = json.loads(traced.stdout)["remote_path"]
        assert os.path.exists(remote) and (tmp_path / "s.log").exists()
    finally:
        res = kzb("sandbox", "stop", "--name", name)
    assert res.returncode == 0
    assert not os.path.exists(remote), "the sandbox's own trace files go with it"
    assert (tmp_path / "s.log").exists()
    assert kzb("sandbox", "stop", "--name", name).returncode == 2


@pytest.mark.live
def test_demo_runs_the_main_job_end_to_end(tmp_path):
    res = kzb("demo", "--duration", "2", cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "first events of" in res.stdout and "size verified" in res.stderr
    assert not [p for p in Path(tmp_path).glob("*.partial")]


def test_generation_1_status_comes_from_the_journal_and_stop_all(sandbox_gen1, tmp_path):
    node = sandbox_gen1.node
    refs = [kzb("start", "--node", node, "--function", "*", "--duration", "120").stdout.strip() for _ in range(2)]
    res = kzb("status", "--node", node, "--json")
    status = json.loads(res.stdout)
    assert status["generation"] == 1 and {r["ref"] for r in status["traces"]} >= set(refs)
    assert all(r["ours"] for r in status["traces"])
    for remote in (r["remote_path"] for r in status["traces"] if r["ref"] in refs):

        def has_bytes(remote: str = remote) -> bool:
            return node_rpc(sandbox_gen1, "filelib", "file_size", [remote]) > 0

        poll_until(has_bytes, message=f"{remote} written")
    res = kzb("stop", "--all", "--node", node, "-o", str(tmp_path) + "/", "--json")
    assert res.returncode == 0, res.stderr
    stopped = json.loads(res.stdout)
    assert {s["ref"] for s in stopped} >= set(refs) and all(s["verified"] for s in stopped)
    assert json.loads(kzb("status", "--node", node, "--json").stdout)["traces"] == []


def test_orphans_from_the_command_line(fresh_sandbox, node_tmp):
    node = fresh_sandbox.node
    orphan = f"{node_tmp}/kzb-cli-orphan.log"
    node_rpc(
        fresh_sandbox,
        "kz_data_tracing",
        "trace_file",
        [[(Atom("module"), Atom("kz_json"))], orphan.encode(), [Atom("message")], Atom("debug")],
    )
    with pytest.raises(BadRpcError):  # the server crashes on this input and forgets the trace above
        node_rpc(
            fresh_sandbox, "kz_data_tracing", "trace_file", [[], f"{node_tmp}/kzb-y.log".encode(), [Atom("message")]]
        )

    def orphan_listed() -> bool:  # once the supervisor has restarted the crashed server
        res = kzb("status", "--orphans", "--node", node, "--json")
        return res.returncode == 0 and {"sink": "data_lager_event", "file": orphan} in json.loads(res.stdout)

    poll_until(orphan_listed, timeout=20)
    res = kzb("clear", "--orphans", "--node", node)
    assert res.returncode == 0 and orphan in res.stdout
    assert json.loads(kzb("status", "--orphans", "--node", node, "--json").stdout) == []
