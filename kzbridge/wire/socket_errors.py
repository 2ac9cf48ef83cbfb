"""Socket errors become kzbridge errors here, at the boundary, and nowhere else.

httpcore's ``map_exceptions`` shape: a context manager around the I/O of one step,
given an ordered mapping from the exception classes that step can meet to a function
building our error from the caught one::

    with map_exceptions({TimeoutError: lambda exc: HandshakeTimeoutError("..."),
                         OSError: lambda exc: HostUnreachableError(f"... {describe(exc)}")}):
        sock = socket.create_connection(...)

The first matching class wins (so list ``TimeoutError`` before ``OSError``, of which it
is a subclass); ``None`` instead of a function lets that class through unchanged
(``ConnectError: None`` before ``KzBridgeError: ...`` keeps the specific connect errors).
The new error is raised ``from`` the caught one, so the cause stays on the traceback.
Both drivers and the EPMD client use it.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Mapping
from types import TracebackType

from ..errors import KzBridgeError

Translation = Callable[[BaseException], KzBridgeError] | None
ExceptionMapping = Mapping[type[BaseException] | tuple[type[BaseException], ...], Translation]

# The timeouts the stdlib raises: one class since Python 3.11 (socket.timeout and
# asyncio.TimeoutError are TimeoutError). asyncio is not imported on newer Pythons:
# the blocking driver exists because importing it costs more than a one-shot rpc.
TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, socket.timeout)
if sys.version_info < (3, 11):  # pragma: no cover
    import asyncio

    TIMEOUTS += (asyncio.TimeoutError,)


class map_exceptions:
    """Translate what escapes the block through ``mapping``; see the module docstring.

    A plain class rather than a contextlib generator: entering and leaving costs a
    fraction of a microsecond, and an instance made once can guard every send of a
    connection (the blocking driver's hot path).
    """

    __slots__ = ("mapping",)

    def __init__(self, mapping: ExceptionMapping) -> None:
        self.mapping = mapping

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            return
        for cls, translate in self.mapping.items():
            if isinstance(exc, cls):
                if translate is None:
                    return
                raise translate(exc) from exc


def describe(exc: BaseException) -> str:
    """The readable part of an OSError ("Connection refused"), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
