"""Erlang term literals: parse what an operator types, print what a node returns.

``parse_term('[{module, kz_json}]')`` and ``format_term(value)`` are inverses for
everything the literal syntax can express. Pids parse as ``PidLiteral`` (only the node
can make them real pids); refs, ports and funs print but do not parse.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import TermSyntaxError
from .terms import (
    Atom,
    BitBinary,
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
)

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|%[^\n]*)
  | (?P<float>-?\d+\.\d+(?:[eE][-+]?\d+)?)
  | (?P<based>-?\d+\#[0-9a-zA-Z]+)
  | (?P<int>-?\d+)
  | (?P<char>\$(?:\\.|[^\\]))
  | (?P<atom>[a-z][a-zA-Z0-9_@]*)
  | (?P<qatom>'(?:[^'\\]|\\.)*')
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<pid><[^\s<>]+\.\d+\.\d+>)
  | (?P<punct><<|>>|=>|\#\{|[{}\[\],|/:])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "s": " ",
    "e": "\x1b",
    "0": "\0",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "d": "\x7f",
}


def _unescape(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and i + 2 < len(body) and body[i + 2] == "{":
                end = body.index("}", i)
                out.append(chr(int(body[i + 3 : end], 16)))
                i = end + 1
                continue
            if nxt in "01234567":
                m = re.match(r"[0-7]{1,3}", body[i + 1 :])
                assert m is not None
                out.append(chr(int(m.group(0), 8)))
                i += 1 + len(m.group(0))
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise TermSyntaxError(
                    f"cannot parse Erlang term {text!r}: unexpected {text[pos : pos + 10]!r} at column {pos + 1}"
                )
            kind = m.lastgroup
            assert kind is not None
            if kind != "ws":
                self.tokens.append((kind, m.group(0), pos))
            pos = m.end()
        self.i = 0

    def fail(self, what: str) -> TermSyntaxError:
        if self.i < len(self.tokens):
            col = self.tokens[self.i][2] + 1
            return TermSyntaxError(f"cannot parse Erlang term {self.text!r}: {what} at column {col}")
        return TermSyntaxError(f"cannot parse Erlang term {self.text!r}: {what} at end of input")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at(self, text: str) -> bool:
        """Is the next token this punctuation?"""
        tok = self.peek()
        return tok is not None and tok[1] == text

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise self.fail(f"expected {value!r}" if value else "unexpected end")
        self.i += 1
        return tok

    def term(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected a term")
        kind, text, _ = tok
        if kind == "int":
            self.i += 1
            return int(text)
        if kind == "based":
            self.i += 1
            base, digits = text.lstrip("-").split("#")
            try:
                value = int(digits, int(base))
            except ValueError:
                raise self.fail(f"bad integer {text}") from None
            return -value if text.startswith("-") else value
        if kind == "float":
            self.i += 1
            return float(text)
        if kind == "char":
            self.i += 1
            return ord(_unescape(text[1:]))
        if kind == "atom":
            self.i += 1
            return Atom(text)
        if kind == "qatom":
            self.i += 1
            return Atom(_unescape(text[1:-1]))
        if kind == "string":
            self.i += 1
            parts = [_unescape(text[1:-1])]
            while (tok := self.peek()) is not None and tok[0] == "string":
                parts.append(_unescape(self.take()[1][1:-1]))
            return ErlString("".join(parts))
        if text == "{":
            self.i += 1
            items = self.sequence("}")
            return tuple(items)
        if text == "[":
            self.i += 1
            if self.at("]"):
                self.i += 1
                return []
            items = [self.term()]
            while self.at(","):
                self.i += 1
                items.append(self.term())
            if self.at("|"):
                self.i += 1
                tail = self.term()
                self.take("]")
                if isinstance(tail, list):
                    return items + tail
                return ImproperList(tuple(items), tail)
            self.take("]")
            return items
        if text == "#{":
            self.i += 1
            out: dict[Any, Any] = {}
            if self.at("}"):
                self.i += 1
                return out
            while True:
                k = self.term()
                self.take("=>")
                v = self.term()
                try:
                    out[k] = v
                except TypeError:
                    from .terms import freeze

                    out[freeze(k)] = v
                if self.at(","):
                    self.i += 1
                    continue
                self.take("}")
                return out
        if text == "<<":
            self.i += 1
            return self.binary()
        if kind == "pid":
            node, ident, serial = _PID_PARTS.match(text).groups()  # type: ignore[union-attr]
            if node.isdigit():
                if node != "0":
                    raise self.fail(
                        f"{text} names a node by a shell's local number; write <0.{ident}.{serial}> "
                        f"for a process of the node, or <name@host.{ident}.{serial}>"
                    )
                node = None
            elif "@" not in node:
                raise self.fail(f"{text}: a pid is <0.A.B> or <name@host.A.B>")
            self.i += 1
            return PidLiteral(node, int(ident), int(serial))
        raise self.fail(f"unexpected {text!r}")

    def sequence(self, close: str) -> list[Any]:
        if self.at(close):
            self.i += 1
            return []
        items = [self.term()]
        while self.at(","):
            self.i += 1
            items.append(self.term())
        self.take(close)
        return items

    def binary(self) -> bytes:
        out = bytearray()
        if self.at(">>"):
            self.i += 1
            return bytes(out)
        while True:
            tok = self.take()
            utf8 = False
            if self.at("/"):
                self.i += 1
                spec = self.take()[1]
                if spec not in ("utf8", "binary"):
                    raise self.fail(f"unsupported binary type /{spec}")
                utf8 = spec == "utf8"
            if tok[0] == "string":
                text = _unescape(tok[1][1:-1])
                if utf8:
                    out += text.encode("utf-8")
                else:
                    try:
                        out += text.encode("latin-1")
                    except UnicodeEncodeError:
                        raise self.fail("binary string has characters above 255; add /utf8") from None
            elif tok[0] in ("int", "char"):
                value = int(tok[1]) if tok[0] == "int" else ord(_unescape(tok[1][1:]))
                if utf8:
                    out += chr(value).encode("utf-8")
                else:
                    out.append(value & 0xFF)
            else:
                raise self.fail(f"unexpected {tok[1]!r} inside << >>")
            if self.at(","):
                self.i += 1
                continue
            self.take(">>")
            return bytes(out)


_PID_PARTS = re.compile(r"<([^\s<>]+)\.(\d+)\.(\d+)>\Z")


def pid_literals(term: Any) -> list[PidLiteral]:
    """The PidLiterals inside a parsed term, each once, in order of appearance."""
    found: dict[PidLiteral, None] = {}

    def walk(v: Any) -> None:
        t = type(v)
        if t is PidLiteral:
            found[v] = None
        elif t is list or t is tuple or t is FrozenList:
            for x in v:
                walk(x)
        elif t is dict:
            for k, x in v.items():
                walk(k)
                walk(x)
        elif t is ImproperList:
            for x in v.items:
                walk(x)
            walk(v.tail)

    walk(term)
    return list(found)


def replace_pid_literals(term: Any, pids: dict[PidLiteral, Any]) -> Any:
    """The term with each PidLiteral replaced by what ``pids`` maps it to."""
    t = type(term)
    if t is PidLiteral:
        return pids[term]
    if t is list:
        return [replace_pid_literals(x, pids) for x in term]
    if t is tuple:
        return tuple(replace_pid_literals(x, pids) for x in term)
    if t is dict:
        return {replace_pid_literals(k, pids): replace_pid_literals(x, pids) for k, x in term.items()}
    if t is ImproperList:
        items = tuple(replace_pid_literals(x, pids) for x in term.items)
        return ImproperList(items, replace_pid_literals(term.tail, pids))
    return term


def parse_term(text: str) -> Any:
    """Parse one Erlang term literal (a trailing '.' is allowed)."""
    stripped = text.strip()
    if stripped.endswith(".") and not re.search(r"\d\.$", stripped):
        stripped = stripped[:-1]
    parser = _Parser(stripped)
    if not parser.tokens:
        raise TermSyntaxError("empty Erlang term")
    value = parser.term()
    if parser.peek() is not None:
        raise parser.fail("unexpected text after the term")
    return value


_BARE_ATOM = re.compile(r"[a-z][a-zA-Z0-9_@]*\Z")
_RESERVED = {
    "after",
    "and",
    "andalso",
    "band",
    "begin",
    "bnot",
    "bor",
    "bsl",
    "bsr",
    "bxor",
    "case",
    "catch",
    "cond",
    "div",
    "end",
    "fun",
    "if",
    "let",
    "not",
    "of",
    "or",
    "orelse",
    "receive",
    "rem",
    "try",
    "when",
    "xor",
    "maybe",
    "else",
}


def _quote(text: str, q: str) -> str:
    out = []
    for ch in text:
        if ch == q or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):o}")
        else:
            out.append(ch)
    return q + "".join(out) + q


def format_atom(atom: Atom) -> str:
    name = atom.name
    if _BARE_ATOM.match(name) and name not in _RESERVED:
        return name
    return _quote(name, "'")


def _printable(values: Any) -> bool:
    return all(type(v) is int and (32 <= v < 127 or v in (9, 10, 13) or 160 <= v < 0x110000) for v in values)


def format_term(value: Any) -> str:
    """Render a decoded term in Erlang syntax, the way ``~p`` would (without line breaks)."""
    t = type(value)
    if t is Atom:
        return format_atom(value)
    if t is bool:
        return "true" if value else "false"
    if value is None:
        return "undefined"
    if t is int:
        return str(value)
    if t is float:
        return repr(value) if ("e" in repr(value) or "." in repr(value)) else repr(value) + ".0"
    if t in (bytes, bytearray):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and _printable(ord(c) for c in text):
            if text and all(ord(c) < 256 for c in text) and bytes(value) == text.encode("latin-1"):
                return "<<" + _quote(text, '"') + ">>"
            return "<<" + _quote(text, '"') + "/utf8>>"
        return "<<" + ",".join(str(b) for b in value) + ">>"
    if t is ErlString or t is str:
        if value == "":
            return "[]"
        if _printable(ord(c) for c in value):
            return _quote(value, '"')
        return "[" + ",".join(str(ord(c)) for c in value) + "]"
    if t is list or t is FrozenList:
        if value and _printable(value):
            return _quote("".join(chr(v) for v in value), '"')
        return "[" + ",".join(format_term(v) for v in value) + "]"
    if t is tuple:
        return "{" + ",".join(format_term(v) for v in value) + "}"
    if t is dict:
        return "#{" + ",".join(f"{format_term(k)} => {format_term(v)}" for k, v in value.items()) + "}"
    if t is FrozenMap:
        return "#{" + ",".join(f"{format_term(k)} => {format_term(v)}" for k, v in value) + "}"
    if t is ImproperList:
        return "[" + ",".join(format_term(v) for v in value.items) + "|" + format_term(value.tail) + "]"
    if t is BitBinary:
        head = ",".join(str(b) for b in value.data[:-1])
        last = f"{value.data[-1] >> (8 - value.bits)}:{value.bits}"
        return "<<" + (head + "," if head else "") + last + ">>"
    if t is Pid:
        return f"<{value.node}.{value.id}.{value.serial}>"
    if t is PidLiteral:
        return str(value)
    if t is Port:
        return f"#Port<{value.node}.{value.id}>"
    if t is Reference:
        return str(value)
    if t is Export:
        return f"fun {format_atom(value.module)}:{format_atom(value.function)}/{value.arity}"
    if t is Fun:
        return f"#Fun<{value.module}.{value.index}.{value.old_uniq}>"
    return repr(value)


def _json_key(key: Any) -> str:
    """A map key as a JSON object key: its JSON form, itself written as JSON text unless already a string."""
    value = to_json(key)
    if isinstance(value, str):
        return value
    import json  # here: the one-shot commands load this module, and few maps have keys that are not text

    return json.dumps(value)


def to_json(value: Any) -> Any:
    """A JSON-ready view of a term: atoms become strings, binaries text when UTF-8, maps objects.

    Lossy by design (scripts want data, not types); tuples become lists.
    """
    t = type(value)
    if t is Atom:
        if value.name in ("true", "false"):
            return value.name == "true"
        if value.name in ("undefined", "null"):
            return None
        return value.name
    if t in (int, float, bool) or value is None:
        return value
    if t in (bytes, bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"binary_base64": __import__("base64").b64encode(bytes(value)).decode("ascii")}
    if t is ErlString or t is str:
        return str(value)
    if t in (list, tuple, FrozenList):
        if t is list and value and _printable(value):
            return "".join(chr(v) for v in value)
        return [to_json(v) for v in value]
    if t in (dict, FrozenMap):
        items = value.items() if t is dict else value
        return {_json_key(k): to_json(v) for k, v in items}
    if t is ImproperList:
        return {"improper_list": [to_json(v) for v in value.items], "tail": to_json(value.tail)}
    return format_term(value)
