"""An independent v5-only Erlang node for tests: py-interface 2.3 (PyPI), not our code.

Usage: python pyinterface_echo.py NAME@HOST COOKIE EPMD_PORT
Registers with EPMD (protocol 5 only) and runs a mailbox registered as `echo` that
answers {FromPid, Msg} by sending {echo, Msg} back to FromPid. Prints READY when published.
"""

import collections
import collections.abc
import sys

collections.MutableMapping = collections.abc.MutableMapping  # py-interface 2.3 predates Python 3.10

from py_interface import erl_eventhandler, erl_node, erl_opts, erl_term  # noqa: E402


def main() -> None:
    name, cookie, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    short = 0 if "." in name.split("@", 1)[1] else 1
    opts = erl_opts.ErlNodeOpts(cookie=cookie, epmdPort=port, epmdHost="127.0.0.1", shortNodeNames=short)
    node = erl_node.ErlNode(name, opts)

    def on_msg(msg, *extra):
        if isinstance(msg, tuple) and len(msg) == 2:
            mbox.Send(msg[0], (erl_term.ErlAtom("echo"), msg[1]))

    mbox = node.CreateMBox(on_msg)
    mbox.RegisterName("echo")

    def published(*args):
        print("READY", flush=True)

    node.SetEpmdConnectedOkCb(published)
    node.Publish()
    erl_eventhandler.GetEventHandler().Loop()


if __name__ == "__main__":
    main()
