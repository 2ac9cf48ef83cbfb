"""Pure parts of the command line: error and warning lines, the summary as JSON."""

from __future__ import annotations

from kzbridge.cli import error_line, warning_line
from kzbridge.cli.render import record_line, summary_json
from kzbridge.errors import RpcTimeoutError, TraceLostError, UsageError
from kzbridge.kazoo.logparse import parse_header
from kzbridge.kazoo.session import RunSummary
from kzbridge.kazoo.tracing import TraceWarning


def test_an_error_about_a_setting_points_at_this_faces_option():
    exc = UsageError("remote path 'x.log' must be absolute", setting="remote_path")
    assert error_line(exc) == "kzbridge: error: remote path 'x.log' must be absolute (see --remote-path)"
    exc = RpcTimeoutError("no answer", hint="is the node busy?", setting="timeout")
    assert error_line(exc) == "kzbridge: error: no answer (is the node busy?; see --timeout)"
    assert error_line(UsageError("plain")) == "kzbridge: error: plain"


def test_a_lost_trace_is_phrased_as_the_command_that_resumes_it():
    exc = TraceLostError(
        "lost the connection; kept 10 bytes in t.log.partial (partial)",
        ref="abc",
        node="n@h",
        remote_path="/tmp/r.log",
        partial_path="t.log.partial",
        kept_bytes=10,
        lease=60.0,
        hint="words from the domain",
    )
    line = error_line(exc)
    assert line.startswith("kzbridge: error: lost the connection; kept 10 bytes in t.log.partial (partial) (")
    assert "the lease stops trace abc within 60s" in line
    assert "kzbridge collect /tmp/r.log --rotated" in line and "words from the domain" not in line


def test_warnings_name_their_option_and_the_summary_keeps_its_json_shape():
    assert (
        warning_line(TraceWarning("the level is ignored", setting="level"))
        == "kzbridge: warning: the level is ignored (see --level)"
    )
    assert warning_line("plain") == "kzbridge: warning: plain"
    s = RunSummary("lgabc", "n@h", "/tmp/r.log", "l.log", 3, 30, 1.0, "duration", True, False, None, "lager_event")
    data = summary_json(s)
    assert data["generation"] == 0 and data["reason"] == "duration" and set(data) >= {"lines", "bytes", "warnings"}


def test_record_line_text_and_json():
    rec = parse_header("11:38:57.900 [debug] |app|call-1|kz_json:get_value:5 (<0.1.0>) hello")
    assert rec is not None
    assert record_line(rec, False) == "11:38:57.900 debug   kz_json:get_value [call-1] <0.1.0> hello"
    assert '"callid": "call-1"' in record_line(rec, True)


def test_click_usage_errors_are_one_line_with_exit_2() -> None:
    import subprocess
    import sys

    for args in (["trace-module"], ["trace-module", "x", "--bogus"], ["nosuch"], ["nodes", "--timeout", "nan"]):
        r = subprocess.run([sys.executable, "-m", "kzbridge", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("kzbridge: error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr and "Usage:" not in r.stderr
