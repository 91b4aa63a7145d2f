%% CPU workload for the BEAM JIT: loop/1 calls burn/2, a counting loop, for the number of
%% seconds given: `erl -noshell +JPperf true -run hot main SECONDS`.
-module(hot).
-export([main/1]).

burn(0, Acc) -> Acc;
burn(N, Acc) -> burn(N - 1, (Acc * 31 + N) rem 1000003).

loop(End) ->
    burn(100000, 1),
    case erlang:monotonic_time(millisecond) < End of
        true -> loop(End);
        false -> ok
    end.

main([Secs]) ->
    loop(erlang:monotonic_time(millisecond) + list_to_integer(Secs) * 1000),
    halt().
