"""External term format: bytes <-> Python values (see terms.py for the mapping).

Pure functions, no I/O. Every malformed input raises DecodeError; lengths read
from the wire are checked against the bytes actually present before anything is
allocated, so a forged length cannot make us allocate gigabytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

from ..errors import DecodeError
from .terms import (
    Atom,
    BitBinary,
    Encoded,
    ErlString,
    Export,
    FrozenList,
    FrozenMap,
    Fun,
    ImproperList,
    Pid,
    PidLiteral,
    Port,
    Reference,
    freeze,
)

VERSION = 131

NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
COMPRESSED = 80
ATOM_CACHE_REF = 82
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
FUN_EXT = 117
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120

MAX_DEPTH = 1000
DEFAULT_MAX_UNCOMPRESSED = 512 * 1024 * 1024

_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_f64 = struct.Struct(">d").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_u32x3 = struct.Struct(">III").unpack_from
_p16 = struct.Struct(">H").pack
_p32 = struct.Struct(">I").pack
_pi32 = struct.Struct(">i").pack
_p64 = struct.Struct(">Q").pack
_pf64 = struct.Struct(">d").pack


# ---------------------------------------------------------------- decoding


def binary_to_term(data: bytes, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED) -> Any:
    """Decode one whole term (with its version byte); trailing bytes are an error."""
    term, pos = decode_prefix(data, 0, max_uncompressed=max_uncompressed)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after term")
    return term


def decode_prefix(
    data: bytes | bytearray | memoryview, pos: int = 0, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> tuple[Any, int]:
    """Decode the term starting at ``pos`` (version byte included); return it and the offset after it.

    A distribution message is two terms back to back, so the rest matters. Binaries
    come back as ``bytes``, except from a ``memoryview`` source, where they are views
    into it (zero-copy, for callers that own the buffer).
    """
    if pos >= len(data):
        raise DecodeError("no data where a term was expected")
    if data[pos] != VERSION:
        raise DecodeError(f"bad version byte {data[pos]} (expected 131)")
    pos += 1
    if pos < len(data) and data[pos] == COMPRESSED:
        if pos + 5 > len(data):
            raise DecodeError("truncated compressed term header")
        size = _u32(data, pos + 1)[0]
        if size > max_uncompressed:
            raise DecodeError(f"compressed term claims {size} bytes, over the {max_uncompressed} limit")
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(bytes(data[pos + 5 :]), size + 1)
        except zlib.error as exc:
            raise DecodeError(f"bad zlib data in compressed term: {exc}") from None
        if len(raw) != size or not inflater.eof:
            raise DecodeError("compressed term does not inflate to its declared size")
        consumed = len(data) - len(inflater.unused_data)
        term, inner = decode_at(raw, 0)
        if inner != size:
            raise DecodeError("compressed term has trailing bytes")
        return term, consumed
    return decode_at(data, pos)


def decode_at(data: bytes | bytearray | memoryview, pos: int) -> tuple[Any, int]:
    """Decode the term at ``pos``, with no version byte before it (a part of a term whose head
    the caller has matched itself); return it and the offset after it."""
    try:
        return _decode(data, pos, 0)
    except (IndexError, struct.error):
        raise DecodeError("term is truncated") from None
    except RecursionError:
        raise DecodeError("term is nested too deeply") from None


def _need(data: bytes | bytearray | memoryview, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(data):
        raise DecodeError(f"term is truncated: need {n} bytes at offset {pos}, have {len(data) - pos}")


_DECODED_ATOMS: dict[bytes, Atom] = {}


def _atom_text(raw: bytes, utf8: bool) -> Atom:
    if utf8:
        atom = _DECODED_ATOMS.get(raw)
        if atom is not None:
            return atom
        try:
            atom = Atom(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecodeError("atom is not valid UTF-8") from None
        if len(_DECODED_ATOMS) < 65536:
            _DECODED_ATOMS[raw] = atom
        return atom
    return Atom(raw.decode("latin-1"))


def _decode(data: bytes | bytearray | memoryview, pos: int, depth: int) -> tuple[Any, int]:
    # One dispatch on the tag, kept flat for speed.
    tag = data[pos]
    pos += 1
    if tag == SMALL_INTEGER_EXT:
        return data[pos], pos + 1
    if tag == SMALL_ATOM_UTF8_EXT:
        n = data[pos]
        pos += 1
        _need(data, pos, n)
        return _atom_text(bytes(data[pos : pos + n]), True), pos + n
    if tag == SMALL_TUPLE_EXT or tag == LARGE_TUPLE_EXT:
        if tag == SMALL_TUPLE_EXT:
            n = data[pos]
            pos += 1
        else:
            n = _u32(data, pos)[0]
            pos += 4
        if n > len(data) - pos:
            raise DecodeError(f"tuple claims {n} elements, more than the bytes left")
        if depth > MAX_DEPTH:
            raise DecodeError("term is nested too deeply")
        items: list[Any] = []
        append = items.append
        for _ in range(n):
            v, pos = _decode(data, pos, depth + 1)
            append(v)
        return tuple(items), pos
    if tag == NEW_PID_EXT or tag == PID_EXT:
        node, pos = _decode_atom(data, pos)
        if tag == NEW_PID_EXT:
            ident, serial, creation = _u32x3(data, pos)
            return Pid(node, ident, serial, creation), pos + 12
        ident, serial = _u32x2(data, pos)
        pos += 8
        _need(data, pos, 1)
        return Pid(node, ident, serial, data[pos], old=True), pos + 1
    if tag == NEWER_REFERENCE_EXT or tag == NEW_REFERENCE_EXT:
        n = _u16(data, pos)[0]
        pos += 2
        if n > 5:
            raise DecodeError(f"reference with {n} id words (at most 5 exist)")
        node, pos = _decode_atom(data, pos)
        if tag == NEWER_REFERENCE_EXT:
            creation = _u32(data, pos)[0]
            pos += 4
        else:
            _need(data, pos, 1)
            creation = data[pos]
            pos += 1
        _need(data, pos, 4 * n)
        ids = _u32x3(data, pos) if n == 3 else struct.unpack_from(f">{n}I", data, pos)
        return Reference(node, ids, creation, tag), pos + 4 * n
    if tag == INTEGER_EXT:
        return _i32(data, pos)[0], pos + 4
    if tag == BINARY_EXT:
        n = _u32(data, pos)[0]
        pos += 4
        _need(data, pos, n)
        if type(data) is bytes:
            return data[pos : pos + n], pos + n
        if type(data) is memoryview:
            return data[pos : pos + n], pos + n  # a view: the caller owns the buffer (DistMessage.payload_views)
        return bytes(memoryview(data)[pos : pos + n]), pos + n  # one copy out of a receive buffer
    if tag == NIL_EXT:
        return [], pos
    if tag == STRING_EXT:
        n = _u16(data, pos)[0]
        pos += 2
        _need(data, pos, n)
        return ErlString(bytes(data[pos : pos + n]).decode("latin-1")), pos + n
    if tag == LIST_EXT:
        n = _u32(data, pos)[0]
        pos += 4
        if n > len(data) - pos:
            raise DecodeError(f"list claims {n} elements, more than the bytes left")
        if depth > MAX_DEPTH:
            raise DecodeError("term is nested too deeply")
        items = []
        append = items.append
        for _ in range(n):
            v, pos = _decode(data, pos, depth + 1)
            append(v)
        tail, pos = _decode(data, pos, depth + 1)
        if tail == [] and type(tail) is list:
            return items, pos
        return ImproperList(tuple(items), tail), pos
    if tag == MAP_EXT:
        n = _u32(data, pos)[0]
        pos += 4
        if 2 * n > len(data) - pos:
            raise DecodeError(f"map claims {n} pairs, more than the bytes left")
        if depth > MAX_DEPTH:
            raise DecodeError("term is nested too deeply")
        out: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _decode(data, pos, depth + 1)
            v, pos = _decode(data, pos, depth + 1)
            try:
                out[k] = v
            except TypeError:
                out[freeze(k)] = v
        return out, pos
    if tag == ATOM_UTF8_EXT or tag == ATOM_EXT:
        n = _u16(data, pos)[0]
        pos += 2
        _need(data, pos, n)
        return _atom_text(bytes(data[pos : pos + n]), tag == ATOM_UTF8_EXT), pos + n
    if tag == SMALL_ATOM_EXT:
        n = data[pos]
        pos += 1
        _need(data, pos, n)
        return _atom_text(bytes(data[pos : pos + n]), False), pos + n
    if tag == NEW_FLOAT_EXT:
        _need(data, pos, 8)
        return _f64(data, pos)[0], pos + 8
    if tag == SMALL_BIG_EXT or tag == LARGE_BIG_EXT:
        if tag == SMALL_BIG_EXT:
            n = data[pos]
            pos += 1
        else:
            n = _u32(data, pos)[0]
            pos += 4
        _need(data, pos, n + 1)
        sign = data[pos]
        value = int.from_bytes(data[pos + 1 : pos + 1 + n], "little")
        return (-value if sign else value), pos + 1 + n
    if tag == REFERENCE_EXT:
        node, pos = _decode_atom(data, pos)
        ident = _u32(data, pos)[0]
        _need(data, pos + 4, 1)
        return Reference(node, (ident,), data[pos + 4], REFERENCE_EXT), pos + 5
    if tag == NEW_PORT_EXT or tag == PORT_EXT or tag == V4_PORT_EXT:
        node, pos = _decode_atom(data, pos)
        if tag == V4_PORT_EXT:
            ident = _u64(data, pos)[0]
            pos += 8
        else:
            ident = _u32(data, pos)[0]
            pos += 4
        if tag == PORT_EXT:
            _need(data, pos, 1)
            return Port(node, ident, data[pos], PORT_EXT), pos + 1
        return Port(node, ident, _u32(data, pos)[0], tag), pos + 4
    if tag == BIT_BINARY_EXT:
        n = _u32(data, pos)[0]
        bits = data[pos + 4]
        pos += 5
        if not 1 <= bits <= 8 or n == 0:
            raise DecodeError(f"bit binary with {bits} bits in its last of {n} bytes")
        _need(data, pos, n)
        return BitBinary(bytes(data[pos : pos + n]), bits), pos + n
    if tag == EXPORT_EXT:
        module, pos = _decode_atom(data, pos)
        function, pos = _decode_atom(data, pos)
        arity, pos = _decode(data, pos, depth + 1)
        if type(arity) is not int:
            raise DecodeError("export arity is not an integer")
        return Export(module, function, arity), pos
    if tag == NEW_FUN_EXT:
        size = _u32(data, pos)[0]
        start = pos - 1
        _need(data, start, size + 1)
        arity = data[pos + 4]
        uniq = bytes(data[pos + 5 : pos + 21])
        index, nfree = struct.unpack_from(">II", data, pos + 21)
        pos += 29
        if nfree > len(data) - pos:
            raise DecodeError("fun claims more free variables than bytes left")
        module, pos = _decode_atom(data, pos)
        old_index, pos = _decode(data, pos, depth + 1)
        old_uniq, pos = _decode(data, pos, depth + 1)
        pid, pos = _decode(data, pos, depth + 1)
        if type(old_index) is not int or type(old_uniq) is not int or type(pid) is not Pid:
            raise DecodeError("malformed fun")
        free = []
        for _ in range(nfree):
            v, pos = _decode(data, pos, depth + 1)
            free.append(v)
        if pos - start != size + 1:
            raise DecodeError("fun size field does not match its contents")
        return Fun(arity, uniq, index, module, old_index, old_uniq, pid, tuple(free)), pos
    if tag == FLOAT_EXT:
        _need(data, pos, 31)
        text = bytes(data[pos : pos + 31]).split(b"\0", 1)[0]
        try:
            return float(text.decode("ascii")), pos + 31
        except (UnicodeDecodeError, ValueError):
            raise DecodeError("malformed old-style float") from None
    if tag == ATOM_CACHE_REF:
        raise DecodeError("atom cache reference, but no atom cache was negotiated")
    if tag == COMPRESSED:
        raise DecodeError("compressed term nested inside a term")
    raise DecodeError(f"unknown term tag {tag}")


def _decode_atom(data: bytes | bytearray | memoryview, pos: int) -> tuple[Atom, int]:
    # The node name in every pid and reference: the cache is looked up here, not in _atom_text.
    if data[pos] == SMALL_ATOM_UTF8_EXT:
        n = data[pos + 1]
        end = pos + 2 + n
        if end <= len(data):
            raw = bytes(data[pos + 2 : end])
            return _DECODED_ATOMS.get(raw) or _atom_text(raw, True), end
    term, pos = _decode(data, pos, MAX_DEPTH)
    if type(term) is not Atom:
        raise DecodeError(f"expected an atom, got {type(term).__name__}")
    return term, pos


# ---------------------------------------------------------------- encoding


class EncodeError(TypeError):
    """A Python value that has no Erlang encoding. A programming error, not a wire error."""


def term_to_binary(term: Any, *, compressed: int = 0) -> bytes:
    """Encode with the version byte, as Erlang's term_to_binary/1 with minor_version 2 does."""
    out = bytearray(b"\x83")
    _encode(term, out)
    if compressed:
        body = bytes(out[1:])
        packed = zlib.compress(body, compressed)
        if len(packed) + 5 < len(body):
            return b"\x83" + bytes([COMPRESSED]) + _p32(len(body)) + packed
    return bytes(out)


def encode_term(term: Any) -> bytes:
    """The term's encoding without the version byte (for splicing pre-encoded parts)."""
    out = bytearray()
    _encode(term, out)
    return bytes(out)


def encode_into(term: Any, out: bytearray) -> None:
    """Append the version byte and the term to ``out`` (for distribution messages)."""
    out.append(VERSION)
    _encode(term, out)


_ATOM_BYTES: dict[Atom, bytes] = {}


def _atom_bytes(atom: Atom) -> bytes:
    raw = atom.name.encode("utf-8")
    n = len(raw)
    if n < 256:
        enc = bytes((SMALL_ATOM_UTF8_EXT, n)) + raw
    elif len(atom.name) <= 255:
        enc = bytes((ATOM_UTF8_EXT,)) + _p16(n) + raw
    else:
        raise EncodeError(f"atom longer than 255 characters: {atom.name[:20]!r}...")
    if len(_ATOM_BYTES) < 65536:
        _ATOM_BYTES[atom] = enc
    return enc


def _enc_atom(atom: Atom, out: bytearray) -> None:
    enc = _ATOM_BYTES.get(atom)
    out += enc if enc is not None else _atom_bytes(atom)


def _enc_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 255:
        out.append(SMALL_INTEGER_EXT)
        out.append(value)
    elif -2147483648 <= value <= 2147483647:
        out.append(INTEGER_EXT)
        out += _pi32(value)
    else:
        mag = -value if value < 0 else value
        raw = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
        n = len(raw)
        if n < 256:
            out.append(SMALL_BIG_EXT)
            out.append(n)
        else:
            out.append(LARGE_BIG_EXT)
            out += _p32(n)
        out.append(1 if value < 0 else 0)
        out += raw


def _enc_float(value: float, out: bytearray) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise EncodeError("Erlang floats cannot be NaN or infinite")
    out.append(NEW_FLOAT_EXT)
    out += _pf64(value)


def _enc_bytes(value: bytes, out: bytearray) -> None:
    out.append(BINARY_EXT)
    out += _p32(len(value))
    out += value


def _enc_str(value: str, out: bytearray) -> None:
    n = len(value)
    if n == 0:
        out.append(NIL_EXT)
        return
    if n <= 65535:
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raw = None
        if raw is not None:
            out.append(STRING_EXT)
            out += _p16(n)
            out += raw
            return
    out.append(LIST_EXT)
    out += _p32(n)
    for ch in value:
        _enc_int(ord(ch), out)
    out.append(NIL_EXT)


def _enc_tuple(value: tuple[Any, ...], out: bytearray) -> None:
    n = len(value)
    if n < 256:
        out.append(SMALL_TUPLE_EXT)
        out.append(n)
    else:
        out.append(LARGE_TUPLE_EXT)
        out += _p32(n)
    for item in value:
        _encode(item, out)


def _enc_list(value: list[Any], out: bytearray) -> None:
    n = len(value)
    if n == 0:
        out.append(NIL_EXT)
        return
    if n <= 65535 and all(type(v) is int and 0 <= v <= 255 for v in value):
        out.append(STRING_EXT)
        out += _p16(n)
        out += bytes(value)
        return
    out.append(LIST_EXT)
    out += _p32(n)
    for item in value:
        _encode(item, out)
    out.append(NIL_EXT)


def _enc_improper(value: ImproperList, out: bytearray) -> None:
    if not value.items:
        raise EncodeError("ImproperList needs at least one element")
    out.append(LIST_EXT)
    out += _p32(len(value.items))
    for item in value.items:
        _encode(item, out)
    _encode(value.tail, out)


def _enc_map(value: dict[Any, Any], out: bytearray) -> None:
    out.append(MAP_EXT)
    out += _p32(len(value))
    for k, v in value.items():
        _encode(k, out)
        _encode(v, out)


def _enc_frozen_map(value: FrozenMap, out: bytearray) -> None:
    out.append(MAP_EXT)
    out += _p32(len(value))
    for k, v in value:
        _encode(k, out)
        _encode(v, out)


def _enc_pid(pid: Pid, out: bytearray) -> None:
    if pid.old:
        out.append(PID_EXT)
        _enc_atom(pid.node, out)
        out += _p32(pid.id) + _p32(pid.serial)
        out.append(pid.creation & 0xFF)
    else:
        out.append(NEW_PID_EXT)
        _enc_atom(pid.node, out)
        out += _p32(pid.id) + _p32(pid.serial) + _p32(pid.creation)


def _enc_port(port: Port, out: bytearray) -> None:
    if port.form == PORT_EXT:
        out.append(PORT_EXT)
        _enc_atom(port.node, out)
        out += _p32(port.id)
        out.append(port.creation & 0xFF)
    elif port.form == V4_PORT_EXT or port.id > 0xFFFFFFFF:
        out.append(V4_PORT_EXT)
        _enc_atom(port.node, out)
        out += _p64(port.id) + _p32(port.creation)
    else:
        out.append(NEW_PORT_EXT)
        _enc_atom(port.node, out)
        out += _p32(port.id) + _p32(port.creation)


def _enc_ref(ref: Reference, out: bytearray) -> None:
    if ref.form == REFERENCE_EXT:
        out.append(REFERENCE_EXT)
        _enc_atom(ref.node, out)
        out += _p32(ref.ids[0])
        out.append(ref.creation & 0xFF)
        return
    old = ref.form == NEW_REFERENCE_EXT
    out.append(NEW_REFERENCE_EXT if old else NEWER_REFERENCE_EXT)
    out += _p16(len(ref.ids))
    _enc_atom(ref.node, out)
    if old:
        out.append(ref.creation & 0xFF)
    else:
        out += _p32(ref.creation)
    for i in ref.ids:
        out += _p32(i)


def _enc_bitbinary(value: BitBinary, out: bytearray) -> None:
    out.append(BIT_BINARY_EXT)
    out += _p32(len(value.data))
    out.append(value.bits)
    out += value.data


def _enc_export(value: Export, out: bytearray) -> None:
    out.append(EXPORT_EXT)
    _enc_atom(value.module, out)
    _enc_atom(value.function, out)
    _enc_int(value.arity, out)


def _enc_fun(value: Fun, out: bytearray) -> None:
    start = len(out)
    out.append(NEW_FUN_EXT)
    out += b"\0\0\0\0"
    out.append(value.arity)
    out += value.uniq
    out += _p32(value.index) + _p32(len(value.free_vars))
    _enc_atom(value.module, out)
    _enc_int(value.old_index, out)
    _enc_int(value.old_uniq, out)
    _enc_pid(value.pid, out)
    for v in value.free_vars:
        _encode(v, out)
    out[start + 1 : start + 5] = _p32(len(out) - start - 1)


def _enc_pid_literal(value: PidLiteral, out: bytearray) -> None:
    raise EncodeError(
        f"the pid {value} must be resolved on the node before it is sent (see kzbridge.wire.literal.pid_literals)"
    )


def _enc_encoded(value: Encoded, out: bytearray) -> None:
    out += value.data


def _enc_bool(value: bool, out: bytearray) -> None:
    _enc_atom(Atom("true") if value else Atom("false"), out)


def _enc_none(value: None, out: bytearray) -> None:
    _enc_atom(Atom("undefined"), out)


_ENCODERS: dict[type, Callable[[Any, bytearray], None]] = {
    Atom: _enc_atom,
    int: _enc_int,
    float: _enc_float,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    str: _enc_str,
    ErlString: _enc_str,
    tuple: _enc_tuple,
    list: _enc_list,
    FrozenList: _enc_list,
    dict: _enc_map,
    FrozenMap: _enc_frozen_map,
    ImproperList: _enc_improper,
    Pid: _enc_pid,
    Port: _enc_port,
    Reference: _enc_ref,
    BitBinary: _enc_bitbinary,
    Export: _enc_export,
    Fun: _enc_fun,
    Encoded: _enc_encoded,
    PidLiteral: _enc_pid_literal,
    bool: _enc_bool,
    type(None): _enc_none,
}


def _encode(term: Any, out: bytearray) -> None:
    enc = _ENCODERS.get(type(term))
    if enc is None:
        for base, fn in _ENCODERS.items():
            if base is not bool and isinstance(term, base):
                enc = fn
                break
        else:
            if isinstance(term, memoryview):
                enc = _enc_bytes
            else:
                raise EncodeError(f"no Erlang encoding for {type(term).__name__}: {term!r:.60}")
    enc(term, out)


# Append a term's encoding, without the version byte, to a bytearray: for a frame built in
# one buffer around pre-encoded parts (a bytes object per part costs as much as encoding it).
encode_append = _encode
