"""kzbridge report and summary: the model against logparse/merge, and the HTML page in a real headless
Chromium (Selenium), on traces of real sandbox nodes, one of them fed hostile messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kzbridge import sandbox
from kzbridge.kazoo import logparse, report, report_html
from kzbridge.kazoo.cluster import merge_sources, read_cluster_json
from kzbridge.kazoo.merge import merged_records
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

from .conftest import kzb

# Logged on a sandbox node with kz_json's metadata (lager prints a binary's bytes as Latin-1 characters,
# so U+2028's bytes arrive as "\u00e2\u0080\u00a8": a C1 control among them).
HOSTILE = [
    b"<script>window.__pwned=1;document.title='pwned'</script>",
    b'</script><script>window.__pwned=2</script><img src=x onerror="window.__pwned=3">',
    b"&lt;b&gt; &amp; &#60;script&#62; \xe2\x80\xa8 sep",
    b"ctl \x1b[31mred\x1b[0m \x07 bell \x7f del",
    b"bytes \xff\xfe\xc3( end",
]


# ---------------------------------------------------------------- model (no browser, no node)


def _write(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    return path


SAMPLE = (
    b"orphan before any record\n"
    b"10:00:00.000 [info] |app|c1|kz_json:get:{1,2} (<0.1.0>) one\n"
    b"10:00:00.500 [warning] |app|c2|kz_json:set:7 (<0.2.0>) two\nmore of two\nand more\n"
    b"10:00:01.000 [error] |Undefined|c1|mod_b:f:Undefined (<0.1.0>) three\n"
    b"10:00:01.000 [debug] |Undefined|Undefined|Undefined:Undefined:{1,1} (<0.3.0>) no call\n"
    b"10:00:02.250 [info] |app|c2|kz_json:get:{1,2} (<0.2.0>) last, no newline"
)


@pytest.mark.parametrize("chunk", [7, 64, 4 << 20])
def test_model_reads_the_records_logparse_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(report, "_CHUNK", chunk)  # records and continuation lines across chunk edges
    path = _write(tmp_path / "n@h.log", SAMPLE)
    model = report.read_model(report.sources_for([path]))
    recs = list(logparse.parse_lines([SAMPLE.decode()]))
    assert len(model) == len(recs) == 5
    assert [model.callids.names[i] or None for i in model.callid] == [r.callid for r in recs]
    assert [model.modules.names[i] or None for i in model.module] == [r.module for r in recs]
    assert [model.pids.names[i] for i in model.pid] == [r.pid for r in recs]
    assert [model.levels[i] for i in model.level] == [r.severity for r in recs]
    assert list(model.line) == [1, 2, 5, 6, 7] and list(model.nlines) == [1, 3, 1, 1, 1]
    assert model.orphan_lines == 1 and model.file_lines == [8]
    data = report.summary_data(model)
    assert data["levels"] == {"debug": 1, "info": 2, "warning": 1, "error": 1}
    assert data["calls"] == 2 and data["span"] == 2.25
    c1 = next(c for c in data["top_by_events"] if c["callid"] == "c1")
    assert c1["events"] == 2 and c1["worst"] == "error" and c1["duration"] == 1.0
    assert data["rate"]["warnings"] == 1 and data["rate"]["errors"] == 1


def test_json_for_script_leaves_nothing_that_closes_a_script() -> None:
    text = report_html.json_for_script({"m": "</script><!-- & \u2028\u2029 >"})
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == {"m": "</script><!-- & \u2028\u2029 >"}


def test_report_refuses_an_existing_file_and_a_bare_directory(tmp_path: Path) -> None:
    path = _write(tmp_path / "n@h.log", SAMPLE)
    out = tmp_path / "r.html"
    out.write_text("mine")
    r = kzb("report", str(path), "-o", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists" in r.stderr, r.stderr
    assert out.read_text() == "mine"
    r = kzb("summary", str(tmp_path))
    assert r.returncode == 2 and "cluster.json" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- real traces


@pytest.fixture(scope="module")
def single(sandbox_gen2: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real one-node trace, its report written by the trace command's --report."""
    d = tmp_path_factory.mktemp("single")
    log, html = d / "one.log", d / "one.html"
    r = kzb(
        "trace-module", "kz_json", "-n", sandbox_gen2.node, "--duration", "2", "-o", str(log), "--report", str(html)
    )
    assert r.returncode == 0, r.stderr
    assert html.exists() and f"{html}: report of" in r.stderr
    return log, html


@pytest.fixture(scope="module")
def cluster_run(private_epmd: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Two sandboxes (one 1.5 s behind, in another zone) traced together; node A logs HOSTILE messages
    with kz_json's metadata while the trace runs, so they land in its trace file."""
    import secrets

    tag = secrets.token_hex(3)
    boxes: list[sandbox.Sandbox] = []
    d = tmp_path_factory.mktemp("cluster")
    try:
        boxes.append(sandbox.start(f"kzrp1_{tag}", rate=40))
        boxes.append(sandbox.start(f"kzrp2_{tag}", rate=40, faketime="-1.5s", tz="Asia/Kolkata"))
        a, b = boxes
        run, html = d / "run", d / "run.html"
        cmd = [sys.executable, "-m", "kzbridge", "trace-module", "kz_json", "-n", f"{a.node},{b.node}"]
        proc = subprocess.Popen(
            [*cmd, "--duration", "3", "-o", str(run), "--report", str(html)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)
            asyncio.run(_log_hostile(a))
            _, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        yield run, html
    finally:
        for box in boxes:
            sandbox.stop(box.name)


async def _log_hostile(box: sandbox.Sandbox) -> None:
    n = await connect_node(box.node, box.cookie)
    try:
        for i, payload in enumerate(HOSTILE):
            meta = [
                (Atom("module"), Atom("kz_json")),
                (Atom("function"), Atom("inject")),
                (Atom("callid"), b"inject-1"),
            ]
            level = Atom("error") if i % 2 == 0 else Atom("warning")
            await n.rpc("lager", "log", [Atom("data_lager_event"), level, meta, "pwned ~s", [payload]])
    finally:
        await n.close()


def expected(run: Path) -> dict[str, Any]:
    """What the page must show, computed from the files with merge.py's reader and logparse."""
    recs = list(merged_records(merge_sources(run, read_cluster_json(run))))
    instants = [r.instant for r in recs]
    return {
        "records": recs,
        "events": len(recs),
        "levels": Counter(r.record.severity for r in recs if r.record),
        "calls": len({r.record.callid for r in recs if r.record and r.record.callid}),
        "span": max(instants) - min(instants),
    }


# ---------------------------------------------------------------- the browser

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these, chromium's own connections are refused here
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # The README's test command installs selenium, chromium and chromium-driver: a missing one is a
    # failure, not a silent skip, unless KZBRIDGE_SKIP_BROWSER=1 says so (then the skip says why).
    if os.environ.get("KZBRIDGE_SKIP_BROWSER") == "1":
        pytest.skip("KZBRIDGE_SKIP_BROWSER=1: the browser tests of the HTML report were not run")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"selenium is not installed ({exc}): sh scripts/setup.sh --test")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromium-driver are not installed: sh scripts/setup.sh --test")
    profile = tempfile.mkdtemp(prefix="kzb-chromium-")
    opts = webdriver.ChromeOptions()
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1366,768"]:
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(d: Any, html: Path) -> list[dict[str, Any]]:
    """Open the report; return the browser's console entries."""
    d.get_log("browser")  # drop what an earlier page said
    d.get(html.as_uri())
    deadline = time.monotonic() + 20
    while not d.execute_script("return document.body && document.body.dataset.ready === '1'"):
        assert time.monotonic() < deadline, d.find_element("id", "status").text
        time.sleep(0.05)
    return list(d.get_log("browser"))


def text(d: Any, id_: str) -> str:
    return str(d.execute_script("return document.getElementById(arguments[0]).textContent", id_))


def rows(d: Any, list_id: str) -> list[tuple[int, list[str]]]:
    """Every row of a virtualised list, scrolled through: (event index, [node, time, level, text])."""
    seen: dict[int, tuple[int, list[str]]] = {}
    script = """
        var box = document.getElementById(arguments[0]); box.scrollTop = arguments[1];
        box.dispatchEvent(new Event('scroll'));
        return new Promise(function (ok) { requestAnimationFrame(function () { requestAnimationFrame(function () {
          ok([box.scrollHeight, box.clientHeight, Array.from(box.querySelectorAll('.row')).filter(function (r) {
            return !r.hidden; }).map(function (r) { return [Number(r.dataset.row), Number(r.dataset.ev),
            Array.from(r.childNodes).map(function (c) { return c.textContent; })]; })]); }); }); });
    """
    top = 0
    while True:
        total, view, got = d.execute_script(script, list_id, top)
        for row, ev, cells in got:
            seen[row] = (ev, cells)
        if top + view >= total:
            break
        top += view // 2
    return [seen[k] for k in sorted(seen)]


def shown(text: str) -> str:
    """What a row shows of a record (report.js's shown())."""

    def esc(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\u{c:04x}" if c > 255 else f"\\x{c:02x}"

    out = re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", esc, text)
    return out.replace("\t", "\\t").replace("\n", " \u23ce ")


@pytest.mark.live
@pytest.mark.slow
def test_cluster_report_loads_offline_and_shows_the_files_numbers(browser: Any, cluster_run: tuple[Path, Path]) -> None:
    run, html = cluster_run
    page = html.read_text()
    assert "http://" not in page and "https://" not in page and " src=" not in page and " href=" not in page
    logs = load(browser, html)
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == [], logs
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    want = expected(run)
    assert int(text(browser, "stat-events")) == want["events"]
    assert int(text(browser, "stat-calls")) == want["calls"]
    assert float(text(browser, "stat-span").split()[0]) == pytest.approx(want["span"], abs=0.0011)
    for level, count in want["levels"].items():
        assert int(text(browser, f"lv-count-{level}")) == count, level
    assert want["levels"]["error"] == 3 and want["levels"]["warning"] == 2  # the hostile messages, traced
    assert text(browser, "rate-errors").endswith(" 3") and text(browser, "rate-warnings").endswith(" 2")
    assert int(text(browser, "stat-nodes")) == 2
    summary = json.loads(kzb("summary", str(run), "--json").stdout)
    assert summary["events"] == want["events"] and summary["calls"] == want["calls"]
    assert summary["levels"] == dict(want["levels"]) | {
        k: v for k, v in summary["levels"].items() if k not in want["levels"]
    }


@pytest.mark.live
@pytest.mark.slow
def test_clicking_a_call_lists_exactly_its_lines(browser: Any, cluster_run: tuple[Path, Path]) -> None:
    run, html = cluster_run
    load(browser, html)
    want = expected(run)
    cell = browser.find_element("css selector", "#calls tbody tr:not(.pad) td")
    callid = cell.text
    cell.click()
    assert text(browser, "call-title") == callid
    got = rows(browser, "call-lines")
    mine = [r for r in want["records"] if r.record and r.record.callid == callid]
    assert len(got) == len(mine) > 0
    labels = {n["node"]: n["label"] for n in read_cluster_json(run)["nodes"]}
    assert [(cells[0], cells[3]) for _, cells in got] == [(labels[r.node], shown(r.text)) for r in mine]
    assert [cells[1] for _, cells in got] == [r.when.strftime("%H:%M:%S.%f")[:12] for r in mine] or all(
        abs(_seconds(cells[1]) - _seconds(r.when.strftime("%H:%M:%S.%f"))) < 0.0011
        for (_, cells), r in zip(got, mine, strict=True)
    )


def _seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.mark.live
@pytest.mark.slow
def test_a_search_narrows_every_view(browser: Any, cluster_run: tuple[Path, Path]) -> None:
    run, html = cluster_run
    load(browser, html)
    want = expected(run)
    before = browser.execute_script(
        "return [document.getElementById('timeline').toDataURL(), document.getElementById('rate').toDataURL()]"
    )
    box = browser.find_element("id", "f-text")
    box.send_keys("SET_value\n")  # case-insensitive
    hits = [r for r in want["records"] if "set_value" in r.text.lower()]
    assert 0 < len(hits) < want["events"]
    assert int(text(browser, "stat-events")) == len(hits)
    assert text(browser, "lines-count") == f"({len(hits)})"
    assert int(text(browser, "lv-count-info")) == sum(1 for r in hits if r.record.severity == "info")
    assert int(text(browser, "lv-count-debug")) == 0
    calls = all_calls(browser)
    assert sum(r["events"] for r in calls) == sum(1 for r in hits if r.record.callid)
    assert len(calls) == len({r.record.callid for r in hits if r.record.callid}) == int(text(browser, "stat-calls"))
    after = browser.execute_script(
        "return [document.getElementById('timeline').toDataURL(), document.getElementById('rate').toDataURL()]"
    )
    assert after[0] != before[0] and after[1] != before[1]
    listed = rows(browser, "lines")
    assert len(listed) == len(hits) and all("set_value" in cells[3].lower() for _, cells in listed)


@pytest.mark.live
@pytest.mark.slow
def test_hostile_node_text_runs_no_script_and_shows_as_text(browser: Any, cluster_run: tuple[Path, Path]) -> None:
    run, html = cluster_run
    load(browser, html)
    assert browser.execute_script("return window.__pwned") is None
    assert browser.title == "kzbridge report"
    assert browser.execute_script("return document.scripts.length") == 2
    assert browser.execute_script("return document.images.length") == 0
    box = browser.find_element("id", "f-callid")
    box.send_keys("inject-1\n")
    got = [cells[3] for _, cells in rows(browser, "lines")]
    mine = [r for r in expected(run)["records"] if r.record and r.record.callid == "inject-1"]
    assert len(mine) == len(HOSTILE) and got == [shown(r.text) for r in mine]
    joined = "\n".join(got)
    assert "<script>window.__pwned=1;document.title='pwned'</script>" in joined
    assert '</script><script>window.__pwned=2</script><img src=x onerror="window.__pwned=3">' in joined
    assert "&lt;b&gt; &amp; &#60;script&#62;" in joined
    assert "ctl \\x1b[31mred\\x1b[0m \\x07 bell \\x7f del" in joined
    assert browser.execute_script("return window.__pwned") is None and browser.title == "kzbridge report"


@pytest.mark.live
@pytest.mark.slow
def test_invalid_utf8_and_a_forged_script_line_show_as_text(
    browser: Any, cluster_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """lager prints a binary's bytes as Latin-1 characters, so invalid UTF-8 never reaches its file:
    a copy of the run gets a raw line with invalid bytes and markup appended to node A's file."""
    run, _ = cluster_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    first = read_cluster_json(copy)["nodes"][0]
    node_log = copy / first["file"]
    last_time = re.findall(rb"^(\d\d:\d\d:\d\d\.\d{3}) \[", node_log.read_bytes(), re.MULTILINE)[-1]
    raw = last_time + b" [error] |app|inject-2|kz_json:inject:1 (<0.9.9>) raw \xff\xfe\xc3( "
    raw += b"</script><script>window.__pwned=4</script>\x00\n"
    with open(node_log, "ab") as fh:
        fh.write(raw)
    html = tmp_path / "copy.html"
    r = kzb("report", str(copy), "-o", str(html))
    assert r.returncode == 0, r.stderr
    logs = load(browser, html)
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    browser.find_element("id", "f-callid").send_keys("inject-2\n")
    got = [cells[3] for _, cells in rows(browser, "lines")]
    assert got == [shown(raw.decode("utf-8", "replace").rstrip("\n"))]
    assert "raw \ufffd\ufffd\ufffd( </script><script>window.__pwned=4</script>\\x00" in got[0]
    assert browser.execute_script("return window.__pwned") is None and browser.title == "kzbridge report"


@pytest.mark.live
@pytest.mark.slow
def test_single_node_report_and_screenshots(
    browser: Any, single: tuple[Path, Path], cluster_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    log, html = single
    logs = load(browser, html)
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    with open(log, encoding="utf-8", errors="replace") as fh:
        recs = list(logparse.parse_lines(fh))
    assert int(text(browser, "stat-events")) == len(recs) > 0
    assert int(text(browser, "stat-calls")) == len({r.callid for r in recs if r.callid})
    shots = tmp_path_factory.mktemp("screenshots")
    load(browser, cluster_run[1])
    for w, h in ((1366, 768), (1920, 1080)):
        browser.set_window_size(w, h)
        browser.execute_script("window.dispatchEvent(new Event('resize'))")
        time.sleep(0.3)
        path = shots / f"report-{w}x{h}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    browser.set_window_size(1366, 768)


# ---------------------------------------------------------------- many calls: a synthetic trace

MANY_CALLS = 5000
BUSIEST = 3217  # the one call with the most events
LANE_MODULES = [f"mod_{k:02d}" for k in range(40)]
LANE_PIDS = [f"<0.{100 + k}.0>" for k in range(60)]


def _many_calls_records(seed: int = 12) -> list[dict[str, Any]]:
    """Calls ``call-NNNNN`` starting 10 ms apart (each its own first instant), 1 to 6 events each (BUSIEST:
    25), every 40th record without a callid; modules and pids skewed (more than 30 of each: the lane
    rule's "others"); some records with continuation lines. Times in ms from 10:00:00.000."""
    import random

    rnd = random.Random(seed)
    recs = []
    for i in range(MANY_CALLS):
        n = 25 if i == BUSIEST else 1 + rnd.randrange(6)
        for j in range(n):
            recs.append({"ms": i * 10 + j * 4, "callid": f"call-{i:05d}"})
    for k in range(0, len(recs), 40):
        recs.append({"ms": recs[k]["ms"] + 1, "callid": None})
    recs.sort(key=lambda r: r["ms"])
    levels = ["debug"] * 6 + ["info"] * 4 + ["notice", "warning", "error"]
    for n, r in enumerate(recs):
        r["level"] = rnd.choice(levels)
        r["module"] = None if rnd.random() < 0.05 else LANE_MODULES[int(len(LANE_MODULES) * rnd.random() ** 2)]
        r["pid"] = LANE_PIDS[int(len(LANE_PIDS) * rnd.random() ** 1.5)]
        ms = 10 * 3600 * 1000 + r["ms"]
        stamp = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
        text = (
            f"{stamp} [{r['level']}] |app|{r['callid'] or 'Undefined'}|{r['module'] or 'Undefined'}:fun:{{7,5}} "
            f"({r['pid']}) message {n}"
        )
        if n % 17 == 0:
            text += "\n  continued {a,b}\n  and more"
        r["text"] = text
    return recs


@pytest.fixture(scope="module")
def many_calls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A report of a synthetic trace file of MANY_CALLS distinct callids, and its records."""
    d = tmp_path_factory.mktemp("many")
    recs = _many_calls_records()
    log, html = d / "many@host.log", d / "many.html"
    log.write_text("".join(r["text"] + "\n" for r in recs), encoding="utf-8")
    r = kzb("report", str(log), "-o", str(html))
    assert r.returncode == 0, r.stderr
    return html, recs


def _calls(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        if r["callid"]:
            c = out.setdefault(r["callid"], {"callid": r["callid"], "first": r["ms"], "events": 0})
            c["events"] += 1
    return out


def calls_view(d: Any, top: int | None) -> dict[str, Any]:
    """Scroll the calls table to ``top`` (None: the bottom); the rows then in the table, with their boxes
    (``top``: the bottom of the sticky header cells, which the thead's own box does not follow)."""
    script = """
        var box = document.getElementById('calls-scroll'), y = arguments[0];
        box.scrollTop = y === null ? box.scrollHeight : y;
        box.dispatchEvent(new Event('scroll'));
        return new Promise(function (ok) { requestAnimationFrame(function () { requestAnimationFrame(function () {
          var b = box.getBoundingClientRect(), h = document.querySelector('#calls th').getBoundingClientRect();
          ok({trs: box.querySelectorAll('tbody tr').length, top: h.bottom, bottom: b.top + box.clientHeight,
            end: box.scrollTop + box.clientHeight >= box.scrollHeight - 1,
            rows: Array.from(box.querySelectorAll('tbody tr:not(.pad)')).map(function (r) {
              var rect = r.getBoundingClientRect();
              return {row: Number(r.dataset.row), callid: r.cells[0].textContent,
                events: Number(r.cells[5].textContent), sel: r.className === 'sel',
                top: rect.top, bottom: rect.bottom, height: rect.height}; })}); }); }); });
    """
    view: dict[str, Any] = d.execute_script(script, top)
    view["visible"] = [r for r in view["rows"] if r["bottom"] > view["top"] + 1 and r["top"] < view["bottom"] - 1]
    return view


def all_calls(d: Any) -> list[dict[str, Any]]:
    """Every row of the calls table, scrolled through 90 px at a time (it holds only the rows in view)."""
    seen: dict[int, dict[str, Any]] = {}
    top = 0
    while True:
        view = calls_view(d, top)
        seen.update((r["row"], r) for r in view["rows"])
        if view["end"]:
            break
        top += 90
    assert sorted(seen) == list(range(len(seen)))
    return [seen[k] for k in sorted(seen)]


@pytest.mark.slow
def test_calls_table_holds_the_rows_in_view_and_reaches_every_call(
    browser: Any, many_calls: tuple[Path, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    html, recs = many_calls
    logs = load(browser, html)
    assert [e for e in logs if e["level"] == "SEVERE"] == []
    assert text(browser, "calls-note") == f"({MANY_CALLS})" and int(text(browser, "stat-calls")) == MANY_CALLS
    order = sorted(_calls(recs).values(), key=lambda c: c["first"])  # the default sort: first event, ascending
    view = calls_view(browser, 0)
    assert view["trs"] < 200 and all(r["height"] == 18 for r in view["rows"])
    assert [r["callid"] for r in view["visible"]] == [c["callid"] for c in order[: len(view["visible"])]]
    for k in (1, 777, 2500, 4321):  # any row scrolled to is the row of the sort order
        view = calls_view(browser, k * 18)
        assert view["trs"] < 200
        assert view["visible"][0]["row"] == k and view["visible"][0]["callid"] == order[k]["callid"]
        assert abs(view["visible"][0]["top"] - view["top"]) < 1
    view = calls_view(browser, None)
    last = view["visible"][-1]
    assert last["row"] == MANY_CALLS - 1 and last["callid"] == order[-1]["callid"]
    assert abs(last["bottom"] - view["bottom"]) < 1  # fully in view, at the bottom
    row = browser.find_element("css selector", f'#calls tbody tr[data-row="{MANY_CALLS - 1}"]')
    row.click()
    callid = order[-1]["callid"]
    assert text(browser, "call-title") == callid
    got = rows(browser, "call-lines")
    mine = [r for r in recs if r["callid"] == callid]
    assert [cells[3] for _, cells in got] == [shown(r["text"]) for r in mine] and len(mine) > 0
    assert text(browser, "call-count") == f"({len(mine)} events)"
    assert [r["callid"] for r in calls_view(browser, None)["rows"] if r["sel"]] == [callid]
    assert not any(r["sel"] for r in calls_view(browser, 0)["rows"])
    assert [r["callid"] for r in calls_view(browser, None)["rows"] if r["sel"]] == [callid]  # kept, scrolled back
    shots = tmp_path_factory.mktemp("screenshots")
    path = shots / "report-many-calls-1366x768.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000


@pytest.mark.slow
def test_sorting_the_calls_by_events(browser: Any, many_calls: tuple[Path, list[dict[str, Any]]]) -> None:
    html, recs = many_calls
    load(browser, html)
    calls = list(_calls(recs).values())
    browser.find_element("css selector", '#calls th[data-sort="events"]').click()  # most events first
    top = calls_view(browser, 0)["visible"][0]
    assert (top["callid"], top["events"]) == (f"call-{BUSIEST:05d}", 25)
    assert max(c["events"] for c in calls if c["callid"] != top["callid"]) < 25
    # ties go by first event, in the same direction: the last row is the earliest of the fewest
    fewest = min(c["events"] for c in calls)
    last = calls_view(browser, None)["visible"][-1]
    want = min((c for c in calls if c["events"] == fewest), key=lambda c: c["first"])
    assert (last["row"], last["callid"], last["events"]) == (MANY_CALLS - 1, want["callid"], fewest)
    browser.find_element("css selector", '#calls th[data-sort="events"]').click()  # again: fewest first
    view = calls_view(browser, None)
    assert view["visible"][-1]["callid"] == top["callid"]
    assert calls_view(browser, 0)["visible"][0]["events"] == fewest


def _lanes(names: list[str]) -> list[str]:
    """report.js laneSetup: the 30 busiest (ties by name), the rest in one lane."""
    counts = Counter(names)
    order = sorted(counts, key=lambda n: (-counts[n], n))
    return order[:30] + ([f"({len(order) - 30} others)"] if len(order) > 30 else [])


def _lane_by(d: Any, by: str) -> list[str]:
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "lane-by")).select_by_value(by)
    return list(json.loads(d.execute_script("return document.getElementById('timeline').dataset.lanes")))


@pytest.mark.slow
def test_timeline_lanes_per_module_and_per_pid(browser: Any, many_calls: tuple[Path, list[dict[str, Any]]]) -> None:
    html, recs = many_calls
    load(browser, html)
    node_lanes = json.loads(browser.execute_script("return document.getElementById('timeline').dataset.lanes"))
    assert node_lanes == ["many"]  # merge.short_labels: the node name short of its host
    before = browser.execute_script("return document.getElementById('timeline').toDataURL()")
    modules = _lane_by(browser, "module")
    assert modules == _lanes([r["module"] or "Undefined" for r in recs]) and modules[-1] == "(11 others)"
    height = browser.execute_script("return document.getElementById('timeline').clientHeight")
    assert height == 31 * 16 + 20
    assert browser.execute_script("return document.getElementById('timeline').toDataURL()") != before
    pids = _lane_by(browser, "pid")
    assert pids == _lanes([r["pid"] for r in recs]) and pids[-1] == "(30 others)"
    assert _lane_by(browser, "node") == node_lanes


@pytest.mark.live
@pytest.mark.slow
def test_timeline_lanes_of_a_cluster_run(browser: Any, cluster_run: tuple[Path, Path]) -> None:
    run, html = cluster_run
    load(browser, html)
    recs = [r.record for r in expected(run)["records"] if r.record]
    assert _lane_by(browser, "module") == _lanes([r.module or "Undefined" for r in recs])
    assert _lane_by(browser, "pid") == _lanes([r.pid or "Undefined" for r in recs])
    assert _lane_by(browser, "node") == [n["label"] for n in read_cluster_json(run)["nodes"]]


@pytest.mark.slow
def test_brush_zoom_and_whole_trace(browser: Any, many_calls: tuple[Path, list[dict[str, Any]]]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    html, recs = many_calls
    load(browser, html)
    total = len(recs)
    assert int(text(browser, "stat-events")) == total and text(browser, "range") == ""
    canvas = browser.find_element("id", "timeline")
    w = browser.execute_script("return arguments[0].clientWidth", canvas)
    left = 110  # report.js LEFT: the lane names
    x0, x1 = left + (w - left) // 4, left + 3 * (w - left) // 4
    chain = ActionChains(browser).move_to_element_with_offset(canvas, x0 - w // 2, 0).click_and_hold()
    for _ in range(8):
        chain = chain.move_by_offset((x1 - x0) // 8, 0)
    chain.release().perform()
    assert text(browser, "range").startswith("range ")
    v0, v1 = map(
        float, browser.execute_script("var r = document.getElementById('range'); return [r.dataset.v0, r.dataset.v1]")
    )
    span = (max(r["ms"] for r in recs) - min(r["ms"] for r in recs)) / 1000
    assert v0 == pytest.approx(span / 4, abs=span / 50) and v1 == pytest.approx(3 * span / 4, abs=span / 50)
    t0 = min(r["ms"] for r in recs)
    rel = [(r["ms"] - t0) / 1000 for r in recs]
    inside = sum(1 for t in rel if v0 + 1e-6 <= t <= v1 - 1e-6)
    edges = sum(1 for t in rel if v0 - 1e-6 <= t <= v1 + 1e-6)
    got = int(text(browser, "stat-events"))
    assert 0 < inside <= got <= edges < total
    assert text(browser, "lines-count") == f"({got})"
    assert len(rows(browser, "lines")) == got
    browser.find_element("id", "zoom-reset").click()
    assert int(text(browser, "stat-events")) == total and text(browser, "range") == ""
    assert text(browser, "lines-count") == f"({total})"
