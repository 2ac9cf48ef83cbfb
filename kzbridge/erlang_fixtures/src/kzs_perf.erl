%%% Fixture traffic: datastore profiling the way Kazoo 4.0/4.1's kzs_perf logged it,
%%% with mod/func/from_app/duration/database metadata on the data sink.
-module(kzs_perf).
-export([profile/3]).

profile(App, Database, {Mod, Fun, Args}) ->
    Start = erlang:monotonic_time(microsecond),
    Result = (catch erlang:apply(Mod, Fun, Args)),
    Duration = erlang:monotonic_time(microsecond) - Start,
    data:info([{mod, Mod}, {func, Fun}, {from_app, App}, {duration, Duration}, {database, Database}],
              "~s:~s took ~b us on ~s", [Mod, Fun, Duration, Database]),
    Result.
