%%% Fixture: the maintenance wrappers `sup` runs. Arguments are binaries, as `sup`
%%% passes them; results are printed through the caller's group leader.
-module(kazoo_data_maintenance).
-export([trace_module/1, trace_function/1, trace_function/2, trace_pid/1, stop_trace/1]).

trace_module(Module) ->
    start_trace([{module, to_atom(Module)}]).

trace_function(Function) ->
    start_trace([{function, to_atom(Function)}]).

trace_function(Module, Function) ->
    start_trace([{module, to_atom(Module)}, {function, to_atom(Function)}]).

%% Passed through unchanged, as Kazoo does: "0.116.0" matches nothing.
trace_pid(Pid) ->
    start_trace([{pid, to_list(Pid)}]).

stop_trace(Ref) ->
    case kz_data_tracing:stop_trace(to_binary(Ref)) of
        {ok, File} ->
            io:format("trace stopped, see log at ~s~n", [File]);
        {error, Reason} ->
            io:format("failed to stop trace ~s: ~p~n", [Ref, Reason])
    end.

start_trace(Filters) ->
    case kz_data_tracing:trace_file(Filters) of
        {ok, Ref} ->
            io:format("trace started, stop with 'sup kazoo_data_maintenance stop_trace ~s'~n", [Ref]);
        {error, Reason} ->
            io:format("failed to start trace: ~p~n", [Reason])
    end.

to_atom(A) when is_atom(A) -> A;
to_atom(B) when is_binary(B) -> binary_to_atom(B, utf8);
to_atom(L) when is_list(L) -> list_to_atom(L).

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) when is_list(L) -> L.

to_binary(B) when is_binary(B) -> B;
to_binary(L) when is_list(L) -> list_to_binary(L).
