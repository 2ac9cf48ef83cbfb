"""The term codec alone: round trips, Python-side type distinctions, and fuzzing."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kzbridge.errors import DecodeError
from kzbridge.wire.codec import binary_to_term, decode_prefix, encode_term, term_to_binary
from kzbridge.wire.terms import Atom, BitBinary, Encoded, ErlString, Export, FrozenList, ImproperList, Pid, Reference

from .strategies import terms


def canon(value):
    """Compare as Erlang would: a string is a list of code points."""
    if isinstance(value, str):
        return ("list", tuple(ord(c) for c in value))
    if isinstance(value, list):
        if value and all(type(v) is int and 0 <= v < 0x110000 for v in value):
            return ("list", tuple(value))
        return ("list", tuple(canon(v) for v in value))
    if type(value) is tuple:
        return ("tuple", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset((canon(k), canon(v)) for k, v in value.items()))
    if isinstance(value, ImproperList):
        return ("improper", tuple(canon(v) for v in value.items), canon(value.tail))
    return value


@given(terms)
def test_round_trip_is_byte_exact(term):
    encoded = term_to_binary(term)
    decoded = binary_to_term(encoded)
    assert canon(decoded) == canon(term)
    assert term_to_binary(decoded) == encoded


def test_atom_is_not_a_string():
    assert Atom("ok") != "ok"
    assert len({Atom("ok"): 1, "ok": 2}) == 2
    assert binary_to_term(term_to_binary(Atom("ok"))) is Atom("ok")


def test_binaries_strings_and_lists_decode_to_distinct_types():
    assert binary_to_term(term_to_binary(b"abc")) == b"abc"
    s = binary_to_term(term_to_binary("abc"))
    assert type(s) is ErlString and s == "abc"
    assert binary_to_term(term_to_binary([1000, 2])) == [1000, 2]


def test_booleans_and_none_encode_as_atoms():
    assert binary_to_term(term_to_binary(True)) == Atom("true")
    assert binary_to_term(term_to_binary(None)) == Atom("undefined")


def test_known_encodings_from_the_format_document():
    assert term_to_binary(1) == b"\x83a\x01"
    assert term_to_binary(-1) == b"\x83b\xff\xff\xff\xff"
    assert term_to_binary(2**31) == b"\x83n\x04\x00\x00\x00\x00\x80"
    assert term_to_binary([]) == b"\x83j"
    assert term_to_binary(Atom("a")) == b"\x83w\x01a"
    assert term_to_binary((1,)) == b"\x83h\x01a\x01"
    assert term_to_binary(1.5) == b"\x83F" + struct.pack(">d", 1.5)


def test_pid_and_reference_forms_round_trip():
    old = Pid(Atom("n@h"), 5, 0, 2, old=True)
    new = Pid(Atom("n@h"), 5, 0, 2)
    assert old == new and hash(old) == hash(new)
    assert term_to_binary(old) != term_to_binary(new)
    for p in (old, new):
        assert binary_to_term(term_to_binary(p)).old == p.old
    for form in (101, 114, 90):
        ids = (7,) if form == 101 else (7, 8, 9)
        r = Reference(Atom("n@h"), ids, 3, form)
        assert term_to_binary(binary_to_term(term_to_binary(r))) == term_to_binary(r)


@settings(max_examples=100, deadline=None)
@given(terms)
def test_pre_encoded_parts_splice_in_byte_exactly(term):
    """Encoded(...) is written as is: the same bytes as encoding the term in place.

    (Inside a tuple: a list of small integers is a string on the wire, which an opaque
    element cannot be part of.)"""
    assert term_to_binary((Atom("x"), Encoded(encode_term(term)), 1)) == term_to_binary((Atom("x"), term, 1))


def test_decode_prefix_returns_the_rest():
    data = term_to_binary((Atom("a"), 1)) + term_to_binary(b"x") + b"tail"
    first, pos = decode_prefix(data)
    second, pos2 = decode_prefix(data, pos)
    assert first == (Atom("a"), 1) and second == b"x" and data[pos2:] == b"tail"
    with pytest.raises(DecodeError):
        binary_to_term(data)


def test_compressed_terms_decode_and_bombs_are_refused():
    body = term_to_binary(list(range(300)) * 10)[1:]
    packed = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body)
    assert binary_to_term(packed) == list(range(300)) * 10
    assert binary_to_term(term_to_binary(b"a" * 10000, compressed=6)) == b"a" * 10000
    huge = b"\x83P" + struct.pack(">I", 2**31) + zlib.compress(b"m" * 100)
    with pytest.raises(DecodeError):
        binary_to_term(huge)
    lying = b"\x83P" + struct.pack(">I", 50) + zlib.compress(body)
    with pytest.raises(DecodeError):
        binary_to_term(lying)


@pytest.mark.parametrize(
    "data",
    [
        b"\x83l\xff\xff\xff\xffj",  # list claims 4G elements
        b"\x83m\x7f\xff\xff\xff",  # binary claims 2 GB
        b"\x83t\xff\xff\xff\xff",  # map claims 4G pairs
        b"\x83i\xff\xff\xff\xff",  # tuple claims 4G elements
        b"\x83o\xff\xff\xff\xff\x00",  # bignum claims 4 GB
        b"\x83k\xff\xff",  # string claims 64K, has none
    ],
)
def test_forged_lengths_are_refused_without_allocating(data):
    with pytest.raises(DecodeError):
        binary_to_term(data)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    data = b"\x83" + b"l\x00\x00\x00\x01" * 5000 + b"j" * 5001
    with pytest.raises(DecodeError):
        binary_to_term(data)


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_give_a_value_or_decode_error(data):
    try:
        decode_prefix(b"\x83" + data)
    except DecodeError:
        pass


@pytest.mark.slow
@settings(max_examples=1000)
@given(terms, st.data())
def test_fuzz_mutated_valid_terms(term, data):
    encoded = bytearray(term_to_binary(term))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(1, len(encoded) - 1)) if len(encoded) > 1 else 0
        encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(encoded)))
    try:
        decode_prefix(bytes(encoded[:cut]))
    except DecodeError:
        pass


def test_unhashable_map_keys_are_frozen():
    encoded = b"\x83t\x00\x00\x00\x01" + term_to_binary([1000])[1:] + b"a\x01"
    decoded = binary_to_term(encoded)
    assert decoded == {FrozenList([1000]): 1}
    assert term_to_binary(decoded) == encoded


def test_term_literals_parse_and_print_back():
    from kzbridge.wire.literal import format_term, parse_term

    text = '[{module, kz_json}, <<"bin">>, "str", #{a => 1}, [1, 2 | tail], \'Quoted atom\', -5, 2.5, $a]'
    value = parse_term(text)
    assert value[0] == (Atom("module"), Atom("kz_json")) and value[1] == b"bin" and value[2] == "str"
    assert value[4] == ImproperList((1, 2), Atom("tail")) and value[-1] == 97
    assert parse_term(format_term(value)) == value


def test_pid_literals_parse_print_back_and_are_never_sent_unresolved():
    from kzbridge.errors import TermSyntaxError
    from kzbridge.wire.codec import EncodeError
    from kzbridge.wire.literal import format_term, parse_term, pid_literals, replace_pid_literals
    from kzbridge.wire.terms import PidLiteral

    value = parse_term("[<0.116.0>, {a, <kazoo_apps@10.0.0.5.42.0>}, <<1,2>>, [<0.116.0> | t]]")
    here, there = PidLiteral(None, 116, 0), PidLiteral("kazoo_apps@10.0.0.5", 42, 0)
    assert value[0] == here and value[1][1] == there and value[2] == b"\x01\x02"
    assert pid_literals(value) == [here, there]  # each once, in order
    assert parse_term(format_term(value)) == value
    with pytest.raises(EncodeError, match="must be resolved on the node"):
        term_to_binary(value)
    real = Pid(Atom("kazoo_apps@10.0.0.5"), 42, 0, 7)
    resolved = replace_pid_literals(value, {here: real, there: real})
    assert resolved[0] is real and resolved[1][1] is real and resolved[3].items[0] is real
    assert not pid_literals(resolved) and binary_to_term(term_to_binary(resolved)) == resolved
    for bad, why in (("<3.1.0>", "local number"), ("<foo.1.0>", "a pid is"), ("<0.1>", "unexpected")):
        with pytest.raises(TermSyntaxError, match=why):
            parse_term(bad)


def test_the_term_records_match_by_position_as_the_dataclasses_did():
    # BitBinary, ImproperList, Export and Fun were frozen dataclasses; as slot classes they keep
    # equality, hashing, repr and positional patterns.
    bits = BitBinary(b"\x01", 3)
    assert bits == BitBinary(b"\x01", 3) and hash(bits) == hash(BitBinary(b"\x01", 3))
    assert repr(bits) == "BitBinary(data=b'\\x01', bits=3)"
    match ImproperList((1, 2), Atom("t")), Export(Atom("m"), Atom("f"), 2):
        case ImproperList(items, tail), Export(module, function, arity):
            assert (items, tail, module, function, arity) == ((1, 2), Atom("t"), Atom("m"), Atom("f"), 2)
        case _:
            raise AssertionError("no match")
