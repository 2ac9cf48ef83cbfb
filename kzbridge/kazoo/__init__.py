"""The Kazoo domain: tracing through kz_data_tracing (or lager), collection, log parsing.

Built on kzbridge.wire; knows nothing about the CLI.
"""
from .collect import CollectResult, collect_file
from .filters import function_filter, module_filter, parse_filter, pid_filter
from .logparse import LogRecord, parse_text
from .tracing import RunControl, RunSummary, Trace, detect_generation, run_trace, start_trace

__all__ = ["CollectResult", "LogRecord", "RunControl", "RunSummary", "Trace", "collect_file", "detect_generation",
           "function_filter", "module_filter", "parse_filter", "parse_text", "pid_filter", "run_trace",
           "start_trace"]
