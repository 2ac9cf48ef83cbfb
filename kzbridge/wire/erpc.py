"""rpc through the distribution's spawn_request, what ``erpc:call`` does; for peers of OTP 23+.

The request is the control message ``{29 SPAWN_REQUEST, ReqId, Caller, GroupLeader,
{erpc, execute_call, 4}, [monitor]}`` followed by the argument list
``[ReqId, Module, Function, Args]``: the peer spawns ``erpc:execute_call/4`` (the function
its own ``erpc:call`` and ``rpc:call`` spawn on a remote node, kept for calls from other
releases), with the call's group leader, monitored by our caller under ``ReqId``. The peer
answers ``{31 SPAWN_REPLY, ReqId, Caller, Flags, PidOrError}`` and, when the process ends,
a monitor exit for ``ReqId`` whose reason carries the result:

    {ReqId, return, Value}         the function returned
    {ReqId, throw, Value}          it threw
    {ReqId, exit, Reason}          it exited
    {ReqId, error, {erpc, Reason}}  the apply itself failed (bad module, function or arguments)
    {ReqId, error, Reason, Stack}  any other error, the stack trimmed to the call
    anything else                  the process was killed (or the peer has no erpc)

``call_value`` turns these into what the ``rex`` path gives for the same call (``rpc``'s
own mapping: a throw is a value, the rest ``{badrpc, {'EXIT', ...}}``), so both paths
raise the same errors (rex.rpc_result). The session (session.py) builds the frames and
matches the replies, when asked to (``Session.rpc_via = "spawn"``): rex stays the default,
as for a Python client this way measured slower (two reply frames to decode per call,
session.DEFAULT_RPC_VIA), though the BEAM does one process hop fewer.
"""

from __future__ import annotations

from typing import Any

from .rex import A_BADRPC, A_EXIT
from .terms import Atom

A_ERPC = Atom("erpc")
A_EXECUTE_CALL = Atom("execute_call")
A_MONITOR = Atom("monitor")
A_RETURN = Atom("return")
A_THROW = Atom("throw")
A_EXIT_CLASS = Atom("exit")
A_ERROR_CLASS = Atom("error")
A_NOTSUP = Atom("notsup")

# The spawned entry point and the spawn options of every request.
ENTRY = (A_ERPC, A_EXECUTE_CALL, 4)
OPTIONS = [A_MONITOR]


def call_value(req_id: Any, reason: Any) -> Any:
    """The rex-shaped value for the exit ``reason`` of the process that ran call ``req_id``."""
    if type(reason) is tuple and len(reason) in (3, 4) and reason[0] == req_id:
        kind = reason[1]
        if len(reason) == 3:
            value = reason[2]
            if kind == A_RETURN or kind == A_THROW:
                return value
            if kind == A_EXIT_CLASS:
                return (A_BADRPC, (A_EXIT, value))
            if kind == A_ERROR_CLASS:
                if type(value) is tuple and len(value) == 2 and value[0] == A_ERPC:
                    value = value[1]  # rpc says {'EXIT', badarg} for a bad apply, without erpc's tag
                return (A_BADRPC, (A_EXIT, value))
        elif kind == A_ERROR_CLASS:
            return (A_BADRPC, (A_EXIT, (reason[2], reason[3])))
    # Killed by a signal, or the entry point failed (no erpc on the peer): the reason as is.
    return (A_BADRPC, (A_EXIT, reason))


def spawn_failed(reason: Any) -> Any:
    """The rex-shaped value for a SPAWN_REPLY that carries an error atom instead of a pid."""
    return (A_BADRPC, (A_EXIT, (Atom("spawn_request"), reason)))
