"""The sandbox: a local fixture node that behaves like Kazoo's tracing side.

It compiles erlang_fixtures/ with erlc (cached by source hash), starts epmd if
needed and a detached BEAM on loopback, and waits until kz_data_tracing answers.
State (node, cookie file, OS pid) lives in ``~/.cache/kzbridge/sandboxes`` so
``sandbox list/stop`` and cookie lookup work from another process.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import KzBridgeError, SandboxError, UsageError
from .wire.terms import Atom

_TRUE = Atom("true")

LOOPBACK = "127.0.0.1"


def fixtures_dir() -> Path:
    env = os.environ.get("KZBRIDGE_FIXTURES")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "erlang_fixtures"
    if not (path / "src" / "kz_data_tracing.erl").exists():
        raise SandboxError(f"Erlang fixtures not found in {path}", hint="set KZBRIDGE_FIXTURES to erlang_fixtures/")
    return path


def cache_dir() -> Path:
    base = os.environ.get("KZBRIDGE_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "kzbridge" if not os.environ.get("KZBRIDGE_CACHE") else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    path = cache_dir() / "sandboxes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise SandboxError(f"{tool} not found", hint="apt-get install -y erlang-nox erlang-lager")
    return found


def build_fixtures() -> Path:
    """Compiled fixture beams, rebuilt only when the sources change."""
    src = fixtures_dir()
    digest = hashlib.sha256()
    for path in sorted((src / "src").iterdir()) + [src / "bin" / "build.sh"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = cache_dir() / "fixtures" / digest.hexdigest()[:16]
    if (out / "gen2" / "kz_data_tracing.beam").exists():
        return out
    _require("erlc")
    proc = subprocess.run(["sh", str(src / "bin" / "build.sh"), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SandboxError(f"compiling the Erlang fixtures failed: {detail[-1] if detail else proc.returncode}",
                           hint="apt-get install -y erlang-nox erlang-lager")
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

    @property
    def cookie(self) -> str:
        return Path(self.cookie_file).read_text().strip()

    @property
    def name(self) -> str:
        return self.node.split("@")[0]

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


def find(name: str) -> Sandbox | None:
    path = _state_file(_validate_name(name.split("@")[0]))
    if not path.exists():
        return None
    try:
        return Sandbox(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


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
        try:
            box = Sandbox(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            continue
        if box.alive():
            out.append(box)
        else:
            path.unlink(missing_ok=True)
    return out


async def _wait_ready(node: str, cookie: str, deadline: float, proc: subprocess.Popen | None) -> int:
    import asyncio

    from .wire.node import connect_node
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() not in (None, 0):
            raise SandboxError(f"the fixture node exited with code {proc.returncode} while starting")
        try:
            hidden = await connect_node(node, cookie, timeout=2.0)
            try:
                if await hidden.rpc("kz_fixture", "ready", [], timeout=2.0) == _TRUE:
                    return int(await hidden.rpc("os", "getpid", [], timeout=2.0))
            finally:
                await hidden.close()
        except KzBridgeError as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise SandboxError(f"the fixture node {node} did not become ready: {last}")




def start(name: str = "kzsandbox", *, cookie: str | None = None, generation: int = 2, rate: float = 20.0,
          timeout: float = 30.0) -> Sandbox:
    """Start a fixture node named ``name@127.0.0.1``; refuses if one of that name runs."""
    _validate_name(name)
    if generation not in (1, 2):
        raise UsageError("--generation must be 1 or 2")
    if rate < 0:
        raise UsageError("--rate must be 0 or more")
    existing = find(name)
    if existing is not None and existing.alive():
        raise SandboxError(f"sandbox {existing.node} is already running (pid {existing.os_pid})",
                           hint=f"kzbridge sandbox stop --name {name}")
    build = build_fixtures()
    ensure_epmd()
    node = f"{name}@{LOOPBACK}"
    cookie = cookie or secrets.token_hex(16)
    cookie_file = state_dir() / f"{name}.cookie"
    cookie_file.touch(mode=0o600)
    os.chmod(cookie_file, 0o600)
    cookie_file.write_text(cookie)
    workdir = state_dir() / name
    workdir.mkdir(exist_ok=True)
    cmd = [
        _require("erl"), "-detached", "-noinput", "-name", node, "-setcookie", cookie,
        "-pa", str(build / "common"), "-pa", str(build / f"gen{generation}"),
        "-config", str(fixtures_dir() / "config" / "sys"),
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        "-eval", f"kz_fixture:boot({rate!r})",
    ]
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    import asyncio
    os_pid = asyncio.run(_wait_ready(node, cookie, time.monotonic() + timeout, proc))
    box = Sandbox(node, str(cookie_file), generation, float(rate), os_pid, time.time())
    _state_file(name).write_text(json.dumps(asdict(box)))
    return box


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
    _state_file(box.name).unlink(missing_ok=True)
    Path(box.cookie_file).unlink(missing_ok=True)
    shutil.rmtree(state_dir() / box.name, ignore_errors=True)  # the node's working directory
    # The sandbox ran on this machine, so the trace files kzbridge named after it are here;
    # they go with it (collected copies are elsewhere).
    from .kazoo.tracing import default_remote_glob
    for f in glob.glob(default_remote_glob(box.node)):
        Path(f).unlink(missing_ok=True)
    return True


def info(box: Sandbox) -> dict[str, Any]:
    return {**asdict(box), "cookie_file": box.cookie_file}
