"""Issue 11, rule 5: text from the node, or from whoever wrote the logs, stays text.

Control characters (ESC sequences for colour, window title and clear screen; CR, BS, DEL, C1,
bidirectional overrides) are shown escaped, --json escapes them, --raw gives the bytes. A
message holding a newline and a header-shaped line does not become a record of its own when
the line cannot be an event of the trace (below its level, or contradicting its filters);
one that matches them stays indistinguishable (logparse's docstring says so) but is shown
indented as a continuation on screen.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from typing import Any

from kzbridge.cli.render import CONTINUATION, record_line, safe_text
from kzbridge.kazoo.logparse import PRINTED_BY_KAZOO_FORMAT, LineAssembler, admitted_by, parse_header, parse_text
from kzbridge.wire.node import connect_node
from kzbridge.wire.terms import Atom, ErlString

from .test_cli import Running, kzb

HOSTILE = "t \x1b]0;pwned\x07 \x1b[2J\x1b[31mred cr\rbs\b del\x7f c1\u009b rlo\u202e end"
HEADER = "23:59:59.000 [{sev}] |x|{cid}|evil:mod:1 (<0.5.0>) {text}"


# ------------------------------------------------------------------ pure rendering


def test_every_control_character_is_shown_escaped():
    shown = safe_text(HOSTILE)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in shown), repr(shown)
    for escaped in ("\\x1b]0;pwned\\x07", "\\x1b[2J", "\\x0d", "\\x08", "\\x7f", "\\x9b", "\\u202e"):
        assert escaped in shown
    assert safe_text("a\nb") == "a\\x0ab"
    assert safe_text("a\tb") == "a\\x09b" and safe_text("a\tb", tabs=True) == "a\tb"
    assert safe_text("plain | text: é ü 日本") == "plain | text: é ü 日本"


def test_a_record_line_is_one_line_per_message_line_and_continuations_are_indented():
    rec = parse_header(HEADER.format(sev="info", cid="c1", text="ok"))
    assert rec is not None
    rec.message = "ok\x1b[2J\n" + HEADER.format(sev="error", cid="c1", text="forged")
    line = record_line(rec, as_json=False)
    first, second = line.split("\n")
    assert "\x1b" not in line and "\\x1b[2J" in first
    assert second.startswith(CONTINUATION), "a forged header cannot start a line on screen"
    assert "\x1b" in record_line(rec, as_json=False, raw=True)
    assert json.loads(record_line(rec, as_json=True))["message"] == rec.message


# ------------------------------------------------------------------ pure parsing


def test_a_header_no_event_of_the_trace_could_have_made_continues_the_message():
    admits = admitted_by("info", [(Atom("callid"), b"c1")], PRINTED_BY_KAZOO_FORMAT)
    text = "\n".join(
        [
            HEADER.format(sev="info", cid="c1", text="real one"),
            HEADER.format(sev="debug", cid="c1", text="below the level"),
            HEADER.format(sev="error", cid="other", text="another callid"),
            HEADER.format(sev="error", cid="c1", text="matches everything"),
            "",
        ]
    )
    asm = LineAssembler(admits=admits)
    recs = asm.feed(text) + asm.flush()
    assert [r.message.split("\n")[0] for r in recs] == ["real one", "matches everything"]
    assert recs[0].message.count("\n") == 2 and asm.refused_headers == 2
    assert len(parse_text(text)) == 4, "without the trace's facts every header-shaped line is a record"


def test_the_check_keeps_every_real_event_of_the_trace():
    admits = admitted_by("debug", [(Atom("pid"), ErlString("<0.5.0>")), (Atom("mod"), Atom("evil"))], {})
    assert admits(parse_header(HEADER.format(sev="debug", cid="x", text="t")))  # type: ignore[arg-type]
    wildcard = admitted_by("debug", [(Atom("callid"), Atom("*"))], PRINTED_BY_KAZOO_FORMAT)
    assert wildcard(parse_header(HEADER.format(sev="debug", cid="anything", text="t")))  # type: ignore[arg-type]


# ------------------------------------------------------------------ against a real node


def log_on(box: Any, entries: list[tuple[str, str]], callid: str) -> None:
    """Log each (severity, message) to the data sink with that callid, as Kazoo code would."""

    async def body() -> None:
        n = await connect_node(box.node, box.cookie)
        try:
            md = [(Atom("callid"), callid.encode()), (Atom("pid"), ErlString("<0.5.0>"))]
            for severity, message in entries:
                args = [message.encode()]
                fmt = ErlString("~ts")
                call = [Atom("data_lager_event"), Atom(severity), md, fmt, args, 65536, Atom("safe")]
                assert await n.rpc("lager", "dispatch_log", call) == Atom("ok")
        finally:
            await n.close()

    asyncio.run(body())


def run_forgery(box: Any, tmp_path: Any, *extra: str) -> tuple[int, str, str, str]:
    callid = f"forge{secrets.token_hex(3)}"
    out = tmp_path / f"{callid}.log"
    run = Running(
        "trace",
        "--filter",
        f"callid={callid}",
        "--level",
        "info",
        "--follow",
        "--duration",
        "4",
        "--node",
        box.node,
        "-o",
        str(out),
        *extra,
    )
    run.wait_for("(ref ")
    log_on(
        box,
        [
            ("info", HOSTILE),
            ("info", "first\n" + HEADER.format(sev="debug", cid=callid, text="forged below the level")),
            ("info", "second\n" + HEADER.format(sev="error", cid="other", text="forged other callid")),
            ("info", "third\n" + HEADER.format(sev="error", cid=callid, text="indistinguishable")),
        ],
        callid,
    )
    code, stdout, stderr = run.finish()
    return code, stdout, stderr, out.read_bytes().decode("utf-8", "replace")


def test_follow_escapes_what_the_node_sends_and_keeps_forged_headers_inside_their_message(sandbox_gen2, tmp_path):
    code, stdout, stderr, file_text = run_forgery(sandbox_gen2, tmp_path, "--json")
    assert code == 0, stderr
    lines = stdout.splitlines()
    events = [json.loads(line) for line in lines[:-1]]
    summary = json.loads(lines[-1])["summary"]
    assert "\x1b" not in stdout, "JSON escapes control characters"
    messages = [e["message"] for e in events]
    assert messages[0] == HOSTILE
    assert messages[1].startswith("first\n") and "forged below the level" in messages[1]
    assert messages[2].startswith("second\n") and "forged other callid" in messages[2]
    assert messages[3] == "third", "a forged header that matches the trace cannot be told apart (documented)"
    assert messages[4] == "indistinguishable"
    assert len(events) == summary["records"] == 5 and summary["lines"] == file_text.count("\n") == 7

    code, stdout, stderr, _ = run_forgery(sandbox_gen2, tmp_path)
    assert code == 0, stderr
    assert "\x1b" not in stdout and "\r" not in stdout and "\b" not in stdout and "\x7f" not in stdout
    assert "\\x1b]0;pwned\\x07" in stdout and "\\x1b[2J" in stdout
    shown = stdout.splitlines()
    forged = [i for i, line in enumerate(shown) if "forged below the level" in line]
    assert forged and shown[forged[0]].startswith(CONTINUATION), shown

    code, stdout, stderr, _ = run_forgery(sandbox_gen2, tmp_path, "--raw")
    assert code == 0, stderr
    # (the pipe is read as text: CR arrives as a newline)
    assert "\x1b]0;pwned\x07 \x1b[2J\x1b[31mred cr" in stdout and "bs\b del\x7f" in stdout, "--raw: the bytes"


def test_status_shows_node_side_file_names_escaped(sandbox_gen2, node_tmp):
    # kzbridge refuses such a --remote-path, but any other client (sup -e, a script) can start one.
    from kzbridge.wire.blocking import BlockingNode

    path = f"{node_tmp}/evil-\x1b]0;title\x07-\x1b[2J.log"
    fmt = [Atom("time"), ErlString(" "), Atom("message"), ErlString("\n")]
    with BlockingNode(sandbox_gen2.node, sandbox_gen2.cookie) as n:
        reply = n.rpc(
            "kz_data_tracing", "trace_file", [[(Atom("module"), Atom("kz_json"))], path.encode(), fmt, Atom("debug")]
        )
        assert type(reply) is tuple and reply[0] == Atom("ok"), reply
        ref = reply[1].decode()
        try:
            res = kzb("status", "--node", sandbox_gen2.node)
            assert res.returncode == 0 and ref in res.stdout, res.stderr
            assert "\x1b" not in res.stdout and "evil-\\x1b]0;title\\x07-\\x1b[2J.log" in res.stdout
            raw = kzb("status", "--node", sandbox_gen2.node, "--raw")
            assert path in raw.stdout
            assert path in [
                t["remote_path"] for t in json.loads(kzb("status", "-n", sandbox_gen2.node, "--json").stdout)["traces"]
            ]
        finally:
            assert n.rpc("kz_data_tracing", "stop_trace", [ref.encode()])[0] == Atom("ok")


def on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, bytes]:
    """kzbridge with stdout on a pseudo-terminal; what it wrote there."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kzbridge", *args], stdout=secondary, stderr=subprocess.DEVNULL)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout)
    os.close(primary)
    return proc.returncode, seen


def test_rpc_output_is_escaped_on_a_terminal_and_exact_in_a_pipe(sandbox_gen2):
    args = ("rpc", "--node", sandbox_gen2.node, "io", "format", '"a~cb\\tc~n"', "[27]")
    code, seen = on_a_terminal(*args)
    assert code == 0 and b"\x1b" not in seen and b"a\\x1bb\tc" in seen, seen
    code, seen = on_a_terminal(*args, "--raw")
    assert code == 0 and b"a\x1bb" in seen
    res = kzb(*args)
    assert res.returncode == 0 and res.stdout.startswith("a\x1bb\tc\n"), "a script gets the exact text"


def test_a_peer_that_names_itself_with_control_characters_gets_an_escaped_error_line(private_epmd):
    import time

    from .peers.hostile import HostilePeer

    def close_soon(conn: Any) -> None:
        time.sleep(0.3)

    evil = "evil\x1b]0;owned\x07\x1b[2J@127.0.0.1"
    peer = HostilePeer(private_epmd, "c", close_soon, name=f"named{secrets.token_hex(3)}", claimed_name=evil)
    try:
        for command in (["ping"], ["status"]):
            res = kzb(*command, "--node", peer.node, "--cookie", "c", "--timeout", "5")
            assert res.returncode == 3, (res.returncode, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
            assert "\x1b" not in res.stderr and "evil\\x1b]0;owned\\x07\\x1b[2J" in lines[0], lines[0]
            peer.close()
            peer = HostilePeer(private_epmd, "c", close_soon, name=f"named{secrets.token_hex(3)}", claimed_name=evil)
    finally:
        peer.close()
