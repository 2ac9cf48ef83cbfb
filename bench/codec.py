"""Codec speed on a large mixed term: kzbridge's codec against erlang-py, measured in the same run.

    python bench/codec.py

Also reports fidelity: whether each codec re-encodes what it decoded byte for byte.
"""
from __future__ import annotations

import statistics
import time

import _common  # noqa: F401  (puts the repository on sys.path)

from kzbridge.wire.codec import binary_to_term, term_to_binary
from kzbridge.wire.terms import Atom, ErlString


def big_term() -> list:
    out = []
    for i in range(5000):
        out.append({
            Atom("id"): i, Atom("name"): f"user-{i}".encode(), Atom("score"): i * 1.25,
            Atom("tags"): [Atom("a"), Atom("b"), (Atom("k"), i, -i)], Atom("big"): 2**70 + i,
            Atom("text"): ErlString(f"line {i} with text"), Atom("flag"): Atom("true"),
        })
    return out


def timeit(fn, rounds: int = 7) -> float:
    vals = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        vals.append(time.perf_counter() - t0)
    return statistics.median(vals) * 1000


def main() -> None:
    import erlang  # erlang-py

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
    print(f"types: erlang-py atom == 'ok' -> {verdict}; "
          f"bytes b'x' encodes as a binary: {erlang.term_to_binary(b'x') == term_to_binary(b'x')} "
          f"(kzbridge: atom == 'ok' -> {Atom('ok') == 'ok'}, b'x' is a binary: True)")


if __name__ == "__main__":
    main()
