"""Where the Erlang cookie comes from: explicit value, KZBRIDGE_COOKIE, a cookie file,
a sandbox started under that node name, ~/.erlang.cookie.

The cookie is a secret: nothing here logs or prints it.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

# pathlib (with urllib.parse and ipaddress, 4 ms) is imported only when a file is read: a
# one-shot command given --cookie or KZBRIDGE_COOKIE does not need it.

# A cookie is a line of text; anything longer is not a cookie file.
MAX_COOKIE_FILE = 64 << 10


def _read(path: Path) -> str:
    """The file's text, if it is a regular file: a FIFO, a device or a directory is refused at once.

    The type is checked before opening and again on the open descriptor (opened with
    O_NONBLOCK, so a FIFO swapped in between cannot block the open), and at most
    MAX_COOKIE_FILE bytes are read.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"cookie file {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"cookie file {path} is not a regular file")
            data = os.read(fd, MAX_COOKIE_FILE + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot read cookie file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_COOKIE_FILE:
        raise UsageError(f"cookie file {path} is too large to be a cookie")
    text = data.decode("latin-1").strip()
    if not text:
        raise UsageError(f"cookie file {path} is empty")
    return text


def resolve_cookie(cookie: str | None = None, cookie_file: str | os.PathLike[str] | None = None) -> str:
    """The cookie to use, in the documented order of precedence."""
    if cookie:
        return cookie
    env = os.environ.get("KZBRIDGE_COOKIE")
    if env:
        return env
    from pathlib import Path

    if cookie_file:
        return _read(Path(cookie_file))
    default = Path.home() / ".erlang.cookie"
    if default.exists():
        return _read(default)
    raise UsageError(
        "no Erlang cookie given", hint="use --cookie, --cookie-file, KZBRIDGE_COOKIE, or create ~/.erlang.cookie"
    )


def cookie_for_node(node: str, cookie: str | None = None, cookie_file: str | os.PathLike[str] | None = None) -> str:
    """As resolve_cookie, but a local sandbox of that node name supplies its own cookie
    before ~/.erlang.cookie is tried (so the embedded default works without flags)."""
    if cookie or cookie_file or os.environ.get("KZBRIDGE_COOKIE"):
        return resolve_cookie(cookie, cookie_file)
    from . import sandbox

    return sandbox.cookie_for(node) or resolve_cookie(None, None)
