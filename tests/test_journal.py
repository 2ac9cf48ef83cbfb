"""The local journal with many writers at once (issue 11: 12 concurrent `start`s lost a ref), and the cache dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kzbridge import cachedir
from kzbridge.kazoo import journal

from .conftest import ROOT

WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from kzbridge.kazoo import journal
    me, count, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.005)
    for i in range(count):
        journal.record(journal.JournalEntry(node=f"n{me}@h", ref=f"r{me}-{i}", remote_path=f"/tmp/x{me}-{i}.log",
                                            sink="data", generation=2, filters="", started=time.time(),
                                            lease_until=time.time() + 600))
        if i % 2:
            journal.mark_stopped(f"n{me}@h", f"r{me}-{i - 1}")
        else:
            journal.extend_lease(f"n{me}@h", f"r{me}-{i}", 4e9 + i)
""")

READER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    path, stop = Path(sys.argv[1]), Path(sys.argv[2])
    reads = 0
    while not stop.exists():
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        json.loads(text)  # a torn file raises here and the process exits non-zero
        reads += 1
    print(reads)
""")


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, KZBRIDGE_CACHE=str(cache), PYTHONPATH=str(ROOT))


@pytest.mark.slow
def test_sixteen_processes_writing_at_once_lose_nothing(tmp_path, monkeypatch):
    cache, go, done = tmp_path / "cache", tmp_path / "go", tmp_path / "done"
    procs, count = 16, 20
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(me), str(count), str(go)], env=_env(cache))
               for me in range(procs)]  # fmt: skip
    reader = subprocess.Popen([sys.executable, "-c", READER, str(cache / "journal.json"), str(done)],
                              env=_env(cache), stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)  # let every interpreter start, so they really write at the same time
    go.touch()
    try:
        assert [w.wait(120) for w in writers] == [0] * procs
    finally:
        done.touch()
        reads = reader.communicate(timeout=30)[0]
    assert reader.returncode == 0, "a reader saw a partly written journal"
    assert int(reads) > 0

    monkeypatch.setenv("KZBRIDGE_CACHE", str(cache))
    entries = {(e.node, e.ref): e for e in journal.load()}
    assert len(entries) == procs * count, f"{procs * count - len(entries)} refs lost"
    for me in range(procs):
        for i in range(count):
            e = entries[(f"n{me}@h", f"r{me}-{i}")]
            if i % 2 == 0 and i + 1 < count:
                assert e.stopped > 0, f"r{me}-{i} was marked stopped"
            else:
                assert not e.stopped
            if i % 2 == 0:
                assert e.lease_until == 4e9 + i, f"r{me}-{i}'s lease extension was lost"
    assert {e.ref for e in journal.active("n3@h")} == {f"r3-{i}" for i in range(1, count, 2)}, "odd refs run on"
    assert stat.S_IMODE((cache / "journal.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == ["journal.json", "journal.lock"], "no temp files left"


def test_api_round_trip_and_old_stopped_entries_are_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("KZBRIDGE_CACHE", str(tmp_path))
    now = time.time()
    old = journal.JournalEntry("a@h", "old", "/tmp/o.log", "data", 2, "", now - 9 * 86400, now, stopped=now - 8 * 86400)
    journal.record(old)
    journal.record(journal.JournalEntry("a@h", "r1", "/tmp/a.log", "data", 1, "{module,kz_json}", now, now + 60))
    assert journal.journal_path() == tmp_path / "journal.json"
    assert [e.ref for e in journal.active("a@h")] == ["r1"]
    assert journal.find("a@h", "old") is None, "stopped more than a week ago: dropped at the next write"
    journal.extend_lease("a@h", "r1", now + 600)
    extended = journal.find("a@h", "r1")
    assert extended is not None and extended.lease_until == now + 600
    journal.mark_stopped("a@h", "r1")
    stopped = journal.find("a@h", "r1")
    assert stopped is not None and stopped.stopped and journal.active("a@h") == []
    raw = json.loads((tmp_path / "journal.json").read_text())
    assert raw[0]["ref"] == "r1" and "cookie" not in json.dumps(raw)


def test_a_damaged_journal_reads_as_empty_and_is_replaced_on_write(tmp_path, monkeypatch):
    monkeypatch.setenv("KZBRIDGE_CACHE", str(tmp_path))
    (tmp_path / "journal.json").write_text("[{not json")
    assert journal.load() == []
    journal.record(journal.JournalEntry("a@h", "r", "/tmp/a.log", "data", 2, "", 0, time.time() + 5))
    assert [e.ref for e in journal.load()] == ["r"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KZBRIDGE_CACHE": "own", "XDG_CACHE_HOME": "xdg"}, "own"),
        ({"KZBRIDGE_CACHE": "", "XDG_CACHE_HOME": "xdg"}, "xdg/kzbridge"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/kzbridge"),
        ({"XDG_CACHE_HOME": ""}, "home/.cache/kzbridge"),
        ({}, "home/.cache/kzbridge"),
    ],
)
def test_one_cache_dir_rule_for_journal_and_sandboxes(tmp_path, monkeypatch, env, expected):
    from kzbridge import sandbox

    for var in ("KZBRIDGE_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var, value in env.items():
        monkeypatch.setenv(var, str(tmp_path / value) if value else "")
    want = tmp_path / expected
    assert cachedir.cache_dir() == want and want.is_dir()
    assert journal.journal_path() == want / "journal.json"
    assert sandbox.state_dir() == want / "sandboxes"
