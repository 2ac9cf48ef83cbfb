"""TLS distribution, client side: what we trust and present, the context, what failures mean.

OTP's TLS distribution (``-proto_dist inet_tls``, inet_tls_dist) keeps EPMD plain and runs
the node's distribution port over TLS: the TCP connection is wrapped in TLS first, then the
distribution handshake runs inside it unchanged, except that its messages carry a 4-byte
length (handshake.py, ``tls=True``); the cookie digests are checked both ways as over TCP.

``TlsSettings`` is plain data (file names, verify on/off, the name to check, versions) that
travels in a ``names.Route``; ``client_context`` builds the ``ssl.SSLContext`` once per
settings value; ``error_mapping`` reads what ``ssl`` raised, and the alerts a node sent, as
distinct ``TlsError`` classes; ``read_optfile`` takes the ``client`` section of an OTP
``ssl_dist_optfile``, so an operator can reuse the cluster's own file.

``ssl`` is imported inside the functions that need it, never at module level: a command
that does not use TLS does not pay for loading OpenSSL.

What is verified, unless verification is turned off: the node's certificate chain up to the
CA file given (the system's CAs without one), its validity dates, and that it names the host
we expect (``server_name``, else the host in the node's name, as OTP's own client checks: an
address given to reach the node elsewhere does not change the name checked). A node started
with ``verify_peer`` and ``fail_if_no_peer_cert`` checks ours in turn.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    CertificateExpiredError,
    CertificateNameError,
    CertificateUntrustedError,
    ClientCertificateRequiredError,
    KzBridgeError,
    NodeNotTlsError,
    TermSyntaxError,
    TlsError,
    TlsVersionError,
    UsageError,
)
from .socket_errors import ExceptionMapping

if TYPE_CHECKING:
    import ssl

# The TLS versions an optfile's ``versions`` may name, as OTP spells them.
VERSIONS = ("tlsv1.2", "tlsv1.3")

# Options of an optfile's client section that kzbridge reads; others are reported as unused.
_USED = frozenset(
    {"cacertfile", "certfile", "keyfile", "password", "verify", "server_name_indication", "versions", "certs_keys"}
)
# Options that need no counterpart here (they tune OTP's own TLS stack, or are its defaults).
_HARMLESS = frozenset({"secure_renegotiate", "depth", "reuse_sessions", "log_level", "hibernate_after"})


@dataclass(frozen=True)
class TlsSettings:
    """How to speak TLS distribution to a node; every field is optional.

    ``ca_file``: PEM file of the CA(s) that signed the nodes' certificates (default: the
    system's CAs). ``cert_file``/``key_file``: our client certificate and its private key, for
    nodes that require one (the key may be inside ``cert_file``). ``verify``: check the node's
    certificate (default; turning it off leaves the connection open to anyone in between).
    ``server_name``: the name the node's certificate must hold (default: the host in the
    node's name). ``check_name``: False skips the name check only (an optfile's
    ``{server_name_indication, disable}``). ``versions``: TLS versions to offer
    (``"tlsv1.2"``, ``"tlsv1.3"``; default: what OpenSSL allows). ``key_password``: for an
    encrypted key; never shown.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    server_name: str | None = None
    check_name: bool = True
    versions: tuple[str, ...] = ()
    key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for v in self.versions:
            if v not in VERSIONS:
                raise UsageError(f"unknown TLS version {v!r}: kzbridge speaks {' and '.join(VERSIONS)}", setting="tls")
        if self.key_file and not self.cert_file:
            raise UsageError("a client key without its certificate", hint="give both", setting="tls_cert")

    def name_for(self, name_host: str) -> str:
        """The name the node's certificate must hold, for a node whose name's host is ``name_host``."""
        return self.server_name or name_host

    def check_files(self) -> None:
        """Every file named exists and is readable: a UsageError naming the setting otherwise."""
        for path, setting, what in (
            (self.ca_file, "tls_ca", "CA file"),
            (self.cert_file, "tls_cert", "client certificate file"),
            (self.key_file, "tls_key", "client key file"),
        ):
            if path is not None and not os.access(path, os.R_OK):
                why = "not found" if not os.path.exists(path) else "not readable"
                raise UsageError(f"the TLS {what} {path} is {why}", setting=setting)

    def warnings(self) -> list[str]:
        """What an operator should hear about these settings before anything is sent."""
        out: list[str] = []
        if not self.verify:
            out.append(
                "TLS certificate verification is off: the node's identity is not checked, "
                "and anyone in between can pose as the node and read the traffic"
            )
        key = self.key_file or self.cert_file
        if key is not None:
            try:
                mode = stat.S_IMODE(os.stat(key).st_mode)
            except OSError:
                return out
            if mode & 0o077:
                out.append(
                    f"the private key file {key} is readable by {'others' if mode & 0o007 else 'its group'} "
                    f"(mode {mode:04o}): chmod 600 it"
                )
        return out


# ---------------------------------------------------------------- the context

_contexts: dict[TlsSettings, ssl.SSLContext] = {}


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The client context for ``settings``, built once per settings value (files are read then)."""
    found = _contexts.get(settings)
    if found is not None:
        return found
    import ssl

    settings.check_files()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.versions:
        order = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
        chosen = [order[VERSIONS.index(v)] for v in settings.versions]
        ctx.minimum_version, ctx.maximum_version = min(chosen), max(chosen)
    if settings.verify:
        ctx.check_hostname = settings.check_name
        try:
            if settings.ca_file:
                ctx.load_verify_locations(cafile=settings.ca_file)
            else:
                ctx.load_default_certs()
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(
                f"cannot use {settings.ca_file} as TLS CA file: {_reason(exc)}",
                hint="a PEM file of CA certificates",
                setting="tls_ca",
            ) from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        try:
            ctx.load_cert_chain(settings.cert_file, settings.key_file, password=settings.key_password)
        except (ssl.SSLError, OSError) as exc:
            # The message names the files and OpenSSL's reason, never the key's bytes.
            raise UsageError(
                f"cannot use the TLS client certificate {settings.cert_file} with key "
                f"{settings.key_file or settings.cert_file}: {_reason(exc)}",
                hint="PEM files; the key must match the certificate (an encrypted key needs its password)",
                setting="tls_key",
            ) from None
    _contexts[settings] = ctx
    return ctx


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason in words ("unsupported certificate purpose"), without the source location."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    if reason:
        return str(reason).replace("_", " ").lower() if str(reason).isupper() else str(reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- what failures mean

# X509_V_ERR_* codes (OpenSSL's x509_vfy.h) for the node's certificate.
_EXPIRED = {10: "has expired", 9: "is not valid yet (check both clocks)"}
_NAME_MISMATCH = {62, 64}  # hostname, IP address

_VERSION_REASONS = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_SSL_VERSION",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY",
}
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}
_CLIENT_CERT_REJECTED = {
    "TLSV1_ALERT_UNKNOWN_CA": "does not trust the CA that signed our client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "rejected our client certificate (bad_certificate)",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "rejected our client certificate (unsupported_certificate)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "says our client certificate is revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "denied access to our client certificate",
}


def describe_failure(node: str, exc: BaseException, settings: TlsSettings, name: str) -> TlsError | None:
    """Our error for what ``ssl`` raised on a connection to ``node`` (None: not a TLS failure)."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or _reason(exc)
        if code in _EXPIRED:
            return CertificateExpiredError(
                f"{node}: the node's certificate {_EXPIRED[code]} ({detail})",
                hint="the node needs a current certificate",
            )
        if code in _NAME_MISMATCH:
            return CertificateNameError(
                f"{node}: the node's certificate is not for {name} ({detail})",
                hint="give the name the certificate holds",
                setting="tls_server_name",
            )
        return CertificateUntrustedError(
            f"{node}: the node's certificate is not signed by a CA we trust ({detail})",
            hint="give the CA that signed the cluster's certificates" if settings.ca_file is None else None,
            setting="tls_ca",
        )
    if isinstance(exc, ssl.SSLEOFError) or (
        isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING"
    ):
        return closed_in_tls_handshake(node)
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = str(exc.reason or "")
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or (
        reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and settings.cert_file is None
    ):
        said = "certificate_required" if "CERTIFICATE_REQUIRED" in reason else "handshake_failure"
        return ClientCertificateRequiredError(
            f"{node} requires a client certificate and we sent none (TLS alert {said})",
            hint="give our certificate and key, signed by a CA the node trusts",
            setting="tls_cert",
        )
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        return CertificateExpiredError(
            f"{node} says our client certificate has expired (TLS alert certificate_expired)",
            hint="renew the client certificate",
            setting="tls_cert",
        )
    if reason in _CLIENT_CERT_REJECTED:
        return CertificateUntrustedError(
            f"{node} {_CLIENT_CERT_REJECTED[reason]}",
            hint="the node trusts certificates signed by the CA in its own cacertfile",
            setting="tls_cert",
        )
    if reason in _VERSION_REASONS:
        ours = ", ".join(settings.versions) if settings.versions else "OpenSSL's defaults"
        return TlsVersionError(
            f"{node}: no TLS version in common with the node ({_reason(exc)}; we offered {ours})",
            hint="the node's versions option and ours must share one (OTP 25's default is tlsv1.2 only)",
            setting="tls",
        )
    if reason in _NOT_TLS_REASONS:
        return NodeNotTlsError(
            f"{node}: the node did not answer in TLS ({_reason(exc)}): it runs plain distribution",
            hint="connect without TLS",
            setting="tls",
        )
    return TlsError(f"{node}: TLS failed: {_reason(exc)}", setting="tls")


def error_mapping(node: str, settings: TlsSettings, name: str, *, in_tls_handshake: bool) -> ExceptionMapping:
    """For ``map_exceptions``: ssl's errors (subclasses of OSError) as TlsError classes, listed
    before a step's own OSError entry. ``in_tls_handshake``: the step runs the TLS handshake,
    where a reset means a node that does not speak TLS."""
    import ssl

    def translate(exc: BaseException) -> KzBridgeError:
        found = describe_failure(node, exc, settings, name)
        return found if found is not None else TlsError(f"{node}: TLS failed: {_reason(exc)}", setting="tls")

    mapping: dict[type[BaseException] | tuple[type[BaseException], ...], Any] = {ssl.SSLError: translate}
    if in_tls_handshake:
        # asyncio reports the node's close during its TLS handshake as a reset.
        mapping[(ConnectionResetError, ConnectionAbortedError)] = lambda exc: closed_in_tls_handshake(node)
    return mapping


def closed_in_tls_handshake(node: str) -> NodeNotTlsError:
    """The node closed the connection in the middle of our TLS handshake, without an alert: a plain
    node does that once its setup timer (net_setuptime, 7 s) runs out on what it took for a name."""
    return NodeNotTlsError(
        f"{node}: the node closed the connection during the TLS handshake without a TLS word: "
        "it runs plain distribution (or its own TLS setup is broken)",
        hint="connect without TLS if the node runs plain distribution",
        setting="tls",
    )


# ---------------------------------------------------------------- OTP's ssl_dist_optfile


def read_optfile(path: str | os.PathLike[str]) -> tuple[TlsSettings, list[str]]:
    """Settings from the ``client`` section of an OTP ``ssl_dist_optfile``, and the names of the
    client options kzbridge does not use (for a warning).

    The file holds one term: ``[{server, [...]}, {client, [{cacertfile, "ca.pem"},
    {certfile, "c.pem"}, {keyfile, "c.key"}, {verify, verify_peer}, ...]}].``
    """
    from .literal import parse_term
    from .terms import Atom

    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the TLS optfile {where}: {exc.strerror or exc}", setting="tls_optfile") from None
    except UnicodeDecodeError:
        raise UsageError(f"the TLS optfile {where} is not UTF-8 text", setting="tls_optfile") from None
    try:
        term = parse_term(text)
    except TermSyntaxError as exc:
        raise UsageError(
            f"the TLS optfile {where} is not an Erlang term kzbridge can read: {exc.message}",
            hint="funs (verify_fun) cannot be read; give the files with the separate settings",
            setting="tls_optfile",
        ) from None

    def fail(what: str) -> UsageError:
        return UsageError(f"the TLS optfile {where}: {what}", setting="tls_optfile")

    if not isinstance(term, list) or not all(isinstance(t, tuple) and len(t) == 2 for t in term):
        raise fail("must be a list of {server, Options} and {client, Options}")
    sections = {t[0]: t[1] for t in term if isinstance(t[0], Atom)}
    client = sections.get(Atom("client"))
    if client is None:
        raise fail("has no client section (kzbridge connects as a client)")
    if not isinstance(client, list):
        raise fail("its client section must be a list of options")

    def text_of(key: str, value: Any) -> str:
        if isinstance(value, (str, bytes)) and value:
            return value.decode() if isinstance(value, bytes) else str(value)
        raise fail(f"{key} must be a string, not {value!r}")

    fields: dict[str, Any] = {}
    unused: list[str] = []
    for opt in client:
        if not (isinstance(opt, tuple) and len(opt) == 2 and isinstance(opt[0], Atom)):
            raise fail(f"a client option must be {{Name, Value}}, not {opt!r:.60}")
        key, value = opt[0].name, opt[1]
        if key == "cacertfile":
            fields["ca_file"] = text_of(key, value)
        elif key == "certfile":
            fields["cert_file"] = text_of(key, value)
        elif key == "keyfile":
            fields["key_file"] = text_of(key, value)
        elif key == "password":
            fields["key_password"] = text_of(key, value)
        elif key == "certs_keys":  # OTP 25+: [#{certfile => ..., keyfile => ...}]; the first pair is ours
            if not (isinstance(value, list) and value and isinstance(value[0], dict)):
                raise fail("certs_keys must be a list of maps")
            first = {k.name if isinstance(k, Atom) else k: v for k, v in value[0].items()}
            if "certfile" in first:
                fields["cert_file"] = text_of("certfile", first["certfile"])
            if "keyfile" in first:
                fields["key_file"] = text_of("keyfile", first["keyfile"])
            if "password" in first:
                fields["key_password"] = text_of("password", first["password"])
        elif key == "verify":
            if value not in (Atom("verify_peer"), Atom("verify_none")):
                raise fail(f"verify must be verify_peer or verify_none, not {value!r}")
            fields["verify"] = value == Atom("verify_peer")
        elif key == "server_name_indication":
            if value == Atom("disable"):
                fields["check_name"] = False
            else:
                fields["server_name"] = text_of(key, value)
        elif key == "versions":
            if not isinstance(value, list) or not all(isinstance(v, Atom) for v in value):
                raise fail("versions must be a list of atoms such as 'tlsv1.2'")
            known = tuple(v.name for v in value if v.name in VERSIONS)
            if not known:
                raise fail(f"versions names none kzbridge speaks ({', '.join(VERSIONS)})")
            fields["versions"] = known
        elif key not in _HARMLESS:
            unused.append(key)
    settings = TlsSettings(**fields)
    # Relative file names are relative to where the command runs, as for erl; keep them as given.
    return settings, unused


def merge(base: TlsSettings | None, **given: Any) -> TlsSettings:
    """``base`` (e.g. from an optfile) with the settings that were given explicitly (not None) on top."""
    chosen = {k: v for k, v in given.items() if v is not None}
    return replace(base or TlsSettings(), **chosen)


__all__ = ["VERSIONS", "TlsSettings", "client_context", "describe_failure", "error_mapping", "merge", "read_optfile"]
