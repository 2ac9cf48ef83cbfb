"""rpc through the node's ``rex`` server, shared by the asyncio and the blocking node.

The request is ``{'$gen_call', {Caller, Ref}, {call, M, F, A, GroupLeader}}`` sent to the
registered name ``rex``; the reply ``{Ref, Result}``; ``{badrpc, Reason}`` means the call
failed on the node. ``session.Session.rpc_frame`` builds the request (from a pre-encoded
head) and matches the replies; this module holds the atoms and reads the result.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRpcError
from .literal import format_term
from .terms import Atom

A_REX = Atom("rex")
A_GEN_CALL = Atom("$gen_call")
A_CALL = Atom("call")
A_BADRPC = Atom("badrpc")
A_EXIT = Atom("EXIT")
A_NOPROC = Atom("noproc")


class RpcResult:
    """A remote call's value and everything it printed through its group leader.

    A plain class, not a dataclass (a millisecond at every start of a one-shot command) nor
    a NamedTuple (a tuple would encode as an Erlang tuple and equal one).
    """

    __slots__ = ("output", "value")
    __match_args__ = ("value", "output")
    __hash__ = None  # type: ignore[assignment]  # mutable, as before

    def __init__(self, value: Any, output: str = "") -> None:
        self.value = value
        self.output = output

    def __eq__(self, other: object) -> bool:
        return type(other) is RpcResult and (other.value, other.output) == (self.value, self.output)

    def __repr__(self) -> str:
        return f"RpcResult(value={self.value!r}, output={self.output!r})"


def rpc_result(value: Any, output: str, peer: str, what: str) -> RpcResult:
    """The RpcResult, or BadRpcError carrying the remote reason and the output so far."""
    if is_badrpc(value):
        raise bad_rpc_error(value, output, peer, what)
    return RpcResult(value, output)


def is_badrpc(value: Any) -> bool:
    return type(value) is tuple and len(value) == 2 and value[0] == A_BADRPC


def bad_rpc_error(value: Any, output: str, peer: str, what: str) -> BadRpcError:
    """The error for a ``{badrpc, Reason}`` value."""
    return BadRpcError(f"{peer}: {what} failed: {describe_badrpc(value[1])}", reason=value[1], output=output)


def describe_badrpc(reason: Any) -> str:
    """A readable line for the common ``{badrpc, Reason}`` shapes."""
    if type(reason) is tuple and len(reason) == 2 and reason[0] == A_EXIT:
        inner = reason[1]
        if type(inner) is tuple and len(inner) == 2:
            kind, detail = inner
            if kind == Atom("undef") and type(detail) is list and detail and type(detail[0]) is tuple:
                m, f, a = detail[0][:3]
                arity = len(a) if isinstance(a, (list, str)) else a
                return f"undefined function {format_term(m)}:{format_term(f)}/{arity} (undef)"
            if kind == A_NOPROC:
                return f"no such process (noproc) in {format_term(detail)[:200]}"
            if type(kind) is Atom:
                return f"{kind.name}: {format_term(detail)[:300]}"
        return f"exception: {format_term(inner)[:300]}"
    return format_term(reason)[:300]
