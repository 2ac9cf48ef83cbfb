"""One trace on one node, followed into a local file, as a stream of typed events.

    session = await TraceSession.start(node, filters, local_path="t.log", duration=30)
    async for event in session.events():        # or: summary = await session.run(observer, ...)
        ...
    session.summary                              # the RunSummary the Collected event carried

Events, in the order a session emits them::

    (Progress | Record | Rotated)*     while the trace runs; Progress also every quarter second
    StoppedBy                          why it stops: duration | max-size | safety | requested (by whom) | abandoned
                                       | lease (the node's lease timer stopped it: our renewals failed or
                                         stalled, ``detail`` says how) | other-client (the node's lager
                                         handler went before our lease could have fired)
    (Progress | Record)*               the rest of the file, read to its end once the trace is stopped
    Collected                          the summary: ref, node, paths, records, bytes, verified, partial, warnings

A request to stop without collecting (``abandon``) ends the run at once: StoppedBy(abandoned) (after
a StoppedBy(requested) when it came during the stop), then Collected with ``partial`` set and the
``.partial`` file left as it is. A lost connection ends the stream with ``Lost`` instead of Collected;
the stream itself does not raise, ``run()`` raises the ``TraceLostError`` Lost carries.

Each Record carries its node and a sortable aware-UTC ``instant`` on our clock (clock.Timeline: the
node's printed time with its date carried from the trace's start, its zone and its clock offset
removed; the node's clock is measured when the session starts unless the caller passes a
``correction``, as a cluster run does), besides the
parsed LogRecord and its printed time, so streams of several nodes can be merged by instant.

Policy lives here, presentation does not: the session enforces ``duration`` and ``max_size``,
runs the node's safety governor (kazoo.governor: refuses to start on an overloaded sink,
stops the trace, reason ``safety``, past ``max_rate`` events/s or when lager's sink goes
synchronous; ``governor=False`` turns it off, with a warning),
takes stop requests (``request_stop(by)`` stops and collects, ``abandon(by)`` stops without
collecting; ``signals()`` maps SIGINT/SIGTERM to the first, and a second signal to the second),
keeps the lease and the journal through Trace. The requests are a ``StopRequests`` object the
session owns; a caller can make it first and pass it to ``start`` so that a signal arriving while
the trace starts is not lost. Progress lines, printing records, ``--follow``
output and broken pipes are observers: callables taking an Event (the ``Observer`` protocol),
attached by ``run()``; an observer may call ``request_stop``.

``TraceSession(trace, None, owns_trace=False)`` follows without writing a file and leaves the
trace running when the stream is closed early (the session still stops it at its limits or on
request): that is Trace.follow.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from ..errors import ConnectionLostError, KzBridgeError, LocalFileError, TraceLostError, UsageError
from ..limits import CALL_TIMEOUT, check_number
from ..wire.node import HiddenNode
from . import clock, localfiles, programs
from .collect import ReaderEvent, RemoteReader, partial_path
from .governor import DEFAULT_MAX_RATE, Governor, SafetyStop, check_max_rate, preflight
from .logparse import (
    PRINTED_BY_KAZOO_FORMAT,
    PRINTED_BY_LAGER_FORMAT,
    LineAssembler,
    LogRecord,
    admitted_by,
)
from .tracing import DATA_SINK, DEFAULT_FORMAT, DEFAULT_LEASE, LAGER_FORMAT, Trace, TraceWarning, start_trace

DEFAULT_MAX_SIZE = 100 << 20
GOVERNOR_OFF = (
    "the governor is off: nothing watches lager's load on the node while this trace runs, "
    "and a flood can make every logging process wait"
)
StopReason = Literal["duration", "max-size", "safety", "requested", "abandoned", "lease", "other-client"]
SIGNALS = ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"))


@dataclass(frozen=True)
class Record:
    """One parsed event of the trace file, with its node and when it happened."""

    node: str
    instant: datetime  # aware, UTC; sortable across nodes and midnight
    record: LogRecord

    @property
    def printed(self) -> str:
        """The time as the node printed it."""
        return self.record.time


@dataclass(frozen=True)
class Progress:
    elapsed: float  # seconds since the session began reading
    bytes: int  # written to the local file so far
    records: int


@dataclass(frozen=True)
class Rotated:
    """The file was replaced under its name (lager rotated it); the rest of the old one was read.

    ``newer``: how many rotated parts were written since the last read and are read next;
    -1 when the old file is not among the parts any more.
    """

    newer: int


@dataclass(frozen=True)
class StoppedBy:
    reason: StopReason
    by: str = ""  # who asked, for requested/abandoned: "interrupted", "terminated", "caller", ...
    safety: SafetyStop | None = None  # why, for safety
    detail: str = ""  # how, for lease: why the lease was not renewed

    @property
    def label(self) -> str:
        """What the summary calls it: the asker for a request, else the reason."""
        if self.reason == "other-client":
            return "another client"
        if self.reason == "lease":
            return "its lease"
        return self.by if self.reason == "requested" and self.by else self.reason


@dataclass
class RunSummary:
    ref: str
    node: str
    remote_path: str
    local_path: str
    lines: int  # lines in the file (a record's message may span several)
    bytes: int
    seconds: float
    reason: str
    verified: bool
    partial: bool
    generation: int | None
    sink: str
    rpc_calls: int = 0
    messages_sent: int = 0
    lease_renewals: int = 0
    warnings: list[TraceWarning] = field(default_factory=list)
    safety: SafetyStop | None = None  # why the governor stopped the trace
    peak_rate: float | None = None  # the highest events/s the governor measured; None when off
    records: int = 0  # parsed records
    stop_detail: str = ""  # for "its lease": why the lease was not renewed


@dataclass(frozen=True)
class Collected:
    summary: RunSummary


@dataclass(frozen=True)
class Lost:
    """The connection went away; ``error`` names the kept partial file and what is needed to resume."""

    error: TraceLostError

    @property
    def partial_path(self) -> str:
        return self.error.partial_path


Event = Record | Progress | Rotated | StoppedBy | Collected | Lost


class Observer(Protocol):
    def __call__(self, event: Event, /) -> None: ...


def default_local_path(node_name: str, ref: str) -> str:
    """NODE-REF.log (the node's short name), in the current directory."""
    return f"{node_name.split('@')[0]}-{ref}.log"


def _check_limits(duration: float | None, max_size: int | None, max_rate: float | None = None) -> None:
    """Finite, in range (limits.RANGES), before anything reaches a node."""
    check_max_rate(max_rate)
    if duration is not None:
        check_number(duration, "duration")
    if max_size is not None:
        check_number(max_size, "max_size")


class StopRequests:
    """How a session is told to end from outside: stop (and collect), or abandon (stop only).

    The first request of each kind counts; ``by`` says who asked ("interrupted",
    "terminated", "caller", ...). Setting one wakes a session waiting for the node.
    """

    def __init__(self) -> None:
        self.stop_by = ""
        self.abandon_by = ""
        self.poke = asyncio.Event()

    def request_stop(self, by: str = "caller") -> None:
        if not self.stop_by:
            self.stop_by = by
            self.poke.set()

    def abandon(self, by: str = "caller") -> None:
        if not self.abandon_by:
            self.abandon_by = by
            self.poke.set()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """While inside (in a running loop): the first SIGINT/SIGTERM requests a stop, the next abandons."""
        loop = asyncio.get_running_loop()

        def on_signal(name: str) -> None:
            if self.stop_by:
                self.abandon(name)
            else:
                self.request_stop(name)

        before = [(sig, signal.getsignal(sig)) for sig, _ in SIGNALS]
        for sig, name in SIGNALS:
            loop.add_signal_handler(sig, on_signal, name)
        try:
            yield
        finally:
            for sig, _ in SIGNALS:
                loop.remove_signal_handler(sig)
            # asyncio puts SIG_DFL back for SIGTERM, not the handler that was there (the CLI's
            # raises Terminated, so that a later SIGTERM, during the report written after a trace
            # say, unwinds and names or removes its partial file instead of killing the process).
            for sig, handler in before:
                if handler is not None:
                    signal.signal(sig, handler)


class StopControls:
    """What a holder of StopRequests (one trace session, a cluster run) offers its callers."""

    requests: StopRequests

    def request_stop(self, by: str = "caller") -> None:
        """Stop the trace(s) and collect the rest (the first request counts)."""
        self.requests.request_stop(by)

    def abandon(self, by: str = "caller") -> None:
        """Stop the trace(s) without collecting the rest; local files stay ``.partial``."""
        self.requests.abandon(by)

    def signals(self) -> contextlib.AbstractContextManager[None]:
        """While inside: the first SIGINT/SIGTERM requests a stop, the next one abandons."""
        return self.requests.signals()


class TraceSession(StopControls):
    """One trace on one node: its limits, its stop requests, its event stream, its summary."""

    def __init__(
        self,
        trace: Trace,
        local_path: str | os.PathLike[str] | None,
        *,
        duration: float | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        poll_ms: int = 50,
        owns_trace: bool = True,
        correction: clock.ClockCorrection | None = None,
        requests: StopRequests | None = None,
        max_rate: float | None = DEFAULT_MAX_RATE,
        governor: bool = True,
        mode: int | None = None,
        partial: localfiles.Partial | None = None,
    ) -> None:
        _check_limits(duration, max_size, max_rate)
        self.trace = trace
        self.local_path = str(local_path) if local_path is not None else None
        self.duration = duration
        self.max_size = max_size
        self.poll_ms = poll_ms
        self.owns_trace = owns_trace
        self.correction = correction
        self.summary: RunSummary | None = None
        self.requests = requests or StopRequests()
        self.mode = mode  # of the local file: 0600 unless given (localfiles)
        self._partial = partial  # NAME.partial, when start() reserved it before the trace began
        self._begun = False
        self.max_rate = max_rate
        self.governor = governor
        self._safety: SafetyStop | None = None
        if not governor and GOVERNOR_OFF not in trace.warnings:
            trace.warnings.append(TraceWarning(GOVERNOR_OFF, setting="governor"))

    @classmethod
    async def start(
        cls,
        node: HiddenNode,
        filters: list[Any],
        *,
        local_path: str | os.PathLike[str] | None = None,
        duration: float | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        sink: str = DATA_SINK,
        level: str = "debug",
        format_list: list[Any] | None = None,
        remote_path: str | None = None,
        lease: float = DEFAULT_LEASE,
        poll_ms: int = 50,
        correction: clock.ClockCorrection | None = None,
        requests: StopRequests | None = None,
        max_rate: float | None = DEFAULT_MAX_RATE,
        governor: bool = True,
        timeout: float = CALL_TIMEOUT,
        mode: int | None = None,
    ) -> TraceSession:
        """Validate, arm the lease and start the trace (tracing.start_trace), ready to follow.

        ``local_path`` defaults to NODE-REF.log in the current directory. The local output is
        checked (and an explicit one's ``.partial`` created, exclusively) before anything
        starts on the node, so an output that cannot be written starts nothing. ``timeout``
        bounds each remote call of the session (setup, stop, lease renewals). With the
        governor on, raises governor.NodeBusyError (nothing started) when the sink is
        synchronous already.
        """
        _check_limits(duration, max_size, max_rate)
        check_number(lease, "lease")
        check_number(timeout, "timeout")
        reserved = localfiles.Partial.create(local_path, mode) if local_path is not None else None
        try:
            if reserved is None:
                localfiles.check_directory(".")
            if correction is None:
                correction = clock.ClockCorrection(await clock.measure(node, timeout=timeout))
            # Every program the start and the following run, parsed on the node in one round trip
            # (cached per connection), instead of one round trip each when first used.
            await programs.preload(node, programs.START_PROGRAMS, timeout)
            if governor:
                await preflight(node, sink)
            trace = await start_trace(
                node,
                filters,
                sink=sink,
                level=level,
                format_list=format_list,
                remote_path=remote_path,
                lease=lease,
                timeout=timeout,
            )
        except BaseException:
            if reserved is not None:
                reserved.discard()
            raise
        local = local_path if local_path is not None else default_local_path(node.peer_name, trace.ref)
        return cls(
            trace,
            local,
            duration=duration,
            max_size=max_size,
            poll_ms=poll_ms,
            correction=correction,
            requests=requests,
            max_rate=max_rate,
            governor=governor,
            mode=mode,
            partial=reserved,
        )

    @property
    def node_name(self) -> str:
        return self.trace.node_name

    async def stop(self) -> str:
        """Stop the trace now (idempotent), whether or not events are being read; the remote path."""
        return await self.trace.stop()

    async def verify(self) -> bool:
        """After Collected: does the local file hold as many bytes as the remote file and its rotated parts?"""
        if self.summary is None or self.summary.partial:
            return False
        sizes = await programs.evaluate(
            self.trace.node, programs.STAT_PARTS, self.trace.timeout, Path=self.trace.remote_path
        )
        remote_bytes: int = sum(size for _, size in sizes)
        return remote_bytes == os.path.getsize(self.summary.local_path)

    # -------------------------------------------------------------- the stream

    async def run(self, *observers: Observer) -> RunSummary:
        """Read the whole stream, handing every event to every observer; the summary.

        Raises the TraceLostError of a Lost event (after the observers saw it).
        """
        async for event in self.events():
            for observe in observers:
                observe(event)
            if isinstance(event, Lost):
                raise event.error
        assert self.summary is not None
        return self.summary

    def _due(self, elapsed: float, written: int) -> StoppedBy | None:
        if self.requests.abandon_by:
            return StoppedBy("abandoned", self.requests.abandon_by)
        if self.requests.stop_by:
            return StoppedBy("requested", self.requests.stop_by)
        if self.trace.stopped:  # stopped by its owner from elsewhere (Trace.follow)
            return StoppedBy("requested", "caller")
        if self._safety is not None:
            return StoppedBy("safety", safety=self._safety)
        if self.duration is not None and elapsed >= self.duration:
            return StoppedBy("duration")
        if self.max_size is not None and written >= self.max_size:
            return StoppedBy("max-size")
        return None

    async def _next(self, reader: RemoteReader, timeout: float) -> ReaderEvent | None:
        """The reader's next event, or None early when a stop request arrives (or on timeout)."""
        if self.requests.poke.is_set():
            self.requests.poke.clear()
            return None
        ev_task = asyncio.ensure_future(reader.next_event(timeout=timeout))
        poke_task = asyncio.ensure_future(self.requests.poke.wait())
        try:
            await asyncio.wait({ev_task, poke_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poke_task.cancel()
        # A request arrived while waiting: let the pending receive end (quickly) to keep order.
        return await ev_task

    async def _govern(self, gov: Governor, counts: Callable[[], tuple[int, int]]) -> None:
        """In the background while the trace runs: ask the governor when it is due; a reason to stop pokes the loop."""
        while self._safety is None:
            await asyncio.sleep(0.25)
            lines, written = counts()
            if not gov.due(lines):
                continue
            try:
                found = await gov.check(lines, written)
            except ConnectionLostError:
                return  # the reader sees it too and ends the stream with Lost
            except KzBridgeError as exc:  # cannot watch the node: stopping is the safe side
                found = gov.unobservable(exc.message)
            if found is not None:
                self._safety = found
                self.requests.poke.set()

    async def _abandoned_while(self, task: asyncio.Future[Any]) -> bool:
        """Wait for ``task`` or an abandon request, whichever comes first; True for the request."""
        while not task.done() and not self.requests.abandon_by:
            self.requests.poke.clear()
            poke_task = asyncio.ensure_future(self.requests.poke.wait())
            try:
                await asyncio.wait({task, poke_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                poke_task.cancel()
        return bool(self.requests.abandon_by)

    async def events(self) -> AsyncGenerator[Event, None]:
        """The session's events, once; see the module docstring for their order."""
        if self._begun:
            raise UsageError("a trace session's events can be read once")
        self._begun = True
        trace = self.trace
        node = trace.node
        if self.correction is None:  # setup, not the run's control traffic: measured before counting
            self.correction = clock.ClockCorrection(await clock.measure(node, timeout=trace.timeout))
        gov: Governor | None = None
        if self.governor:  # its first look is setup too: the baseline for the rate
            gov = Governor(node, trace.sink, trace.remote_path, self.max_rate)
            try:
                self._safety = await gov.check(0, 0)
            except ConnectionLostError:
                raise
            except KzBridgeError as exc:  # cannot watch the node: stop (below) rather than run blind
                self._safety = gov.unobservable(exc.message)
        calls_before = node.calls_made
        started = time.monotonic()
        timeline = clock.Timeline(self.correction)
        last_instant = [self.correction.start.measured_at]

        def instant(printed: str) -> datetime:
            t = timeline.instant(printed)
            if t is not None:
                last_instant[0] = t
            return datetime.fromtimestamp(last_instant[0], timezone.utc)

        tmp = str(partial_path(self.local_path)) if self.local_path is not None else None
        reader = RemoteReader(
            node,
            trace.remote_path,
            mode="follow",
            poll_ms=self.poll_ms,
            timeout=trace.timeout,
            watch=trace.remote_path,
        )
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        asm = LineAssembler(admits=_header_check(trace))
        lines = written = 0  # ``lines`` counts records; ``newlines`` the file's line ends
        newlines = 0
        last_byte = b"\n"
        stopped: StoppedBy | None = None
        verified = False
        partial = True
        out: localfiles.Partial | None = None

        def records(recs: list[LogRecord]) -> list[Record]:
            return [Record(trace.node_name, instant(r.time), r) for r in recs]

        governing: asyncio.Task[None] | None = None
        if gov is not None and self._safety is None:
            governing = asyncio.ensure_future(self._govern(gov, lambda: (lines, written)))
        try:
            if self.local_path is not None:
                out = self._partial or localfiles.Partial.create(self.local_path, self.mode)
                self._partial = None
            await reader.start()  # inside: if it fails, the finally below still stops the trace
            while True:
                elapsed = time.monotonic() - started
                if stopped is None:
                    stopped = self._due(elapsed, written)
                    if stopped is not None:
                        if governing is not None:
                            governing.cancel()
                        yield stopped
                        if stopped.reason == "abandoned":
                            await trace.stop()
                            break
                        # A second request (abandon) may come while the node answers the stop.
                        stopping = asyncio.ensure_future(trace.stop())
                        if await self._abandoned_while(stopping):
                            yield StoppedBy("abandoned", self.requests.abandon_by)
                            await stopping
                            break
                        await stopping
                        reader.finish()
                elif self.requests.abandon_by and stopped.reason != "abandoned":
                    yield StoppedBy("abandoned", self.requests.abandon_by)
                    break
                ev = await self._next(reader, 0.25)
                if ev is None:
                    yield Progress(time.monotonic() - started, written, lines)
                    continue
                if ev.kind == "data":
                    if out is not None:
                        out.write(ev.data)
                    written += len(ev.data)
                    if ev.data:
                        newlines += bytes(ev.data).count(b"\n")
                        last_byte = bytes(ev.data[-1:])
                    recs = asm.feed(decoder.decode(ev.data))
                    lines += len(recs)
                    for rec in records(recs):
                        yield rec
                    yield Progress(time.monotonic() - started, written, lines)
                elif ev.kind == "rotated":
                    yield Rotated(ev.sent)
                elif ev.kind == "gone" and stopped is None:
                    # The node's handler went without us: our own lease, or someone else (stop --all,
                    # clear, sup). Say which, never "duration".
                    stopped = _stopped_elsewhere(trace)
                    detail = f" ({stopped.detail})" if stopped.detail else ""
                    trace.warnings.append(
                        TraceWarning(
                            f"trace {trace.ref} was stopped by {stopped.label} after "
                            f"{time.monotonic() - started:.1f} s{detail}; the local file holds what the node "
                            "wrote until then",
                            setting="lease" if stopped.reason == "lease" else None,
                        )
                    )
                    yield stopped
                    await trace.stop()  # our lease timer and journal entry; the node answers invalid_trace
                    reader.finish()
                elif ev.kind == "eof":
                    tail = asm.flush()
                    lines += len(tail)
                    for rec in records(tail):
                        yield rec
                    verified = ev.sent == written and (ev.size < 0 or ev.position == ev.size)
                    if ev.sent != written:
                        trace.warnings.append(
                            TraceWarning(f"size check failed: node sent {ev.sent} bytes, we wrote {written}")
                        )
                    elif not verified:
                        trace.warnings.append(TraceWarning(f"remote file is {ev.size} bytes, we read to {ev.position}"))
                    partial = False
                    yield Progress(time.monotonic() - started, written, lines)
                    break
        except LocalFileError as exc:
            # The local disk is full (or the file cannot be written): stop the trace now, keep
            # what arrived, and name both files.
            if self.owns_trace and not trace.stopped and node.alive:
                with contextlib.suppress(KzBridgeError):
                    await asyncio.shield(trace.stop())
            state = "was stopped" if trace.stopped else "is still running (its lease stops it)"
            exc.message = (
                f"{exc.message}; trace {trace.ref} {state}; the whole trace stays in {trace.remote_path} "
                f"on {trace.node_name}"
            )
            exc.ref, exc.node, exc.remote_path = trace.ref, trace.node_name, trace.remote_path
            raise
        except ConnectionLostError as exc:
            kept = f"; kept {written} bytes in {tmp} (partial)" if tmp is not None else ""
            lost = TraceLostError(
                f"{exc.message}{kept}",
                ref=trace.ref,
                node=trace.node_name,
                remote_path=trace.remote_path,
                partial_path=tmp or "",
                kept_bytes=written,
                lease=trace.lease,
                hint=f"if the node is still up, the lease stops trace {trace.ref} within {trace.lease:g}s; "
                f"the rest of {trace.remote_path} (and its rotated parts) can be collected later",
            )
            lost.__cause__ = exc  # what raising it "from exc" would keep; it travels in an event
            yield Lost(lost)
            return
        finally:
            if governing is not None:
                governing.cancel()
            if out is not None:
                with contextlib.suppress(LocalFileError):
                    out.close()
            if self.owns_trace and not trace.stopped and node.alive:
                with contextlib.suppress(KzBridgeError):
                    await asyncio.shield(trace.stop())
            if partial:
                reader.abandon()
        assert stopped is not None
        final = tmp or ""
        if not partial and out is not None:
            final = str(out.publish())
        if lines == 0 and trace.sink == DATA_SINK and stopped.reason != "abandoned":
            trace.warnings.append(
                TraceWarning(
                    "the trace caught no events: on Kazoo 4.2.2+ nothing in production logs to the data sink; "
                    "try the lager_event sink",
                    setting="sink",
                )
            )
        reason = "abandoned" if self.requests.abandon_by and partial else stopped.label
        self.summary = RunSummary(
            trace.ref,
            trace.node_name,
            trace.remote_path,
            final,
            newlines + (last_byte != b"\n"),
            written,
            time.monotonic() - started,
            reason,
            verified,
            partial,
            trace.generation,
            trace.sink,
            node.calls_made - calls_before,
            reader.messages_sent,
            trace.lease_renewals,
            list(trace.warnings),
            stopped.safety,
            gov.peak_rate if gov is not None else None,
            records=lines,
            stop_detail=stopped.detail,
        )
        yield Collected(self.summary)


def _stopped_elsewhere(trace: Trace) -> StoppedBy:
    """Who removed the trace's handler, as far as this client can tell.

    Its own lease only when the lease can have fired by now (Trace.lease_lapsed: no earlier
    than the timer's arming plus its length, renewals failed or late); else someone else.
    """
    lapsed = trace.lease_lapsed()
    if lapsed is not None:
        return StoppedBy("lease", detail=lapsed)
    return StoppedBy("other-client")


def _header_check(trace: Trace) -> Any:
    """What tells a forged header in a message from a real event, for a trace we started with a
    default format into our own file (logparse's docstring says what it can and cannot tell)."""
    if not trace.own_file:
        return None
    printed = {id(DEFAULT_FORMAT): PRINTED_BY_KAZOO_FORMAT, id(LAGER_FORMAT): PRINTED_BY_LAGER_FORMAT}.get(
        id(trace.format_list)
    )
    if printed is None:
        return None
    return admitted_by("debug" if trace.generation == 1 else trace.level, trace.filters, printed)


async def run_trace(
    trace: Trace,
    local_path: str | os.PathLike[str],
    *,
    duration: float,
    max_size: int = DEFAULT_MAX_SIZE,
    poll_ms: int = 50,
    observers: Sequence[Observer] = (),
) -> RunSummary:
    """Follow ``trace`` into ``local_path`` until ``duration`` or ``max_size``, stop it, verify: the summary.

    The one-call form of ``TraceSession(trace, local_path, ...).run(*observers)``.
    """
    session = TraceSession(trace, local_path, duration=duration, max_size=max_size, poll_ms=poll_ms)
    return await session.run(*observers)
