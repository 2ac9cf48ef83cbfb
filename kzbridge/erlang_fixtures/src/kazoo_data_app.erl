%%% Fixture application kazoo_data: starts kazoo_data_sup as Kazoo's kazoo_data app does.
-module(kazoo_data_app).
-behaviour(application).
-export([start/2, stop/1]).

start(_Type, _Args) -> kazoo_data_sup:start_link().
stop(_State) -> ok.
