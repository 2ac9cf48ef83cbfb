"""Issue 11, rule 9: honest counts and clear passthrough.

The summary counts records and lines apart (a message may span lines); ``sup`` warns before
running Kazoo's trace wrappers on generation 2, where they leave an empty file; generation 1
``status`` says it cannot see traces started elsewhere; ``trace-pid`` takes the
``<node@host.A.B>`` form ``rpc`` prints, for the traced node only.
"""

from __future__ import annotations

import json
import re

import pytest

from kzbridge.errors import BadFilterError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.logparse import parse_text
from kzbridge.wire.terms import Atom, ErlString

from .conftest import kzb


def test_the_summary_says_records_and_lines(sandbox_gen2, tmp_path):
    out = tmp_path / "t.log"
    res = kzb("trace-module", "kz_json", "--node", sandbox_gen2.node, "--duration", "2.5", "-o", str(out))
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    records = len(parse_text(data.decode()))
    lines = data.count(b"\n")
    assert lines > records > 0, "kz_json:encode logs three-line messages"
    assert f"  {records} records ({lines} lines), {len(data)} bytes, size verified" in res.stderr

    res = kzb(
        "trace-module", "kz_json", "-n", sandbox_gen2.node, "--duration", "2", "-o", str(tmp_path / "j.log"), "--json"
    )
    summary = json.loads(res.stdout)
    data = (tmp_path / "j.log").read_bytes()
    assert summary["records"] == len(parse_text(data.decode())) and summary["lines"] == data.count(b"\n")


def test_sup_warns_before_kazoos_generation_2_trace_defect(sandbox_gen2):
    res = kzb("sup", "--node", sandbox_gen2.node, "kazoo_data_maintenance", "trace_module", "kz_json")
    assert res.returncode == 0 and res.stdout.startswith("trace started"), res.stderr
    ref = res.stdout.strip().split()[-1].strip("'")
    try:
        warning = res.stderr.strip().splitlines()
        assert len(warning) == 1 and warning[0].startswith("kzbridge: warning:"), res.stderr
        assert "generation 2" in warning[0] and "empty" in warning[0] and "kzbridge trace-module" in warning[0]
    finally:
        stopped = kzb("sup", "--node", sandbox_gen2.node, "kazoo_data_maintenance", "stop_trace", ref)
        assert stopped.returncode == 0 and stopped.stderr == "", stopped.stderr


def test_sup_says_nothing_more_where_the_wrappers_work(sandbox_gen1):
    res = kzb("sup", "--node", sandbox_gen1.node, "kazoo_data_maintenance", "trace_function", "get_value")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    ref = res.stdout.strip().split()[-1].strip("'")
    assert kzb("sup", "--node", sandbox_gen1.node, "kazoo_data_maintenance", "stop_trace", ref).returncode == 0


def test_generation_1_status_says_what_it_cannot_see(sandbox_gen1, sandbox_gen2):
    res = kzb("status", "--node", sandbox_gen1.node)
    assert res.returncode == 0
    assert "note: generation 1 kz_data_tracing has no status" in res.stderr and "started with sup" in res.stderr
    data = json.loads(kzb("status", "--node", sandbox_gen1.node, "--json").stdout)
    assert data["generation"] == 1 and data["complete"] is False and "only traces" in data["note"]
    res = kzb("status", "--node", sandbox_gen2.node)
    assert res.returncode == 0 and "note:" not in res.stderr
    assert "complete" not in json.loads(kzb("status", "--node", sandbox_gen2.node, "--json").stdout)


def test_a_pid_as_rpc_prints_it_is_a_pid_of_the_traced_node():
    node = "kazoo_apps@host.example.com"
    assert flt.pid_filter(f"<{node}.116.0>", node=node) == [(Atom("pid"), ErlString("<0.116.0>"))]
    with pytest.raises(BadFilterError, match=re.escape("is a process of ecallmgr@host.example.com")):
        flt.pid_filter("<ecallmgr@host.example.com.116.0>", node=node)
    with pytest.raises(BadFilterError):
        flt.pid_filter(f"<{node}.116.0>")
    assert flt.pid_filter("0.116.0") == flt.pid_filter("<0.116.0>", node=node)


def test_trace_pid_takes_what_rpc_printed(sandbox_gen2, tmp_path):
    printed = kzb("rpc", "--node", sandbox_gen2.node, "kz_traffic", "workers").stdout
    pid = re.findall(r"<[^<>]+@[^<>]+\.\d+\.\d+>", printed)[0]
    ident = ".".join(pid[:-1].rsplit(".", 2)[-2:])
    res = kzb(
        "trace-pid", pid, "-n", sandbox_gen2.node, "--duration", "2.5", "--follow", "--json", "-o", str(tmp_path / "p")
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()][:-1]
    assert events and {e["pid"] for e in events} == {f"<0.{ident}>"}

    other = pid.replace(sandbox_gen2.node, "elsewhere@127.0.0.1")
    res = kzb("trace-pid", other, "-n", sandbox_gen2.node, "--duration", "1")
    assert res.returncode == 2 and "is a process of elsewhere@127.0.0.1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
