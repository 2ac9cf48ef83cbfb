"""Start, watch, stop and collect Kazoo traces, safely.

Safety rules this module keeps:
  * filters are validated in Python (filters.validate) before anything is sent;
  * the generation is detected and trace_file/3 or /4 is called with a plain format
    list, so generation 2's empty-file defect (trace_file/0,1,2) never bites;
  * every trace has a lease armed on the node itself (timer:apply_after running a
    stop program) before lager starts writing, renewed while we run, so a vanished
    client cannot leave a trace running longer than the lease.

Following a trace into a local file, with its limits and stop requests, is
kazoo.session's TraceSession; Trace.follow is a session that writes no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    BadFilterError,
    BadRpcError,
    KazooError,
    KzBridgeError,
    LocalFileError,
    TracingUnavailableError,
    UnknownTraceError,
    UsageError,
)
from ..limits import CALL_TIMEOUT, check_number
from ..wire.codec import binary_to_term, term_to_binary
from ..wire.literal import format_term
from ..wire.node import HiddenNode
from ..wire.terms import Atom, ErlString
from . import filters as flt
from . import governor as gov
from . import journal, programs
from .collect import CollectResult, collect_file
from .logparse import LogRecord

DATA_SINK = flt.DATA_SINK
LAGER_SINK = flt.LAGER_SINK
DEFAULT_LEASE = flt.DEFAULT_LEASE
LAPSE_SEEN_WITHIN = 5.0  # s: a handler gone this long after a late renewal was not removed by that lapse


def _kazoo_format(app: str, module: str, function: str) -> list[Any]:
    """Kazoo's formatter_config, with the metadata keys that name the app, module and function."""
    return [
        Atom("time"),
        ErlString(" ["),
        Atom("severity"),
        ErlString("] |"),
        Atom(app),
        ErlString("|"),
        (Atom("callid"), b"0000000000"),
        ErlString("|"),
        Atom(module),
        ErlString(":"),
        Atom(function),
        ErlString(":"),
        Atom("line"),
        ErlString(" ("),
        Atom("pid"),
        ErlString(") "),
        Atom("message"),
        ErlString("\n"),
    ]


# Kazoo's own (the data sink's profiler set from_app/mod/func); for the main sink the
# metadata keys are lager's own, so print those.
DEFAULT_FORMAT: list[Any] = _kazoo_format("from_app", "mod", "func")
LAGER_FORMAT: list[Any] = _kazoo_format("application", "module", "function")
A_OK = Atom("ok")
A_ERROR = Atom("error")
A_UNDEFINED = Atom("undefined")
A_KZ = Atom("kz_data_tracing")


class TraceWarning(str):
    """A warning about a trace, in plain words, and the setting it is about (one of errors.SETTINGS).

    A ``str``, so it prints and serialises as its text; faces read ``setting`` to point at
    their own name for it.
    """

    setting: str | None

    def __new__(cls, text: str, setting: str | None = None) -> TraceWarning:
        obj = super().__new__(cls, text)
        obj.setting = setting
        return obj


async def detect_generation(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> int:
    """1 or 2, from kz_data_tracing's exports; a clear error when the node has no tracing.

    ``timeout`` here and in the other functions of this module bounds each remote call.
    """
    # Both questions at once (one round trip); the answers are judged in the same order as before.
    answers: tuple[Any, Any] = await asyncio.gather(
        node.rpc("kz_data_tracing", "module_info", [Atom("exports")], timeout=timeout),
        node.rpc("erlang", "whereis", [A_KZ], timeout=timeout),
        return_exceptions=True,
    )
    exports, where = answers
    if isinstance(exports, BadRpcError):
        raise TracingUnavailableError(
            f"{node.peer_name} has no kz_data_tracing module",
            hint="is this a Kazoo node with kazoo_data? the lager_event sink needs only lager",
            setting="sink",
        ) from exports
    for answer in (exports, where):
        if isinstance(answer, BaseException):
            raise answer
    if where == A_UNDEFINED:
        raise TracingUnavailableError(
            f"kz_data_tracing is not running on {node.peer_name}",
            hint="the kazoo_data application is down; check the node's logs",
        )
    return 2 if (Atom("trace_file"), 4) in exports else 1


async def has_data_sink(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> bool:
    # The sink is a registered gen_event process once lager has read its config.
    where = await node.rpc("erlang", "whereis", [Atom("data_lager_event")], timeout=timeout)
    return bool(where != A_UNDEFINED)


def default_remote_path(node_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"/tmp/kzbridge-{node_name.split('@')[0]}-{stamp}-{secrets.token_hex(3)}.log"


@dataclass
class Trace:
    """A trace running on a node; use as ``async with`` to guarantee it stops.

    ``generation`` is kz_data_tracing's API generation (1 or 2), None for a trace of the
    lager_event sink, which goes through lager directly.
    """

    node: HiddenNode
    ref: str
    remote_path: str
    generation: int | None
    sink: str
    filters: list[Any]
    level: str
    lease: float
    lager_trace: Any = None
    warnings: list[TraceWarning] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _tref: Any = None
    stopped: bool = False
    # stop() found it already stopped on the node (its lease, another client, sup): not our stop.
    already_stopped: bool = False
    lease_renewals: int = 0
    _keeper: asyncio.Task[None] | None = None
    keeper_error: KzBridgeError | None = None
    timeout: float = CALL_TIMEOUT  # bounds each remote call this trace makes (stop, lease renewals)
    format_list: list[Any] | None = None  # the format it was started with, when known
    own_file: bool = False  # the file name is kzbridge's own random one (no other trace writes it)
    # The lease as this client knows it (monotonic times): the earliest moment the node's lease
    # timer can fire (its arming was sent at _lease_sent; a replaced timer counts until cancelled),
    # a renewal in flight since _renewing_since, and what was seen when a renewal came too late.
    lease_expires: float | None = None
    _lease_sent: float | None = None
    _renewing_since: float | None = None
    _lapse: tuple[float, str] | None = None

    def lease_armed(self, sent: float, seconds: float) -> None:
        """A lease timer whose arming was sent at ``sent`` (monotonic) is now the only one on the node."""
        self._lease_sent, self.lease_expires = sent, sent + seconds

    def lease_lapsed(self, now: float | None = None) -> str | None:
        """Why the node's own lease can have stopped this trace, or None when it cannot have.

        A lease timer fires no earlier than its arming was sent plus its length; a handler that
        went before that moment was removed by someone else. Past it, the reason is what kept the
        lease from being renewed: failed renewals, one unanswered, or none sent at all. A renewal
        sent after that moment (this process was paused) is remembered for LAPSE_SEEN_WITHIN
        seconds: the node's reader reports a removed handler within about one.
        """
        now = time.monotonic() if now is None else now
        if self._lapse is not None and now - self._lapse[0] <= LAPSE_SEEN_WITHIN:
            return self._lapse[1]
        return self._lapsed_now(now)

    def _lapsed_now(self, now: float) -> str | None:
        if self.lease_expires is None or now < self.lease_expires:
            return None
        if self.keeper_error is not None:
            return f"lease renewals failed: {self.keeper_error.message}"
        if self._renewing_since is not None:
            return f"a lease renewal was unanswered for {now - self._renewing_since:.1f} s"
        since = now - (self._lease_sent if self._lease_sent is not None else self.lease_expires - self.lease)
        return (
            f"the lease was not renewed for {since:.1f} s, longer than its {self.lease:g} s "
            "(kzbridge was paused or too busy)"
        )

    @property
    def node_name(self) -> str:
        return self.node.peer_name

    async def renew_lease(self, seconds: float | None = None) -> None:
        """Arm a fresh lease, then cancel the old one (no gap in between)."""
        old = self._tref
        sent = time.monotonic()
        lapsed = self._lapsed_now(sent)
        if lapsed is not None:
            # Renewing after the old lease ran out (this process was paused, or its loop starved):
            # that lease may have stopped the trace already; remember why, for the summary.
            self._lapse = (sent, lapsed)
        self._renewing_since = sent
        try:
            self._tref = await _arm_lease(
                self.node,
                seconds or self.lease,
                self.ref if self.sink == DATA_SINK else None,
                self.remote_path,
                self.lager_trace,
                self.timeout,
            )
        finally:
            self._renewing_since = None
        self.lease_renewals += 1
        try:
            journal.extend_lease(
                self.node_name, self.ref, time.time() + (seconds or self.lease), term_to_binary(self._tref).hex()
            )
        except LocalFileError as exc:  # bookkeeping only: the lease on the node is what counts
            self._journal_warning(exc)
        if old is not None:
            await self.node.rpc("timer", "cancel", [old], timeout=self.timeout)
        # Only now: until the old timer is cancelled, it may fire first.
        self.lease_armed(sent, seconds or self.lease)

    def _journal_warning(self, exc: LocalFileError) -> None:
        text = f"{exc.message}; status and stop from other processes may not see trace {self.ref}"
        if text not in self.warnings:
            self.warnings.append(TraceWarning(text))

    def keep_alive(self) -> None:
        """Renew the lease every third of it, in the background, while this object lives.

        Until stop(); a dropped Trace object, a lost connection or a failed renewal end
        the renewals, and the lease armed on the node stops the trace within its length.
        """
        if self._keeper is None and not self.stopped:
            self._keeper = asyncio.get_running_loop().create_task(
                _keep_lease(weakref.ref(self), self.lease / 3), name=f"kzbridge-lease-{self.ref}"
            )

    async def stop(self) -> str:
        """Stop the trace (idempotent); returns the remote file name."""
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        if self.stopped:
            return self.remote_path
        if self.sink == DATA_SINK:
            try:
                reply = await self.node.rpc("kz_data_tracing", "stop_trace", [self.ref.encode()], timeout=self.timeout)
            except BadRpcError as exc:
                # Under a flood (what the governor stops) lager removes the file handler behind the
                # sink's queue and kz_data_tracing's own 5 s call times out; the server still finishes
                # the stop, and the program below waits for lager itself.
                if not _server_call_timed_out(exc.reason):
                    raise
                reply = (A_OK, self.remote_path.encode())
            if reply == (A_ERROR, Atom("invalid_trace")):
                self.already_stopped = True
            elif not (type(reply) is tuple and reply[0] == A_OK):
                raise KazooError(f"stop_trace({self.ref}) answered {format_term(reply)}")
        else:
            await self.node.rpc("lager", "stop_trace", [self.lager_trace], timeout=self.timeout)
        # Whatever kz_data_tracing remembers, make sure lager writes no more to our file.
        await programs.evaluate(
            self.node,
            programs.LEASE_STOP,
            timeout=self.timeout,
            Ref=A_UNDEFINED,
            File=self.remote_path,
            Trace=A_UNDEFINED,
        )
        if self._tref is not None:
            await self.node.rpc("timer", "cancel", [self._tref], timeout=self.timeout)
            self._tref = None
        self.stopped = True
        try:
            journal.mark_stopped(self.node_name, self.ref)
        except LocalFileError as exc:
            self._journal_warning(exc)
        return self.remote_path

    async def collect(
        self,
        local_path: str | os.PathLike[str],
        progress: Callable[[int, int], None] | None = None,
        mode: int | None = None,
    ) -> CollectResult:
        """Bring back the whole file, rotated parts first (local file 0600 unless ``mode``)."""
        return await collect_file(
            self.node, self.remote_path, local_path, rotated=True, progress=progress, timeout=self.timeout, mode=mode
        )

    async def follow(self, poll_ms: int = 50) -> AsyncIterator[LogRecord]:
        """Parsed records as lager writes them, until the trace stops (stop() from another task).

        A TraceSession that writes no file and leaves the trace to its owner: leaving the
        loop early stops following, not the trace. A lost connection raises TraceLostError.
        """
        from .session import Lost, Record, TraceSession

        session = TraceSession(self, None, max_size=None, poll_ms=poll_ms, owns_trace=False)
        async with contextlib.aclosing(session.events()) as events:
            async for event in events:
                if isinstance(event, Record):
                    yield event.record
                elif isinstance(event, Lost):
                    raise event.error

    async def __aenter__(self) -> Trace:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.node.alive and not self.stopped:
            await self.stop()


def _server_call_timed_out(reason: Any) -> bool:
    """``{'EXIT', {timeout, {gen_server, call, _}}}``: the rpc's process gave up on kz_data_tracing's reply."""
    return (
        type(reason) is tuple
        and len(reason) == 2
        and reason[0] == Atom("EXIT")
        and type(reason[1]) is tuple
        and len(reason[1]) == 2
        and reason[1][0] == Atom("timeout")
        and type(reason[1][1]) is tuple
        and reason[1][1][:2] == (Atom("gen_server"), Atom("call"))
    )


async def _keep_lease(trace_ref: weakref.ref[Trace], interval: float) -> None:
    # Holds the Trace only weakly between renewals: forgetting a trace lets its lease run out.
    while True:
        await asyncio.sleep(interval)
        trace = trace_ref()
        if trace is None or trace.stopped or not trace.node.alive:
            return
        try:
            await trace.renew_lease()
        except KzBridgeError as exc:
            trace.keeper_error = exc
            return
        del trace


async def _arm_lease(
    node: HiddenNode, seconds: float, ref: str | None, path: str, lager_trace: Any, timeout: float = CALL_TIMEOUT
) -> Any:
    forms = await programs.forms(node, programs.LEASE_STOP, timeout=timeout)
    binds = programs.bindings(
        Ref=ref.encode() if ref else A_UNDEFINED,
        File=ErlString(path),
        Trace=lager_trace if lager_trace is not None else A_UNDEFINED,
    )
    reply = await node.rpc(
        "timer", "apply_after", [int(seconds * 1000), Atom("erl_eval"), Atom("exprs"), [forms, binds]], timeout=timeout
    )
    if type(reply) is tuple and reply[0] == A_OK:
        return reply[1]
    raise KazooError(f"could not arm the stop lease on {node.peer_name}: {format_term(reply)}")


async def start_trace(
    node: HiddenNode,
    filter_list: list[Any],
    *,
    sink: str = DATA_SINK,
    level: str = "debug",
    format_list: list[Any] | None = None,
    remote_path: str | None = None,
    lease: float = DEFAULT_LEASE,
    detached: bool = False,
    timeout: float = CALL_TIMEOUT,
    max_rate: float | None = flt.DEFAULT_MAX_RATE,
    governor: bool = True,
) -> Trace:
    """Validate, arm the lease, start the trace; the returned Trace holds the ref.

    ``lease`` is checked against limits.RANGES (finite, at most a week: the node's timer
    takes no more); ``timeout`` bounds each remote call, here and later on the Trace.
    A ``detached`` trace gets the node-side governor (governor.guard_detached: refuses to start on
    an overloaded sink, stops the trace past ``max_rate`` events/s or when the sink goes
    synchronous); ``governor=False`` turns it off, with a warning. A trace that is followed is
    governed by its TraceSession instead.
    """
    checked = flt.validate(filter_list)
    level_atom = flt.validate_level(level)
    lease = check_number(lease, "lease")
    timeout = check_number(timeout, "timeout")
    if detached:
        gov.check_max_rate(max_rate)
    path = remote_path or default_remote_path(node.peer_name)
    if not path.startswith("/"):
        raise UsageError(
            f"remote path {path!r} must be absolute: lager resolves relative paths against its own log root",
            setting="remote_path",
        )
    if posixpath.normpath(path) != path:
        # lager names its handler (and the file) by the normalised path: "/tmp//x.log" is traced as
        # "/tmp/x.log", and the checks below, which compare names, would miss it.
        raise UsageError(
            f"remote path {path!r} is not in plain form; write {posixpath.normpath(path)!r}", setting="remote_path"
        )
    if not path.isascii() or any(c < " " or c == "\x7f" for c in path):
        # Measured with lager 3.9.2: kz_data_tracing passes the name as a binary, which lager takes
        # byte by byte as characters, so "/tmp/caf\u00e9.log" is written as "/tmp/caf\u00c3\u00a9.log"
        # (double-encoded) and nothing else finds it. One rule for both sinks: ASCII only.
        raise UsageError(
            f"remote path {path!r} must be printable ASCII: lager writes other characters under a mangled name",
            setting="remote_path",
        )
    if sink not in (DATA_SINK, LAGER_SINK):
        raise UsageError(f"unknown sink {sink!r}: use data (kz_data_tracing) or lager_event", setting="sink")
    warnings: list[TraceWarning] = []
    generation: int | None = None
    if sink == DATA_SINK:
        generation, declared = await _gather_in_order(detect_generation(node, timeout), has_data_sink(node, timeout))
        if not declared:
            raise TracingUnavailableError(
                f"{node.peer_name} does not declare lager's data_lager_event sink; trace_file would crash there",
                hint="declare {extra_sinks, [{data_lager_event, [{handlers, []}]}]} in its sys.config, "
                "or trace the lager_event sink",
                setting="sink",
            )
    if detached:
        warnings += await _before_detached(node, sink, governor)
    fmt = format_list if format_list is not None else (DEFAULT_FORMAT if sink == DATA_SINK else LAGER_FORMAT)
    # The file is ours alone: refused when it exists or a lager handler writes it, else created
    # exclusively (two clients racing for one path see one winner).
    await _claim_path(node, path)
    # The lease goes on first, keyed by file, so even a crash between here and the
    # ref coming back cannot orphan the trace.
    armed = time.monotonic()
    armed_at = time.time()
    try:
        tref = await _arm_lease(node, lease, None, path, None, timeout)
    except BaseException:
        await _release_path(node, path)
        raise
    try:
        if sink == DATA_SINK:
            if generation == 1:
                if level != "debug":
                    warnings.append(
                        TraceWarning(
                            "generation 1 kz_data_tracing traces at debug only; the level is ignored", setting="level"
                        )
                    )
                props = [(Atom("formatter"), Atom("lager_default_formatter")), (Atom("formatter_config"), fmt)]
                reply = await node.rpc(
                    "kz_data_tracing", "trace_file", [checked, path.encode(), props], timeout=timeout
                )
            else:
                reply = await node.rpc(
                    "kz_data_tracing", "trace_file", [checked, path.encode(), fmt, level_atom], timeout=timeout
                )
            ref, lager_trace = _ok_ref(reply, node), None
        else:
            props = [(Atom("formatter"), Atom("lager_default_formatter")), (Atom("formatter_config"), fmt)]
            reply = await node.rpc(
                "lager", "trace_file", [ErlString(path), checked, level_atom, props], timeout=timeout
            )
            if not (type(reply) is tuple and reply[0] == A_OK):
                raise _start_error(reply, node)
            lager_trace = reply[1]
            ref = "lg" + secrets.token_hex(5)
    except BaseException:
        await node.rpc("timer", "cancel", [tref], timeout=timeout)
        await _release_path(node, path)
        raise
    trace = Trace(node, ref, path, generation, sink, checked, level, lease, lager_trace, warnings)
    trace._tref = tref
    trace.lease_armed(armed, lease)
    trace.timeout = timeout
    trace.format_list = fmt
    trace.own_file = remote_path is None
    # Journal first: if the calls below fail or the caller's deadline cancels them, the
    # trace (stopped by the lease armed above) is still listed by status and stop --all.
    # Written from a thread: the file lock and the rename can take milliseconds, and starting
    # several nodes at once should not hold every other connection's traffic meanwhile.
    try:
        await asyncio.to_thread(
            journal.record,
            journal.JournalEntry(
                node=node.peer_name,
                ref=ref,
                remote_path=path,
                sink=sink,
                generation=generation or 0,
                filters=flt.describe(checked),
                started=trace.started,
                lease_until=armed_at + lease,  # when the lease armed above fires (unless renewed)
                detached=detached,
                lager_trace=term_to_binary(lager_trace).hex() if lager_trace is not None else "",
                extra={"timer": term_to_binary(trace._tref).hex()},
            ),
        )
    except LocalFileError as exc:
        # Nobody could find this trace later: stop it now rather than leave it to its lease.
        with contextlib.suppress(KzBridgeError):
            await trace.stop()
        exc.message = f"{exc.message}; trace {ref} on {node.peer_name} was stopped"
        exc.ref, exc.node, exc.remote_path = ref, node.peer_name, path
        raise
    # Re-arm with the ref known, so the lease also clears kz_data_tracing's state. Generation 2
    # needs no re-arm: the first lease finds the ref by file in status() (programs.LEASE_STOP),
    # and saving it saves two round trips and a journal write per start.
    if (sink == DATA_SINK and generation != 2) or (detached and sink != DATA_SINK):
        await trace.renew_lease()
        trace.lease_renewals = 0
    if not detached:
        trace.keep_alive()
    elif governor:
        await _guard_detached(trace, max_rate)
    return trace


async def _before_detached(node: HiddenNode, sink: str, governor: bool) -> list[TraceWarning]:
    """Before a detached trace starts: the governor's preflight (NodeBusyError on a busy sink), or its warning."""
    if not governor:
        return [TraceWarning(gov.GOVERNOR_OFF_DETACHED, setting="governor")]
    await gov.preflight(node, sink)
    return []


async def _guard_detached(trace: Trace, max_rate: float | None) -> None:
    """Start the node-side governor of a just-started detached trace, for what is left of its lease.

    A detached trace runs governed or not at all: when the governor cannot be started, the
    trace is stopped and the error raised.
    """
    try:
        await gov.guard_detached(
            trace.node,
            ref=trace.ref,
            sink=trace.sink,
            path=trace.remote_path,
            max_rate=max_rate,
            lifetime=(trace.lease_expires or 0.0) - time.monotonic(),
            # The lease's own stop (as _arm_lease binds it).
            stop_bindings=programs.bindings(
                Ref=trace.ref.encode() if trace.sink == DATA_SINK else A_UNDEFINED,
                File=ErlString(trace.remote_path),
                Trace=trace.lager_trace if trace.lager_trace is not None else A_UNDEFINED,
            ),
            tref=trace._tref,
            timeout=trace.timeout,
        )
    except BaseException:
        with contextlib.suppress(KzBridgeError):
            await asyncio.shield(trace.stop())
        raise


async def _gather_in_order(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` at once; the first error in argument order is raised (the others retrieved)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _claim_path(node: HiddenNode, path: str) -> None:
    reply = await programs.evaluate(node, programs.CLAIM_PATH, Path=ErlString(path))
    if reply == A_OK:
        return
    why = reply[1] if type(reply) is tuple and len(reply) == 2 else reply
    if why == Atom("in_use"):
        raise UsageError(
            f"{path} on {node.peer_name} is already being traced (a lager file handler writes it)",
            hint="choose another remote path",
            setting="remote_path",
        )
    if why == Atom("eexist"):
        raise UsageError(
            f"{path} already exists on {node.peer_name}; kzbridge traces only into a new file",
            hint="choose another remote path, or collect and remove that one first",
            setting="remote_path",
        )
    raise UsageError(
        f"cannot create {path} on {node.peer_name}: {format_term(why)[:200]}",
        hint="the directory must exist and be writable by the node",
        setting="remote_path",
    )


async def _release_path(node: HiddenNode, path: str) -> None:
    """The trace did not start: remove the file claimed for it when nothing was written to it."""
    if node.alive:
        with contextlib.suppress(KzBridgeError):
            await programs.evaluate(node, programs.RELEASE_PATH, Path=ErlString(path))


def _ok_ref(reply: Any, node: HiddenNode) -> str:
    if type(reply) is tuple and len(reply) == 2 and reply[0] == A_OK and type(reply[1]) is bytes:
        return reply[1].decode()
    raise _start_error(reply, node)


def _start_error(reply: Any, node: HiddenNode) -> KzBridgeError:
    if reply == (A_ERROR, Atom("invalid_level")):
        return UsageError(f"{node.peer_name} rejected the level (invalid_level)", setting="level")
    if reply == (A_ERROR, Atom("invalid_trace")):
        return BadFilterError(f"{node.peer_name} rejected the filters (invalid_trace)", setting="filters")
    if reply == (A_ERROR, Atom("file_in_use")):
        return KazooError(
            f"{node.peer_name}: that file is already traced by another sink (file_in_use)",
            hint="choose another remote path",
            setting="remote_path",
        )
    return KazooError(f"{node.peer_name}: trace_file answered {format_term(reply)[:200]}")


def lager_trace_of(entry: journal.JournalEntry) -> Any:
    return binary_to_term(bytes.fromhex(entry.lager_trace)) if entry.lager_trace else None


async def attach(node: HiddenNode, ref: str, timeout: float = CALL_TIMEOUT) -> Trace:
    """A Trace object for a ref started earlier (from the journal, else from status/1)."""
    entry = journal.find(node.peer_name, ref)
    if entry is not None:
        trace = Trace(
            node,
            ref,
            entry.remote_path,
            entry.generation or None,
            entry.sink,
            [],
            "debug",
            max(1.0, entry.lease_until - time.time()),
            lager_trace_of(entry),
        )
        trace.started = entry.started
        trace.timeout = timeout
        timer = entry.extra.get("timer") if isinstance(entry.extra, dict) else None
        if isinstance(timer, str) and timer:
            # The lease timer its starter armed: stop() cancels it, so it cannot fire later
            # and stop a newer trace on the same file.
            with contextlib.suppress(ValueError, KzBridgeError):
                trace._tref = binary_to_term(bytes.fromhex(timer))
        return trace
    generation = await detect_generation(node, timeout)
    if generation == 2:
        status = await node.rpc("kz_data_tracing", "status", [ref.encode()], timeout=timeout)
        if type(status) is tuple and len(status) == 3:
            return Trace(
                node,
                ref,
                status[1].decode(),
                2,
                DATA_SINK,
                list(status[2][1][1:]),
                format_term(status[2][2]),
                DEFAULT_LEASE,
                timeout=timeout,
            )
        raise UnknownTraceError(f"{node.peer_name} knows no trace {ref!r}", hint="the node's status lists them")
    raise UnknownTraceError(
        f"no trace {ref!r} in the local journal, and generation 1 nodes cannot be asked",
        hint="the status lists what this machine started",
    )


@dataclass
class TraceStatus:
    ref: str
    remote_path: str
    filters: str
    level: str
    sink: str
    ours: bool
    lease_until: float | None


async def status(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> tuple[int, list[TraceStatus]]:
    """Running traces on the node joined with the journal; generation 1 has only the journal."""
    generation = await detect_generation(node, timeout)
    mine = {e.ref: e for e in journal.active(node.peer_name)}
    out: list[TraceStatus] = []
    if generation == 2:
        for ref, fname, spec in await node.rpc("kz_data_tracing", "status", [], timeout=timeout):
            r = ref.decode()
            e = mine.pop(r, None)
            out.append(
                TraceStatus(
                    r,
                    fname.decode(),
                    flt.describe(list(spec[1][1:])),
                    format_term(spec[2]),
                    DATA_SINK,
                    e is not None,
                    e.lease_until if e else None,
                )
            )
    for e in mine.values():
        out.append(TraceStatus(e.ref, e.remote_path, e.filters, "", e.sink, True, e.lease_until))
    return generation, out


async def lager_file_traces(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> list[tuple[str, str]]:
    """``[(Sink, File)]``: the file handlers installed in each lager sink, as the sinks report them."""
    found = await programs.evaluate(node, programs.LAGER_FILE_TRACES, timeout=timeout)
    # File names are bytes on the node; one lager mangled (a non-ASCII path through kz_data_tracing) is not UTF-8.
    return [(s.name, f.decode("utf-8", "replace")) for s, f in found]


async def orphans(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> list[tuple[str, str]]:
    """Data-sink file traces that kz_data_tracing no longer knows (after a crash or restart)."""
    generation = await detect_generation(node, timeout)
    if generation != 2:
        raise KazooError(
            "generation 1 kz_data_tracing has no status/0, so orphans cannot be told apart from traces started with sup"
        )
    status = await node.rpc("kz_data_tracing", "status", [], timeout=timeout)
    known = {fname.decode() for _, fname, _ in status}
    return [(s, f) for s, f in await lager_file_traces(node, timeout) if s == "data_lager_event" and f not in known]


class OrphanCleared(str):
    """One orphan's file name (a ``str``, as clear_orphans returned before) and what became of it.

    ``removed`` is True only when a fresh read of the sink's handlers no longer lists it; ``how``
    is "trace cleared" (lager knew the trace), "handler deleted" (it did not: the handler was
    removed from the sink itself) or "still there".
    """

    sink: str
    removed: bool
    how: str

    def __new__(cls, sink: str, file: str, removed: bool, how: str) -> OrphanCleared:
        obj = super().__new__(cls, file)
        obj.sink, obj.removed, obj.how = sink, removed, how
        return obj

    @property
    def file(self) -> str:
        return str(self)


async def clear_orphans(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> list[OrphanCleared]:
    """Remove every orphan's file handler, then read the handlers again to say which went.

    lager's clear_trace_by_destination removes only traces lager recorded; a handler left by a
    trace_file call that crashed before recording it is deleted from the sink directly.
    """
    found = await orphans(node, timeout)
    how: dict[tuple[str, str], str] = {}
    for sink, fname in found:
        _cleared, deleted, _ = await programs.evaluate(
            node, programs.CLEAR_FILE_HANDLER, timeout=timeout, Sink=Atom(sink), File=ErlString(fname)
        )
        how[(sink, fname)] = "handler deleted" if deleted == A_OK else "trace cleared"
    left = set(await lager_file_traces(node, timeout)) if found else set()
    return [
        OrphanCleared(s, f, (s, f) not in left, how[(s, f)] if (s, f) not in left else "still there") for s, f in found
    ]


async def clear_all(node: HiddenNode, timeout: float = CALL_TIMEOUT) -> list[str]:
    """Stop every trace: clear_all_traces on generation 2, every journal ref on generation 1.

    ``timeout`` bounds each call, clear_all_traces included (Kazoo gives it an hour).
    """
    generation = await detect_generation(node, timeout)
    stopped = []
    if generation == 2:
        for ref, _result in await node.rpc("kz_data_tracing", "clear_all_traces", [], timeout=timeout):
            stopped.append(ref.decode())
        # "Stopped" only when the node no longer lists it: read its traces again.
        listed = await node.rpc("kz_data_tracing", "status", [], timeout=timeout)
        left = sorted({t[0].decode() for t in listed if type(t) is tuple and t} & set(stopped))
        if left:
            raise KazooError(
                f"clear_all_traces answered, but {node.peer_name} still lists {', '.join(left)}",
                hint="kz_data_tracing did not drop them; see kzbridge status",
            )
    for e in journal.active(node.peer_name):
        if e.ref in stopped:
            # Stopped by clear_all_traces; its lease timer must not fire later on a newer trace of the file.
            tref = (await attach(node, e.ref, timeout))._tref
            if tref is not None:
                await node.rpc("timer", "cancel", [tref], timeout=timeout)
            journal.mark_stopped(node.peer_name, e.ref)
            continue
        trace = await attach(node, e.ref, timeout)
        await trace.stop()
        stopped.append(e.ref)
    for ref in stopped:
        journal.mark_stopped(node.peer_name, ref)
    return stopped


def __getattr__(name: str) -> Any:
    # run_trace and RunSummary live in kazoo.session now (which imports this module);
    # the names stay reachable here for callers written against the old layout.
    if name in ("run_trace", "RunSummary"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
