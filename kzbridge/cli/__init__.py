"""The kzbridge command line: the group, its shared options and the one error handler.

Every failure ends as one line on stderr and a documented exit code:
  0 ok   1 other error (a local file could not be written: disk full, cache full)
  2 bad usage or filter   3 cannot connect / connection lost
  4 remote call failed   5 timeout   6 node lacks what we need (tracing, ref, file)
  7 sandbox problem   130 interrupted (Ctrl-C) or terminated (SIGTERM, SIGHUP) before the trace could be collected
`kzbridge sup` uses sup's own codes instead (see its --help).

Commands live in modules by family (node_cmds, trace_cmds, detached_cmds,
sandbox_cmds, cluster_cmds, report_cmds), each registering its commands on ``main``
when it loads; ``main`` loads only the module of the command being run
(``COMMAND_MODULES``). render.py draws.
The library's errors are words plus the setting they are about; ``error_line``
turns a setting into this face's option name (``OPTION_OF``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import click

from .. import __version__, limits
from ..cookie import cookie_for_node
from ..errors import KzBridgeError, LocalFileError, RpcTimeoutError, TraceLostError, UsageError
from .render import safe_text

if TYPE_CHECKING:
    from ..wire.names import Routes
    from ..wire.node import HiddenNode
    from ..wire.tls import TlsSettings

# Heavier modules (asyncio, the tracing layer, the sandbox) are imported inside the
# commands that need them: a one-shot `kzbridge rpc` should not pay for all of them.

EXIT_INTERRUPTED = 130
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The library's settings (errors.SETTINGS) as this command line spells them.
OPTION_OF = {
    "node": "--node",
    "cookie": "--cookie",
    "timeout": "--timeout",
    "lease": "--lease",
    "duration": "--duration",
    "max_size": "--max-size",
    "remote_path": "--remote-path",
    "local_path": "--output",
    "sink": "--sink",
    "level": "--level",
    "format": "--format",
    "filters": "--filter",
    "generation": "--generation",
    "name": "--name",
    "max_total_size": "--max-total-size",
    "max_rate": "--max-rate",
    "governor": "--no-governor",
    "mode": "--mode",
    "address": "--address",
    "epmd_port": "--epmd-port",
    "tls": "--tls",
    "tls_ca": "--tls-ca",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_verify": "--tls-verify",
    "tls_server_name": "--tls-server-name",
    "tls_optfile": "--tls-optfile",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so it unwinds like Ctrl-C (partial files named, exit 130)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def interrupted_word(exc: BaseException) -> str:
    return "terminated" if isinstance(exc, Terminated) else "interrupted"


def parse_mode(text: str | None) -> int | None:
    """``--mode 0640`` (octal, as chmod takes it) -> 0o640; None stays None (0600)."""
    if text is None:
        return None
    t = text.strip()
    if not t or len(t) > 5 or any(c not in "01234567" for c in t.removeprefix("0o")):
        raise UsageError(f"bad mode {text!r}: write octal permission bits, e.g. 0600 or 0640", setting="mode")
    value = int(t.removeprefix("0o"), 8)
    if value > 0o777:
        raise UsageError(f"bad mode {text!r}: only permission bits (at most 0777)", setting="mode")
    return value


def resume_hint(exc: TraceLostError) -> str:
    """How an operator gets the rest of a trace whose connection went away."""
    return (
        f"if the node is still up, the lease stops trace {exc.ref} within {exc.lease:g}s; "
        f"collect the rest later with: kzbridge collect {exc.remote_path} --rotated"
    )


def local_file_hint(exc: LocalFileError) -> str | None:
    """Where the whole trace still is, and the command that brings it back."""
    if not exc.remote_path:
        return exc.hint
    node = f" -n {exc.node}" if exc.node else ""
    return f"collect it with: kzbridge collect {exc.remote_path} --rotated{node} -o NEWFILE"


def error_line(exc: KzBridgeError) -> str:
    """``kzbridge: error: MESSAGE (HINT; see --option)``, one line, terminal-safe.

    Messages carry text from the peer (its node name from the handshake, file names, what
    it answered): control characters and newlines in it are shown escaped (render.safe_text).
    """
    notes: list[str | None]
    if isinstance(exc, TraceLostError):
        notes = [resume_hint(exc)]
    elif isinstance(exc, LocalFileError):
        notes = [local_file_hint(exc)]
    else:
        notes = [exc.hint]
    option = OPTION_OF.get(exc.setting or "")
    if option:
        notes.append(f"see {option}")
    said = "; ".join(n for n in notes if n)
    return safe_text(f"kzbridge: error: {exc.message}" + (f" ({said})" if said else ""))


def warning_line(text: str) -> str:
    """``kzbridge: warning: TEXT (see --option)`` for a TraceWarning (or any text)."""
    option = OPTION_OF.get(getattr(text, "setting", None) or "")
    return safe_text(f"kzbridge: warning: {text}" + (f" (see {option})" if option else ""))


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so later writes do not raise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(exc: KzBridgeError) -> None:
    click.echo(error_line(exc), err=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """Turns every library error into one line and its exit code, and any bug into one line too."""

    def invoke(self, ctx: click.Context) -> Any:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)  # a silent exit -15 would name no partial file
            if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # a closed terminal, as SIGTERM (not under nohup)
                signal.signal(signal.SIGHUP, _on_sigterm)
        try:
            return super().invoke(ctx)
        except KzBridgeError as exc:
            _fail(exc)
        except click.UsageError as exc:  # click's own (unknown option, missing argument, bad choice): one line too
            where = exc.ctx.command_path if exc.ctx is not None else "kzbridge"
            click.echo(safe_text(f"kzbridge: error: {exc.format_message()} (see {where} --help)"), err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt as exc:
            click.echo(f"kzbridge: {interrupted_word(exc)}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(0)
        except Exception as exc:  # a bug: still one line, details on demand
            if os.environ.get("KZBRIDGE_DEBUG"):
                raise
            click.echo(
                safe_text(
                    f"kzbridge: internal error: {type(exc).__name__}: {exc} (set KZBRIDGE_DEBUG=1 for a traceback)"
                ),
                err=True,
            )
            sys.exit(1)


# Which module defines each top-level command. A command's module is imported only when that
# command runs (or when --help lists them all): a one-shot `kzbridge rpc` loads node_cmds, not
# the trace, cluster, sandbox and report families. tests/test_cli_lazy.py checks this table
# against what the modules define.
COMMAND_MODULES = {
    "ping": "node_cmds",
    "rpc": "node_cmds",
    "sup": "node_cmds",
    "wait": "node_cmds",
    "trace-module": "trace_cmds",
    "trace-function": "trace_cmds",
    "trace-pid": "trace_cmds",
    "trace": "trace_cmds",
    "start": "detached_cmds",
    "status": "detached_cmds",
    "stop": "detached_cmds",
    "clear": "detached_cmds",
    "collect": "detached_cmds",
    "sandbox": "sandbox_cmds",
    "demo": "sandbox_cmds",
    "nodes": "cluster_cmds",
    "merge": "cluster_cmds",
    "report": "report_cmds",
    "summary": "report_cmds",
}


class LazyGroup(Group):
    """The top-level group: its commands are registered by their modules as those load, and a
    module is loaded the first time one of its commands is asked for (click's "lazy loading
    of subcommands"). Listing the commands (``--help``) loads every module."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            # An unknown name loads every module: click's "Did you mean" draws on ``self.commands``.
            wanted = COMMAND_MODULES.get(cmd_name)
            for module in [wanted] if wanted else sorted(set(COMMAND_MODULES.values())):
                # Registers its commands on ``main``. (__import__, not importlib.import_module:
                # `python -X importtime` reports only the former.)
                __import__(f"{__name__}.{module}")
        return self.commands.get(cmd_name)


class NumberType(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.3 on
    """A finite number in the setting's range (limits.RANGES, or ``lo``/``hi``): nan, inf and
    out-of-range values are one usage error naming the option, before anything is sent."""

    name = "number"

    def __init__(self, setting: str, lo: float | None = None, hi: float | None = None) -> None:
        self.setting, self.lo, self.hi = setting, lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        flag = param.opts[0] if param is not None and param.opts else OPTION_OF.get(self.setting, self.setting)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return limits.check_number(value, self.setting, self.lo, self.hi, name=flag)
        return limits.parse_number(str(value), self.setting, self.lo, self.hi, name=flag)


def raw_option(fn: F) -> F:
    """--raw: print the node's text byte for byte (control characters included) instead of escaped."""
    return click.option(
        "--raw",
        is_flag=True,
        help="Print text from the node as it is, control characters included (default: escaped on output).",
    )(fn)


_NODE_HELP = "Target node, name@host (env KZBRIDGE_NODE), e.g. kazoo_apps@kazoo1."
_NODES_HELP = (
    "Target node, name@host; repeat it, or separate names with commas (env KZBRIDGE_NODE), to run on several "
    "nodes at once."
)


class TlsOptions(NamedTuple):  # not a dataclass: see wire.names.Route
    """The --tls* options as given (None: not given), before the optfile is read."""

    enabled: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool | None = None
    server_name: str | None = None
    optfile: str | None = None

    @property
    def wanted(self) -> bool:
        """--tls, or any --tls-* option (each implies TLS distribution)."""
        return self.enabled or any(
            v is not None for v in (self.ca, self.cert, self.key, self.verify, self.server_name, self.optfile)
        )


class ConnectSettings(NamedTuple):
    """Where and how the nodes are reached (--address, --epmd-port, --tls*), as the command line gave them.

    The options store it in click's context (``ctx.meta``) rather than passing it to each
    command function, so every node command takes them without a parameter of its own;
    ``run_with_node``, ``call_once`` and the cluster commands read it through ``routes_for``.
    """

    addresses: tuple[str, ...] = ()
    epmd_port: int | None = None
    tls: TlsOptions = TlsOptions()


_SETTINGS = "kzbridge.connect"
_TLS_BUILT = "kzbridge.tls"


def connect_settings() -> ConnectSettings:
    """The current command's --address/--epmd-port/--tls* (defaults outside a command, e.g. in the demo)."""
    ctx = click.get_current_context(silent=True)
    return connect_settings_of(ctx) if ctx is not None else ConnectSettings()


def tls_settings() -> TlsSettings | None:
    """The current command's TLS distribution settings (None: plain TCP): the --tls-optfile's
    client section with the --tls-* options on top. Built once per command, when the first
    connection is made; its warnings (verification off, a key file others can read) are
    printed then, every time."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    if _TLS_BUILT in ctx.meta:
        built: TlsSettings | None = ctx.meta[_TLS_BUILT]
        return built
    opts = connect_settings_of(ctx).tls
    settings: TlsSettings | None = None
    if opts.wanted:
        from ..wire import tls

        base = None
        if opts.optfile is not None:
            base, unused = tls.read_optfile(opts.optfile)
            if unused:
                click.echo(
                    warning_line(f"the TLS optfile's client options {', '.join(unused)} are not used by kzbridge"),
                    err=True,
                )
        settings = tls.merge(
            base,
            ca_file=opts.ca,
            cert_file=opts.cert,
            key_file=opts.key,
            verify=opts.verify,
            server_name=opts.server_name,
        )
        settings.check_files()
        for text in settings.warnings():
            click.echo(warning_line(text), err=True)
    ctx.meta[_TLS_BUILT] = settings
    return settings


def routes_for(nodes: Iterable[str], *, more_nodes: bool = False) -> Routes:
    """The Routes for ``nodes`` from --address/--epmd-port/--tls* (checked against the node names;
    with ``more_nodes``, e.g. --cluster, a NODE=HOST for a node found later is allowed)."""
    from ..wire.names import Routes

    s = connect_settings()
    return Routes.build(list(nodes), s.addresses or None, s.epmd_port, more_nodes=more_nodes, tls=tls_settings())


def _store_addresses(ctx: click.Context, param: click.Parameter, value: tuple[str, ...] | None) -> None:
    from ..wire.names import parse_address, split_node_name

    for text in value or ():
        node, sep, where = text.partition("=")
        if sep:
            try:
                split_node_name(node.strip())
            except UsageError as exc:
                raise UsageError(f"--address {text!r}: {exc.message}", setting="address") from None
        parse_address(where if sep else text)  # the syntax now; node names when the command runs
    ctx.meta[_SETTINGS] = connect_settings_of(ctx)._replace(addresses=tuple(value or ()))


def _store_epmd_port(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from ..wire.names import check_port

    port = check_port(value, "epmd_port") if value is not None else None
    ctx.meta[_SETTINGS] = connect_settings_of(ctx)._replace(epmd_port=port)


def _tls_store(field_name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback keeping one --tls* option's value in the context's ConnectSettings."""

    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if field_name == "enabled":
            value = bool(value)
        elif isinstance(value, str) and not value.strip():
            value = None  # an empty environment variable is no setting
        current = connect_settings_of(ctx)
        ctx.meta[_SETTINGS] = current._replace(tls=current.tls._replace(**{field_name: value}))
        ctx.meta.pop(_TLS_BUILT, None)

    return store


def _tls_options(fn: F) -> F:
    """--tls and the --tls-* options: stored in the context (ConnectSettings.tls), like --address."""
    file_type = click.Path(dir_okay=False)
    options = [
        click.option(
            "--tls",
            is_flag=True,
            envvar="KZBRIDGE_TLS",
            show_envvar=True,
            expose_value=False,
            callback=_tls_store("enabled"),
            help="Speak TLS distribution (nodes started with -proto_dist inet_tls). EPMD stays plain. "
            "Every --tls-* option implies it.",
        ),
        click.option(
            "--tls-ca",
            type=file_type,
            envvar="KZBRIDGE_TLS_CA",
            show_envvar=True,
            metavar="FILE",
            expose_value=False,
            callback=_tls_store("ca"),
            help="PEM file of the CA that signed the nodes' certificates (default: the system's CAs).",
        ),
        click.option(
            "--tls-cert",
            type=file_type,
            envvar="KZBRIDGE_TLS_CERT",
            show_envvar=True,
            metavar="FILE",
            expose_value=False,
            callback=_tls_store("cert"),
            help="Our client certificate (PEM), for nodes that require one (verify_peer, fail_if_no_peer_cert).",
        ),
        click.option(
            "--tls-key",
            type=file_type,
            envvar="KZBRIDGE_TLS_KEY",
            show_envvar=True,
            metavar="FILE",
            expose_value=False,
            callback=_tls_store("key"),
            help="The client certificate's private key (PEM; default: inside --tls-cert). Never printed; "
            "a warning if others can read it.",
        ),
        click.option(
            "--tls-verify/--no-tls-verify",
            default=None,
            envvar="KZBRIDGE_TLS_VERIFY",
            show_envvar=True,
            expose_value=False,
            callback=_tls_store("verify"),
            help="Check the node's certificate: chain to the CA, dates, name (default). "
            "--no-tls-verify prints a warning every time.",
        ),
        click.option(
            "--tls-server-name",
            envvar="KZBRIDGE_TLS_SERVER_NAME",
            show_envvar=True,
            metavar="NAME",
            expose_value=False,
            callback=_tls_store("server_name"),
            help="The name the node's certificate must hold (default: the host in the node's name).",
        ),
        click.option(
            "--tls-optfile",
            type=file_type,
            envvar="KZBRIDGE_TLS_OPTFILE",
            show_envvar=True,
            metavar="FILE",
            expose_value=False,
            callback=_tls_store("optfile"),
            help="The cluster's ssl_dist_optfile: its client section (cacertfile, certfile, keyfile, verify, "
            "server_name_indication, versions) is used; --tls-* options override it.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def connect_settings_of(ctx: click.Context) -> ConnectSettings:
    found = ctx.meta.get(_SETTINGS)
    return found if isinstance(found, ConnectSettings) else ConnectSettings()


def _connection_options(fn: F, timeout_default: float = 10.0, timeout_help: str | None = None) -> F:
    """Cookie options, --timeout, --json, --address, --epmd-port and --tls*: the same for one node or many.

    --address, --epmd-port and the TLS options reach no command function: they are stored
    in the context (ConnectSettings) and read where the connections are made.
    """

    @click.option(
        "--cookie",
        "-c",
        envvar="KZBRIDGE_COOKIE",
        default=None,
        show_envvar=True,
        help="Erlang cookie (never printed). Falls back to --cookie-file, a sandbox of that name, "
        "then ~/.erlang.cookie. The same cookie is used for every node.",
    )
    @click.option("--cookie-file", type=click.Path(dir_okay=False), default=None, help="File holding the cookie.")
    @click.option(
        "--timeout",
        type=NumberType("timeout"),
        default=timeout_default,
        show_default=True,
        help=timeout_help
        or "Seconds for the command's whole work on the node (connecting and every call); "
        "for trace runs and file transfers, for connecting and for each call.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option(
        "--address",
        multiple=True,
        metavar="[NODE=]HOST[:PORT]",
        expose_value=False,
        callback=_store_addresses,
        help="Reach the node at HOST instead of the host in its name (which then need not resolve): "
        "HOST's EPMD gives the port, or with :PORT connect to that distribution port and ask no EPMD. "
        "The handshake still uses the node's real name. With several nodes a plain HOST applies to "
        "each node given; NODE=HOST[:PORT] (repeatable) sets one node's.",
    )
    @click.option(
        "--epmd-port",
        envvar="ERL_EPMD_PORT",
        show_envvar=True,
        default=None,
        metavar="PORT",
        expose_value=False,
        callback=_store_epmd_port,
        help="EPMD's port on the nodes' hosts (default 4369).",
    )
    @_tls_options
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def node_options(fn: F) -> F:
    """--node, cookie options, --timeout, --json on every command that talks to one node."""
    option = click.option("--node", "-n", envvar="KZBRIDGE_NODE", required=True, help=_NODE_HELP)
    return option(_connection_options(fn))


def nodes_options(fn: F) -> F:
    """As node_options, for commands that run on several nodes: --node repeated, --cluster, --exclude."""
    fn = click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out the nodes whose names match GLOB (repeatable), e.g. --exclude 'ecallmgr@*'.",
    )(fn)
    fn = click.option(
        "--cluster",
        "cluster_seed",
        metavar="SEED",
        default=None,
        help="Every node of SEED's cluster (Kazoo's kz_nodes table; else nodes() and SEED's host EPMD).",
    )(fn)
    option = click.option("--node", "-n", envvar="KZBRIDGE_NODE", multiple=True, help=_NODES_HELP)
    return option(_connection_options(fn))


def run_with_node(
    node: str,
    cookie: str | None,
    cookie_file: str | None,
    timeout: float,
    body: Callable[[HiddenNode], Awaitable[T]],
    ticktime: float = 60.0,
    *,
    overall: bool = True,
) -> T:
    """Connect an asyncio node, run ``body`` with it, close it.

    With ``overall`` (the default) ``timeout`` is a deadline over all of it, connecting
    included: a node that stops answering ends the command in ``timeout`` seconds with
    exit 5, whatever the calls inside were given. Commands whose length is set by other
    limits (a trace's duration, a file transfer) pass ``overall=False``: then ``timeout``
    bounds connecting and each call the body makes with it.
    """
    import asyncio

    from ..wire.node import connect_node

    route = routes_for([node]).route(node)
    secret = cookie_for_node(node, cookie, cookie_file)

    async def whole() -> T:
        hidden = await connect_node(node, secret, timeout=timeout, ticktime=ticktime, route=route)
        try:
            return await body(hidden)
        finally:
            await hidden.close()

    async def main() -> T:
        if not overall:
            return await whole()
        try:
            return await asyncio.wait_for(whole(), timeout)
        except asyncio.TimeoutError:
            raise RpcTimeoutError(
                f"{node} did not finish answering within {timeout:g}s",
                hint="the node may be overloaded or stalled",
                setting="timeout",
            ) from None

    return asyncio.run(main())


def emit_json(value: Any) -> None:
    import json  # here: a one-shot command without --json does not load it

    click.echo(json.dumps(value, ensure_ascii=False, default=str))


def parse_size(text: str, setting: str = "max_size") -> int:
    """A size option's text (100MB, 512k, 1048576) in bytes; finite and in range (limits.parse_size)."""
    return limits.parse_size(text, setting)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kzbridge")
def main() -> None:
    """Trace Kazoo nodes from anywhere, as a hidden Erlang node.

    kzbridge joins the cluster over Erlang distribution (no SSH, no sup), starts a
    kz_data_tracing trace, watches it, always stops it (a lease on the node stops it
    even if kzbridge dies) and brings the file back, parsed.

    \b
    Quick start, without a Kazoo at hand:
      kzbridge demo
    Against a node:
      kzbridge trace-module kz_json --node kazoo_apps@host --duration 30 -o trace.log
    Against every node of a cluster, merged into one timeline corrected for clock skew:
      kzbridge trace --filter callid=CALLID --cluster kazoo_apps@host -o call-run/

    Exit codes: 0 ok, 1 other error, 2 bad usage or filter, 3 connection, 4 remote call
    failed, 5 timeout, 6 node lacks tracing/ref/file, 7 sandbox, 130 interrupted.
    """


__all__ = [
    "COMMAND_MODULES",
    "EXIT_INTERRUPTED",
    "OPTION_OF",
    "ConnectSettings",
    "NumberType",
    "Terminated",
    "error_line",
    "main",
    "parse_mode",
    "raw_option",
    "routes_for",
    "warning_line",
]
