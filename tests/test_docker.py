"""The container setup checked without running a container: the compose file's shape, the
files the Dockerfiles copy, and the image's start script run directly. The stack itself is
built and run under podman by tests/test_containers.py (scripts/containers.sh)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import yaml

from kzbridge.errors import KzBridgeError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo import tracing
from kzbridge.wire import epmd
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom

from .conftest import ROOT, free_port, poll_until_async


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR:?message}, as far as this file uses them."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        assert op == ":-", f"{name} is required: {arg}"
        return arg

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, text)


def test_compose_file_parses_and_publishes_what_kzbridge_needs():
    services = compose()["services"]
    kazoo = services["kazoo"]
    assert "profiles" not in kazoo, "the fixture node runs by default"
    assert (ROOT / kazoo["build"]["dockerfile"]).exists()
    assert kazoo["hostname"] == "kazoo" and kazoo["environment"]["NODE_NAME"] == "kazoo_apps@kazoo"
    assert kazoo["environment"]["ERLANG_COOKIE"].startswith("${KZBRIDGE_COOKIE:?")
    assert "healthcheck" not in kazoo, "readiness is kzbridge wait's job (podman 4.3 needs systemd for healthchecks)"
    # With the defaults: EPMD on 4369, distribution 9100-9105, the same ports inside and out
    # (EPMD hands out the inside port); each host port can be moved by a variable.
    env = {"KZBRIDGE_COOKIE": "x"}
    assert [interpolate(p, env) for p in kazoo["ports"]] == ["4369:4369", "9100-9105:9100-9105"]
    env.update(KZBRIDGE_EPMD_PORT="24369", KZBRIDGE_DIST_PORT_MIN="24370", KZBRIDGE_DIST_PORT_MAX="24371")
    assert [interpolate(p, env) for p in kazoo["ports"]] == ["24369:4369", "24370-24371:24370-24371"]
    assert interpolate(kazoo["environment"]["DIST_PORT_MIN"], env) == "24370"
    assert interpolate(kazoo["environment"]["DIST_PORT_MAX"], env) == "24371"
    for name in ("kazoo4", "rabbitmq", "couchdb"):
        assert services[name]["profiles"] == ["kazoo4"], f"{name} is opt-in"
    mount, target, mode = services["kazoo4"]["volumes"][0].split(":")
    assert (ROOT / mount).exists()
    assert "data_lager_event" in (ROOT / mount).read_text()
    # The image's entrypoint links /config/sys.config to the file its vm.args passes to -config.
    assert (target, mode) == ("/config/sys.config", "ro")
    tools = services["kzbridge"]
    assert tools["profiles"] == ["tools"]
    assert tools["depends_on"] == ["kazoo"], "no condition: service_healthy (no healthcheck under podman 4.3)"
    assert tools["environment"]["KZBRIDGE_NODE"] == "kazoo_apps@kazoo"
    assert tools["volumes"] == ["${KZBRIDGE_TRACE_DIR:-./traces}:/traces"]
    assert kazoo["image"] == "kzbridge-fixture" and tools["image"] == "kzbridge-tools"


def test_dockerfiles_copy_files_that_exist_and_use_the_same_apt_packages():
    fixture = (ROOT / "docker/fixture.Dockerfile").read_text()
    assert "FROM debian:bookworm" in fixture and "erlang-nox erlang-lager" in fixture
    for df in ("docker/fixture.Dockerfile", "docker/kzbridge.Dockerfile"):
        for line in (ROOT / df).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{df}: {src} missing"


def test_the_images_start_script_runs_directly_and_can_be_traced(private_epmd, tmp_path):
    name = f"kzdock{secrets.token_hex(3)}"
    node, cookie = f"{name}@127.0.0.1", secrets.token_hex(8)
    port = free_port()
    env = dict(
        os.environ,
        NODE_NAME=node,
        ERLANG_COOKIE=cookie,
        KZ_GENERATION="1",
        KZ_RATE="40",
        KZ_BUILD_DIR=str(tmp_path / "build"),
        TMPDIR=str(tmp_path),
        DIST_PORT_MIN=str(port),
        DIST_PORT_MAX=str(port),
    )
    proc = subprocess.Popen(
        ["sh", str(ROOT / "kzbridge/erlang_fixtures/bin/start-node.sh")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        async def body():
            info = await poll_until_async(lambda: epmd.lookup(name, "127.0.0.1", timeout=1), timeout=60,
                                          interval=0.2, retry_on=(KzBridgeError,),
                                          message="the start script's node registering")  # fmt: skip
            assert info.port == port, "distribution listens in the configured range"

            async def ready_node():
                n = await connect_node(node, cookie)
                if await n.rpc("kz_fixture", "ready", []) == Atom("true"):
                    return n
                await n.close()
                return None

            n = await poll_until_async(ready_node, timeout=30, interval=0.2, retry_on=(KzBridgeError,))
            try:
                trace = await tracing.start_trace(n, flt.module_filter("kz_json"))
                assert trace.generation == 1
                return await tracing.run_trace(trace, str(tmp_path / "t.log"), duration=2)
            finally:
                await n.close()

        summary = asyncio.run(body())
        assert summary.lines > 0 and summary.verified
        beam = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # sh execs erl, erl execs the BEAM
        assert node.encode() in beam and cookie.encode() not in beam, "the cookie is on no command line"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_start_script_refuses_a_missing_cookie():
    env = {k: v for k, v in os.environ.items() if k != "ERLANG_COOKIE"}
    res = subprocess.run(
        ["sh", str(ROOT / "kzbridge/erlang_fixtures/bin/start-node.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0 and "ERLANG_COOKIE" in res.stderr


def test_ci_example_workflow_runs_the_steps_of_the_script_the_lane_runs():
    """examples/ci/github-actions.yml cannot run here; compose-ci.sh (which the container lane
    runs) can. The workflow must do what the script does, and keep the traces whatever happens."""
    workflow = yaml.safe_load((ROOT / "examples/ci/github-actions.yml").read_text())
    steps = workflow["jobs"]["integration"]["steps"]
    runs = [s.get("run", "") for s in steps]
    script = (ROOT / "examples/ci/compose-ci.sh").read_text()

    def index(text: str) -> int:
        found = [i for i, run in enumerate(runs) if text in run]
        assert found, f"the workflow has no step running {text!r}"
        return found[0]

    order = [
        index("compose --profile tools build kazoo kzbridge"),
        index("compose up -d kazoo"),
        index("kzbridge wait --node"),
        index("trace-module kz_json --node"),
        index("run --rm --no-deps -T kzbridge trace-module kz_json"),
        index("--kazoo-node"),
    ]
    assert order == sorted(order), "build, up, wait, traces, pytest: in the script's order"
    for text in ("--profile tools build kazoo kzbridge", "up -d kazoo", "run --rm --no-deps -T kzbridge",
                 "--kazoo-node", "--kazoo-trace-dir", "down -v -t 10 --remove-orphans"):  # fmt: skip
        assert text in script, f"compose-ci.sh lost {text!r}"
    assert "--kazoo-trace-dir" in runs[index("--kazoo-node")]
    # Neither touches /etc/hosts: the node is reached at 127.0.0.1 under its real name.
    assert "--kazoo-address 127.0.0.1" in runs[index("--kazoo-node")] and "--kazoo-address 127.0.0.1" in script
    assert "--address 127.0.0.1" in runs[index("kzbridge wait --node")] and '--address 127.0.0.1 "$@"' in script
    assert "/etc/hosts" not in "".join(runs)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    down = steps[index("compose down -v")]
    assert upload["if"] == "always()" and down["if"] == "always()", "traces kept and stack down even on failure"
    assert upload["with"]["path"].rstrip("/") == "kzbridge-traces"
    assert workflow["jobs"]["integration"]["env"]["TRACE_DIR"].endswith("/kzbridge-traces")
    assert any("::add-mask::" in run for run in runs), "the cookie is masked in the job's log"
