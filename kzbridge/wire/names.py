"""Node names: parsing ``name@host``, choosing our own per-connection name, and where a node is reached."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from ..errors import UsageError

if TYPE_CHECKING:
    from .tls import TlsSettings


def split_node_name(node: str) -> tuple[str, str]:
    """``'kazoo_apps@host'`` -> ``('kazoo_apps', 'host')``, with a clear error for bad input."""
    if node.count("@") != 1:
        raise UsageError(f"node name {node!r} must look like name@host (e.g. kazoo_apps@kazoo1)", setting="node")
    name, host = node.split("@")
    if not name or not host:
        raise UsageError(f"node name {node!r} must look like name@host (e.g. kazoo_apps@kazoo1)", setting="node")
    return name, host


def own_node_name(peer_host: str, local_ip: str, prefix: str = "kzbridge") -> str:
    """A fresh name per connection, in the peer's name form (long names need a dotted host)."""
    suffix = os.urandom(6).hex()
    if "." in peer_host or ":" in peer_host:
        host = local_ip if "." in local_ip else socket.getfqdn()
        if "." not in host:
            host = "127.0.0.1"
    else:
        host = socket.gethostname().split(".")[0]
    return f"{prefix}_{suffix}@{host}"


# ---------------------------------------------------------------- where a node is reached

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?\Z")


# NamedTuples rather than dataclasses: defining a dataclass costs about a millisecond, at
# every start of a one-shot command (`kzbridge rpc`).
class Route(NamedTuple):
    """Where one node is reached, when not (only) where its name says: ``erl_call -address``.

    ``host``: connect to this host (its EPMD, then the port EPMD gives) instead of the
    host in the node's name, which then need not resolve. ``port``: the node's
    distribution port: connect straight to it and ask no EPMD. ``epmd_port``: EPMD's
    port (None: ERL_EPMD_PORT, else 4369). The handshake always uses the node's real name.
    ``tls``: speak TLS distribution (wire.tls.TlsSettings) on the distribution port; EPMD
    stays plain.
    """

    host: str | None = None
    port: int | None = None
    epmd_port: int | None = None
    tls: TlsSettings | None = None

    def __str__(self) -> str:
        host = self.host or "(the name's host)"
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{self.port}" if self.port else shown


def check_port(value: object, setting: str) -> int:
    """A TCP port, 1..65535, as an int (from an int or its decimal text); UsageError otherwise."""
    what = "the EPMD port" if setting == "epmd_port" else "the port"
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise UsageError(f"{what} must be a number from 1 to 65535, not {value!r}", setting=setting)
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise UsageError(f"{what} must be a number from 1 to 65535, not {value!r}", setting=setting)
    return value


def parse_address(text: str) -> Route:
    """``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address -> a Route."""
    spec = text.strip()
    port: int | None = None
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"bad address {text!r}: write [IPV6] or [IPV6]:PORT", setting="address")
        if rest:
            port = check_port(rest[1:], "address")
        valid = bool(host) and all(c in "0123456789abcdefABCDEF:." for c in host)
    elif spec.count(":") > 1:  # a bare IPv6 address: no port (write [addr]:port for one)
        host = spec
        valid = all(c in "0123456789abcdefABCDEF:." for c in host)
    else:
        host, sep, port_text = spec.partition(":")
        if sep:
            port = check_port(port_text, "address")
        valid = bool(_HOST.match(host))
    if not valid:
        raise UsageError(
            f"bad address {text!r}: write HOST or HOST:PORT (a name or an IP address)",
            hint="HOST's EPMD is asked for the node's port; with :PORT, EPMD is not asked",
            setting="address",
        )
    return Route(host, port)


AddressSpec = str | Mapping[str, str] | Sequence[str] | None


class Routes(NamedTuple):
    """How to reach each node of a run: a Route per node name, and EPMD's port for all.

    A node without an entry is reached where its name says (EPMD at its host). Built
    by ``Routes.build`` from what a caller gives; drivers get ``route(node)``. ``tls``: TLS
    distribution settings for every node (a cluster shares its CA and client certificate).
    """

    by_node: Mapping[str, Route] = MappingProxyType({})
    epmd_port: int | None = None
    tls: TlsSettings | None = None

    def route(self, node: str) -> Route:
        found = self.by_node.get(node, Route())
        if found.epmd_port is None and self.epmd_port is not None:
            found = found._replace(epmd_port=self.epmd_port)
        if found.tls is None and self.tls is not None:
            found = found._replace(tls=self.tls)
        return found

    @classmethod
    def build(
        cls,
        nodes: Sequence[str],
        address: AddressSpec = None,
        epmd_port: int | str | None = None,
        *,
        more_nodes: bool = False,
        tls: TlsSettings | None = None,
    ) -> Routes:
        """Routes for ``nodes`` from ``address``, checked before anything is sent.

        ``address``: ``"HOST[:PORT]"`` for every node in ``nodes``; ``"NODE=HOST[:PORT]"`` for
        one node; a list of such strings (at most one without ``NODE=``); or a mapping
        ``{node: "HOST[:PORT]"}``. A port is one node's: ``HOST:PORT`` for several nodes is
        refused. A ``NODE=`` naming a node not in ``nodes`` is refused unless ``more_nodes``
        (nodes found later, e.g. by cluster discovery, may use it). ``tls``: TLS distribution
        settings for every node.
        """
        port = check_port(epmd_port, "epmd_port") if epmd_port is not None else None
        if address is None:
            return cls({}, port, tls)
        specs: list[str]
        if isinstance(address, str):
            specs = [address]
        elif isinstance(address, Mapping):
            specs = [f"{node}={where}" for node, where in address.items()]
        else:
            specs = list(address)
        plain: Route | None = None
        by_node: dict[str, Route] = {}
        for spec in specs:
            if not isinstance(spec, str):
                raise UsageError(
                    f"an address is text, HOST[:PORT] or NODE=HOST[:PORT], not {spec!r}", setting="address"
                )
            node, sep, where = spec.partition("=")
            if not sep:
                if plain is not None:
                    raise UsageError(
                        f"two addresses for every node ({plain} and {spec.strip()}): give one, "
                        "or one per node as NODE=HOST[:PORT]",
                        setting="address",
                    )
                plain = parse_address(spec)
                continue
            node = node.strip()
            split_node_name(node)
            if node in by_node:
                raise UsageError(f"two addresses for {node}", setting="address")
            if node not in nodes and not more_nodes:
                raise UsageError(
                    f"an address for {node}, which is not among the nodes ({', '.join(nodes) or 'none'})",
                    setting="address",
                )
            by_node[node] = parse_address(where)
        if plain is not None:
            if plain.port is not None and len(nodes) > 1:
                raise UsageError(
                    f"{plain} names one node's distribution port, and there are {len(nodes)} nodes",
                    hint="give each node its own: NODE=HOST:PORT",
                    setting="address",
                )
            for node in nodes:
                by_node.setdefault(node, plain)
        return cls(by_node, port, tls)
