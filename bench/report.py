"""kzbridge report on a 1M-line trace: generation time against gzip -6 of the same file, HTML size,
and time until the page is interactive in headless Chromium.

    python bench/report.py SAMPLE.log [--lines 1000000] [--shape kazoo|sandbox] [--rounds 3] [--keep DIR]
                           [--baseline OLD_TREE]

SAMPLE.log is a real trace (e.g. `kzbridge trace-module kz_json -n SANDBOX -o SAMPLE.log`).
Its lines are repeated, each copy shifted in time by the sample's span (the sample's own rate)
and with its callids renamed per copy, up to --lines lines. Rounds alternate (report, gzip,
report, gzip, ...) so both see the same machine load; the median of each is printed.
--baseline OLD_TREE (e.g. a `git worktree add` of an older commit) adds that tree's
``read_model`` + ``write_report`` to each round, run in a process of its own.

--shape: the sandbox's lines are short (about 83 bytes) and, repeated, compress 30-fold, which
makes gzip unusually fast; the issue's trace is 1M lines of about 130 MB. ``kazoo`` (the default)
gives each header line what Kazoo's log lines carry: an account id (one of 50, the same for a
call) and a message id (20 random hex digits, new for each line), as
``{"Account-ID":"...","Msg-ID":"..."}``, which makes 1M lines about 130 MB compressing about
11-fold. ``sandbox`` keeps the sample's lines as they are.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kzbridge.kazoo import report, report_html

_TIME = re.compile(rb"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ", re.MULTILINE)
_CALL = re.compile(rb"\|(call-[^|]*)\|")
_HEADER_LINE = re.compile(rb"^(\d\d:\d\d:\d\d\.\d{3} \[[a-z]+\] \|[^|\n]*\|([^|\n]*)\|[^\n]*)$", re.MULTILINE)


def kazoo_shaped(text: bytes, rnd: random.Random, accounts: list[bytes]) -> bytes:
    """Each header line with an account id (by its callid) and a new message id, as Kazoo's lines carry."""

    def ids(m: re.Match[bytes]) -> bytes:
        account = accounts[zlib.crc32(m[2]) % len(accounts)]
        return m[1] + b' {"Account-ID":"' + account + b'","Msg-ID":"' + rnd.randbytes(10).hex().encode() + b'"}'

    return _HEADER_LINE.sub(ids, text)


def synthesize(sample: Path, out: Path, lines: int, shape: str = "kazoo") -> int:
    data = sample.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    times = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms in _TIME.findall(data)]
    span = max(times) - min(times) + 0.001
    per_copy = data.count(b"\n")
    copies = -(-lines // per_copy)
    rnd = random.Random(1)
    accounts = [rnd.randbytes(16).hex().encode() for _ in range(50)]
    with open(out, "wb") as fh:
        for k in range(copies):
            shift = k * span

            def moved(m: re.Match[bytes], shift: float = shift) -> bytes:
                t = (int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 1000 + shift) % 86400
                ms = round(t * 1000)
                return b"%02d:%02d:%02d.%03d " % (ms // 3600000, ms // 60000 % 60, ms // 1000 % 60, ms % 1000)

            def renamed(m: re.Match[bytes], k: int = k) -> bytes:
                return b"|" + m[1] + b"-%d|" % k

            text = _CALL.sub(renamed, _TIME.sub(moved, data))
            fh.write(kazoo_shaped(text, rnd, accounts) if shape == "kazoo" else text)
    return copies * per_copy


def generate(log: Path, html: Path) -> float:
    html.unlink(missing_ok=True)
    t = time.perf_counter()
    with report.ModelReader(report.sources_for([log])) as reader:
        report_html.write_report(reader, html)
    return time.perf_counter() - t


def baseline_time(tree: Path, log: Path, html: Path) -> float:
    """An older tree's generation (its read_model, then write_report), timed inside its own process."""
    html.unlink(missing_ok=True)
    code = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from kzbridge.kazoo import report, report_html\n"
        "t = time.perf_counter()\n"
        "report_html.write_report(report.read_model(report.sources_for([sys.argv[2]])), sys.argv[3])\n"
        "print(time.perf_counter() - t)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tree), str(log), str(html)], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"baseline failed: {run.stderr.strip()}")
    return float(run.stdout)


def gzip_time(log: Path, target: Path) -> float:
    t = time.perf_counter()
    with open(target, "wb") as fh:
        subprocess.run(["gzip", "-6", "-c", str(log)], stdout=fh, check=True)
    return time.perf_counter() - t


def interactive(html: Path) -> tuple[float, float]:
    """(seconds from navigation until the page says it is ready, the page's own performance.now at ready)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kzb-bench-chromium-")
    opts = webdriver.ChromeOptions()
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1366,768",
    ]:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = shutil.which("chromium") or "chromium"
    d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        d.set_page_load_timeout(120)
        t = time.perf_counter()
        d.get(html.as_uri())
        while not d.execute_script("return document.body && document.body.dataset.ready === '1'"):
            status = d.execute_script("var s = document.getElementById('status'); return s ? s.textContent : ''")
            if "could not" in status:
                raise SystemExit(status)
            time.sleep(0.02)
        wall = time.perf_counter() - t
        print("  page start-up, ms from navigation:", d.execute_script("return JSON.stringify(window.__kzPhases)"))
        return wall, d.execute_script("return window.__kzReadyMs") / 1000
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sample", type=Path)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--shape", choices=["kazoo", "sandbox"], default="kazoo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None, help="an older tree to time in the same rounds")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kzb-bench-report-"))
    try:
        log = work / "big.log"
        n = synthesize(args.sample, log, args.lines, args.shape)
        size = log.stat().st_size
        print(f"trace: {n} lines, {size / 1e6:.1f} MB ({args.shape} shape)")
        html, gz = work / "big.html", work / "big.log.gz"
        gen, zipped, old = [], [], []
        for _ in range(args.rounds):
            gen.append(generate(log, html))
            zipped.append(gzip_time(log, gz))
            if args.baseline:
                old.append(baseline_time(args.baseline, log, work / "old.html"))
        g, z = statistics.median(gen), statistics.median(zipped)
        print(f"report generation: {g:.2f} s (rounds {', '.join(f'{x:.2f}' for x in gen)})")
        print(f"gzip -6:           {z:.2f} s (rounds {', '.join(f'{x:.2f}' for x in zipped)})")
        ratios = [a / b for a, b in zip(gen, zipped, strict=True)]
        print(
            f"ratio:             {g / z:.2f}x gzip's time (aim <= 2x); per round {min(ratios):.2f}-{max(ratios):.2f}x"
        )
        if old:
            o = statistics.median(old)
            print(f"baseline tree:     {o:.2f} s = {o / z:.2f}x gzip (rounds {', '.join(f'{x:.2f}' for x in old)})")
        hsize = html.stat().st_size
        print(
            f"HTML: {hsize / 1e6:.1f} MB = {hsize / size:.2f}x the log (aim <= 0.5x); "
            f"gzip: {gz.stat().st_size / 1e6:.1f} MB"
        )
        wall, page = interactive(html)
        print(f"interactive in headless Chromium: {wall:.2f} s from navigation (page's clock: {page:.2f} s; aim < 3 s)")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(html, args.keep / "bench.html")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
