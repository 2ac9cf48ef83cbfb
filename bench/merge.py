"""Merge speed and memory: kzbridge's timeline merge against GNU ``sort -m``.

Three files of N lines each (default 1M, Kazoo's trace format, about 130 bytes a line,
already in time order, as lager writes them) are merged by ``LC_ALL=C sort -m`` (the floor
for merging text: it compares bytes and corrects nothing) and by kzbridge's merge
(``kazoo.merge.merge_to_file``: parses each time, carries the date, applies zone and clock
offset, prefixes label and UTC instant). Both run in child processes, taking turns over
several rounds (this VM's speed swings 30-50 %); we report the median of per-round time
ratios with their range, lines per second, and kzbridge's peak RSS.

    python bench/merge.py [--lines 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from kzbridge.kazoo.clock import ClockCorrection, NodeClock
from kzbridge.kazoo.merge import MergeSource, merge_to_file
spec = json.loads(sys.argv[2])
sources = [MergeSource(s["node"], Path(s["path"]), ClockCorrection(NodeClock(s["offset"], 0.0, 0, spec["start"])))
           for s in spec["sources"]]
t0 = time.perf_counter()
stats = merge_to_file(sources, spec["out"])
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "lines": sum(stats.lines)}))
"""


def make_file(path: Path, lines: int, start_sod: float, seed: int) -> None:
    """``lines`` lines in time order from ``start_sod`` (seconds of day), ~1 ms apart on average."""
    rnd = random.Random(seed)
    t = start_sod
    with open(path, "w", encoding="ascii") as fh:
        buf = []
        for i in range(lines):
            t += rnd.random() * 0.002
            ms = int(t * 1000)
            h, rest = divmod(ms // 1000, 3600)
            m, s = divmod(rest, 60)
            buf.append(
                f"{h % 24:02d}:{m:02d}:{s:02d}.{ms % 1000:03d} [debug] |kazoo_data|call-{seed}-{i % 97:08x}|"
                f"kz_json:get_value:{{7,5}} (<0.{116 + i % 9}.0>) get_value count from doc with {i % 13} keys "
                f"and some more text\n"
            )
            if len(buf) == 10000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))


def run_sort(files: list[Path], out: Path) -> float:
    env = dict(os.environ, LC_ALL="C")
    t0 = time.perf_counter()
    subprocess.run(["sort", "-m", "-o", str(out), *map(str, files)], check=True, env=env)
    return time.perf_counter() - t0


def run_ours(spec: dict) -> dict:
    Path(spec["out"]).unlink(missing_ok=True)  # merge_to_file never writes over an existing file
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), json.dumps(spec)], check=True, capture_output=True, text=True
    )
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines per file")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("sort"):
        sys.exit("GNU sort not found")
    work = Path(tempfile.mkdtemp(prefix="kzb-bench-merge-"))
    try:
        files = [work / f"n{i}.log" for i in range(3)]
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            make_file(f, args.lines, 36000.0 + i * 0.0003, i)
        size = sum(f.stat().st_size for f in files)
        print(f"made 3 x {args.lines} lines ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
        start = time.mktime(time.strptime("2026-11-25 09:59:00", "%Y-%m-%d %H:%M:%S")) - time.timezone
        spec = {
            "start": start,
            "out": str(work / "merged.log"),
            "sources": [{"node": f"n{i}@h", "path": str(f), "offset": 0.0} for i, f in enumerate(files)],
        }
        ratios, ours_t, sort_t, rss = [], [], [], []
        for r in range(args.rounds):
            # Alternate who goes first: the page cache and the VM favour whoever runs second.
            first_sort = r % 2 == 0
            if first_sort:
                s = run_sort(files, work / "sorted.log")
            o = run_ours(spec)
            if not first_sort:
                s = run_sort(files, work / "sorted.log")
            assert o["lines"] == 3 * args.lines, o
            ratios.append(o["seconds"] / s)
            ours_t.append(o["seconds"])
            sort_t.append(s)
            rss.append(o["rss_kb"] / 1024)
            print(
                f"round {r + 1}: sort -m {s:.2f}s, kzbridge {o['seconds']:.2f}s "
                f"({o['seconds'] / s:.2f}x), peak RSS {o['rss_kb'] / 1024:.0f} MB"
            )
        lines = 3 * args.lines
        print(
            f"merge of 3 x {args.lines} lines: kzbridge {statistics.median(ratios):.2f}x sort -m's time "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); "
            f"{lines / statistics.median(ours_t) / 1e6:.2f} M lines/s vs {lines / statistics.median(sort_t) / 1e6:.2f}"
            f" M lines/s; peak RSS {max(rss):.0f} MB (limit 100 MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
