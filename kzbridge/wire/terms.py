"""Python values for Erlang terms that have no unambiguous Python equivalent.

The mapping (decode direction; encode accepts the same and a few conveniences):

    atom                  Atom            never equal to a str
    integer               int
    float                 float
    binary                bytes
    bitstring             BitBinary
    tuple                 tuple
    proper list           list            (a list of chars from STRING_EXT is ErlString)
    improper list         ImproperList
    map                   dict            (list/map keys become FrozenList/FrozenMap)
    pid / port / ref      Pid / Port / Reference   frozen, hashable, byte-exact round trip
    fun / export          Fun / Export

``True``/``False`` encode as the atoms true/false and ``None`` as undefined; the
decoder never produces them, so ``Atom('true')`` is what comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, final


@final
class Atom:
    """An Erlang atom. Distinct from str so ``{Atom('ok'): 1, 'ok': 2}`` has two keys."""

    __slots__ = ("_hash", "name")
    # Declared for type checkers; set once in __new__ through object.__setattr__.
    name: str
    _hash: int
    _interned: ClassVar[dict[str, Atom]] = {}

    def __new__(cls, name: str) -> Atom:
        atom = cls._interned.get(name)
        if atom is None:
            if not isinstance(name, str):
                raise TypeError(f"atom name must be str, not {type(name).__name__}")
            atom = object.__new__(cls)
            object.__setattr__(atom, "name", name)
            object.__setattr__(atom, "_hash", hash(("erlang-atom", name)))
            if len(cls._interned) < 100_000:
                cls._interned[name] = atom
        return atom

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Atom is immutable")

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is Atom and other.name == self.name)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Atom({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple[Any, ...]:
        return (Atom, (self.name,))


class ErlString(str):
    """An Erlang string (a list of character codes) as the node sent it.

    It is a ``str`` for convenience, but its type says it was a list on the wire,
    not a binary (``bytes``) or an atom (``Atom``).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ErlString({str.__repr__(self)})"


class _Ident:
    """Base of the term types Python lacks (pids, ports, refs, funs...): immutable, hashable,
    equal by their identity fields (``_k``; a pid's wire form is not one).

    Plain __slots__ classes rather than frozen dataclasses: the decoder builds one
    per message and a frozen dataclass costs a microsecond more each time (and about
    a millisecond to define, at every start of a one-shot command). The
    identity tuple is built once (``_k``): pids and refs key the node's tables and
    are hashed several times per rpc. The attributes are declared in each class body
    (annotations only, beside ``__slots__``) so type checkers see them; they are set
    once in ``__init__`` through the slots' own setters (``_slot_setters``: a third
    cheaper than ``object.__setattr__``, and an rpc builds about five of these objects).
    """

    __slots__ = ("_k",)
    _k: tuple[Any, ...]
    _fields: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._k == other._k

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self._k)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f) for f in self._fields))


_set = object.__setattr__


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The ``__set__`` of each named slot (found along the class's MRO), bypassing ``__setattr__``."""
    return tuple(next(c.__dict__[n] for c in cls.__mro__ if n in c.__dict__).__set__ for n in names)


class Pid(_Ident):
    """An Erlang process identifier. ``old`` records the 1-byte-creation wire form."""

    __slots__ = ("creation", "id", "node", "old", "serial")
    _fields = ("node", "id", "serial", "creation", "old")  # the constructor's order
    node: Atom
    id: int
    serial: int
    creation: int
    old: bool

    def __init__(self, node: Atom, id: int, serial: int, creation: int, old: bool = False) -> None:
        _pid_node(self, node)
        _pid_id(self, id)
        _pid_serial(self, serial)
        _pid_creation(self, creation)
        _pid_old(self, old)
        _pid_k(self, (node, id, serial, creation))

    def __str__(self) -> str:
        return f"<{self.node}.{self.id}.{self.serial}>"


_pid_node, _pid_id, _pid_serial, _pid_creation, _pid_old, _pid_k = _slot_setters(
    Pid, "node", "id", "serial", "creation", "old", "_k"
)


class Port(_Ident):
    """An Erlang port identifier; ``form`` is the wire tag it came in (102, 89 or 120)."""

    __slots__ = ("creation", "form", "id", "node")
    _fields = ("node", "id", "creation", "form")
    node: Atom
    id: int
    creation: int
    form: int

    def __init__(self, node: Atom, id: int, creation: int, form: int = 89) -> None:
        _set(self, "node", node)
        _set(self, "id", id)
        _set(self, "creation", creation)
        _set(self, "form", form)
        _set(self, "_k", (node, id, creation, 0))

    def __str__(self) -> str:
        return f"#Port<{self.node}.{self.id}>"


class Reference(_Ident):
    """An Erlang reference; ``form`` is the wire tag it came in (101, 114 or 90)."""

    __slots__ = ("creation", "form", "ids", "node")
    _fields = ("node", "ids", "creation", "form")
    node: Atom
    ids: tuple[int, ...]
    creation: int
    form: int

    def __init__(self, node: Atom, ids: tuple[int, ...], creation: int, form: int = 90) -> None:
        if type(ids) is not tuple:
            ids = tuple(ids)
        _ref_node(self, node)
        _ref_ids(self, ids)
        _ref_creation(self, creation)
        _ref_form(self, form)
        _ref_k(self, (node, ids, creation))

    def __str__(self) -> str:
        return "#Ref<" + ".".join([str(self.node)] + [str(i) for i in reversed(self.ids)]) + ">"


_ref_node, _ref_ids, _ref_creation, _ref_form, _ref_k = _slot_setters(
    Reference, "node", "ids", "creation", "form", "_k"
)


class PidLiteral(_Ident):
    """A pid as a person writes it: ``<0.116.0>`` (a process of the node we talk to) or
    ``<name@host.116.0>`` (the way kzbridge prints pids).

    The text lacks the node's creation number, which the wire form needs, so only a node
    can turn it into a real pid: ``literal.pid_literals`` finds them in a term and the
    caller resolves them (the CLI asks the node, ``erlang:list_to_pid/1``) before sending.
    """

    __slots__ = ("id", "node", "serial")
    _fields = ("node", "id", "serial")
    node: str | None
    id: int
    serial: int

    def __init__(self, node: str | None, id: int, serial: int) -> None:
        _set(self, "node", node)
        _set(self, "id", id)
        _set(self, "serial", serial)
        _set(self, "_k", (node, id, serial))

    def __str__(self) -> str:
        return f"<{self.node or 0}.{self.id}.{self.serial}>"

    def __repr__(self) -> str:
        return f"PidLiteral({str(self)!r})"


class BitBinary(_Ident):
    """A bitstring whose last byte holds only ``bits`` (1..8) significant bits."""

    __slots__ = ("bits", "data")
    _fields = __match_args__ = ("data", "bits")
    data: bytes
    bits: int

    def __init__(self, data: bytes, bits: int) -> None:
        _set(self, "data", data)
        _set(self, "bits", bits)
        _set(self, "_k", (data, bits))


class ImproperList(_Ident):
    """``[a, b | Tail]`` where Tail is not a list."""

    __slots__ = ("items", "tail")
    _fields = __match_args__ = ("items", "tail")
    items: tuple[Any, ...]
    tail: Any

    def __init__(self, items: tuple[Any, ...], tail: Any) -> None:
        _set(self, "items", items)
        _set(self, "tail", tail)
        _set(self, "_k", (items, tail))


class Export(_Ident):
    """``fun Module:Function/Arity``."""

    __slots__ = ("arity", "function", "module")
    _fields = __match_args__ = ("module", "function", "arity")
    module: Atom
    function: Atom
    arity: int

    def __init__(self, module: Atom, function: Atom, arity: int) -> None:
        _set(self, "module", module)
        _set(self, "function", function)
        _set(self, "arity", arity)
        _set(self, "_k", (module, function, arity))


class Fun(_Ident):
    """A local fun as sent by a node. Kept whole so it re-encodes byte-exactly; never callable here."""

    __slots__ = ("arity", "free_vars", "index", "module", "old_index", "old_uniq", "pid", "uniq")
    _fields = __match_args__ = ("arity", "uniq", "index", "module", "old_index", "old_uniq", "pid", "free_vars")
    arity: int
    uniq: bytes
    index: int
    module: Atom
    old_index: int
    old_uniq: int
    pid: Pid
    free_vars: tuple[Any, ...]

    def __init__(
        self,
        arity: int,
        uniq: bytes,
        index: int,
        module: Atom,
        old_index: int,
        old_uniq: int,
        pid: Pid,
        free_vars: tuple[Any, ...],
    ) -> None:
        values = (arity, uniq, index, module, old_index, old_uniq, pid, free_vars)
        for name, value in zip(self._fields, values, strict=True):
            _set(self, name, value)
        _set(self, "_k", values)


class Encoded:
    """A term already in external format (no version byte), written out as is.

    For large constant arguments sent again and again (the abstract forms of the
    programs we run on a node): encoding them once saves milliseconds per call.
    The bytes are trusted: check them where they come from (``codec.binary_to_term``).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def __eq__(self, other: object) -> bool:
        return type(other) is Encoded and other.data == self.data

    def __hash__(self) -> int:
        return hash((Encoded, self.data))

    def __repr__(self) -> str:
        return f"Encoded(<{len(self.data)} bytes>)"


class FrozenList(tuple[Any, ...]):
    """A list used as a map key (Python lists are unhashable). Encodes as a list."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is FrozenList and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("erlang-list", tuple(self)))

    def __repr__(self) -> str:
        return f"FrozenList({list(self)!r})"


class FrozenMap(tuple[Any, ...]):
    """A map used as a map key; holds ``(key, value)`` pairs in wire order. Encodes as a map."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is FrozenMap and dict(self) == dict(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(("erlang-map", frozenset(self)))

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self)!r})"


def freeze(value: Any) -> Any:
    """Turn a decoded term into something hashable, for use as a dict key."""
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    if isinstance(value, dict):
        return FrozenMap((freeze(k), freeze(v)) for k, v in value.items())
    if type(value) is tuple:
        return tuple(freeze(v) for v in value)
    return value
