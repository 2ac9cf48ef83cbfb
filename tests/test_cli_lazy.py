"""The command line loads only the module of the command being run (issue 14's one-shot cost).

``kzbridge.cli.main`` maps each command name to the module that defines it
(``COMMAND_MODULES``) and imports that module when the command is asked for; ``--help``
and an unknown command's "Did you mean" load them all. These tests run real commands in
fresh interpreters against a real node and look at what those interpreters imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import click

from kzbridge.cli import COMMAND_MODULES, main

FAMILIES = {"node_cmds", "trace_cmds", "detached_cmds", "sandbox_cmds", "cluster_cmds", "report_cmds"}

# Runs kzbridge as ``python -m kzbridge`` does, then prints the modules it imported as the last line.
PROBE = """
import json, sys
from kzbridge.__main__ import run
sys.argv = ["kzbridge", *sys.argv[1:]]
try:
    run()
finally:
    print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
"""


def probe(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str], str]:
    """The command's result, the modules its interpreter held at exit, and its own stdout."""
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    out, _, last = res.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("MODULES "), (res.returncode, res.stdout, res.stderr)
    return res, set(json.loads(last.removeprefix("MODULES "))), out


def loaded_families(modules: set[str]) -> set[str]:
    return {m.rsplit(".", 1)[1] for m in modules if m.startswith("kzbridge.cli.") and m.endswith("_cmds")}


def test_the_table_names_every_command_and_the_module_that_defines_it():
    for module in sorted(FAMILIES):
        __import__(f"kzbridge.cli.{module}")
    defined = {name: cmd.callback.__module__ for name, cmd in main.commands.items() if cmd.callback is not None}
    assert set(main.commands) == set(COMMAND_MODULES)
    assert defined == {name: f"kzbridge.cli.{module}" for name, module in COMMAND_MODULES.items()}
    assert set(COMMAND_MODULES.values()) == FAMILIES


def test_rpc_and_ping_load_only_their_own_family(sandbox_gen2):
    node, cookie = sandbox_gen2.node, sandbox_gen2.cookie
    for args, said in [
        (["rpc", "-n", node, "-c", cookie, "erlang", "node"], f"'{node}'"),
        (["ping", "-n", node, "-c", cookie], f"pong from {node}"),
        (["rpc", "-n", node, "erlang", "node"], f"'{node}'"),  # the cookie found by the sandbox's name
    ]:
        res, modules, out = probe(*args)
        assert res.returncode == 0 and out.startswith(said), (res.stdout, res.stderr)
        assert loaded_families(modules) == {"node_cmds"}, sorted(modules)
        # The blocking client's path: no event loop, no tracing domain, no TLS for plain TCP.
        heavy = {m for m in modules if m.split(".")[0] in {"asyncio", "ssl"} or m.startswith("kzbridge.kazoo")}
        assert heavy == set(), sorted(heavy)
        # Defining a dataclass costs about a millisecond at every start: none on this path (but the
        # sandbox's cookie look-up, which reads the sandbox's state).
        assert "-c" not in args or "dataclasses" not in modules


def test_a_failing_one_shot_command_still_loads_one_family_and_says_one_line(sandbox_gen2):
    res, modules, _ = probe("rpc", "-n", sandbox_gen2.node, "-c", sandbox_gen2.cookie, "nomod", "nofun")
    assert res.returncode == 4 and "undefined function nomod:nofun/0" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert loaded_families(modules) == {"node_cmds"}


def test_help_lists_every_command_with_its_short_help():
    res, modules, out = probe("--help")
    assert res.returncode == 0, res.stderr
    assert loaded_families(modules) == FAMILIES
    listed = out.split("Commands:\n", 1)[1]
    ctx = click.Context(main)
    for name in COMMAND_MODULES:
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        words = cmd.get_short_help_str(limit=30).removesuffix("...").split()[:3]
        assert re.search(rf"^  {re.escape(name)} +{re.escape(' '.join(words))}", listed, re.M), (name, listed)


def test_an_unknown_command_is_still_one_line_with_a_suggestion():
    res, _, _ = probe("rpcc", "-n", "x@h")
    assert res.returncode == 2
    assert res.stderr.strip() == "kzbridge: error: No such command 'rpcc'. Did you mean 'rpc'? (see kzbridge --help)"


def test_a_subcommand_group_loads_its_family_only():
    res, modules, out = probe("sandbox", "--help")
    assert res.returncode == 0 and "start" in out and "stop" in out, res.stderr
    # sandbox_cmds builds on trace_cmds (demo runs a trace); nothing else comes with it.
    assert loaded_families(modules) == {"sandbox_cmds", "trace_cmds"}
