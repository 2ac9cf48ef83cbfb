%%% Fixture traffic: a module named kz_json so `trace-module kz_json` has something to
%%% match. Logs through the data sink (data:...) and the main sink (lager:...).
-module(kz_json).
-export([get_value/2, set_value/3, encode/1]).

get_value(Key, Doc) ->
    data:debug("get_value ~s from doc with ~b keys", [Key, length(Doc)]),
    lager:debug("kz_json:get_value ~s", [Key]),
    proplists:get_value(Key, Doc).

set_value(Key, Value, Doc) ->
    data:info("set_value ~s = ~p | pipes|and:colons:here", [Key, Value]),
    lager:info("kz_json:set_value ~s", [Key]),
    [{Key, Value} | proplists:delete(Key, Doc)].

encode(Doc) ->
    data:notice("encode: ~b keys~nsecond line of the same message~nthird: a|b:c", [length(Doc)]),
    lager:notice("kz_json:encode ~b keys", [length(Doc)]),
    io_lib:format("~p", [Doc]).
