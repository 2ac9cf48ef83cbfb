%%% Fixture: the supervisor that owns kz_data_tracing, with Kazoo's restart intensity
%%% (more than 5 restarts in 10 s takes the supervisor down).
-module(kazoo_data_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Tracing = #{id => kz_data_tracing,
                start => {kz_data_tracing, start_link, []},
                restart => permanent, shutdown => 5000, type => worker,
                modules => [kz_data_tracing]},
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, [Tracing]}}.
