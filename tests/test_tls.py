"""TLS distribution against real OTP nodes started with ``-proto_dist inet_tls``.

Certificates are made here (kzbridge.certs: a throwaway CA, server and client
certificates, one expired, one for another name, and a second CA nobody trusts). Nodes:
server-auth only (the node does not ask for our certificate), mutual (``verify_peer`` +
``fail_if_no_peer_cert``, OTP 25's default TLS 1.2), mutual on TLS 1.3 only, one whose
certificate has expired, one whose certificate names another host, and a plain node. Every
error kzbridge names for TLS comes from one of these real nodes, through both drivers.
Sandboxes started with TLS (both kz_data_tracing generations) carry ping, rpc,
trace-module and collect through the command line, and rpc/collection through
``connect_sync``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import kzbridge
from kzbridge.certs import Issued, Pki, dist_optfile
from kzbridge.errors import (
    CertificateExpiredError,
    CertificateNameError,
    CertificateUntrustedError,
    ClientCertificateRequiredError,
    ConnectError,
    CookieRejectedError,
    KzBridgeError,
    NodeNotTlsError,
    TlsRequiredError,
    TlsVersionError,
    UsageError,
)
from kzbridge.wire.blocking import BlockingNode
from kzbridge.wire.handshake import ClientHandshake, State
from kzbridge.wire.names import Route
from kzbridge.wire.node import connect_node
from kzbridge.wire.tls import TlsSettings, read_optfile

from .conftest import ErlNode, RunEnv, kzb

# ------------------------------------------------------------------ pure parts


def test_handshake_over_tls_uses_four_byte_lengths() -> None:
    hs = ClientHandshake("kzb@127.0.0.1", "c", peer_version=6, creation=7, tls=True)
    start = hs.start()
    assert int.from_bytes(start[:4], "big") == len(start) - 4 and start[4:5] == b"N"
    for chunk in (b"\x00\x00", b"\x00\x03s", b"ok"):  # split anywhere
        assert hs.feed(chunk) == b""
    assert hs.state is State.AWAIT_CHALLENGE


def test_plain_handshake_answered_with_a_tls_alert_says_tls() -> None:
    hs = ClientHandshake("kzb@127.0.0.1", "c", peer_version=6, creation=7)
    hs.start()
    with pytest.raises(TlsRequiredError) as info:
        hs.feed(b"\x15\x03\x03\x00\x02\x02\n")  # what an OTP 25 TLS node answers, byte for byte
    assert info.value.setting == "tls"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_optfile_client_section(tmp_path: Path) -> None:
    f = write(
        tmp_path / "dist.conf",
        """%% a comment
        [{server, [{certfile, "/s.pem"}, {verify, verify_peer}]},
         {client, [{cacertfile, "/ca.pem"}, {certfile, "/c.pem"}, {keyfile, "/c.key"},
                   {verify, verify_peer}, {server_name_indication, "kz1.example"},
                   {versions, ['tlsv1.3', 'tlsv1.2']}, {secure_renegotiate, true},
                   {ciphers, ["TLS_AES_256_GCM_SHA384"]}, {password, "sekrit"}]}].
        """,
    )
    settings, unused = read_optfile(f)
    assert settings == TlsSettings(
        ca_file="/ca.pem",
        cert_file="/c.pem",
        key_file="/c.key",
        verify=True,
        server_name="kz1.example",
        versions=("tlsv1.3", "tlsv1.2"),
        key_password="sekrit",
    )
    assert unused == ["ciphers"]  # secure_renegotiate needs nothing from us: not reported
    assert "sekrit" not in repr(settings)
    sni_off, _ = read_optfile(write(tmp_path / "b.conf", "[{client, [{server_name_indication, disable}]}]."))
    assert sni_off.check_name is False and sni_off.verify is True
    keys, _ = read_optfile(
        write(tmp_path / "c.conf", '[{client, [{certs_keys, [#{certfile => "/a.pem", keyfile => "/a.key"}]}]}].')
    )
    assert (keys.cert_file, keys.key_file) == ("/a.pem", "/a.key")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[{server, []}].", "no client section"),
        ("{client, []}.", "must be a list"),
        ("[{client, [{verify, maybe}]}].", "verify must be"),
        ("[{client, [{cacertfile, ca}]}].", "cacertfile must be a string"),
        ("[{client, [{versions, ['sslv3']}]}].", "versions names none"),
        ("[{client, [{verify_fun, fun(_, _) -> ok end}]}].", "not an Erlang term kzbridge can read"),
    ],
)
def test_optfile_mistakes_are_usage_errors(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        read_optfile(write(tmp_path / "x.conf", text))
    assert words in info.value.message and info.value.setting == "tls_optfile"


def test_settings_checks_and_warnings(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        TlsSettings(versions=("tlsv1.0",))
    with pytest.raises(UsageError):
        TlsSettings(key_file="/k.pem")  # a key without its certificate
    with pytest.raises(UsageError) as info:
        TlsSettings(ca_file=str(tmp_path / "missing.pem")).check_files()
    assert info.value.setting == "tls_ca" and "not found" in info.value.message
    key = tmp_path / "k.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    os.chmod(key, 0o600)
    assert TlsSettings(cert_file=str(key)).warnings() == []
    os.chmod(key, 0o644)
    [warning] = TlsSettings(cert_file=str(key)).warnings()
    assert "readable by others" in warning and "0644" in warning and "not really" not in warning
    [off] = TlsSettings(verify=False).warnings()
    assert "verification is off" in off


# ------------------------------------------------------------------ certificates and nodes


@dataclass
class Certs:
    pki: Pki
    server: Issued
    client: Issued
    expired_server: Issued
    expired_client: Issued
    other_name: Issued
    stranger_ca: str
    stranger_client: Issued
    dir: Path

    def settings(self, **kw: Any) -> TlsSettings:
        base: dict[str, Any] = {"ca_file": self.pki.ca}
        base.update(kw)
        return TlsSettings(**base)

    def mutual(self, **kw: Any) -> TlsSettings:
        return self.settings(cert_file=self.client.cert, key_file=self.client.key, **kw)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    pki = Pki.create(d / "ca")
    now = datetime.now(timezone.utc)
    past = {"start": now - timedelta(days=10), "end": now - timedelta(days=1)}
    stranger = Pki.create(d / "stranger", name="nobody trusts this CA")
    return Certs(
        pki=pki,
        server=pki.issue("server", common_name="127.0.0.1", alt_names=("127.0.0.1", "localhost")),
        client=pki.issue("client", common_name="kzbridge", client=True),
        expired_server=pki.issue("expired", common_name="127.0.0.1", alt_names=("127.0.0.1",), **past),
        expired_client=pki.issue("expired-client", common_name="kzbridge", client=True, **past),
        other_name=pki.issue("other", common_name="kazoo.example", alt_names=("kazoo.example",)),
        stranger_ca=stranger.ca,
        stranger_client=stranger.issue("client", common_name="kzbridge", client=True),
        dir=d,
    )


def tls_node(certs: Certs, name: str, server: Issued, *, mutual: bool, versions: tuple[str, ...] = ()) -> ErlNode:
    optfile = dist_optfile(
        certs.dir / f"{name}.conf", ca=certs.pki.ca, server=server, mutual=mutual, server_versions=versions
    )
    return ErlNode("-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile)


@dataclass
class Nodes:
    server_auth: ErlNode
    mutual: ErlNode
    mutual13: ErlNode
    expired: ErlNode
    other_name: ErlNode
    plain: ErlNode


@pytest.fixture(scope="module")
def nodes(private_epmd: int, certs: Certs) -> Iterator[Nodes]:
    made: list[ErlNode] = []

    def keep(node: ErlNode) -> ErlNode:
        made.append(node)
        return node

    try:
        yield Nodes(
            server_auth=keep(tls_node(certs, "server-auth", certs.server, mutual=False)),
            mutual=keep(tls_node(certs, "mutual", certs.server, mutual=True)),
            mutual13=keep(tls_node(certs, "mutual13", certs.server, mutual=True, versions=("tlsv1.3",))),
            expired=keep(tls_node(certs, "expired", certs.expired_server, mutual=False)),
            other_name=keep(tls_node(certs, "other-name", certs.other_name, mutual=False)),
            # A plain node that gives up on a handshake after 1 s (net_setuptime), not 7.
            plain=keep(ErlNode("-kernel", "net_setuptime", "1")),
        )
    finally:
        for node in made:
            node.close()


# ------------------------------------------------------------------ both drivers


def connect_blocking(node: ErlNode, tls: TlsSettings | None, cookie: str | None = None) -> Any:
    with BlockingNode(node.node, cookie or node.cookie, timeout=10, route=Route(tls=tls)) as n:
        return n.rpc("erlang", "node", [])


def connect_async(node: ErlNode, tls: TlsSettings | None, cookie: str | None = None) -> Any:
    async def main() -> Any:
        hidden = await connect_node(node.node, cookie or node.cookie, timeout=10, route=Route(tls=tls))
        try:
            return await hidden.rpc("erlang", "node", [])
        finally:
            await hidden.close()

    return asyncio.run(main())


DRIVERS = {"blocking": connect_blocking, "asyncio": connect_async}
Driver = Callable[..., Any]


@pytest.fixture(params=sorted(DRIVERS))
def driver(request: pytest.FixtureRequest) -> Driver:
    return DRIVERS[request.param]


def test_server_auth_and_mutual(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    assert str(driver(nodes.server_auth, certs.settings())) == nodes.server_auth.node
    assert str(driver(nodes.mutual, certs.mutual())) == nodes.mutual.node
    assert str(driver(nodes.mutual13, certs.mutual(versions=("tlsv1.3",)))) == nodes.mutual13.node
    # The certificate is for kazoo.example: with that name it is accepted.
    assert str(driver(nodes.other_name, certs.settings(server_name="kazoo.example"))) == nodes.other_name.node


def failure(fn: Callable[[], Any], cls: type[KzBridgeError]) -> KzBridgeError:
    with pytest.raises(KzBridgeError) as info:
        fn()
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, ConnectError) and info.value.exit_code == 3
    return info.value


def test_plain_to_a_tls_node(nodes: Nodes, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.server_auth, None), TlsRequiredError)
    assert "runs TLS distribution" in exc.message and exc.setting == "tls"


def test_tls_to_a_plain_node(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.plain, certs.settings()), NodeNotTlsError)
    assert "runs plain distribution" in exc.message


def test_untrusted_certificate(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.server_auth, TlsSettings(ca_file=certs.stranger_ca)), CertificateUntrustedError)
    assert "not signed by a CA we trust" in exc.message and exc.setting == "tls_ca"


def test_name_mismatch(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.other_name, certs.settings()), CertificateNameError)
    assert "not for 127.0.0.1" in exc.message and exc.setting == "tls_server_name"
    # With verification off it connects (the warning is the faces' job).
    assert str(driver(nodes.other_name, TlsSettings(verify=False))) == nodes.other_name.node


def test_expired_certificates(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.expired, certs.settings()), CertificateExpiredError)
    assert "the node's certificate has expired" in exc.message
    ours = certs.settings(cert_file=certs.expired_client.cert, key_file=certs.expired_client.key)
    exc = failure(lambda: driver(nodes.mutual, ours), CertificateExpiredError)
    assert "our client certificate has expired" in exc.message and exc.setting == "tls_cert"


def test_client_certificate_required(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.mutual, certs.settings()), ClientCertificateRequiredError)
    assert "handshake_failure" in exc.message and exc.setting == "tls_cert"  # TLS 1.2
    exc = failure(lambda: driver(nodes.mutual13, certs.settings()), ClientCertificateRequiredError)
    assert "certificate_required" in exc.message  # TLS 1.3 names it
    # A client certificate from a CA the node does not trust.
    stranger = certs.settings(cert_file=certs.stranger_client.cert, key_file=certs.stranger_client.key)
    exc = failure(lambda: driver(nodes.mutual, stranger), CertificateUntrustedError)
    assert exc.setting == "tls_cert"


def test_tls_version_refused(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    exc = failure(lambda: driver(nodes.mutual13, certs.mutual(versions=("tlsv1.2",))), TlsVersionError)
    assert "no TLS version in common" in exc.message
    exc = failure(lambda: driver(nodes.mutual, certs.mutual(versions=("tlsv1.3",))), TlsVersionError)


def test_cookie_still_checked_inside_tls(nodes: Nodes, certs: Certs, driver: Driver) -> None:
    failure(lambda: driver(nodes.mutual, certs.mutual(), "not-the-cookie"), CookieRejectedError)


# ------------------------------------------------------------------ the command line


def test_cli_errors_are_one_line_and_keep_secrets(nodes: Nodes, certs: Certs, tmp_path: Path) -> None:
    node = nodes.mutual
    res = kzb("ping", "-n", node.node, "-c", node.cookie, "--tls-ca", certs.pki.ca)
    assert res.returncode == 3
    assert res.stderr.count("\n") == 1 and "requires a client certificate" in res.stderr and "--tls-cert" in res.stderr
    # A key others can read: a warning, then the ping works; neither key nor cookie is printed.
    key = tmp_path / "client.key"
    shutil.copy(certs.client.key, key)
    os.chmod(key, 0o644)
    res = kzb("ping", "-n", node.node, "-c", node.cookie, "--tls-ca", certs.pki.ca,
              "--tls-cert", certs.client.cert, "--tls-key", str(key))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "readable by others (mode 0644)" in res.stderr
    secret_body = Path(certs.client.key).read_text().splitlines()[1]
    for out in (res.stdout, res.stderr):
        assert secret_body not in out and node.cookie not in out
    # --no-tls-verify warns, every time.
    for _ in range(2):
        res = kzb("ping", "-n", nodes.other_name.node, "-c", nodes.other_name.cookie, "--no-tls-verify")
        assert res.returncode == 0, res.stderr
        assert "kzbridge: warning: TLS certificate verification is off" in res.stderr
    res = kzb("ping", "-n", nodes.other_name.node, "-c", nodes.other_name.cookie, "--tls-ca", certs.pki.ca)
    assert res.returncode == 3 and "is not for 127.0.0.1" in res.stderr and "--tls-server-name" in res.stderr
    res = kzb("ping", "-n", node.node, "-c", node.cookie, "--tls-ca", str(tmp_path / "nope.pem"))
    assert res.returncode == 2 and "not found" in res.stderr and "--tls-ca" in res.stderr


def test_cli_environment_variables(nodes: Nodes, certs: Certs) -> None:
    env = dict(
        os.environ,
        KZBRIDGE_TLS_CA=certs.pki.ca,
        KZBRIDGE_TLS_CERT=certs.client.cert,
        KZBRIDGE_TLS_KEY=certs.client.key,
        KZBRIDGE_COOKIE=nodes.mutual.cookie,
    )
    res = subprocess.run(
        [sys.executable, "-m", "kzbridge", "ping", "-n", nodes.mutual.node, "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert nodes.mutual.node in res.stdout


# ------------------------------------------------------------------ TLS sandboxes, both generations


@pytest.fixture(scope="module", params=[1, 2], ids=["gen1", "gen2"])
def tls_sandbox(request: pytest.FixtureRequest, private_epmd: int, run_env: RunEnv) -> Iterator[Any]:
    from kzbridge import sandbox

    name = f"kztls{request.param}_{secrets.token_hex(3)}"
    run_env.sandbox_names.append(name)
    box = sandbox.start(name, generation=request.param, rate=50, tls="mutual")
    try:
        yield box
    finally:
        sandbox.stop(name)
        assert not Path(box.tls_dir).exists()  # the throwaway CA goes with the sandbox


def tls_flags(box: Any) -> list[str]:
    s = box.tls_settings()
    return ["--tls-ca", s.ca_file, "--tls-cert", s.cert_file, "--tls-key", s.key_file]


def test_sandbox_files(tls_sandbox: Any) -> None:
    d = Path(tls_sandbox.tls_dir)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((d / key).stat().st_mode) == 0o600
    settings, unused = read_optfile(tls_sandbox.tls_optfile)
    assert settings == tls_sandbox.tls_settings() and unused == []


def test_ping_rpc_over_tls_cli(tls_sandbox: Any) -> None:
    box = tls_sandbox
    res = kzb("ping", "-n", box.node, *tls_flags(box))
    assert res.returncode == 0 and res.stdout.startswith(f"pong from {box.node}"), res.stderr
    res = kzb("rpc", "-n", box.node, "--tls-optfile", box.tls_optfile, "kz_fixture", "ready")
    assert res.returncode == 0 and res.stdout.strip() == "true", res.stderr
    res = kzb("ping", "-n", box.node)  # plain TCP to it: the node says TLS
    assert res.returncode == 3 and "runs TLS distribution" in res.stderr


def test_trace_module_and_collect_over_tls_cli(tls_sandbox: Any, tmp_path: Path) -> None:
    box = tls_sandbox
    out = tmp_path / "trace.log"
    res = kzb("trace-module", "kz_json", "-n", box.node, *tls_flags(box), "--duration", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "size verified" in res.stderr
    text = out.read_text()
    assert "get_value" in text and text.count("\n") >= 5, text[:500]
    # The same file again, with collect, from where the trace left it on the node.
    remote = next(line.split("remote:", 1)[1].strip() for line in res.stderr.splitlines() if "remote:" in line)
    again = tmp_path / "again.log"
    res = kzb("collect", remote, "-n", box.node, *tls_flags(box), "-o", str(again))
    assert res.returncode == 0, res.stderr
    assert again.read_bytes() == out.read_bytes()


def test_follow_over_tls_cli(tls_sandbox: Any, tmp_path: Path) -> None:
    box = tls_sandbox
    res = kzb("trace-module", "kz_json", "-n", box.node, *tls_flags(box), "--duration", "2", "--follow",
              "-o", str(tmp_path / "f.log"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("get_value") >= 3, res.stdout[:500]  # records printed as they came


def test_connect_sync_and_async_api_over_tls(tls_sandbox: Any, tmp_path: Path) -> None:
    box = tls_sandbox
    with kzbridge.connect_sync(box.node, box.cookie, tls=box.tls_settings()) as n:  # blocking driver
        assert n.rpc("kz_fixture", "ready", []) == kzbridge.wire.Atom("true")
        big = n.rpc("crypto", "strong_rand_bytes", [3_000_000])
        assert len(big) == 3_000_000
        src = tmp_path / "src.bin"
        n.rpc("file", "write_file", [str(src), big])
        res = n.collect_file(str(src), tmp_path / "dst.bin")  # asyncio driver, same settings
        assert res.bytes == 3_000_000 and (tmp_path / "dst.bin").read_bytes() == big

    async def main() -> Any:
        async with kzbridge.connect(box.node, box.cookie, tls=box.tls_optfile) as hidden:
            return await hidden.rpc("erlang", "node", [])

    assert str(asyncio.run(main())) == box.node
    with pytest.warns(UserWarning, match="verification is off"), pytest.raises(ClientCertificateRequiredError):
        kzbridge.connect_sync(box.node, box.cookie, tls=TlsSettings(verify=False))
