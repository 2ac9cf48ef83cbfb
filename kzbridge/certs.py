"""Throwaway certificates for TLS sandboxes and tests, made with the ``openssl`` command.

A ``Pki`` is a directory holding a fresh CA (``ca.pem``, ``ca.key``) and the certificates it
issued, each ``NAME.pem`` with its ``NAME.key``. ``Pki.create(dir)`` makes the CA; ``issue``
signs one more certificate: a node's server certificate (names as subjectAltName entries,
both as IP and DNS names for an address, so Python's check and OTP's ``dns_id`` check both
match), a client certificate, one for another name, or one whose validity lies in the past
(``start``/``end``; ``openssl ca`` takes explicit dates, no clock tricks needed).

Keys are EC P-256 (fast to make), in a 0700 directory, each 0600. Nothing here is for
production: the CA key sits next to the certificates it signed.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .errors import SandboxError

_CA_CONFIG = """\
[ca]
default_ca = throwaway
[throwaway]
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
"""


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise SandboxError("openssl not found", hint="apt-get install -y openssl")
    return found


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([_openssl(), *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SandboxError(f"openssl {args[0]} failed: {detail[-1] if detail else proc.returncode}")


def _asn1_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    """A throwaway CA in ``directory``; see the module docstring."""

    directory: Path

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    @classmethod
    def create(cls, directory: str | os.PathLike[str], name: str = "kzbridge throwaway CA") -> Pki:
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        (d / "issued").mkdir(exist_ok=True)
        (d / "index.txt").write_text("")
        (d / "serial").write_text(os.urandom(8).hex() + "\n")
        (d / "ca.cnf").write_text(_CA_CONFIG.format(dir=d))
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"], d)
        os.chmod(d / "ca.key", 0o600)
        _run(
            ["req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", f"/CN={name}",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            d,
        )  # fmt: skip
        return cls(d)

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        alt_names: tuple[str, ...] = (),
        client: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Issued:
        """Sign ``NAME.pem`` (with a new ``NAME.key``): a server certificate for ``alt_names``
        (addresses and host names), or with ``client`` one for client authentication.
        Valid from ``start`` (default an hour ago) to ``end`` (default 30 days on)."""
        d = self.directory
        now = datetime.now(timezone.utc)
        start = start or now - timedelta(hours=1)
        end = end or now + timedelta(days=30)
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key"], d)
        os.chmod(d / f"{name}.key", 0o600)
        _run(["req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}"], d)
        sans: list[str] = []
        for alt in alt_names:
            try:
                ipaddress.ip_address(alt)
            except ValueError:
                sans.append(f"DNS:{alt}")
            else:
                sans += [f"IP:{alt}", f"DNS:{alt}"]  # OTP's client checks an address as a DNS name
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        ext.append(f"extendedKeyUsage={'clientAuth' if client else 'serverAuth,clientAuth'}")
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _run(
            ["ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
             "-in", f"{name}.csr", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             "-startdate", _asn1_time(start), "-enddate", _asn1_time(end)],
            d,
        )  # fmt: skip
        return Issued(str(d / f"{name}.pem"), str(d / f"{name}.key"))


def erlang_string(text: str) -> str:
    """``text`` as an Erlang string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dist_optfile(
    path: str | os.PathLike[str],
    *,
    ca: str,
    server: Issued,
    client: Issued | None = None,
    mutual: bool = False,
    server_versions: tuple[str, ...] = (),
) -> str:
    """Write an OTP ``ssl_dist_optfile``: the node's server side (``mutual``: ``verify_peer`` and
    ``fail_if_no_peer_cert``, so a client certificate signed by ``ca`` is required), and a
    client side (``client``'s certificate, verifying peers against ``ca``)."""
    s = erlang_string
    server_opts = [f"{{certfile, {s(server.cert)}}}", f"{{keyfile, {s(server.key)}}}", f"{{cacertfile, {s(ca)}}}"]
    if mutual:
        server_opts += ["{verify, verify_peer}", "{fail_if_no_peer_cert, true}"]
    else:
        server_opts += ["{verify, verify_none}"]
    if server_versions:
        server_opts.append("{versions, [" + ", ".join(f"'{v}'" for v in server_versions) + "]}")
    mine = client or server
    client_opts = [
        f"{{cacertfile, {s(ca)}}}",
        f"{{certfile, {s(mine.cert)}}}",
        f"{{keyfile, {s(mine.key)}}}",
        "{verify, verify_peer}",
    ]
    text = (
        "%% TLS distribution options (erl -proto_dist inet_tls -ssl_dist_optfile THIS_FILE), written by kzbridge.\n"
        f"[{{server, [{', '.join(server_opts)}]}},\n {{client, [{', '.join(client_opts)}]}}].\n"
    )
    Path(path).write_text(text)
    return str(path)
