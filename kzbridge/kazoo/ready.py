"""Is a node ready to be traced? ``wait_ready`` asks until it is, or until its deadline.

Ready means: the node answers over distribution (EPMD knows it, its port takes the
connection, the cookie is accepted, an rpc comes back) and the process a trace of
the chosen sink needs is registered there: ``kz_data_tracing`` for the data sink (the
kazoo_data application is up), lager's ``lager_event`` for the lager_event sink.

CI scripts and containers use it instead of healthchecks (``kzbridge wait``): a node
that is still booting refuses connections, is not registered with EPMD yet, or
answers before its applications have started; each of those is "not yet", tried
again after a short pause (0.1 s, doubling up to 1 s). Only a usage error (a bad
name, no cookie) ends the wait early. A rejected cookie is tried again too: a node
restarting under the same name may still be the old one. ``timeout`` is a deadline
over the whole wait, each attempt included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConnectError, KzBridgeError, UsageError
from ..limits import Deadline, check_number
from ..wire.literal import format_term
from ..wire.terms import Atom, Pid
from .filters import DATA_SINK, LAGER_SINK

if TYPE_CHECKING:
    from ..wire.names import Route
    from ..wire.node import HiddenNode

# The process each sink's traces need, registered under this name when the node is ready.
READY_PROCESS = {DATA_SINK: "kz_data_tracing", LAGER_SINK: "lager_event"}
FIRST_PAUSE = 0.1
LONGEST_PAUSE = 1.0
ATTEMPT_TIMEOUT = 5.0  # one connection attempt or call, at most (never past the deadline)


@dataclass(frozen=True)
class Ready:
    """What ``wait_ready`` found: the node (as it names itself), the process and how long it took."""

    node: str
    process: str
    pid: str
    seconds: float
    attempts: int

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "ready": True,
            "waited_for": self.process,
            "pid": self.pid,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
        }


def _seen(exc: KzBridgeError) -> str:
    """One line for a failed attempt: the error's own words."""
    return " ".join(exc.message.split())


async def wait_ready(
    node: str,
    cookie: str,
    *,
    sink: str = DATA_SINK,
    timeout: float = 60.0,
    route: Route | None = None,
    on_state: Callable[[str], None] | None = None,
) -> Ready:
    """Wait until ``node`` answers and the process ``sink`` needs is registered; see the module docstring.

    ``on_state(text)`` hears each new state while waiting ("cannot reach EPMD ...", "... is not
    registered yet"), once per change. Raises ConnectError (exit 3) naming the last state when
    ``timeout`` passes first; UsageError at once for what no retry can fix.
    """
    if sink not in READY_PROCESS:
        raise UsageError(f"unknown sink {sink!r}; one of: {', '.join(READY_PROCESS)}", setting="sink")
    check_number(timeout, "timeout")
    from ..wire.node import connect_node

    process = READY_PROCESS[sink]
    deadline = Deadline.after(timeout)
    started = time.monotonic()
    pause = FIRST_PAUSE
    attempts = 0
    last = ""
    hidden: HiddenNode | None = None
    try:
        while True:
            attempts += 1
            step = max(0.1, min(ATTEMPT_TIMEOUT, deadline.remaining()))
            try:
                if hidden is None or not hidden.alive:
                    if hidden is not None:
                        await hidden.close()
                    hidden = None
                    hidden = await asyncio.wait_for(connect_node(node, cookie, timeout=step, route=route), step)
                where = await hidden.rpc("erlang", "whereis", [Atom(process)], timeout=step)
                if type(where) is Pid:
                    return Ready(hidden.peer_name, process, format_term(where), time.monotonic() - started, attempts)
                state = f"{hidden.peer_name} answers; {process} is not registered yet"
            except UsageError:
                raise
            except KzBridgeError as exc:
                state = _seen(exc)
            except asyncio.TimeoutError:
                state = f"no answer within {step:g}s"
            if state != last:
                last = state
                if on_state is not None:
                    on_state(state)
            remaining = deadline.remaining()
            if remaining <= 0:
                raise ConnectError(
                    f"{node} was not ready within {timeout:g}s; last seen: {state}",
                    hint=f"ready means: it answers and {process} is registered",
                    setting="timeout",
                )
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, LONGEST_PAUSE)
    finally:
        if hidden is not None:
            await hidden.close()
