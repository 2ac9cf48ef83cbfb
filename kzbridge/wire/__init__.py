"""The Erlang wire: term codec, EPMD, handshake, connection, hidden node.

Nothing in this package knows about Kazoo; nothing here imports from kzbridge.kazoo or
the CLI. Names load on first use, so importing the codec does not pull in asyncio.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "binary_to_term": "codec",
    "decode_prefix": "codec",
    "term_to_binary": "codec",
    "format_term": "literal",
    "parse_term": "literal",
    "to_json": "literal",
    "HiddenNode": "node",
    "Mailbox": "node",
    "RpcResult": "rex",
    "connect_node": "node",
    "BlockingNode": "blocking",
    "Route": "names",
    "Routes": "names",
    "TlsSettings": "tls",
    "Atom": "terms",
    "BitBinary": "terms",
    "Encoded": "terms",
    "ErlString": "terms",
    "Export": "terms",
    "Fun": "terms",
    "ImproperList": "terms",
    "Pid": "terms",
    "Port": "terms",
    "Reference": "terms",
}
__all__ = [  # the keys of _WHERE
    "Atom",
    "BitBinary",
    "BlockingNode",
    "Encoded",
    "ErlString",
    "Export",
    "Fun",
    "HiddenNode",
    "ImproperList",
    "Mailbox",
    "Pid",
    "Port",
    "Reference",
    "Route",
    "Routes",
    "RpcResult",
    "TlsSettings",
    "binary_to_term",
    "connect_node",
    "decode_prefix",
    "format_term",
    "parse_term",
    "term_to_binary",
    "to_json",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kzbridge.wire' has no attribute {name!r}")
