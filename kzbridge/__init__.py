"""kzbridge: trace Kazoo nodes from Python over Erlang distribution, as a hidden node."""
from .client import SyncNode, connect, connect_sync
from .errors import KzBridgeError
from .wire import Atom, ErlString, Pid, Reference, format_term, parse_term

__version__ = "0.1.0"
__all__ = ["Atom", "ErlString", "KzBridgeError", "Pid", "Reference", "SyncNode", "connect", "connect_sync",
           "format_term", "parse_term", "__version__"]
