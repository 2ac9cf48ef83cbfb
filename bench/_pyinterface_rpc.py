"""rpc latency of py-interface 2.3 (PyPI, a test dependency), run by bench/rpc.py in its own process.

    python bench/_pyinterface_rpc.py NODE COOKIE EPMD_PORT CALLS WARMUP

py-interface speaks only the old (version 5) handshake. Prints one JSON line: ``{"times": [us, ...]}``,
or ``{"na": "why"}`` when it cannot talk to the node (an OTP 25.0-25.2 node refuses the old handshake;
py-interface then never calls back, so a deadline decides).
"""

import collections
import collections.abc
import json
import os
import sys
import time

collections.MutableMapping = collections.abc.MutableMapping  # py-interface 2.3 predates Python 3.10

from py_interface import erl_epmd, erl_eventhandler, erl_node, erl_opts

FIRST_ANSWER_WITHIN = 5.0


def main() -> None:
    node, cookie, port, calls, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    # py-interface asks the remote host's EPMD on port 4369 whatever its options say; ours is private.
    erl_epmd.ErlEpmd.__init__.__defaults__ = ("localhost", port)
    opts = erl_opts.ErlNodeOpts(cookie=cookie, epmdPort=port, epmdHost="127.0.0.1", shortNodeNames=0)
    me = erl_node.ErlNode(f"pyi{os.getpid()}@127.0.0.1", opts)
    mbox = me.CreateMBox(None)
    loop = erl_eventhandler.GetEventHandler()
    times: list[float] = []
    state = {"t0": 0, "left": warmup + calls, "answered": False, "bad": ""}

    def send() -> None:
        state["t0"] = time.perf_counter_ns()
        mbox.SendRPC(node, "erlang", "node", [], on_reply)

    def on_reply(result: object) -> None:
        t = time.perf_counter_ns() - state["t0"]
        state["answered"] = True
        if getattr(result, "atomText", None) != node:
            state["bad"] = f"unexpected reply {result!r:.100}"
            loop.StopLooping()
            return
        state["left"] -= 1
        if state["left"] < calls:
            times.append(t / 1000)
        if state["left"] == 0:
            loop.StopLooping()
        else:
            send()

    def give_up() -> None:
        if not state["answered"]:
            loop.StopLooping()

    def pinged(answer: str) -> None:
        if answer == "pong":
            send()
        else:
            state["bad"] = f"ping answered {answer} (old handshake refused)"
            loop.StopLooping()

    loop.AddTimerEvent(FIRST_ANSWER_WITHIN, give_up)
    me.Ping(node, pinged)
    loop.Loop()
    if state["bad"]:
        print(json.dumps({"na": state["bad"]}))
    elif not state["answered"]:
        print(json.dumps({"na": f"no answer within {FIRST_ANSWER_WITHIN:g}s (old handshake refused?)"}))
    else:
        print(json.dumps({"times": times}))


if __name__ == "__main__":
    main()
