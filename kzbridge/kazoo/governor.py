"""The node's safety: a governor that stops a trace before it floods lager.

What lager does (Debian's lager 3.9.2, read from the beams' abstract code on this machine:
``beam_lib:chunks(code:which(M), [abstract_code])`` for lager, lager_app, lager_config and
lager_backend_throttle; public lager sources, ETS-based 3.x and 3.9, show the same
``lager_config:get/2`` and the same notify/sync_notify choice):

* Every log call picks its mode per sink with ``lager_config:get({Sink, async}, false)``:
  ``true`` -> ``gen_event:notify`` (async), anything else -> ``gen_event:sync_notify``, so
  the calling process waits until every handler of the sink has handled the event.
* Only ``lager_backend_throttle`` sets that key. ``lager_app`` installs it on a sink when
  the sink's config has ``async_threshold`` (for ``lager_event`` the app env, 20 with
  window 5 by default; for an extra sink its own options in ``extra_sinks``, no default).
  On each event it handles, the throttle reads its own ``message_queue_len``: above the
  threshold it sets async to false, below threshold - window back to true.
* A sink without a throttle never has the key: it is synchronous all the time. Kazoo's
  ``rel/sys.config`` declares ``data_lager_event`` that way (a ``/dev/null`` file handler,
  no threshold), while its ``lager_event`` gets the default 20/5 throttle.
* 3.9.2 keeps the config in ``persistent_term`` (older 3.x in an ETS table);
  ``lager_config:get/2`` reads both, so the governor asks it, not the storage.
* A trace adds a file handler to its sink and makes every matching event reach the sink
  even below the sink's level: tracing ``kz_json`` at debug sends every debug call there.

The governor reads, in one rpc (programs.SINK_STATE, run by erl_eval; nothing loaded):
the sink's mode (``async``, ``sync``, or ``unthrottled``), its queue
(``process_info(whereis(Sink), message_queue_len)``), and the trace file's size and inode.
Measured on the sandbox (2 cores, OTP 25): ~60 us of node time per check, ~0.6 ms round trip.

Rules:
* before the trace starts (``preflight``): refuse when the sink is synchronous already
  (throttled and switched, or unthrottled with more than ``QUEUE_LIMIT`` callers queued);
* while it runs (``check``), stop it when the trace's event rate (the file's growth over the
  last check interval divided by the trace's average line size) exceeds ``max_rate``, when
  the sink is seen synchronous, or when an unthrottled sink queues more than ``QUEUE_LIMIT``.
  A throttle that flips back within less than a check interval can go unseen; a flood from
  many processes keeps the sink synchronous (each blocked caller holds one message).
* it asks the node at most once a second, and only every ``QUIET_INTERVAL`` seconds while
  the trace's own stream (counted by the session, no rpc) stays under ``QUIET_RATE``: a
  trace that writes that little cannot be what pushes lager synchronous, and a flood shows
  in the stream within lager's one-second write buffering, which brings the checks back to
  once a second.

Detached traces (``tracing.start_trace(detached=True)``, ``kzbridge start``) have nobody on our
side to ask, so ``guard_detached`` spawns the same judgement on the node (programs.WATCHDOG, an
erl_eval process, nothing loaded): the same look and thresholds once a second, the same stop
program as the lease, a note of why beside the trace file (``detached_stop`` reads it back). It
ends with the trace's handler and never outlives the lease.

Also measured: a flood from a few hundred processes logging in a tight loop starves the one sink
process of CPU, so it can take seconds to handle the event that flips the throttle (the queue
grew to 50 000 first, at 400 processes on 2 busy cores) and the node's rpc worker answers
slowly too: a check the node cannot answer within 5 s counts as a reason to stop (or, before
starting, to refuse). Stopping goes through the sink's queue (lager removes the file handler
with a call to the sink): kz_data_tracing's own 5 s call can time out behind a flood while
the server still finishes the stop (Trace.stop then waits for lager itself).

Measured on the sandbox with a trace on the flooded events: one lager sink process writing a
trace file saturated at 15 000 - 26 000 events/s (115-195 byte lines, 1 to 400 flooding
processes), and the throttled data sink (threshold 100) was synchronous in half the samples
or more; paced traffic of 3 000 - 10 000 events/s from 4 processes flipped it rarely, even
with a threshold of 20 (1-3 of 180 samples). Hence ``DEFAULT_MAX_RATE``: 10 000 events/s,
below half of what a sink took here, leaving room for the node's own logging through the
same sink (README, "The node's safety").
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import KazooError, LocalFileError, NodeBusyError, RpcTimeoutError, UsageError
from ..wire.node import HiddenNode
from ..wire.terms import Atom, ErlString, Pid
from . import filters as flt
from . import journal, programs

DEFAULT_MAX_RATE = flt.DEFAULT_MAX_RATE  # events/s, 10 000 (see the docstring)
CHECK_INTERVAL = 1.0  # s: at most one rpc per this
QUIET_RATE = 100.0  # events/s of the trace's own stream under which checks slow down
QUIET_INTERVAL = 5.0  # s between checks while quiet
QUEUE_LIMIT = 20  # callers queued on an unthrottled (always synchronous) sink: lager's default threshold
ROTATE_BYTES = 10 << 20  # lager 3.9.2 rotates trace files past this size
DEFAULT_LINE_BYTES = 120  # until the session has counted some lines (shorter: estimates more events)

Mode = Literal["async", "sync", "unthrottled", "unknown"]
Cause = Literal["max-rate", "synchronous", "queue", "unobservable"]
NOTE_SUFFIX = ".governor"  # beside a detached trace's file: why the node-side governor stopped it
__all__ = [
    "DEFAULT_MAX_RATE",
    "Governor",
    "NodeBusyError",
    "SafetyStop",
    "SinkState",
    "detached_stop",
    "guard_detached",
    "preflight",
    "read_state",
]


def check_max_rate(max_rate: float | None) -> None:
    if max_rate is not None and not (isinstance(max_rate, (int, float)) and math.isfinite(max_rate) and max_rate > 0):
        raise UsageError(
            f"the maximum event rate must be a finite number above 0, not {max_rate!r}", setting="max_rate"
        )


def sink_process(sink: str) -> str:
    """The registered sink process of a trace's sink ("data" -> data_lager_event)."""
    return "data_lager_event" if sink == "data" else sink


@dataclass(frozen=True)
class SinkState:
    mode: Mode
    queue: int  # -1: the sink process is not running
    size: int  # the trace file's bytes, -1 when missing
    inode: int
    at: float  # monotonic, when the reply came

    @property
    def synchronous(self) -> bool:
        return self.mode == "sync" or (self.mode == "unthrottled" and self.queue > QUEUE_LIMIT)


async def read_state(node: HiddenNode, sink: str, path: str = "", timeout: float = 5.0) -> SinkState:
    """One rpc: the sink's mode and queue, the trace file's size and inode."""
    reply = await programs.evaluate(
        node, programs.SINK_STATE, timeout=timeout, Sink=Atom(sink_process(sink)), Path=ErlString(path)
    )
    if not (type(reply) is tuple and len(reply) == 4 and all(type(v) is int for v in reply[1:])):
        raise KazooError(f"unexpected reply to the governor's check: {reply!r:.200}")
    mode = str(reply[0]) if reply[0] in (Atom("async"), Atom("sync"), Atom("unthrottled")) else "unknown"
    return SinkState(mode, reply[1], reply[2], reply[3], time.monotonic())  # type: ignore[arg-type]


def sink_words(sink: str) -> str:
    return "lager's data sink" if sink == "data" else f"lager's {sink} sink"


@dataclass(frozen=True)
class SafetyStop:
    """Why the governor stopped a trace: each cause found in the same check, and the numbers."""

    causes: tuple[Cause, ...]
    sink: str
    rate: float  # events/s over the last check interval
    max_rate: float | None
    queue: int
    mode: str
    detail: str = ""  # for "unobservable": what failed

    @property
    def setting(self) -> str | None:
        return "max_rate" if "max-rate" in self.causes else None

    def describe(self, max_rate_name: str = "the maximum rate") -> str:
        """In words; a face passes its own name for the max_rate setting (the CLI: --max-rate)."""
        parts = []
        for cause in self.causes:
            if cause == "max-rate":
                parts.append(f"{self.rate:.0f} events/s > {max_rate_name} {self.max_rate:g}")
            elif cause == "synchronous":
                parts.append(f"{sink_words(self.sink)} went synchronous (queue {self.queue})")
            elif cause == "queue":
                parts.append(
                    f"{sink_words(self.sink)} has {self.queue} callers waiting (no throttle, limit {QUEUE_LIMIT})"
                )
            else:
                parts.append(f"the node did not answer the governor's check ({self.detail})")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["causes"] = list(self.causes)
        data["text"] = self.describe()
        return data


async def preflight(node: HiddenNode, sink: str) -> SinkState:
    """Before a trace starts: the sink's state; NodeBusyError when it is synchronous already (or the
    node cannot answer the check in time: a node that busy is no place to start a trace)."""
    try:
        state = await read_state(node, sink)
    except RpcTimeoutError as exc:
        raise NodeBusyError(
            f"{node.peer_name} did not answer the governor's check of {sink_words(sink)} in time ({exc.message})",
            hint="retry when the node is quieter, or trace without the governor if you must",
            setting="governor",
        ) from exc
    if state.synchronous:
        why = (
            "lager's throttle has switched it to synchronous logging"
            if state.mode == "sync"
            else f"it has no throttle and {state.queue} callers are waiting"
        )
        raise NodeBusyError(
            f"{node.peer_name}: {sink_words(sink)} is overloaded already ({why}, queue {state.queue}); "
            "a trace now would make every logging process wait longer",
            hint="retry when the node is quieter, or trace without the governor if you must",
            setting="governor",
        )
    return state


class Governor:
    """Watches one trace: ``due`` says when to ask the node, ``check`` asks and judges."""

    def __init__(self, node: HiddenNode, sink: str, path: str, max_rate: float | None) -> None:
        check_max_rate(max_rate)
        self.node = node
        self.sink = sink
        self.path = path
        self.max_rate = max_rate
        self.last: SinkState | None = None
        self.last_lines = 0
        self.checks = 0
        self.peak_rate = 0.0

    def due(self, lines: int, now: float | None = None) -> bool:
        """Time for a check: a second since the last while the trace's stream is busy, else QUIET_INTERVAL."""
        if self.last is None:
            return True
        now = time.monotonic() if now is None else now
        waited = now - self.last.at
        if waited < CHECK_INTERVAL:
            return False
        quiet = min(QUIET_RATE, self.max_rate / 2) if self.max_rate is not None else QUIET_RATE
        return waited >= QUIET_INTERVAL or (lines - self.last_lines) / waited >= quiet

    async def check(self, lines: int, written: int) -> SafetyStop | None:
        """One look at the node; the reasons to stop, or None. ``lines``/``written``: the session's counts."""
        state = await read_state(self.node, self.sink, self.path)
        self.checks += 1
        before, self.last, self.last_lines = self.last, state, lines
        rate = 0.0
        if before is not None and before.size >= 0 and state.size >= 0:
            grown = state.size - before.size
            if state.inode != before.inode or grown < 0:  # lager rotated: the old file ended near its limit
                grown = max(0, ROTATE_BYTES - before.size) + state.size
            line_bytes = written / lines if lines >= 20 else DEFAULT_LINE_BYTES
            rate = grown / max(line_bytes, 1.0) / max(state.at - before.at, 1e-3)
            self.peak_rate = max(self.peak_rate, rate)
        causes: list[Cause] = []
        if self.max_rate is not None and rate > self.max_rate:
            causes.append("max-rate")
        if state.mode == "sync":
            causes.append("synchronous")
        elif state.mode == "unthrottled" and state.queue > QUEUE_LIMIT:
            causes.append("queue")
        if not causes:
            return None
        return SafetyStop(tuple(causes), self.sink, rate, self.max_rate, state.queue, state.mode)

    def unobservable(self, detail: str) -> SafetyStop:
        return SafetyStop(("unobservable",), self.sink, 0.0, self.max_rate, -1, "unknown", detail)


# ------------------------------------------------------------------ detached traces

GOVERNOR_OFF_DETACHED = (
    "the governor is off: nothing on the node watches lager's load while this detached trace runs, "
    "and a flood can make every logging process wait"
)


def note_path(remote_path: str) -> str:
    """Where the node-side governor of a detached trace says why it stopped it."""
    return remote_path + NOTE_SUFFIX


async def guard_detached(
    node: HiddenNode,
    *,
    ref: str,
    sink: str,
    path: str,
    max_rate: float | None,
    lifetime: float,
    stop_bindings: list[Any],
    tref: Any = None,
    timeout: float = 10.0,
) -> Pid:
    """Spawn the governor of a detached trace on the node itself (programs.WATCHDOG, nothing loaded).

    Nobody on our side watches a detached trace, so a process on the node does what ``Governor``
    does from here: once every CHECK_INTERVAL it takes the same look (programs.SINK_STATE) and
    stops the trace past ``max_rate`` or when the sink goes synchronous (or, unthrottled, queues
    more than QUEUE_LIMIT callers), with the lease's own stop program (``stop_bindings`` are the
    lease's: Ref, File, Trace) and cancels the lease timer ``tref``; it first writes why to
    ``note_path(path)`` (read back by ``detached_stop``). It ends by itself when the trace's
    handler goes (stop, clear, the lease) and after ``lifetime`` seconds (what is left of the
    lease) at the latest. Returns its pid once it watches (its first look taken); KazooError when
    it ends at once or is not watching within ``timeout``.
    """
    check_max_rate(max_rate)
    sink_state = await programs.forms(node, programs.SINK_STATE, timeout)
    stop = await programs.forms(node, programs.LEASE_STOP, timeout)
    pid = await programs.spawn(
        node,
        programs.WATCHDOG,
        timeout,
        Ref=ref.encode(),
        Sink=Atom(sink_process(sink)),
        Path=ErlString(path),
        MaxRate=max_rate if max_rate is not None else Atom("undefined"),
        QueueLimit=QUEUE_LIMIT,
        Interval=int(CHECK_INTERVAL * 1000),
        Lifetime=max(0, int(lifetime * 1000)),
        RotateBytes=ROTATE_BYTES,
        LineBytes=DEFAULT_LINE_BYTES,
        SinkState=sink_state,
        Stop=stop,
        StopBinds=stop_bindings,
        Tref=tref if tref is not None else Atom("undefined"),
        Note=ErlString(note_path(path)),
    )
    marker = (Atom("kzb_governor"), ref.encode())
    deadline = time.monotonic() + timeout
    while True:
        info = await node.rpc("erlang", "process_info", [pid, Atom("dictionary")], timeout=timeout)
        if type(info) is tuple and len(info) == 2 and type(info[1]) is list and marker in info[1]:
            return pid
        if info == Atom("undefined") or time.monotonic() > deadline:
            raise KazooError(
                f"the node-side governor of trace {ref} on {node.peer_name} "
                + ("ended as it started" if info == Atom("undefined") else f"was not watching within {timeout:g}s"),
                hint="trace without the governor if you must",
                setting="governor",
            )
        await asyncio.sleep(0.01)


async def detached_stop(
    node: HiddenNode, remote_path: str, ref: str | None = None, timeout: float = 10.0
) -> SafetyStop | None:
    """Why the node-side governor stopped the detached trace writing ``remote_path``; None when it did not.

    One rpc (``file:consult`` of the note it leaves beside the trace file). With ``ref``, what
    was found is also recorded in that trace's journal entry (``extra["stopped_by"]`` "safety",
    ``extra["safety"]`` the SafetyStop as a dict); a journal that cannot be written is not an error.
    """
    reply = await node.rpc("file", "consult", [ErlString(note_path(remote_path))], timeout=timeout)
    if not (type(reply) is tuple and len(reply) == 2 and reply[0] == Atom("ok") and type(reply[1]) is list):
        return None
    for term in reply[1]:
        if type(term) is tuple and len(term) == 9 and term[0] == Atom("kzbridge_governor"):
            _, noted_ref, sink, causes, rate, max_rate, queue, mode, _at = term
            found = tuple(_NOTED[str(c)] for c in causes if type(c) is Atom and str(c) in _NOTED)
            if not (found and isinstance(rate, (int, float)) and type(queue) is int and type(causes) is list):
                continue
            if ref is not None and noted_ref != ref.encode():
                continue  # another trace's note (the path was reused)
            why = SafetyStop(
                found,
                "data" if sink == Atom("data_lager_event") else str(sink),
                float(rate),
                float(max_rate) if isinstance(max_rate, (int, float)) else None,
                queue,
                str(mode),
            )
            if ref is not None:
                with contextlib.suppress(LocalFileError):
                    journal.annotate(node.peer_name, ref, stopped_by="safety", safety=why.to_dict())
            return why
    return None


_NOTED: dict[str, Cause] = {"max_rate": "max-rate", "synchronous": "synchronous", "queue": "queue"}
