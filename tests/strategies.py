"""Hypothesis strategies for Erlang terms as kzbridge represents them."""

from __future__ import annotations

from hypothesis import strategies as st

from kzbridge.wire.terms import Atom, BitBinary, ImproperList

atoms = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(Atom)
ints = st.one_of(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**300), 2**300))
floats = st.floats(allow_nan=False, allow_infinity=False)
binaries = st.binary(max_size=64)
bitbinaries = st.builds(
    lambda d, b: BitBinary(d[:-1] + bytes([d[-1] & (0xFF << (8 - b)) & 0xFF]), b),
    st.binary(min_size=1, max_size=8),
    st.integers(1, 7),
)
strings = st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=30)
scalars = st.one_of(atoms, ints, floats, binaries, bitbinaries, strings)
hashable_keys = st.one_of(atoms, ints, binaries, st.tuples(atoms, ints))


def _compound(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(hashable_keys, children, max_size=6),
        st.builds(
            lambda items, tail: ImproperList(tuple(items), tail),
            st.lists(children, min_size=1, max_size=4),
            st.one_of(atoms, ints, binaries),
        ),
    )


terms = st.recursive(scalars, _compound, max_leaves=25)
