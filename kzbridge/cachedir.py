"""Where kzbridge keeps its local state (journal, sandboxes, compiled fixtures): one rule, one place.

``KZBRIDGE_CACHE`` is the directory itself when set (non-empty); otherwise
``$XDG_CACHE_HOME/kzbridge`` when ``XDG_CACHE_HOME`` is set (non-empty); otherwise
``~/.cache/kzbridge``. The directory is created 0700 when missing.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """kzbridge's cache directory (created if missing)."""
    own = os.environ.get("KZBRIDGE_CACHE")
    if own:
        path = Path(own)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "kzbridge"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    """A directory inside the cache (created if missing)."""
    path = cache_dir() / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path
