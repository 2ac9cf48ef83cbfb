%%% Fixture: Kazoo's view of its cluster. On Kazoo, the kz_nodes gen_listener keeps one
%%% #kz_node{} record per node seen in AMQP heartbeats in the ETS table kz_nodes, the node
%%% name in tuple element 2, expires and last_heartbeat after it. The fixture has no AMQP:
%%% the test tells each node who its peers are with join/1.
-module(kz_nodes).
-export([start/0, join/1, nodes/0]).

-define(TABLE, kz_nodes).
-define(EXPIRES_MS, 6000).

%% The table belongs to a process that lives as long as the node, like Kazoo's listener.
start() ->
    Self = self(),
    Pid = spawn(fun() ->
                        ?TABLE = ets:new(?TABLE, [named_table, public, set, {keypos, 2}]),
                        Self ! {?MODULE, ready},
                        receive stop -> ok end
                end),
    receive {?MODULE, ready} -> ok after 5000 -> exit({kz_nodes_not_started, Pid}) end,
    join([node()]).

%% Records for Nodes, as if their heartbeats had arrived now.
join(Nodes) ->
    Now = erlang:system_time(millisecond),
    true = ets:insert(?TABLE, [{kz_node, N, ?EXPIRES_MS, Now} || N <- Nodes]),
    ok.

nodes() ->
    [element(2, R) || R <- ets:tab2list(?TABLE)].
