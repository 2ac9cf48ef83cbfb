%%% Fixture control: boot the fixture node and generate bulk log traffic on demand.
-module(kz_fixture).
-export([boot/1, ready/0, burst/3, flood/4, stamp/0, info/0, chain/3]).

%% Called from the node's command line: start lager, kazoo_data, traffic at Rate events/s.
boot(Rate) ->
    {ok, _} = application:ensure_all_started(lager),
    {ok, _} = application:ensure_all_started(kazoo_data),
    {ok, _} = kz_traffic:start(Rate),
    ok = kz_nodes:start(),
    ok.

ready() ->
    is_pid(whereis(kz_data_tracing)).

info() ->
    #{generation => kz_data_tracing:generation(), rate => kz_traffic:rate(),
      otp => list_to_binary(erlang:system_info(otp_release)),
      lager => element(3, lists:keyfind(lager, 1, application:which_applications()))}.

%% Log Count messages of about Size bytes through Sink (data or lager), from kz_json's
%% callers so module filters match. Returns the bytes of message text emitted.
burst(Sink, Count, Size) ->
    Pad = binary:copy(<<"x">>, max(0, Size)),
    lager:md([{callid, <<"burst-call">>}, {request, <<"burst">>}]),
    [emit(Sink, I, Pad) || I <- lists:seq(1, Count)],
    Count * byte_size(Pad).

%% A flood like a busy node's: Procs processes each log through Sink (data or lager) as fast
%% as lager lets them, for Ms milliseconds, with request metadata <<"flood">>; returns at once.
%% Many concurrent loggers are what keep a throttled sink synchronous: each one blocked in
%% a synchronous call still holds one message in the sink's queue.
flood(Sink, Procs, Ms, Size) ->
    Pad = binary:copy(<<"x">>, max(0, Size)),
    Until = erlang:monotonic_time(millisecond) + Ms,
    _ = [spawn(fun() -> flood_loop(Sink, P, 1, Pad, Until) end) || P <- lists:seq(1, Procs)],
    ok.

flood_loop(Sink, P, I, Pad, Until) ->
    case I of
        1 -> lager:md([{callid, <<"flood-call">>}, {request, <<"flood">>}, {worker, P}]);
        _ -> ok
    end,
    case erlang:monotonic_time(millisecond) < Until of
        true -> flood_emit(Sink, P, I, Pad), flood_loop(Sink, P, I + 1, Pad, Until);
        false -> ok
    end.

flood_emit(data, P, I, Pad) -> data:info("flood ~b.~b ~s", [P, I, Pad]);
flood_emit(lager, P, I, Pad) -> lager:info("flood ~b.~b ~s", [P, I, Pad]).

%% One data-sink event carrying the wall-clock time (us) it was logged at (latency benches).
stamp() ->
    lager:md([{request, <<"stamp">>}]),
    data:info("stamp ~b", [os:system_time(microsecond)]).

emit(data, I, Pad) -> data:info("burst ~b ~s", [I, Pad]);
emit(lager, I, Pad) -> lager:info("burst ~b ~s", [I, Pad]).

%% One call crossing nodes: log step Step of CallId here (data sink and main log, callid
%% metadata as Kazoo sets it), then hand the call to the next hop, which logs Step + 1.
%% A hop is a node sharing our cookie, or {Node, Cookie} (sandboxes have a cookie each). A hop takes
%% 20 ms, as AMQP hops between Kazoo nodes take milliseconds: steps closer together than
%% the nodes' clock uncertainty (a fraction of a millisecond here) could not be ordered.
chain(CallId, Hops, Step) ->
    _ = spawn(fun() -> chain_step(CallId, Hops, Step) end),
    ok.

chain_step(CallId, Hops, Step) ->
    lager:md([{callid, CallId}, {request, <<"chain">>}]),
    data:info("chain ~s step ~b", [CallId, Step]),
    lager:info("chain ~s step ~b", [CallId, Step]),
    case Hops of
        [] -> ok;
        [{Next, Cookie} | Rest] ->
            timer:sleep(20),
            true = erlang:set_cookie(Next, Cookie),
            true = rpc:cast(Next, kz_fixture, chain, [CallId, Rest, Step + 1]);
        [Next | Rest] when is_atom(Next) ->  % a node that shares our cookie
            timer:sleep(20),
            true = rpc:cast(Next, kz_fixture, chain, [CallId, Rest, Step + 1])
    end.
