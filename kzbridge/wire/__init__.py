"""The Erlang wire: term codec, EPMD, handshake, connection, hidden node.

Nothing in this package knows about Kazoo; nothing here imports from kzbridge.kazoo or the CLI.
"""
from .codec import binary_to_term, decode_prefix, term_to_binary
from .literal import format_term, parse_term, to_json
from .node import HiddenNode, Mailbox, RpcResult, connect_node
from .terms import Atom, BitBinary, ErlString, Export, Fun, ImproperList, Pid, Port, Reference

__all__ = [
    "Atom", "BitBinary", "ErlString", "Export", "Fun", "HiddenNode", "ImproperList", "Mailbox", "Pid", "Port",
    "Reference", "RpcResult", "binary_to_term", "connect_node", "decode_prefix", "format_term", "parse_term",
    "term_to_binary", "to_json",
]
