"""The Kazoo domain: tracing through kz_data_tracing (or lager), collection, log parsing.

Built on kzbridge.wire; knows nothing about the CLI. Names load on first use.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "CollectResult": "collect",
    "collect_file": "collect",
    "function_filter": "filters",
    "module_filter": "filters",
    "parse_filter": "filters",
    "pid_filter": "filters",
    "LogRecord": "logparse",
    "parse_text": "logparse",
    "RunSummary": "session",
    "Trace": "tracing",
    "TraceSession": "session",
    "detect_generation": "tracing",
    "run_trace": "session",
    "start_trace": "tracing",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kzbridge.kazoo' has no attribute {name!r}")
