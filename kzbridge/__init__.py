"""kzbridge: trace Kazoo nodes from Python over Erlang distribution, as a hidden node.

Names are imported on first use, so the command line starts fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: `python -m kzbridge` runs this before
if TYPE_CHECKING:  # its Ctrl-C handling exists, so this module stays as short as it can be
    from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Atom",
    "ErlString",
    "KzBridgeError",
    "Pid",
    "Reference",
    "SyncClusterTrace",
    "SyncNode",
    "SyncTrace",
    "__version__",
    "connect",
    "connect_sync",
    "format_term",
    "parse_term",
    "trace_cluster",
    "trace_cluster_sync",
]

_WHERE = {
    "connect": "client",
    "connect_sync": "client",
    "SyncNode": "client",
    "SyncTrace": "client",
    "SyncClusterTrace": "client",
    "trace_cluster": "client",
    "trace_cluster_sync": "client",
    "KzBridgeError": "errors",
    "Atom": "wire.terms",
    "ErlString": "wire.terms",
    "Pid": "wire.terms",
    "Reference": "wire.terms",
    "format_term": "wire.literal",
    "parse_term": "wire.literal",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kzbridge' has no attribute {name!r}")
