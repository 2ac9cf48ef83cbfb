%%% Fixture traffic: worker processes that log continuously at a configurable total
%%% rate (events per second on the data sink), each with its own callid and request
%%% metadata set by lager:md/1, from several modules and functions.
-module(kz_traffic).
-export([start/1, stop/0, set_rate/1, rate/0, workers/0, worker_init/1]).

-define(WORKERS, 4).

start(Rate) ->
    set_rate(Rate),
    stop(),
    Pids = [spawn(?MODULE, worker_init, [N]) || N <- lists:seq(1, ?WORKERS)],
    persistent_term:put({?MODULE, workers}, Pids),
    {ok, Pids}.

stop() ->
    [exit(P, kill) || P <- workers()],
    persistent_term:put({?MODULE, workers}, []),
    ok.

workers() ->
    persistent_term:get({?MODULE, workers}, []).

set_rate(Rate) when is_number(Rate), Rate >= 0 ->
    persistent_term:put({?MODULE, rate}, Rate),
    ok.

rate() ->
    persistent_term:get({?MODULE, rate}, 0).

worker_init(N) ->
    CallId = list_to_binary(io_lib:format("call-~b-~8.16.0b", [N, rand:uniform(16#ffffffff)])),
    lager:md([{callid, CallId}, {request, request_id(N)}, {request_id, request_id(N)}, {worker, N}]),
    loop(N, 0).

request_id(N) ->
    list_to_binary(io_lib:format("req-~b", [N])).

loop(N, Count) ->
    Rate = rate(),
    case Rate > 0 of
        false ->
            timer:sleep(200),
            loop(N, Count);
        true ->
            %% Each iteration emits three data-sink events; spread the rate over the workers.
            Interval = max(1, round(1000 * 3 * ?WORKERS / Rate)),
            timer:sleep(Interval),
            step(N, Count),
            loop(N, Count + 1)
    end.

step(N, Count) ->
    Doc = [{<<"n">>, N}, {<<"count">>, Count}],
    Key = <<"count">>,
    _ = kz_json:get_value(Key, Doc),
    Doc2 = kz_json:set_value(<<"seen">>, Count, Doc),
    _ = kzs_perf:profile(kazoo_data, <<"account%2Fab%2Fcd%2Fef">>, {kz_json, encode, [Doc2]}),
    lager:info("traffic worker ~b iteration ~b", [N, Count]).
