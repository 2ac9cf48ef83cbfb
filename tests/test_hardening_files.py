"""Issue 11, rules 1, 6 and 7 for local files: outputs are ours alone, private, and failures name what is kept.

Pure cases exercise kzbridge.kazoo.localfiles directly; live cases run kzbridge as operators
do (subprocesses, several at once where the attack was a race) against real sandbox nodes.
The full-disk cases mount a 1 MB tmpfs of their own (we run as root here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kzbridge.errors import LocalFileError, UsageError
from kzbridge.kazoo import localfiles
from kzbridge.wire.terms import Atom
from tests.conftest import poll_until

from .conftest import kzb as run_kzb
from .conftest import node_call

# ---------------------------------------------------------------- helpers


def kzb(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """conftest.kzb with ``env`` added to ours rather than replacing it."""
    return run_kzb(*args, timeout=timeout, env={**os.environ, **(env or {})})


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    """The run's stderr, asserted to be exactly one line and no traceback."""
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert len(lines) == 1, res.stderr
    return lines[0]


def the_error(res: subprocess.CompletedProcess[str]) -> str:
    """The one ``kzbridge: error:`` line of a run that had started (its start notice may precede it)."""
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("kzbridge: error: ")]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
    return errors[0]


def traced_files(box: Any) -> set[str]:
    """Files a lager file handler writes on the node, in either sink."""
    out = set()
    for sink in ("lager_event", "data_lager_event"):
        for h in node_call(box, "gen_event", "which_handlers", [Atom(sink)]):
            if type(h) is tuple and h[0] == Atom("lager_file_backend"):
                out.add(str(h[1]))
    return out


def kz_refs(box: Any) -> set[str]:
    return {ref.decode() for ref, _, _ in node_call(box, "kz_data_tracing", "status", [])}


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs of this test's own, unmounted at the end."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt: Path, leave: int) -> None:
    """Fill ``mnt`` so that about ``leave`` bytes stay free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    assert os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize <= leave + 8192


# ---------------------------------------------------------------- pure: localfiles


def test_partial_is_created_exclusively_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        part = localfiles.Partial.create(tmp_path / "t.log")
    finally:
        os.umask(old)
    part.write(b"x" * 10)
    assert stat.S_IMODE(os.stat(part.path).st_mode) == 0o600
    with pytest.raises(UsageError, match="already exists: another kzbridge run"):
        localfiles.Partial.create(tmp_path / "t.log")
    final = part.publish()
    assert final == tmp_path / "t.log" and final.read_bytes() == b"x" * 10 and not part.path.exists()
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o600
    with pytest.raises(UsageError, match="already exists; kzbridge never overwrites"):
        localfiles.Partial.create(tmp_path / "t.log")


def test_an_explicit_mode_is_applied_exactly(tmp_path: Path) -> None:
    part = localfiles.Partial.create(tmp_path / "m.log", 0o640)
    assert stat.S_IMODE(os.stat(part.path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(part.publish()).st_mode) == 0o640


def test_symlinks_planted_at_the_output_or_partial_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "a.log.partial").symlink_to(victim)
    with pytest.raises(UsageError, match=r"a\.log\.partial already exists"):
        localfiles.Partial.create(tmp_path / "a.log")
    (tmp_path / "b.log").symlink_to(victim)
    with pytest.raises(UsageError, match=r"b\.log already exists"):
        localfiles.Partial.create(tmp_path / "b.log")
    dangling = tmp_path / "c.log.partial"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError):
        localfiles.Partial.create(tmp_path / "c.log")
    assert victim.read_text() == "keep me" and not (tmp_path / "nowhere").exists()


def test_a_symlink_planted_between_check_and_create_is_refused_by_o_excl(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    localfiles.check_target(tmp_path / "d.log")  # the check passes, then the attacker plants a link
    (tmp_path / "d.log.partial").symlink_to(victim)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with pytest.raises(FileExistsError):
        os.open(tmp_path / "d.log.partial", flags, 0o600)  # what Partial.create does after its check
    with pytest.raises(UsageError):
        localfiles.Partial.create(tmp_path / "d.log")
    assert victim.read_text() == "keep me"


def test_publish_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    part = localfiles.Partial.create(tmp_path / "e.log")
    part.write(b"ours")
    (tmp_path / "e.log").write_text("theirs")
    with pytest.raises(LocalFileError) as info:
        part.publish()
    assert info.value.partial_path == str(part.path) and info.value.kept_bytes == 4
    assert "appeared while kzbridge was writing" in info.value.message
    assert (tmp_path / "e.log").read_text() == "theirs" and part.path.read_bytes() == b"ours"


def signal_after(
    monkeypatch: pytest.MonkeyPatch, name: str, sig: int, when: Callable[[Any], bool] = lambda _: True
) -> list[Any]:
    """Send ``sig`` to this process the moment ``os.<name>`` has returned (when its first argument
    passes ``when``), before the code that called it has kept what it made: where a Ctrl-C or a
    SIGTERM can land. Returns the first arguments it was sent after."""
    real = getattr(os, name)
    sent: list[Any] = []

    def then_signalled(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if when(args[0]) and not sent:
            sent.append(args[0])
            os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(os, name, then_signalled)
    return sent


def is_partial(path: Any) -> bool:
    return str(path).endswith(".partial")


@pytest.fixture
def as_in_a_terminal() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt (a test worker may run with it ignored); put back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_as_a_new_file_is_made_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_in_a_terminal: None
) -> None:
    sent = signal_after(monkeypatch, "open", signal.SIGINT, is_partial)
    written: list[bool] = []
    with pytest.raises(KeyboardInterrupt), localfiles.new_file(tmp_path / "r.html") as part:
        written.append(True)
        part.write(b"never")
    assert sent == [tmp_path / "r.html.partial"]  # the signal came, inside the creation
    assert written == [] and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and the handler is back


def test_a_ctrl_c_as_a_partial_is_created_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_in_a_terminal: None
) -> None:
    # Partial.create itself, as collections and traces call it (they keep and name partials later).
    sent = signal_after(monkeypatch, "open", signal.SIGINT, is_partial)
    with pytest.raises(KeyboardInterrupt):
        localfiles.Partial.create(tmp_path / "t.log")
    assert sent == [tmp_path / "t.log.partial"] and list(tmp_path.iterdir()) == []


def test_a_merge_interrupted_as_its_file_is_made_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_in_a_terminal: None
) -> None:
    from kzbridge.kazoo.merge import merge_to_file

    sent = signal_after(monkeypatch, "open", signal.SIGINT, is_partial)
    with pytest.raises(KeyboardInterrupt):
        merge_to_file([], tmp_path / "merged.log")
    assert sent and list(tmp_path.iterdir()) == []


def test_a_ctrl_c_as_a_file_is_published_leaves_it_whole_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_in_a_terminal: None
) -> None:
    sent = signal_after(monkeypatch, "link", signal.SIGINT)  # the final name taken, the partial not yet gone
    with pytest.raises(KeyboardInterrupt), localfiles.new_file(tmp_path / "r.html") as part:
        part.write(b"whole")
    assert sent == [tmp_path / "r.html.partial"]
    assert list(tmp_path.iterdir()) == [tmp_path / "r.html"] and (tmp_path / "r.html").read_bytes() == b"whole"


def test_a_sigterm_held_while_a_file_is_made_reaches_its_own_handler_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM's handler (kzbridge's raises Terminated) is the one that runs, once, after the creation."""
    seen: list[int] = []

    class Stop(Exception):
        pass

    def on_term(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        sent = signal_after(monkeypatch, "open", signal.SIGTERM, is_partial)
        with pytest.raises(Stop), localfiles.new_file(tmp_path / "a.log") as part:
            part.write(b"never")
        assert sent and seen == [signal.SIGTERM] and list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGTERM) is on_term
        with localfiles.new_file(tmp_path / "b.log") as part:  # sent once: this one is undisturbed
            part.write(b"whole")
        assert (tmp_path / "b.log").read_bytes() == b"whole" and seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_while_the_held_handlers_are_put_back_leaves_none_swapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_in_a_terminal: None
) -> None:
    # signal.signal() runs the handlers of signals already come before it sets anything: a Ctrl-C
    # landing as SIGINT's own handler is put back must not leave kzbridge's stand-in there.
    real = signal.signal
    fired: list[bool] = []

    def put_back(signum: int, handler: Any) -> Any:
        if handler is signal.default_int_handler and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # raised from in here, before the real call
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", put_back)
    with pytest.raises(KeyboardInterrupt):
        localfiles.Partial.create(tmp_path / "t.log")
    assert fired and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("kind", ["missing-dir", "is-dir", "parent-is-file"])
def test_targets_that_cannot_be_written_are_refused_before_anything(tmp_path: Path, kind: str) -> None:
    target = {
        "missing-dir": tmp_path / "nope" / "t.log",
        "is-dir": tmp_path,
        "parent-is-file": tmp_path / "f" / "t.log",
    }[kind]
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError) as info:
        localfiles.check_target(target)
    assert info.value.setting == "local_path" and info.value.exit_code == 2


def test_a_full_disk_while_writing_is_one_error_naming_the_kept_partial(small_tmpfs: Path) -> None:
    fill(small_tmpfs, 8192)
    part = localfiles.Partial.create(small_tmpfs / "full.log")
    with pytest.raises(LocalFileError) as info:
        for _ in range(100):
            part.write(b"y" * 4096)
    err = info.value
    assert "No space left on device" in err.message and str(part.path) in err.message
    assert err.kept_bytes == part.written == os.path.getsize(part.path) > 0
    part.close()
    assert part.path.exists()


# ---------------------------------------------------------------- live: the command line


def test_two_runs_on_one_output_one_wins_and_the_other_starts_nothing(sandbox_gen2: Any, tmp_path: Path) -> None:
    out = tmp_path / "same.log"
    refs_before = kz_refs(sandbox_gen2)
    args = [sys.executable, "-m", "kzbridge", "trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "3"]
    procs = [subprocess.Popen([*args, "-o", str(out)], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    winners = [err for code, err in results if code == 0]
    losers = [err for code, err in results if code != 0]
    assert len(winners) == 1, results
    assert "size verified" in winners[0]
    for err in losers:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "already exists" in err and "see --output" in err, err
    assert [code for code, _ in results].count(2) == 2
    # The losers started nothing: no trace of theirs remains or ever reached status.
    assert kz_refs(sandbox_gen2) == refs_before
    remote = winners[0].split("remote: ")[1].split("\n")[0].strip()
    assert out.stat().st_size == node_call(sandbox_gen2, "filelib", "file_size", [remote])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not Path(str(out) + ".partial").exists()


def test_collected_copies_are_0600_and_a_wider_mode_than_the_source_warns(
    sandbox_gen2: Any, node_tmp: Path, tmp_path: Path
) -> None:
    src = f"{node_tmp}/private-{os.getpid()}.log"
    Path(src).write_text("+15551234567 called +15557654321\n")
    os.chmod(src, 0o640)
    try:
        res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(tmp_path / "c.log"))
        assert res.returncode == 0, res.stderr
        assert stat.S_IMODE((tmp_path / "c.log").stat().st_mode) == 0o600
        res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(tmp_path / "w.log"), "--mode", "0644")
        assert res.returncode == 0, res.stderr
        assert stat.S_IMODE((tmp_path / "w.log").stat().st_mode) == 0o644
        assert "kzbridge: warning: the local copy is mode 0644 but the node's file was 0640" in res.stderr
        res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(tmp_path / "x.log"), "--mode", "0640")
        assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
        res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(tmp_path / "y.log"), "--mode", "9999")
        assert res.returncode == 2 and "bad mode" in one_line(res) and "see --mode" in res.stderr
    finally:
        os.unlink(src)


def test_collect_over_an_existing_file_or_through_a_symlink_is_refused(
    sandbox_gen2: Any, node_tmp: Path, tmp_path: Path
) -> None:
    src = f"{node_tmp}/some-{os.getpid()}.log"
    Path(src).write_text("data\n")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "l.log").symlink_to(victim)
    (tmp_path / "p.log.partial").symlink_to(victim)
    try:
        for name in ("l.log", "p.log", "victim"):
            res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(tmp_path / name))
            assert res.returncode == 2 and "already exists" in one_line(res), res.stderr
        assert victim.read_text() == "keep me"
    finally:
        os.unlink(src)


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_an_output_that_cannot_be_written_starts_nothing_on_the_node(
    sandbox_gen2: Any, tmp_path: Path, where: str
) -> None:
    out = str(tmp_path / "nope" / "t.log") if where == "missing-dir" else str(tmp_path)
    before = (kz_refs(sandbox_gen2), traced_files(sandbox_gen2))
    res = kzb("trace-module", "kz_json", "-n", sandbox_gen2.node, "-d", "2", "-o", out)
    assert res.returncode == 2, res.stderr
    if where == "a-directory":  # click's own option check answers first, in its usage form
        assert "is a directory" in res.stderr and "Traceback" not in res.stderr, res.stderr
    else:
        line = one_line(res)
        assert "does not exist" in line and "see --output" in line, line
    assert (kz_refs(sandbox_gen2), traced_files(sandbox_gen2)) == before


def test_a_full_local_disk_during_a_trace_stops_it_and_names_both_files(sandbox_gen2: Any, small_tmpfs: Path) -> None:
    fill(small_tmpfs, 4096)
    out = small_tmpfs / "t.log"
    res = kzb("trace", "--filter", "function=*", "-n", sandbox_gen2.node, "-d", "40", "-o", str(out), "--json")
    assert res.returncode == 1, res.stderr
    line = the_error(res)
    partial = f"{out}.partial"
    assert "No space left on device" in line and f"bytes in {partial} (partial)" in line, line
    assert "was stopped" in line and "kzbridge collect /tmp/" in line, line
    kept = int(line.split("kept ")[1].split(" bytes")[0])
    assert kept == os.path.getsize(partial) > 0 and not out.exists()
    ref = line.split("trace ")[1].split(" ")[0]
    remote = line.split("kzbridge collect ")[1].split(" ")[0]
    # Stopped on the node: kz_data_tracing forgot it and no handler writes the file.
    assert node_call(sandbox_gen2, "kz_data_tracing", "status", [ref.encode()]) == Atom("false")
    assert remote not in traced_files(sandbox_gen2)
    assert node_call(sandbox_gen2, "filelib", "file_size", [remote]) >= kept


def test_a_full_local_disk_during_a_collection_is_one_line_naming_the_partial(
    sandbox_gen2: Any, small_tmpfs: Path, node_tmp: Path
) -> None:
    src = f"{node_tmp}/big-{os.getpid()}.bin"
    with open(src, "wb") as fh:
        fh.write(os.urandom(3 << 20))
    try:
        out = small_tmpfs / "big.bin"
        res = kzb("collect", src, "-n", sandbox_gen2.node, "-o", str(out))
        assert res.returncode == 1, res.stderr
        line = one_line(res)
        partial = f"{out}.partial"
        assert "No space left on device" in line and partial in line and f"kzbridge collect {src}" in line, line
        kept = int(line.split("kept ")[1].split(" bytes")[0])
        assert kept == os.path.getsize(partial) > 0 and not out.exists()
    finally:
        os.unlink(src)


def test_a_full_cache_directory_stops_the_trace_it_could_not_record(
    sandbox_gen2: Any, small_tmpfs: Path, tmp_path: Path
) -> None:
    fill(small_tmpfs, 0)
    env = {"KZBRIDGE_CACHE": str(small_tmpfs)}
    before = traced_files(sandbox_gen2)
    node = ["-n", sandbox_gen2.node, "-c", sandbox_gen2.cookie]
    for args in (
        ["start", "--module", "kz_json", "-d", "300", *node],
        ["trace-module", "kz_json", "-d", "5", "-o", str(tmp_path / "t.log"), *node],
    ):
        res = kzb(*args, env=env)
        assert res.returncode == 1, res.stderr
        line = the_error(res)
        assert "cannot write kzbridge's journal" in line and "No space left on device" in line, line
        ref = line.split("trace ")[1].split(" ")[0]
        assert f"trace {ref} on {sandbox_gen2.node} was stopped" in line
        assert node_call(sandbox_gen2, "kz_data_tracing", "status", [ref.encode()]) == Atom("false")
        assert traced_files(sandbox_gen2) == before
        assert not list(tmp_path.glob("t.log*"))  # the reserved .partial went with the failed start


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(10)


def test_sigterm_during_a_collection_keeps_the_partial_file_and_says_where(sandbox_gen2: Any, tmp_path: Path) -> None:
    big = f"/tmp/kzb-sparse-term-{os.getpid()}.bin"
    node_call(sandbox_gen2, "os", "cmd", [f"truncate -s 1G {big}"])  # sparse: no disk, reads fast
    out = tmp_path / "big.bin"
    partial = Path(f"{out}.partial")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kzbridge", "collect", big, "--node", sandbox_gen2.node, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll_until(lambda: partial.exists() and partial.stat().st_size > 0, timeout=30, message="bytes arriving")
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc)
        node_call(sandbox_gen2, "file", "delete", [big])
    assert proc.returncode == 130, err
    assert err.strip() == f"kzbridge: terminated; kept {partial.stat().st_size} bytes in {partial} (partial)"
    assert 0 < partial.stat().st_size < 1 << 30 and not out.exists()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
