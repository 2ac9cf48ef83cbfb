"""Erlang's I/O protocol, group-leader side, without I/O of its own.

A remote function that prints sends ``{io_request, From, ReplyAs, Request}`` to its
group leader and blocks until ``{io_reply, ReplyAs, Reply}`` comes back. ``io_steps``
is a generator that works out the reply; it yields what it needs from its driver:

    ("apply", M, F, A)  evaluate M:F(A) on the node (io:format's formatting), send back
                        the chardata, or an ApplyFailed
    ("emit", text)      text the function printed

and returns the reply term. The asyncio node and the blocking node both drive it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .literal import format_term
from .terms import Atom, BitBinary, ErlString, ImproperList

A_OK = Atom("ok")
# The standard atom `error` of {error, Reason} replies (the domain has its own kzb_error tag).
A_STD_ERROR = Atom("error")
A_PUT_CHARS = Atom("put_chars")
A_REQUESTS = Atom("requests")
A_LATIN1 = Atom("latin1")
A_IO_REQUEST = Atom("io_request")
A_IO_REPLY = Atom("io_reply")


class ApplyFailed:
    """What a driver sends back when the ("apply", ...) step failed on the node."""

    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason


def is_io_request(msg: Any) -> bool:
    return type(msg) is tuple and len(msg) == 4 and msg[0] == A_IO_REQUEST


def chardata_to_text(data: Any, latin1: bool = False) -> str:
    """Flatten Erlang chardata (code points, binaries, nested lists) to text."""
    parts: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is int:
            parts.append(chr(item) if 0 <= item < 0x110000 else "?")
        elif t is bytes:
            parts.append(item.decode("latin-1" if latin1 else "utf-8", "replace"))
        elif t is ErlString or t is str:
            parts.append(item)
        elif t is list:
            stack.extend(reversed(item))
        elif t is ImproperList:
            stack.append(item.tail)
            stack.extend(reversed(item.items))
        elif t is Atom:
            parts.append(item.name)
        elif t is BitBinary:
            parts.append(item.data.decode("utf-8", "replace"))
        else:
            parts.append(format_term(item))
    return "".join(parts)


def io_steps(request: Any) -> Generator[tuple[Any, ...], Any, Any]:
    """See the module docstring."""
    if type(request) is tuple and request and request[0] == A_PUT_CHARS:
        latin1 = len(request) in (3, 5) and request[1] == A_LATIN1
        if len(request) in (2, 3):
            text = chardata_to_text(request[-1], latin1)
        elif len(request) in (4, 5):
            m, f, a = request[-3:]
            chars = yield ("apply", m, f, a)
            if isinstance(chars, ApplyFailed):
                return (A_STD_ERROR, chars.reason)
            text = chardata_to_text(chars, latin1)
        else:
            return (A_STD_ERROR, Atom("request"))
        yield ("emit", text)
        return A_OK
    if type(request) is tuple and len(request) == 2 and request[0] == A_REQUESTS:
        reply: Any = A_OK
        for sub in request[1] if isinstance(request[1], list) else []:
            reply = yield from io_steps(sub)
            if reply != A_OK:
                break
        return reply
    if request == Atom("getopts"):
        return [(Atom("binary"), False), (Atom("encoding"), Atom("unicode"))]
    if type(request) is tuple and request and request[0] == Atom("setopts"):
        return A_OK
    if type(request) is tuple and request and request[0] == Atom("get_geometry"):
        return (A_STD_ERROR, Atom("enotsup"))
    if type(request) is tuple and request and type(request[0]) is Atom and request[0].name.startswith("get_"):
        return Atom("eof")
    return (A_STD_ERROR, Atom("request"))
