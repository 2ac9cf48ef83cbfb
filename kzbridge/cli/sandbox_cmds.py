"""The local fixture node: sandbox start/stop/list, and the demo that traces one end to end."""

from __future__ import annotations

import os

import click

from ..errors import UsageError
from ..kazoo import filters as flt
from . import NumberType, emit_json, main
from .render import record_line
from .trace_cmds import TraceOptions, run_trace_command


@main.group()
def sandbox() -> None:
    """A local fixture node that behaves like Kazoo's tracing side (for tests and demos)."""


@sandbox.command("start")
@click.option("--name", default="kzsandbox", show_default=True, help="Node name (the host is 127.0.0.1).")
@click.option("--cookie", default=None, help="Cookie (default: random, kept in a 0600 file).")
@click.option(
    "--generation",
    type=click.Choice(["1", "2"]),
    default="2",
    show_default=True,
    help="kz_data_tracing API generation: 1 = Kazoo 4.0/4.1, 2 = Kazoo 4.2+.",
)
@click.option(
    "--rate",
    type=NumberType("rate"),
    default=20.0,
    show_default=True,
    help="Data-sink log events per second from the traffic workers.",
)
@click.option(
    "--faketime",
    default=None,
    metavar="SPEC",
    help="Run the node's clock off by SPEC under libfaketime: +3.5s, -2s, or '@2026-11-25 23:59:58' "
    "(to try clock correction across nodes and midnight).",
)
@click.option("--tz", default=None, metavar="ZONE", help="The node's time zone, e.g. America/New_York.")
@click.option(
    "--tls",
    is_flag=True,
    help="Run TLS distribution (-proto_dist inet_tls) with a throwaway CA, server and client certificate "
    "made here with openssl; prints the --tls-* options to connect with.",
)
@click.option(
    "--tls-mode",
    type=click.Choice(["mutual", "server-auth"]),
    default="mutual",
    show_default=True,
    help="mutual: the node requires our client certificate (verify_peer, fail_if_no_peer_cert); "
    "server-auth: only we check the node's.",
)
@click.option("--json", "as_json", is_flag=True)
def sandbox_start(
    name: str,
    cookie: str | None,
    generation: str,
    rate: float,
    faketime: str | None,
    tz: str | None,
    tls: bool,
    tls_mode: str,
    as_json: bool,
) -> None:
    """Compile the fixtures if needed, start epmd and the node, wait until it answers."""
    from .. import sandbox as sandbox_mod

    box = sandbox_mod.start(
        name,
        cookie=cookie,
        generation=int(generation),
        rate=rate,
        faketime=faketime,
        tz=tz,
        tls=tls_mode if tls else None,
    )
    if as_json:
        emit_json(sandbox_mod.info(box))
        return
    click.echo(box.node)
    click.echo(
        f"kzbridge: sandbox up (generation {box.generation}, {box.rate:g} events/s, pid {box.os_pid}); "
        f"kzbridge finds its cookie by node name, or use --cookie-file {box.cookie_file}",
        err=True,
    )
    settings = box.tls_settings()
    if settings is not None:
        flags = f"--tls-ca {settings.ca_file}"
        if box.tls_mode == "mutual":
            flags += f" --tls-cert {settings.cert_file} --tls-key {settings.key_file}"
        click.echo(
            f"kzbridge: TLS distribution ({box.tls_mode}); connect with:\n"
            f"  kzbridge ping --node {box.node} {flags}\n"
            f"  or: kzbridge ping --node {box.node} --tls-optfile {box.tls_optfile}",
            err=True,
        )


@sandbox.command("stop")
@click.option("--name", default="kzsandbox", show_default=True)
def sandbox_stop(name: str) -> None:
    """Stop a sandbox node, and delete the trace files this machine's journal recorded on it."""
    from .. import sandbox as sandbox_mod

    if not sandbox_mod.stop(name):
        raise UsageError(f"no sandbox named {name!r} is running", hint="kzbridge sandbox list")
    click.echo(f"stopped {name}")


@sandbox.command("list")
@click.option("--json", "as_json", is_flag=True)
def sandbox_list(as_json: bool) -> None:
    """Running sandbox nodes started from this machine."""
    from .. import sandbox as sandbox_mod

    boxes = sandbox_mod.list_sandboxes()
    if as_json:
        emit_json([sandbox_mod.info(b) for b in boxes])
        return
    for b in boxes:
        click.echo(f"{b.node}  generation {b.generation}  rate {b.rate:g}/s  pid {b.os_pid}")
    if not boxes:
        click.echo("no sandboxes running", err=True)


@main.command()
@click.option("--duration", type=NumberType("duration", lo=1), default=5.0, show_default=True)
@click.option("--generation", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the sandbox running afterwards.")
def demo(duration: float, generation: str, keep: bool) -> None:
    """Start a sandbox, trace kz_json on it, show the result, stop the sandbox.

    Needs only Debian's erlang-nox and erlang-lager.
    """
    from .. import sandbox as sandbox_mod

    name = f"kzdemo{os.getpid()}"
    click.echo(f"kzbridge demo: starting a fixture node (generation {generation})...", err=True)
    box = sandbox_mod.start(name, generation=int(generation), rate=40)
    out = f"demo-{name}.log"
    try:
        click.echo(f"$ kzbridge trace-module kz_json --node {box.node} --duration {duration:g} -o {out}", err=True)
        run_trace_command(
            flt.module_filter("kz_json"), TraceOptions((box.node,), cookie=box.cookie, duration=duration, output=out)
        )
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        if not keep:
            sandbox_mod.stop(name)
    from ..kazoo.logparse import parse_lines

    with open(out, encoding="utf-8", errors="replace") as fh:
        records = list(parse_lines(fh))
    click.echo(f"\nfirst events of {len(records)} parsed from {out}:")
    for rec in records[:8]:
        click.echo("  " + record_line(rec, False).replace("\n", "\n    "))
