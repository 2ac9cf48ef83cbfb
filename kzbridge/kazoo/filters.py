"""Trace filters: built and checked in Python so nothing that crashes kz_data_tracing is ever sent.

The contract lists the crashing inputs: an empty filter list, a pid value (not a
string) anywhere, an improper list, ``{any, [{K, V}]}``. And ``{pid, "0.1.0"}``
silently matches nothing, so ``X.Y.Z`` is normalised to ``<X.Y.Z>``.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import BadFilterError, TermSyntaxError, UsageError
from ..wire.literal import format_term, parse_term
from ..wire.terms import Atom, ErlString, ImproperList, Pid, PidLiteral

WILDCARD = Atom("*")
_ATOM_KEYS = {"module", "function", "application", "node", "mod", "func", "from_app", "sink"}
_PID = re.compile(r"<?(\d+)\.(\d+)\.(\d+)>?\Z")
# How `kzbridge rpc` prints a pid of another node: <name@host.A.B> (host may hold dots).
_KEY = re.compile(r"[a-z][a-zA-Z0-9_]*\Z")
_OPS = {"=": Atom("="), "<": Atom("<"), ">": Atom(">")}
DATA_SINK = "data"
LAGER_SINK = "lager_event"
DEFAULT_LEASE = 60.0
DEFAULT_MAX_RATE = 10_000.0  # events/s; kazoo.governor explains the choice
MAX_ATOM = 255  # characters in an Erlang atom
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def normalise_pid(text: str) -> ErlString:
    """``0.116.0`` or ``<0.116.0>`` -> the string lager's pid metadata holds."""
    m = _PID.match(text.strip())
    if not m:
        raise BadFilterError(f"{text!r} is not a pid; write it as 0.116.0 or <0.116.0>")
    return ErlString("<{}.{}.{}>".format(*m.groups()))


_NODE_PID = re.compile(r"<([^<>@\s]+@[^<>\s]+)\.(\d+)\.(\d+)>\Z")


def pid_owner(text: str) -> tuple[str | None, str]:
    """``<name@host.A.B>`` (as kzbridge prints pids) -> (``name@host``, ``<0.A.B>``);
    any other form -> (None, the text as given)."""
    m = _NODE_PID.match(text.strip())
    if m is None:
        return None, text
    return m.group(1), f"<0.{m.group(2)}.{m.group(3)}>"


def _atom_value(key: str, value: str) -> Atom:
    if value == "*":
        return WILDCARD
    if not value or any(c.isspace() for c in value):
        raise BadFilterError(f"{key} filter needs a name, got {value!r}")
    if len(value) > MAX_ATOM:
        raise BadFilterError(f"{key} name is {len(value)} characters long; Erlang names have at most {MAX_ATOM}")
    return Atom(value)


def module_filter(module: str) -> list[tuple[Any, ...]]:
    return [(Atom("module"), _atom_value("module", module))]


def function_filter(function: str, module: str | None = None) -> list[tuple[Any, ...]]:
    out = [] if module is None else module_filter(module)
    return [*out, (Atom("function"), _atom_value("function", function))]


def pid_filter(pid: str, node: str | None = None) -> list[tuple[Any, ...]]:
    """``{pid, "<0.A.B>"}``. Besides 0.A.B and <0.A.B>, takes <name@host.A.B> as ``rpc`` prints
    pids: a pid of ``node`` (the traced node; lager prints its own pids as <0.A.B>), refused
    when it names another node, since that process can log nothing on this one."""
    owner, local = pid_owner(pid)
    if owner is not None:
        ident, serial = local[3:-1].split(".")
        if node is None:
            raise BadFilterError(
                f"{pid!r} names its node; say which node is traced, or write it as <0.{ident}.{serial}>"
            )
        if owner != node:
            raise BadFilterError(
                f"{pid} is a process of {owner}, not of the traced node {node}: it cannot log there",
                hint=f"trace {owner} instead",
            )
        return [(Atom("pid"), ErlString(local))]
    return [(Atom("pid"), normalise_pid(pid))]


def parse_filter(spec: str) -> tuple[Any, ...]:
    """One filter as text: ``KEY=VALUE`` (binary for custom keys, atom for module/function/...),
    ``KEY=*`` (key present), ``KEY:=TERM`` (an Erlang term literal), or ``KEY<V`` / ``KEY>V``.
    """
    m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(:=|=|<|>)(.*)\Z", spec, re.DOTALL)
    if not m:
        raise BadFilterError(f"bad filter {spec!r}: write KEY=VALUE (e.g. callid=abc123, module=kz_json)")
    key, op, raw = m.group(1), m.group(2), m.group(3).strip()
    if not _KEY.match(key):
        raise BadFilterError(f"bad filter key {key!r}: metadata keys are lowercase atoms")
    k = Atom(key)
    if op == ":=":
        try:
            value = parse_term(raw)
        except TermSyntaxError as exc:
            raise BadFilterError(f"bad filter {spec!r}: {exc.message}") from None
    elif raw == "*":
        value = WILDCARD
    elif key == "pid":
        value = normalise_pid(raw)
    elif key in _ATOM_KEYS:
        value = _atom_value(key, raw)
    elif op in "<>" and re.fullmatch(r"-?\d+", raw):
        value = int(raw)
    else:
        value = raw.encode("utf-8")
    if op in ("<", ">"):
        return (k, _OPS[op], value)
    return (k, value)


def validate(filters: Any) -> list[tuple[Any, ...]]:
    """Refuse every input the contract lists as crashing the tracing server."""
    if isinstance(filters, ImproperList) or not isinstance(filters, list):
        raise BadFilterError("trace filters must be a proper list of {Key, Value} tuples")
    if not filters:
        raise BadFilterError(
            "an empty filter list crashes kz_data_tracing; give at least one filter",
            hint="e.g. the filter function=* traces everything",
            setting="filters",
        )
    out = []
    for f in filters:
        if type(f) is not tuple or len(f) not in (2, 3) or type(f[0]) is not Atom:
            raise BadFilterError(f"filter {format_term(f)} is not {{Key, Value}} or {{Key, Op, Value}}")
        if f[0] == Atom("any") or f[0] == Atom("all"):
            raise BadFilterError(f"filter {format_term(f)}: {f[0]} lists crash kz_data_tracing's server")
        long_atom = _long_atom(f)
        if long_atom is not None:
            raise BadFilterError(
                f"filter {format_term(f)[:80]}...: an atom of {len(long_atom)} characters; "
                f"Erlang atoms have at most {MAX_ATOM}"
            )
        if _contains_pid(f):
            raise BadFilterError(
                f"filter {format_term(f)} holds a pid value, which crashes kz_data_tracing "
                'and leaks a file handler; write the pid as a string "<0.1.0>"'
            )
        if len(f) == 3 and f[1] not in _OPS.values():
            raise BadFilterError(f"filter {format_term(f)}: operator must be '=', '<' or '>'")
        if f[0] == Atom("pid") and isinstance(f[-1], str) and not _PID.match(f[-1]) and f[-1] != "*":
            raise BadFilterError(f"pid filter {f[-1]!r} would match nothing; use <X.Y.Z>")
        if f[0] == Atom("pid") and isinstance(f[-1], str) and not f[-1].startswith("<"):
            f = (*f[:-1], normalise_pid(f[-1]))
        out.append(f)
    return out


def _long_atom(value: Any) -> str | None:
    if type(value) is Atom:
        return value.name if len(value.name) > MAX_ATOM else None
    if type(value) in (tuple, list):
        for v in value:
            found = _long_atom(v)
            if found is not None:
                return found
    return None


def _contains_pid(value: Any) -> bool:
    if type(value) in (Pid, PidLiteral):
        return True
    if type(value) in (tuple, list):
        return any(_contains_pid(v) for v in value)
    if type(value) is dict:
        return any(_contains_pid(k) or _contains_pid(v) for k, v in value.items())
    return False


def validate_level(level: str) -> Atom:
    if level not in LEVELS:
        raise UsageError(f"unknown level {level!r}; one of: {', '.join(LEVELS)}", setting="level")
    return Atom(level)


def describe(filters: list[tuple[Any, ...]]) -> str:
    return ", ".join(format_term(f) for f in filters)
