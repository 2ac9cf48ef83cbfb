%%% Fixture reproducing Kazoo's kz_data_tracing contract (see shared/kazoo-contract.md).
%%% Written for kzbridge's tests; not Kazoo code. Compiled twice:
%%%   -DKZ_GEN1  generation 1 (Kazoo 4.0/4.1): trace_file/0..3 (3rd arg = whole lager
%%%              property list), stop_trace/1.
%%%   default    generation 2 (Kazoo 4.2+, 4.3, master): adds trace_file/4, status/0,1,
%%%              clear_all_traces/0; 3rd arg = formatter_config only; trace_file/0,1,2
%%%              wrap the default property list twice (the measured empty-file defect).
-module(kz_data_tracing).
-behaviour(gen_server).

-ifdef(KZ_GEN1).
-export([trace_file/0, trace_file/1, trace_file/2, trace_file/3, stop_trace/1]).
-else.
-export([trace_file/0, trace_file/1, trace_file/2, trace_file/3, trace_file/4,
         stop_trace/1, status/0, status/1, clear_all_traces/0]).
-endif.
-export([start_link/0, generation/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, code_change/3]).

-define(SERVER, ?MODULE).
-define(SINK, data_lager_event).
-define(DEFAULT_FILTERS, [{function, '*'}]).
-define(DEFAULT_FORMAT,
        [time, " [", severity, "] |", from_app, "|", {callid, <<"0000000000">>}, "|",
         mod, ":", func, ":", line, " (", pid, ") ", message, "\n"]).
-define(DEFAULT_PROPS, [{formatter, lager_default_formatter}, {formatter_config, ?DEFAULT_FORMAT}]).

start_link() ->
    gen_server:start_link({local, ?SERVER}, ?MODULE, [], []).

-ifdef(KZ_GEN1).
generation() -> 1.
-else.
generation() -> 2.
-endif.

trace_file() ->
    trace_file(?DEFAULT_FILTERS).

trace_file(Filters) ->
    trace_file(Filters, default_filename()).

-ifdef(KZ_GEN1).
trace_file(Filters, Filename) ->
    trace_file(Filters, Filename, ?DEFAULT_PROPS).

trace_file(Filters, Filename, Props) ->
    gen_server:call(?SERVER, {trace_file, Filters, Filename, debug, Props}).
-else.
%% Generation 2's defect: the default *property list* is passed where only a
%% format list belongs, and trace_file/4 wraps it again.
trace_file(Filters, Filename) ->
    trace_file(Filters, Filename, ?DEFAULT_PROPS).

trace_file(Filters, Filename, Format) ->
    trace_file(Filters, Filename, Format, debug).

trace_file(Filters, Filename, Format, Level) ->
    Props = [{formatter, lager_default_formatter}, {formatter_config, Format}],
    gen_server:call(?SERVER, {trace_file, Filters, Filename, Level, Props}).

status() ->
    gen_server:call(?SERVER, status).

status(Ref) ->
    gen_server:call(?SERVER, {status, Ref}).

clear_all_traces() ->
    gen_server:call(?SERVER, clear_all_traces, 3600000).
-endif.

stop_trace(Ref) ->
    gen_server:call(?SERVER, {stop_trace, Ref}).

default_filename() ->
    Hex = to_hex(crypto_rand(16)),
    <<"/tmp/", Hex/binary, ".log">>.

new_ref() ->
    to_hex(crypto_rand(6)).

crypto_rand(N) ->
    list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).

to_hex(Bin) ->
    list_to_binary([io_lib:format("~2.16.0b", [B]) || <<B>> <= Bin]).

%%% gen_server

init([]) ->
    {ok, #{}}.

handle_call({trace_file, Filters, Filename, Level, Props}, _From, Traces) ->
    %% Like Kazoo, no validation: lager decides, and some inputs crash this server.
    ledger(Filename),
    case lager:trace_file(to_list(Filename), [{sink, ?SINK} | Filters], Level, Props) of
        {ok, Trace} ->
            Ref = new_ref(),
            {reply, {ok, Ref}, Traces#{Ref => {Filename, Trace}}};
        {error, _} = Error ->
            {reply, Error, Traces}
    end;
handle_call({stop_trace, Ref}, _From, Traces) ->
    case maps:take(Ref, Traces) of
        {{Filename, Trace}, Rest} ->
            lager:stop_trace(Trace),
            {reply, {ok, Filename}, Rest};
        error ->
            {reply, {error, invalid_trace}, Traces}
    end;
handle_call(status, _From, Traces) ->
    {reply, [{Ref, File, Trace} || {Ref, {File, Trace}} <- maps:to_list(Traces)], Traces};
handle_call({status, Ref}, _From, Traces) ->
    case maps:find(Ref, Traces) of
        {ok, {File, Trace}} -> {reply, {Ref, File, Trace}, Traces};
        error -> {reply, false, Traces}
    end;
handle_call(clear_all_traces, _From, Traces) ->
    Results = [{Ref, lager:stop_trace(Trace)} || {Ref, {_File, Trace}} <- maps:to_list(Traces)],
    {reply, Results, #{}};
handle_call(_Request, _From, Traces) ->
    {reply, {error, not_implemented}, Traces}.

handle_cast(_Msg, Traces) -> {noreply, Traces}.
handle_info(_Info, Traces) -> {noreply, Traces}.
terminate(_Reason, _Traces) -> ok.
code_change(_Old, Traces, _Extra) -> {ok, Traces}.

%% Not Kazoo: with KZ_FIXTURE_LEDGER set (kzbridge's tests set it), every file this node
%% is asked to trace into is appended to that file first, so a test run can delete exactly
%% the files its own nodes made (the default /tmp/<hex>.log names say nothing of their owner).
ledger(Filename) ->
    case os:getenv("KZ_FIXTURE_LEDGER") of
        false -> ok;
        "" -> ok;
        Ledger -> file:write_file(Ledger, [to_list(Filename), "\n"], [append])
    end.

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) -> L.
