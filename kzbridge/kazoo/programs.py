"""Small Erlang programs we run on the node without loading any module onto it.

Each program is Erlang source, parsed on the node once per connection
(erl_scan + erl_parse over rpc) and then run by stock OTP's erl_eval, either
inside one rpc or in a spawned process that streams messages to one of our pids.
Works on every OTP from 18 on (named funs in erl_eval exist since 17).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from ..errors import BadRpcError, ProgramError, RemoteFileError
from ..wire.node import HiddenNode
from ..wire.terms import Atom, Encoded, ErlString, Pid

# The tail/collect process. Bindings: Owner (our pid), Path (string), Offset, Chunk, Window,
# Poll (ms between end-of-file checks), Idle (ms without acks before giving up), Watch (false, or
# the traced file as a string: in follow mode, about once a second, whether a lager file handler
# for it still exists in lager_event or data_lager_event; once seen and then gone, the reader
# sends {kzb_gone, Self, Seq} once and keeps following: someone else stopped the trace), Mode:
#   follow    read from Offset (from 0: rotated parts already there first), keep reading as the
#             file grows and rotates, until kzb_finish
#   once      read the one file from Offset to its end
#   rotated   read Path.4 .. Path.0 then Path, whole, in that order
# Messages to Owner: {kzb_part, Self, Seq, Name}, {kzb_data, Self, Seq, Bin},
#   {kzb_eof, Self, Seq, Sent, Pos, Size}, {kzb_error, Self, Reason}, {kzb_gone, Self, Seq}.
# Owner sends {kzb_ack, N} (credit for N more chunks) and kzb_finish.
READER = r"""
Self = self(),
MRef = erlang:monitor(process, Owner),
put(kzb_credit, Window), put(kzb_seq, 0), put(kzb_sent, 0), put(kzb_finish, false),
Ino = fun(P) -> case file:read_file_info(P) of {ok, I} -> element(12, I); _ -> missing end end,
Size = fun(P) -> case file:read_file_info(P) of {ok, I} -> element(2, I); _ -> -1 end end,
Wait = fun(T) ->
    receive
        {kzb_ack, N} -> put(kzb_credit, get(kzb_credit) + N), true;
        kzb_finish -> put(kzb_finish, true), true;
        {'DOWN', MRef, _, _, _} -> exit(normal)
    after T -> false
    end
end,
Credit = fun Credit() ->
    case get(kzb_credit) > 0 of
        true -> ok;
        false -> case Wait(Idle) of true -> Credit(); false -> exit(normal) end
    end
end,
Send = fun(Data) ->
    Credit(),
    put(kzb_credit, get(kzb_credit) - 1),
    Seq = get(kzb_seq), put(kzb_seq, Seq + 1),
    put(kzb_sent, get(kzb_sent) + byte_size(Data)),
    Owner ! {kzb_data, Self, Seq, Data}
end,
Fail = fun(Why) -> Owner ! {kzb_error, Self, Why}, exit(normal) end,
put(kzb_polls, 0), put(kzb_seen, false),
Traced = fun() ->
    Hs = lists:append([gen_event:which_handlers(S) || S <- [lager_event, data_lager_event], is_pid(whereis(S))]),
    lists:member({lager_file_backend, Watch}, Hs)
end,
Check = fun() ->
    Polls = get(kzb_polls), put(kzb_polls, Polls + 1),
    case Watch =/= false andalso Polls rem max(1, 1000 div max(1, Poll)) =:= 0 of
        false -> ok;
        true ->
            case {Traced(), get(kzb_seen)} of
                {true, _} -> put(kzb_seen, true);
                {false, true} -> put(kzb_seen, gone), Owner ! {kzb_gone, Self, get(kzb_seq)};
                _ -> ok
            end
    end
end,
Drain = fun Drain(Fd) ->
    case file:read(Fd, Chunk) of
        {ok, D} -> Send(D), Drain(Fd);
        eof -> ok;
        {error, E} -> Fail(E)
    end
end,
Part = fun(P) ->
    case file:open(P, [read, raw, binary]) of
        {ok, F} -> Owner ! {kzb_part, Self, get(kzb_seq), list_to_binary(P)}, Drain(F), file:close(F);
        {error, enoent} -> ok;
        {error, E} -> Fail({P, E})
    end
end,
Parts = [Path ++ "." ++ integer_to_list(I) || I <- [0, 1, 2, 3, 4]],
Index = fun Index(_, [], _) -> 0; Index(X, [X | _], N) -> N; Index(X, [_ | T], N) -> Index(X, T, N + 1) end,
Eof = fun(Fd) ->
    {ok, Pos} = file:position(Fd, cur),
    file:close(Fd),
    Owner ! {kzb_eof, Self, get(kzb_seq), get(kzb_sent), Pos, Size(Path)}
end,
Follow = fun Follow(Fd, I0) ->
    Drain(Fd),
    case Ino(Path) of
        New when New =/= I0, New =/= missing ->
            Drain(Fd),
            file:close(Fd),
            Newer = Index(I0, [Ino(P) || P <- Parts], 1) - 1,
            Owner ! {kzb_rotated, Self, get(kzb_seq), Newer},
            [Part(P) || P <- lists:reverse(lists:sublist(Parts, max(0, Newer)))],
            case file:open(Path, [read, raw, binary]) of
                {ok, Fd2} -> Follow(Fd2, Ino(Path));
                {error, E} -> Fail(E)
            end;
        _ ->
            case get(kzb_finish) orelse Mode =:= once of
                true -> Drain(Fd), Eof(Fd);
                false -> Check(), Wait(Poll), Follow(Fd, I0)
            end
    end
end,
case Mode of
    rotated ->
        [Part(P) || P <- lists:reverse(Parts)],
        case file:open(Path, [read, raw, binary]) of
            {ok, Fd} -> Owner ! {kzb_part, Self, get(kzb_seq), list_to_binary(Path)}, Drain(Fd), Eof(Fd);
            {error, E} -> Fail(E)
        end;
    _ ->
        %% Following a trace from its start: parts lager rotated out before we began are this
        %% trace's too (its file name is its own), oldest first.
        case Mode =:= follow andalso Offset =:= 0 of
            true -> [Part(P) || P <- lists:reverse(Parts)];
            false -> ok
        end,
        case file:open(Path, [read, raw, binary]) of
            {ok, Fd} -> {ok, _} = file:position(Fd, Offset), Follow(Fd, Ino(Path));
            {error, E} -> Fail(E)
        end
end.
"""

# Stat a trace file and its rotated parts: [{Name, Size}] for those that exist.
STAT_PARTS = r"""
Names = [Path ++ "." ++ integer_to_list(I) || I <- [4, 3, 2, 1, 0]] ++ [Path],
[{list_to_binary(N), element(2, I)} || N <- Names, {ok, I} <- [file:read_file_info(N)]].
"""

# The lease: armed with timer:apply_after on the node, so the trace stops even if we vanish.
# Bindings: Ref (kz_data_tracing ref or undefined), File (string), Trace (lager trace tuple or undefined).
# The first lease is armed before the ref exists (Ref undefined): it then finds the ref by file in
# status() (generation 2), so a client killed before re-arming leaves no entry in kz_data_tracing.
LEASE_STOP = r"""
R1 = case Ref of
    undefined ->
        case catch kz_data_tracing:status() of
            L when is_list(L) ->
                Bin = list_to_binary(File),
                [catch kz_data_tracing:stop_trace(R) || {R, F, _} <- L, F =:= Bin orelse F =:= File];
            _ -> skipped
        end;
    _ -> catch kz_data_tracing:stop_trace(Ref)
end,
R2 = case Trace of undefined -> skipped; _ -> catch lager:stop_trace(Trace) end,
R3 = catch lager:clear_trace_by_destination({lager_file_backend, File}),
{R1, R2, R3}.
"""

# Claim a trace file before starting a trace on it: in_use when a lager file handler already writes
# it (any sink), else create it exclusively (eexist when it is there already). Binding: Path (string).
# One rpc; the exclusive create makes two clients racing for one path see one winner.
CLAIM_PATH = r"""
Hs = lists:append([gen_event:which_handlers(S) || S <- [lager_event, data_lager_event], is_pid(whereis(S))]),
case lists:member({lager_file_backend, Path}, Hs) of
    true -> {error, in_use};
    false ->
        case file:open(Path, [write, exclusive, raw]) of
            {ok, F} -> file:close(F), ok;
            {error, E} -> {error, E}
        end
end.
"""

# Give back a claimed trace file nothing was written to: deleted when it is still empty.
RELEASE_PATH = r"""
case file:read_file_info(Path) of
    {ok, I} when element(2, I) =:= 0 -> file:delete(Path);
    _ -> kept
end.
"""

# File-backend handlers per sink: [{Sink, File}] (finds traces nobody holds a ref for).
LAGER_FILE_TRACES = r"""
Sinks = [S || S <- [lager_event, data_lager_event], is_pid(whereis(S))],
[{S, list_to_binary(F)} || S <- Sinks, {lager_file_backend, F} <- gen_event:which_handlers(S)].
"""

# Remove the file handler of one sink whatever lager remembers of it. Bindings: Sink (atom), File (string).
# clear_trace_by_destination only knows traces lager recorded; a handler added by a trace_file call that
# crashed before recording its trace (a pid value in a filter) is deleted from the sink itself and from
# lager's handler list, as lager's own stop_trace does. Returns {Cleared, Deleted, StillThere}.
CLEAR_FILE_HANDLER = r"""
Id = {lager_file_backend, File},
R1 = (catch lager:clear_trace_by_destination(Id)),
Deleted = case lists:member(Id, gen_event:which_handlers(Sink)) of
    true -> gen_event:delete_handler(Sink, Id, []);
    false -> not_installed
end,
catch lager_config:global_set(handlers, lists:keydelete(Id, 1, lager_config:global_get(handlers, []))),
{R1, Deleted, lists:member(Id, gen_event:which_handlers(Sink))}.
"""

_forms: weakref.WeakKeyDictionary[HiddenNode, dict[str, asyncio.Future[Encoded]]] = weakref.WeakKeyDictionary()


def _parse_on_node(sources: list[str]) -> list[Any]:
    """Abstract forms, built here, of ``lists:map(fun(S) -> {ok, T, _} = erl_scan:string(S),
    {ok, F} = erl_parse:parse_exprs(T), term_to_binary(F) end, Sources)``.

    One rpc that brings back every parsed program already encoded: the tokens never
    cross the wire and the forms are neither decoded nor re-encoded here (that took
    about 20 ms per program and 2 ms per use). Inside a fun, so erl_eval returns no
    bindings. Line annotations are plain integers, valid on every OTP from 18 on.
    """

    def atom(name: str) -> tuple[Any, ...]:
        return (Atom("atom"), 1, Atom(name))

    def var(name: str) -> tuple[Any, ...]:
        return (Atom("var"), 1, Atom(name))

    def call(mod: str, fun: str, *args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (Atom("call"), 1, (Atom("remote"), 1, atom(mod), atom(fun)), list(args))

    def match(pattern: tuple[Any, ...], expr: tuple[Any, ...]) -> tuple[Any, ...]:
        return (Atom("match"), 1, pattern, expr)

    def tup(*items: tuple[Any, ...]) -> tuple[Any, ...]:
        return (Atom("tuple"), 1, list(items))

    body = [
        match(tup(atom("ok"), var("T"), var("_")), call("erl_scan", "string", var("S"))),
        match(tup(atom("ok"), var("F")), call("erl_parse", "parse_exprs", var("T"))),
        call("erlang", "term_to_binary", var("F")),
    ]
    parse: tuple[Any, ...] = (Atom("fun"), 1, (Atom("clauses"), [(Atom("clause"), 1, [var("S")], [], body)]))
    listed: tuple[Any, ...] = (Atom("nil"), 1)
    for source in reversed(sources):
        listed = (Atom("cons"), 1, (Atom("string"), 1, ErlString(source)), listed)
    return [call("lists", "map", parse, listed)]


async def preload(node: HiddenNode, sources: list[str], timeout: float = 10.0) -> None:
    """Parse on the node, in one rpc, those of ``sources`` not parsed on this connection yet.

    A start needs four programs: one round trip for all instead of one each. Callers that
    ask for a program while it is being parsed wait for that parse (no second one).
    """
    cache = _forms.setdefault(node, {})
    todo = [s for s in dict.fromkeys(sources) if s not in cache]
    waiting = [cache[s] for s in dict.fromkeys(sources) if s in cache and not cache[s].done()]
    if todo:
        loop = asyncio.get_running_loop()
        futures = {s: loop.create_future() for s in todo}
        cache.update(futures)
        try:
            parsed = await _parse_many(node, todo, timeout)
        except BaseException as exc:
            for s, fut in futures.items():
                if cache.get(s) is fut:
                    del cache[s]
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: a waiter may or may not be there
            raise
        for s, encoded in zip(todo, parsed, strict=True):
            futures[s].set_result(encoded)
    for fut in waiting:
        await asyncio.shield(fut)


async def _parse_many(node: HiddenNode, sources: list[str], timeout: float) -> list[Encoded]:
    try:
        result = await node.rpc("erl_eval", "exprs", [_parse_on_node(sources), []], timeout=timeout)
    except BadRpcError as exc:
        raise ProgramError(f"the node could not parse a kzbridge program: {exc.message:.200}") from exc
    if not (
        type(result) is tuple
        and len(result) == 3
        and result[0] == Atom("value")
        and type(result[1]) is list
        and len(result[1]) == len(sources)
        and all(type(b) is bytes and b[:2] == b"\x83l" for b in result[1])
    ):
        raise ProgramError(f"the node could not parse a kzbridge program: {result!r:.200}")
    return [Encoded(b[1:]) for b in result[1]]


async def forms(node: HiddenNode, source: str, timeout: float = 10.0) -> Encoded:
    """Abstract forms of ``source``, parsed on the node and kept encoded (cached per connection)."""
    cache = _forms.setdefault(node, {})
    fut = cache.get(source)
    if fut is None or not fut.done():
        await preload(node, [source], timeout)
        fut = cache[source]
    return fut.result()


def bindings(**values: Any) -> list[tuple[Atom, Any]]:
    return sorted(((Atom(k), v) for k, v in values.items()), key=lambda kv: str(kv[0]))


async def evaluate(node: HiddenNode, source: str, timeout: float = 30.0, **values: Any) -> Any:
    """Run ``source`` inside one rpc and return its value."""
    program = await forms(node, source, timeout)
    result = await node.rpc("erl_eval", "exprs", [program, bindings(**values)], timeout=timeout)
    if type(result) is tuple and len(result) == 3 and result[0] == Atom("value"):
        return result[1]
    raise ProgramError(f"unexpected erl_eval result {result!r:.200}")


async def spawn(node: HiddenNode, source: str, timeout: float = 10.0, **values: Any) -> Pid:
    """Run ``source`` in a new process on the node; return its pid. ``timeout`` bounds each call."""
    program = await forms(node, source, timeout)
    pid = await node.rpc(
        "erlang",
        "spawn",
        [Atom("erl_eval"), Atom("exprs"), [program, bindings(**values)]],
        timeout=timeout,
    )
    if type(pid) is not Pid:
        raise RemoteFileError(f"could not start a reader process on the node: {pid!r:.200}")
    return pid


# The governor's one look at the node (kazoo.governor): the sink's mode as lager's throttle
# set it (async | sync; unthrottled when the sink has no throttle, so every call on it is
# synchronous), the sink process's queue (-1: not running), the trace file's size and inode
# (-1 when missing). Bindings: Sink (atom), Path (string, may be "").
SINK_STATE = r"""
Queue = case whereis(Sink) of
    P when is_pid(P) ->
        case erlang:process_info(P, message_queue_len) of {message_queue_len, N} -> N; _ -> -1 end;
    _ -> -1
end,
Mode = case catch lager_config:get({Sink, async}, undefined) of
    true -> async; false -> sync; undefined -> unthrottled; _ -> unknown
end,
{Size, Inode} = case file:read_file_info(Path) of {ok, I} -> {element(2, I), element(12, I)}; _ -> {-1, -1} end,
{Mode, Queue, Size, Inode}.
"""


# The node-side governor of a detached trace (kazoo.governor.guard_detached): nobody on our side
# watches a detached trace, so this process does, once every Interval ms, for at most Lifetime ms
# (what is left of the trace's lease). Each round it takes the governor's own look (SinkState: the
# SINK_STATE forms) and judges as kazoo.governor.Governor does: the trace's event rate (the file's
# growth over the round, divided by the average line size of the last 64 KB written) above MaxRate
# (undefined: no limit), the sink synchronous, or an unthrottled sink with more than QueueLimit
# callers waiting. On any of these it writes one line, an Erlang term
# {kzbridge_governor, Ref, Sink, Causes, Rate, MaxRate, Queue, Mode, UnixSeconds}, to Note (created
# exclusively; never over an existing file), stops the trace with the lease's own program (Stop,
# StopBinds), cancels the lease timer (Tref, or undefined) and ends. It ends without a word when
# the trace's handler is gone (stopped, cleared, its lease fired) or its lifetime is over. It
# knows the handler is gone from the process lager started to watch it (lager_handler_watcher, found
# in lager's handlers list): that process ends when the handler is deleted, whoever deletes it, and
# a newer trace of the same file has another one. A lager without that list gets a helper process
# that asks the sink itself (gen_event:which_handlers, a call, so not from the watchdog: a flooded
# sink answers late) once a round, killed on every way out and ending with the watchdog anyway.
# The watchdog runs at high priority (a few hundred microseconds a second), so the flood it watches
# cannot starve it. Both carry {kzb_governor, Ref} in their process dictionaries, so they can be found
# (the watchdog once it watches: its first look taken).
# Bindings: Ref (binary), Sink (atom), Path (string), MaxRate, QueueLimit, Interval, Lifetime,
# RotateBytes, LineBytes, SinkState, Stop, StopBinds, Tref, Note (string).
WATCHDOG = r"""
process_flag(priority, high),
Me = self(),
Now = fun() -> erlang:monotonic_time(1000) end,
Until = Now() + Lifetime,
Watchers = case catch lager_config:global_get(handlers, []) of
    Hs0 when is_list(Hs0) -> [W || {{lager_file_backend, F}, W, S} <- Hs0, F =:= Path, S =:= Sink, is_pid(W)];
    _ -> []
end,
Helper = case Watchers of
    [Watcher | _] -> erlang:monitor(process, Watcher), none;
    [] ->
        spawn(fun() ->
            put(kzb_governor, Ref),
            M = erlang:monitor(process, Me),
            Ask = fun Ask() ->
                Traced = case catch gen_event:which_handlers(Sink) of
                    Hs when is_list(Hs) -> lists:member({lager_file_backend, Path}, Hs);
                    _ -> false
                end,
                case Traced of
                    false -> Me ! {kzb_gone, self()};
                    true -> receive {'DOWN', M, _, _, _} -> ok after Interval -> Ask() end
                end
            end,
            Ask()
        end)
end,
Done = fun() -> catch exit(Helper, kill), exit(normal) end,
Look = fun() -> {value, V, _} = erl_eval:exprs(SinkState, [{'Path', Path}, {'Sink', Sink}]), V end,
LineSize = fun(Size, Grown) ->
    N = min(min(Grown, 65536), Size),
    Tail = case N > 0 andalso file:open(Path, [read, raw, binary]) of
        {ok, Fd} -> R = file:pread(Fd, Size - N, N), file:close(Fd), R;
        _ -> none
    end,
    case Tail of
        {ok, Bin} ->
            case length(binary:matches(Bin, <<"\n">>)) of
                L when L >= 20 -> byte_size(Bin) / L;
                _ -> LineBytes
            end;
        _ -> LineBytes
    end
end,
Rate = fun
    ({S0, I0, T0}, {S1, I1, T1}) when S0 >= 0, S1 >= 0 ->
        Grown = case I1 =/= I0 orelse S1 < S0 of
            true -> max(0, RotateBytes - S0) + S1;
            false -> S1 - S0
        end,
        Grown / max(LineSize(S1, Grown), 1) / max((T1 - T0) / 1000, 0.001);
    (_, _) -> 0.0
end,
Judge = fun(Mode, Queue, R) ->
    [max_rate || MaxRate =/= undefined, R > MaxRate]
    ++ [synchronous || Mode =:= sync]
    ++ [queue || Mode =:= unthrottled, Queue > QueueLimit]
end,
Halt = fun(Causes, R, Mode, Queue) ->
    catch exit(Helper, kill),
    Line = io_lib:print({kzbridge_governor, Ref, Sink, Causes, round(R), MaxRate, Queue, Mode, erlang:system_time(1)},
                        1, 100000, -1),
    case file:open(Note, [write, exclusive, raw, binary]) of
        {ok, F} -> file:write(F, [Line, ".\n"]), file:close(F);
        _ -> ok
    end,
    catch erl_eval:exprs(Stop, StopBinds),
    case Tref of undefined -> ok; _ -> catch timer:cancel(Tref) end,
    exit(normal)
end,
Loop = fun Loop(Prev) ->
    Left = Until - Now(),
    case Left > 0 of true -> ok; false -> Done() end,
    receive
        {kzb_gone, Helper} -> Done();
        {'DOWN', _, process, _, _} -> Done()
    after min(Interval, Left) -> ok
    end,
    {Mode, Queue, Size, Inode} = Look(),
    Here = {Size, Inode, Now()},
    R = Rate(Prev, Here),
    case Judge(Mode, Queue, R) of
        [] -> Loop(Here);
        Causes ->
            receive
                {kzb_gone, Helper} -> Done();
                {'DOWN', _, process, _, _} -> Done()
            after 0 -> Halt(Causes, R, Mode, Queue)
            end
    end
end,
{_, _, S, I} = Look(),
put(kzb_governor, Ref),
Loop({S, I, Now()}).
"""
# What TraceSession.start and the run after it use: preloaded in one rpc (programs.preload).
START_PROGRAMS = [SINK_STATE, CLAIM_PATH, LEASE_STOP, READER]
