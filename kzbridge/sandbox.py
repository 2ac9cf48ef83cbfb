"""The sandbox: a local fixture node that behaves like Kazoo's tracing side.

It compiles the Erlang fixtures shipped inside the package (``kzbridge/erlang_fixtures``)
with erlc (cached by source hash), starts epmd if needed and a detached BEAM on loopback,
and waits until kz_data_tracing answers. State (node, cookie file, OS pid) lives in
``<cache>/sandboxes`` (:mod:`kzbridge.cachedir`) so ``sandbox list/stop`` and cookie lookup
work from another process.

The cookie is on no command line: ``erl -setcookie`` would show it to every user in
``ps``. Instead each sandbox gets a private home directory (0700) holding a 0400
``.erlang.cookie``, which is where the BEAM reads its cookie from; kzbridge's own copy
(``<name>.cookie``, for ``--cookie-file`` and lookup by node name) is created 0600 with
O_EXCL, never world-readable even for a moment.

Clock and zone (for tests of clock skew and time zones): ``start(faketime="+3.5s")`` runs
the BEAM under libfaketime (Debian's ``faketime`` package): ``LD_PRELOAD`` of
``libfaketimeMT.so.1`` (the thread-safe build: the BEAM runs many threads) and
``FAKETIME`` set to the value ("+3600s", "-2s", "@2026-11-25 23:59:58"; relative offsets
and "@" start times keep the clock running). Measured with Debian's OTP 25 and
libfaketime 0.9.10: the BEAM starts and runs reliably with the defaults, monotonic time
faked along with the wall clock, so erlang:system_time/1, os:timestamp/0 and
erlang:monotonic_time/0 stay consistent. Neither ``DONT_FAKE_MONOTONIC=1`` nor
``FAKETIME_NO_CACHE=1`` was needed (both also worked); the latter only matters when the
value is changed while the node runs (a FAKETIME file), and costs a re-read on every
clock call, so it is not set. Any of these variables in the caller's environment are
dropped: only what ``start`` is asked for reaches the BEAM. ``start(tz="America/New_York")`` sets the
BEAM's ``TZ``; lager's timestamps are local time, so they follow both.

TLS distribution: ``start(tls="mutual")`` (or ``"server-auth"``) makes a throwaway CA, a
server certificate for 127.0.0.1 and a client certificate (kzbridge.certs, with the
``openssl`` command) in the sandbox's directory, and starts the BEAM with ``-proto_dist
inet_tls -ssl_dist_optfile FILE``. "mutual": the node requires a client certificate signed
by that CA (``verify_peer``, ``fail_if_no_peer_cert``); "server-auth": only we check the
node's. ``Sandbox.tls_settings()`` is how to connect; the files go with the sandbox on stop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import limits
from .cachedir import cache_dir, subdir
from .errors import KzBridgeError, SandboxError, UsageError
from .wire.terms import Atom

# asyncio, concurrent.futures, hashlib and secrets are imported where they are used: every
# command without --cookie asks this module for a sandbox's cookie (cookie.cookie_for_node),
# and a one-shot `kzbridge rpc` should not load an event loop, ssl or OpenSSL's libcrypto for it.

if TYPE_CHECKING:
    from .wire.names import Route
    from .wire.tls import TlsSettings

_TRUE = Atom("true")
T = TypeVar("T")

LOOPBACK = "127.0.0.1"
TLS_MODES = ("mutual", "server-auth")

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
)


def fixtures_dir() -> Path:
    """The Erlang fixture sources: package data, or ``KZBRIDGE_FIXTURES`` when set."""
    env = os.environ.get("KZBRIDGE_FIXTURES")
    path = Path(env) if env else Path(__file__).resolve().parent / "erlang_fixtures"
    if not (path / "src" / "kz_data_tracing.erl").exists():
        raise SandboxError(
            f"Erlang fixtures not found in {path}",
            hint="reinstall kzbridge, or set KZBRIDGE_FIXTURES to a copy of kzbridge/erlang_fixtures",
        )
    return path


def state_dir() -> Path:
    return subdir("sandboxes")


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise SandboxError(f"{tool} not found", hint="apt-get install -y erlang-nox erlang-lager")
    return found


def faketime_library() -> str:
    """Path of libfaketime's thread-safe library (Debian package ``faketime``/``libfaketime``)."""
    candidates = list(FAKETIME_LIBS)
    try:
        listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=False).stdout
        candidates = [line for line in listed.splitlines() if line.endswith("/libfaketimeMT.so.1")] + candidates
    except OSError:  # no dpkg: only the known paths
        pass
    for path in candidates:
        if os.path.exists(path):
            return path
    raise SandboxError("libfaketime not found", hint="apt-get install -y faketime")


def build_fixtures() -> Path:
    """Compiled fixture beams, rebuilt only when the sources change."""
    import hashlib

    src = fixtures_dir()
    digest = hashlib.sha256()
    for path in [*sorted((src / "src").iterdir()), src / "bin" / "build.sh"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = cache_dir() / "fixtures" / digest.hexdigest()[:16]
    if (out / "gen2" / "kz_data_tracing.beam").exists():
        return out
    _require("erlc")
    proc = subprocess.run(["sh", str(src / "bin" / "build.sh"), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SandboxError(
            f"compiling the Erlang fixtures failed: {detail[-1] if detail else proc.returncode}",
            hint="apt-get install -y erlang-nox erlang-lager",
        )
    return out


def ensure_epmd() -> None:
    subprocess.run([_require("epmd"), "-daemon"], check=False, capture_output=True)


@dataclass
class Sandbox:
    """A running fixture node."""

    node: str
    cookie_file: str
    generation: int
    rate: float
    os_pid: int
    started: float
    faketime: str | None = None
    tz: str | None = None
    tls_mode: str | None = None  # TLS distribution: "mutual" or "server-auth"
    tls_dir: str | None = None  # its CA, certificates and optfile

    @property
    def cookie(self) -> str:
        return Path(self.cookie_file).read_text().strip()

    @property
    def name(self) -> str:
        return self.node.split("@")[0]

    def tls_settings(self) -> TlsSettings | None:
        """How to connect to this sandbox's TLS distribution (None: plain): its CA and client certificate."""
        if self.tls_dir is None:
            return None
        from .wire.tls import TlsSettings

        d = Path(self.tls_dir)
        return TlsSettings(ca_file=str(d / "ca.pem"), cert_file=str(d / "client.pem"), key_file=str(d / "client.key"))

    @property
    def tls_optfile(self) -> str | None:
        """The node's ssl_dist_optfile (its client section works for kzbridge's --tls-optfile too)."""
        return str(Path(self.tls_dir) / "dist.conf") if self.tls_dir is not None else None

    def route(self) -> Route | None:
        """The route to this sandbox: with its TLS settings, or None for plain distribution."""
        from .wire.names import Route

        tls = self.tls_settings()
        return Route(tls=tls) if tls is not None else None

    def alive(self) -> bool:
        try:
            os.kill(self.os_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _state_file(name: str) -> Path:
    return state_dir() / f"{name}.json"


def _validate_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise UsageError(f"sandbox name {name!r} may hold only letters, digits, _ and -")
    return name


def _load(path: Path) -> Sandbox | None:
    try:
        return Sandbox(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def find(name: str) -> Sandbox | None:
    return _load(_state_file(_validate_name(name.split("@")[0])))


def cookie_for(node: str) -> str | None:
    """The cookie of a sandbox we started with this node name, if any."""
    try:
        box = find(node)
    except UsageError:
        return None
    if box is not None and box.node == node and box.alive():
        return box.cookie
    return None


def list_sandboxes() -> list[Sandbox]:
    out = []
    for path in sorted(state_dir().glob("*.json")):
        box = _load(path)
        if box is None:
            continue
        if box.alive():
            out.append(box)
        else:
            path.unlink(missing_ok=True)
    return out


async def _wait_ready(
    node: str, cookie: str, deadline: float, proc: subprocess.Popen[bytes] | None, route: Route | None = None
) -> int:
    import asyncio

    from .errors import TlsError
    from .wire.node import connect_node

    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() not in (None, 0):
            raise SandboxError(f"the fixture node exited with code {proc.returncode} while starting")
        try:
            hidden = await connect_node(node, cookie, timeout=2.0, route=route)
            try:
                if await hidden.rpc("kz_fixture", "ready", [], timeout=2.0) == _TRUE:
                    return int(await hidden.rpc("os", "getpid", [], timeout=2.0))
            finally:
                await hidden.close()
        except TlsError as exc:
            if not isinstance(exc.__cause__, (ConnectionResetError, ConnectionAbortedError)):
                raise SandboxError(f"the fixture node {node} refused our TLS connection: {exc}") from exc
            last = exc  # the node closed while its distribution was still starting
        except KzBridgeError as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise SandboxError(f"the fixture node {node} did not become ready: {last}")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when called inside a running event loop
    (an async test calling ``start``): then in a thread of its own, blocking the caller's loop meanwhile."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _write_private(path: Path, text: str, mode: int) -> None:
    """Create ``path`` afresh with ``mode`` (never readable by others, not even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _environment(home: Path, faketime: str | None, tz: str | None) -> dict[str, str]:
    env = dict(os.environ, HOME=str(home))
    for var in ("LD_PRELOAD", "FAKETIME", "FAKETIME_NO_CACHE", "DONT_FAKE_MONOTONIC"):
        env.pop(var, None)  # only what was asked for reaches the BEAM
    if faketime is not None:
        if not faketime.strip():
            raise UsageError(
                "faketime must be an offset such as '+3.5s' or a start time such as '@2026-11-25 23:59:58'"
            )
        env.update(LD_PRELOAD=faketime_library(), FAKETIME=faketime)
    if tz is not None:
        if not tz or not (Path("/usr/share/zoneinfo") / tz).is_file() or ".." in tz:
            raise UsageError(
                f"unknown time zone {tz!r}", hint="a name from /usr/share/zoneinfo (apt-get install tzdata)"
            )
        env["TZ"] = tz
    return env


def start(
    name: str = "kzsandbox",
    *,
    cookie: str | None = None,
    generation: int = 2,
    rate: float = 20.0,
    timeout: float = 30.0,
    faketime: str | None = None,
    tz: str | None = None,
    tls: str | None = None,
) -> Sandbox:
    """Start a fixture node named ``name@127.0.0.1``; refuses if one of that name runs.

    ``faketime``: run the node's clock off by this libfaketime value ("+3600s", "-2s",
    "@2026-11-25 23:59:58"). ``tz``: the node's time zone ("America/New_York").
    ``tls``: run TLS distribution, "mutual" or "server-auth" (see the module docstring).
    """
    _validate_name(name)
    if generation not in (1, 2):
        raise UsageError("--generation must be 1 or 2")
    if tls is not None and tls not in TLS_MODES:
        raise UsageError(f"TLS mode must be one of {', '.join(TLS_MODES)}, not {tls!r}", setting="tls")
    rate = limits.check_number(rate, "rate", name="--rate")
    existing = find(name)
    if existing is not None and existing.alive():
        raise SandboxError(
            f"sandbox {existing.node} is already running (pid {existing.os_pid})",
            hint=f"kzbridge sandbox stop --name {name}",
        )
    build = build_fixtures()
    workdir = state_dir() / name
    home = workdir / "home"
    shutil.rmtree(workdir, ignore_errors=True)
    home.mkdir(mode=0o700, parents=True)
    env = _environment(home, faketime, tz)
    ensure_epmd()
    node = f"{name}@{LOOPBACK}"
    import secrets

    cookie = cookie or secrets.token_hex(16)
    cookie_file = state_dir() / f"{name}.cookie"
    _write_private(cookie_file, cookie, 0o600)
    _write_private(home / ".erlang.cookie", cookie, 0o400)  # read by the BEAM: no -setcookie in ps
    dist: list[str] = []
    tls_dir: str | None = None
    if tls is not None:
        tls_dir = str(workdir / "tls")
        optfile = make_tls_files(tls_dir, mutual=tls == "mutual")
        dist = ["-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile]
    cmd = [
        _require("erl"), "-detached", "-noinput", "-name", node, *dist,
        "-pa", str(build / "common"), "-pa", str(build / f"gen{generation}"),
        "-config", str(fixtures_dir() / "config" / "sys"),
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        "-eval", f"kz_fixture:boot({rate!r})",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    box = Sandbox(node, str(cookie_file), generation, float(rate), 0, time.time(), faketime, tz, tls, tls_dir)
    box.os_pid = _run(_wait_ready(node, cookie, time.monotonic() + timeout, proc, box.route()))
    _state_file(name).write_text(json.dumps(asdict(box)))
    return box


def make_tls_files(directory: str, *, mutual: bool) -> str:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and the
    ssl_dist_optfile naming them (returned): what a TLS sandbox runs with."""
    from .certs import Pki, dist_optfile

    pki = Pki.create(directory, name="kzbridge sandbox CA")
    server = pki.issue("server", common_name=LOOPBACK, alt_names=(LOOPBACK, "localhost"))
    client = pki.issue("client", common_name="kzbridge", client=True)
    return dist_optfile(Path(directory) / "dist.conf", ca=pki.ca, server=server, client=client, mutual=mutual)


def trace_files(box: Sandbox) -> list[str]:
    """The trace files kzbridge recorded as written on this sandbox, rotated parts included.

    They come from the journal (entries of exactly this node, since it started), and only
    those kzbridge named itself (``/tmp/kzbridge-NAME-STAMP-HEX.log``): a ``--remote-path``
    the user chose is the user's file. Another sandbox whose name starts with this one's
    (``atk6`` and ``atk6-x``) has other entries and other names, so it keeps its files.
    """
    from .kazoo import journal

    own = re.compile(rf"/tmp/kzbridge-{re.escape(box.name)}-\d{{8}}-\d{{6}}-[0-9a-f]+\.log\Z")
    out: list[str] = []
    for e in journal.load():
        if e.node == box.node and e.started >= box.started - 60 and own.match(e.remote_path):
            out += [e.remote_path] + [f"{e.remote_path}.{i}" for i in range(5)]
    return out


def stop(name: str, timeout: float = 10.0) -> bool:
    """Stop a sandbox; False if none of that name was running."""
    box = find(name)
    if box is None:
        return False
    if box.alive():
        try:
            os.kill(box.os_pid, signal.SIGTERM)  # the BEAM stops cleanly on SIGTERM (OTP 19.3+)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while box.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if box.alive():
            os.kill(box.os_pid, signal.SIGKILL)
            while box.alive():
                time.sleep(0.05)
    # The sandbox ran on this machine, so the trace files kzbridge wrote on it are here;
    # they go with it (collected copies are elsewhere).
    for f in trace_files(box):
        Path(f).unlink(missing_ok=True)
    _state_file(box.name).unlink(missing_ok=True)
    Path(box.cookie_file).unlink(missing_ok=True)
    shutil.rmtree(state_dir() / box.name, ignore_errors=True)  # the node's working and home directory
    return True


def info(box: Sandbox) -> dict[str, Any]:
    return {**asdict(box), "cookie_file": box.cookie_file}
