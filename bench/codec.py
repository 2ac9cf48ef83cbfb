"""Codec speed on a large mixed term: kzbridge's codec against erlang-py, measured in the same run.

    python bench/codec.py
    python bench/codec.py --baseline /path/to/older/checkout [--rounds 8]

Also reports fidelity: whether each codec re-encodes what it decoded byte for byte.
With ``--baseline`` it compares this tree's codec with another checkout's instead (no
erlang-py needed): fresh interpreters taking turns, the best of each round's runs,
on the mixed term and on a list of pids and references (the slot classes of terms.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, pct  # noqa: F401  (also puts the repository on sys.path)


def _wire():
    from kzbridge.wire import codec, terms

    return codec, terms


def big_term() -> list:
    _, terms = _wire()
    Atom, ErlString = terms.Atom, terms.ErlString
    out = []
    for i in range(5000):
        out.append(
            {
                Atom("id"): i,
                Atom("name"): f"user-{i}".encode(),
                Atom("score"): i * 1.25,
                Atom("tags"): [Atom("a"), Atom("b"), (Atom("k"), i, -i)],
                Atom("big"): 2**70 + i,
                Atom("text"): ErlString(f"line {i} with text"),
                Atom("flag"): Atom("true"),
            }
        )
    return out


def timeit(fn, rounds: int = 7) -> float:
    vals = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        vals.append(time.perf_counter() - t0)
    return statistics.median(vals) * 1000


def ids_term() -> list:
    _, terms = _wire()
    node = terms.Atom("n@h")
    return [(terms.Pid(node, i, 0, 5), terms.Reference(node, (i, 2, 3), 5)) for i in range(20000)]


def worker(tree: str) -> None:
    sys.path.insert(0, tree)
    codec, _ = _wire()
    assert os.path.abspath(codec.__file__).startswith(os.path.abspath(tree))
    mixed, ids = big_term(), ids_term()
    d1, d2 = codec.term_to_binary(mixed), codec.term_to_binary(ids)
    best = {
        "decode mixed": timeit(lambda: codec.binary_to_term(d1)),
        "decode pids/refs": timeit(lambda: codec.binary_to_term(d2)),
        "encode mixed": timeit(lambda: codec.term_to_binary(mixed)),
        "encode pids/refs": timeit(lambda: codec.term_to_binary(ids)),
    }
    print(json.dumps(best))


def compare(baseline: str, rounds: int) -> None:
    trees = {"baseline": os.path.abspath(baseline), "this tree": str(ROOT)}
    got: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for r in range(rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for label, tree in order:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", tree], capture_output=True, text=True, check=True
            ).stdout
            for k, v in json.loads(out).items():
                got[label].setdefault(k, []).append(v)
    print(f"codec, baseline {trees['baseline']} vs this tree ({rounds} rounds, median of 7 runs each, ms)")
    for k in got["baseline"]:
        b, t = got["baseline"][k], got["this tree"][k]
        ratios = [x / y for x, y in zip(t, b, strict=False)]
        print(
            f"  {k:<18} baseline {statistics.median(b):7.1f} (best {min(b):6.1f})  this tree "
            f"{statistics.median(t):7.1f} (best {min(t):6.1f})  ratio median {statistics.median(ratios):.3f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="another kzbridge checkout to compare this tree's codec against")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if args.baseline:
        compare(args.baseline, args.rounds)
        return
    import erlang  # erlang-py

    codec, terms = _wire()
    binary_to_term, term_to_binary, Atom = codec.binary_to_term, codec.term_to_binary, terms.Atom

    term = big_term()
    data = term_to_binary(term)
    theirs = erlang.binary_to_term(data)
    ours_dec = timeit(lambda: binary_to_term(data))
    ours_enc = timeit(lambda: term_to_binary(term))
    their_dec = timeit(lambda: erlang.binary_to_term(data))
    their_enc = timeit(lambda: erlang.term_to_binary(theirs))
    print(f"large mixed term: {len(data)} bytes, 5000 maps of 7 keys (median of 7 runs)")
    print(f"  {'decode  erlang-py (baseline)':<34} {their_dec:8.1f} ms")
    print(f"  {'decode  kzbridge':<34} {ours_dec:8.1f} ms  {ours_dec / their_dec:5.2f}x erlang-py")
    print(f"  {'encode  erlang-py (baseline)':<34} {their_enc:8.1f} ms")
    print(f"  {'encode  kzbridge':<34} {ours_enc:8.1f} ms  {ours_enc / their_enc:5.2f}x erlang-py")
    print("fidelity (decode then re-encode gives the same bytes):")
    print(f"  kzbridge  {term_to_binary(binary_to_term(data)) == data}")
    print(f"  erlang-py {erlang.term_to_binary(theirs) == data}")
    atom = erlang.binary_to_term(term_to_binary(Atom("ok")))
    try:
        verdict = str(atom == "ok")
    except Exception as exc:  # erlang-py's atom __eq__ assumes the other side is an atom
        verdict = f"raises {type(exc).__name__}"
    print(
        f"types: erlang-py atom == 'ok' -> {verdict}; "
        f"bytes b'x' encodes as a binary: {erlang.term_to_binary(b'x') == term_to_binary(b'x')} "
        f"(kzbridge: atom == 'ok' -> {Atom('ok') == 'ok'}, b'x' is a binary: True)"
    )


if __name__ == "__main__":
    main()
