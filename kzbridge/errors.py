"""One error tree for all of kzbridge.

    KzBridgeError                      exit code 1 unless a subclass says otherwise
    +-- UsageError                     the caller asked for something invalid (exit 2)
    |   +-- TermSyntaxError            an Erlang term literal did not parse
    |   +-- BadFilterError             a trace filter that would crash or match nothing
    +-- ProtocolError                  the peer sent bytes we cannot accept
    |   +-- DecodeError                external term format is malformed
    +-- ConnectError                   no distribution connection could be made (exit 3)
    |   +-- HostUnreachableError       EPMD on that host did not answer
    |   +-- NodeNotRegisteredError     EPMD does not know the node name
    |   +-- CookieRejectedError        the peer (or we) rejected the cookie
    |   +-- NameInUseError             our node name is already connected there
    |   +-- NotAllowedError            the peer refuses connections from us
    |   +-- HandshakeTimeoutError      the handshake did not finish in time
    |   +-- VersionMismatchError       no common handshake version / flags
    |   +-- TlsError                   the TLS layer of a TLS distribution connection failed
    |       +-- TlsRequiredError       the node runs TLS distribution and we spoke plain TCP
    |       +-- NodeNotTlsError        we spoke TLS and the node runs plain distribution
    |       +-- CertificateUntrustedError   a certificate is not signed by a CA the other side trusts
    |       +-- CertificateNameError   the node's certificate is for another name
    |       +-- CertificateExpiredError     a certificate has expired (or is not valid yet)
    |       +-- ClientCertificateRequiredError  the node requires a client certificate and got none
    |       +-- TlsVersionError        no TLS version both sides accept
    +-- ConnectionLostError            the peer went away (exit 3)
    |   +-- TraceLostError             ... while a trace ran: carries the ref, remote path and kept partial file
    +-- RpcError                       a remote call failed (exit 4)
    |   +-- BadRpcError                {badrpc, Reason} from the node
    |   +-- RpcTimeoutError            no reply within the timeout (exit 5)
    +-- KazooError                     the node is not the Kazoo we expected (exit 6)
    |   +-- TracingUnavailableError    no kz_data_tracing module or process
    |   +-- UnknownTraceError          the node does not know that ref
    |   +-- RemoteFileError            a remote file could not be read
    |   +-- ProgramError               the node could not parse or run one of kzbridge's erl_eval programs
    |   +-- NodeBusyError              lager's sink is overloaded already: the governor will not start a trace
    +-- SandboxError                   the local fixture node could not be run (exit 7)
    +-- LocalFileError                 a local file could not be written (disk full, journal, ...): names what was kept

Lower layers raise their own class; higher layers translate with ``raise ... from``.

Errors are data: ``message`` and ``hint`` are plain words that name no command-line
flag, and ``setting`` names the setting the error is about (one of ``SETTINGS``), so
each face (the CLI, the Python API, the pytest plugin) can point at its own name for
it: the CLI adds "see --timeout", a script reads ``exc.setting == "timeout"``.
"""

from __future__ import annotations

from typing import Any

# The settings an error can be about, as the library names them (keyword arguments of
# connect/start_trace/run and friends). Faces map them to their own spelling.
SETTINGS = frozenset(
    {
        "node",
        "cookie",
        "timeout",
        "lease",
        "duration",
        "max_size",
        "max_total_size",
        "remote_path",
        "local_path",
        "sink",
        "level",
        "format",
        "filters",
        "generation",
        "name",
        "address",
        "epmd_port",
        "max_rate",
        "governor",
        "mode",
        "tls",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "tls_verify",
        "tls_server_name",
        "tls_optfile",
    }
)


class KzBridgeError(Exception):
    """Root of every error kzbridge raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, setting: str | None = None) -> None:
        super().__init__(message)
        if setting is not None and setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}")  # a bug in kzbridge, not user input
        self.message = message
        self.hint = hint
        self.setting = setting

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(KzBridgeError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class TermSyntaxError(UsageError):
    """An Erlang term literal did not parse."""


class BadFilterError(UsageError):
    """A trace filter that would crash kz_data_tracing or silently match nothing."""


class ProtocolError(KzBridgeError):
    """The peer sent bytes that do not follow the protocol."""

    exit_code = 3


class DecodeError(ProtocolError):
    """The external term format bytes are malformed or exceed our limits."""


class ConnectError(KzBridgeError):
    """No distribution connection could be made."""

    exit_code = 3


class HostUnreachableError(ConnectError):
    """EPMD (or the node's port) on that host did not answer."""


class NodeNotRegisteredError(ConnectError):
    """EPMD on the host does not know the node; carries the names it does know."""

    def __init__(
        self, message: str, *, registered: list[str] | None = None, hint: str | None = None, setting: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, setting=setting)
        self.registered = registered or []


class CookieRejectedError(ConnectError):
    """The challenge digests did not match: wrong cookie on one side."""


class NameInUseError(ConnectError):
    """The peer already has a connection from a node with our name."""


class NotAllowedError(ConnectError):
    """The peer refuses connections from our node (net_kernel allow list or name form)."""


class HandshakeTimeoutError(ConnectError):
    """The handshake did not finish in time."""


class VersionMismatchError(ConnectError):
    """The peer speaks no handshake version or flag set we can use."""


class TlsError(ConnectError):
    """The TLS layer of a TLS distribution connection failed (OTP's inet_tls_dist)."""


class TlsRequiredError(TlsError):
    """The node answered our plain handshake with TLS: it runs TLS distribution."""


class NodeNotTlsError(TlsError):
    """We spoke TLS and the node does not: it runs plain (TCP) distribution."""


class CertificateUntrustedError(TlsError):
    """A certificate is not signed by a CA the other side trusts (theirs by us, or ours by them)."""


class CertificateNameError(TlsError):
    """The node's certificate does not name the host we expect it to."""


class CertificateExpiredError(TlsError):
    """A certificate has expired or is not valid yet (the node's, or ours as the node says)."""


class ClientCertificateRequiredError(TlsError):
    """The node requires a client certificate (``fail_if_no_peer_cert``) and we sent none."""


class TlsVersionError(TlsError):
    """The node and we have no TLS protocol version in common."""


class ConnectionLostError(KzBridgeError):
    """The connection to the peer closed or stopped ticking."""

    exit_code = 3


class TraceLostError(ConnectionLostError):
    """The connection went away while a trace was being followed; the facts needed to resume.

    ``ref``, ``node`` and ``remote_path`` name the trace, ``partial_path`` the local file
    holding the ``kept_bytes`` that arrived, ``lease`` the seconds within which the node
    stops the trace by itself. How to resume is for each face to phrase.
    """

    def __init__(
        self,
        message: str,
        *,
        ref: str,
        node: str,
        remote_path: str,
        partial_path: str,
        kept_bytes: int,
        lease: float,
        hint: str | None = None,
        setting: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, setting=setting)
        self.ref = ref
        self.node = node
        self.remote_path = remote_path
        self.partial_path = partial_path
        self.kept_bytes = kept_bytes
        self.lease = lease


class RpcError(KzBridgeError):
    """A remote call did not produce a value."""

    exit_code = 4


class BadRpcError(RpcError):
    """The node answered ``{badrpc, Reason}``; ``reason`` holds the decoded term."""

    def __init__(
        self, message: str, *, reason: Any = None, output: str = "", hint: str | None = None, setting: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, setting=setting)
        self.reason = reason
        self.output = output


class RpcTimeoutError(RpcError):
    """No reply arrived within the timeout (our side's ``{badrpc, timeout}``)."""

    exit_code = 5


class KazooError(KzBridgeError):
    """The node does not behave like the Kazoo we expected."""

    exit_code = 6


class TracingUnavailableError(KazooError):
    """kz_data_tracing is missing or not running on the node."""


class UnknownTraceError(KazooError):
    """The node does not know the trace ref."""


class RemoteFileError(KazooError):
    """A file on the node could not be read."""


class ProgramError(KazooError):
    """The node could not parse or run one of the erl_eval programs kzbridge sends (kazoo.programs)."""


class NodeBusyError(KazooError):
    """The node's lager sink is overloaded already (synchronous): starting a trace now would add to it."""


class ReportWorkerError(KzBridgeError):
    """A worker process of ``kzbridge report``/``summary`` ended before its work was done, or answered
    what is not a result (killed, out of memory)."""


class SandboxError(KzBridgeError):
    """The local fixture node could not be compiled, started or stopped."""

    exit_code = 7


class LocalFileError(KzBridgeError):
    """A local file could not be created or written (disk full, cache directory full, name taken meanwhile).

    ``partial_path`` names the local file kept (with ``kept_bytes``), "" when none; ``remote_path``
    and ``node`` the file on the node that still holds the whole trace, "" when none; ``ref`` the
    trace, when one was running (it has been stopped, unless the message says otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        partial_path: str = "",
        kept_bytes: int = 0,
        remote_path: str = "",
        node: str = "",
        ref: str = "",
        hint: str | None = None,
        setting: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, setting=setting)
        self.partial_path = partial_path
        self.kept_bytes = kept_bytes
        self.remote_path = remote_path
        self.node = node
        self.ref = ref
