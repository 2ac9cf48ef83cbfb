"""Node names: parsing ``name@host`` and choosing our own per-connection name."""

from __future__ import annotations

import os
import socket

from ..errors import UsageError


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
