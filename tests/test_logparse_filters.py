"""Pure functions of the Kazoo layer: the log parser and filter validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kzbridge.errors import BadFilterError
from kzbridge.kazoo import filters as flt
from kzbridge.kazoo.logparse import LineAssembler, parse_header, parse_text
from kzbridge.wire.terms import Atom, ErlString, ImproperList, Pid

REAL = "11:38:57.900 [debug] |Undefined|0000000000|Undefined:Undefined:{5,13} (<0.116.0>) noise 82"


def test_real_kazoo_line_with_undefined_fields_and_line_column():
    rec = parse_header(REAL)
    assert rec.time == "11:38:57.900" and rec.severity == "debug"
    assert rec.app is None and rec.module is None and rec.function is None
    assert rec.callid == "0000000000" and (rec.line, rec.column) == (5, 13)
    assert rec.pid == "<0.116.0>" and rec.message == "noise 82"


def test_profiler_line_with_values_and_integer_line():
    rec = parse_header("2026-11-25 12:00:00.001 [info] |kazoo_data|abc-1|kz_json:get_value:42 (<0.1.0>) a|b:c d")
    assert rec.app == "kazoo_data" and rec.module == "kz_json" and rec.function == "get_value"
    assert rec.line == 42 and rec.column is None and rec.message == "a|b:c d"


def test_multiline_messages_and_chunked_input():
    text = REAL + "\nsecond line | with: separators\n" + REAL.replace("noise 82", "next") + "\n"
    records = parse_text(text)
    assert [r.message for r in records] == ["noise 82\nsecond line | with: separators", "next"]
    asm = LineAssembler()
    out = []
    for i in range(0, len(text), 7):
        out += asm.feed(text[i : i + 7])
    out += asm.flush()
    assert [r.message for r in out] == [r.message for r in records]


@given(st.text(max_size=300))
def test_parser_never_raises(text):
    parse_text(text)


def test_pid_normalisation():
    assert flt.normalise_pid("0.116.0") == "<0.116.0>"
    assert flt.normalise_pid("<0.116.0>") == "<0.116.0>"
    with pytest.raises(BadFilterError):
        flt.normalise_pid("116")


def test_parse_filter_forms():
    assert flt.parse_filter("callid=abc") == (Atom("callid"), b"abc")
    assert flt.parse_filter("module=kz_json") == (Atom("module"), Atom("kz_json"))
    assert flt.parse_filter("request=*") == (Atom("request"), Atom("*"))
    assert flt.parse_filter("pid=0.1.2") == (Atom("pid"), ErlString("<0.1.2>"))
    assert flt.parse_filter("worker:=3") == (Atom("worker"), 3)
    assert flt.parse_filter("duration>100") == (Atom("duration"), Atom(">"), 100)
    for bad in ("nokey", "=x", "Bad=1", "x:=[1"):
        with pytest.raises(BadFilterError):
            flt.parse_filter(bad)


@pytest.mark.parametrize(
    "filters",
    [
        [],
        [(Atom("pid"), Pid(Atom("n@h"), 1, 0, 1))],
        ImproperList(((Atom("module"), Atom("kz_json")),), Atom("foo")),
        [(Atom("any"), [(Atom("module"), Atom("kz_json"))])],
        (Atom("module"), Atom("kz_json")),
        [(Atom("pid"), ErlString("0.1.2.3"))],
    ],
)
def test_crashing_and_useless_filters_are_refused(filters):
    with pytest.raises(BadFilterError):
        flt.validate(filters)


def test_valid_filters_pass_and_bare_pids_are_fixed():
    assert flt.validate([(Atom("pid"), ErlString("0.1.2"))]) == [(Atom("pid"), ErlString("<0.1.2>"))]
    assert flt.validate([(Atom("module"), Atom("kz_json")), (Atom("function"), Atom("*"))])


def test_a_record_of_200000_continuation_lines_is_assembled_in_linear_time():
    import time as _time

    lines = [f"continuation line {i} | with: separators" for i in range(200_000)]
    started = _time.monotonic()
    asm = LineAssembler()
    out = asm.feed(REAL + "\n")
    for line in lines:  # one chunk per line, each split in two so partial lines are joined too
        half = len(line) // 2
        out += asm.feed(line[:half])
        out += asm.feed(line[half:] + "\n")
    out += asm.flush()
    elapsed = _time.monotonic() - started
    assert len(out) == 1 and out[0].message == "\n".join(["noise 82", *lines])
    assert elapsed < 10, f"{elapsed:.1f}s: quadratic again (it took minutes when it was)"


def test_one_line_in_many_chunks_is_joined_once():
    asm = LineAssembler()
    text = REAL + " " + "x" * 100_000
    out = []
    for ch in text:
        out += asm.feed(ch)
    out += asm.flush()
    assert [r.message for r in out] == ["noise 82 " + "x" * 100_000]


def test_utc_log_suffix_is_part_of_the_printed_time():
    rec = parse_header(REAL.replace("11:38:57.900", "11:38:57.900 UTC"))
    assert rec is not None and rec.time == "11:38:57.900 UTC" and rec.message == "noise 82"
