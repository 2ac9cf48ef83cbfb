"""Local output files, written one way everywhere (trace sessions, collections, stop's outputs).

    check_target(path)                   before anything starts on the node: refuse what would fail later
    part = Partial.create(path, mode)    NAME.partial, created exclusively, never through a symlink
    part.write(data) ... part.publish()  the final NAME taken atomically, never over an existing file
    with new_file(path, mode) as part:   a file written whole or not at all (reports, merges): the
        part.write(data)                 partial is removed if the block raises, published if not

Rules (issue 11, rules 1, 6 and 7):
  * ``NAME.partial`` is opened ``O_CREAT|O_EXCL|O_NOFOLLOW``: a second run on the same output,
    a file left from an earlier run, or a symlink planted at that name is refused, never followed
    nor truncated.
  * It is created 0600 (traces hold phone numbers and call data), or exactly ``mode`` when the
    caller gives one (``fchmod``, so the umask does not change an explicit choice).
  * ``publish`` takes the final name with ``link(2)``, which fails when the name exists: a file
    that appeared there meanwhile is never replaced; the data then stays in ``NAME.partial`` and
    the error names it. On file systems without hard links it falls back to ``rename(2)`` after
    checking the name is free (a narrow race, said here).
  * Every OSError while writing (disk full, quota, I/O error) becomes a one-line LocalFileError
    naming the ``.partial`` file kept and how many bytes it holds.
  * A Ctrl-C (or SIGTERM, SIGHUP) is raised wherever Python is, also just after ``open(2)``
    returned and before anyone holds the new file: ``Partial.create`` holds those signals over
    the ``open(2)`` and removes what it made if one comes before it returns, and ``new_file``
    holds them over its creation and its publish, so an interrupted run leaves no file that
    nobody names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LocalFileError, UsageError

DEFAULT_MODE = 0o600


def partial_of(local: str | os.PathLike[str]) -> Path:
    return Path(str(local) + ".partial")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_target(local: str | os.PathLike[str]) -> None:
    """Refuse an output that could not be written, before anything starts on the node.

    The directory must exist and be writable; neither the name nor ``NAME.partial`` may exist
    (a file, a directory or a symlink): kzbridge never overwrites.
    """
    path = Path(local)
    partial = partial_of(local)
    check_directory(path.parent, path)
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory", setting="local_path")
    if os.path.lexists(path):
        raise UsageError(
            f"{path} already exists; kzbridge never overwrites a file",
            hint="choose another name or remove it",
            setting="local_path",
        )
    if os.path.lexists(partial):
        raise UsageError(
            f"{partial} already exists: another kzbridge run is writing it, or it was kept from an earlier run",
            hint="choose another name, or remove it once no run uses it",
            setting="local_path",
        )


def check_directory(parent: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> None:
    """The directory outputs go to exists, is a directory and lets us create files."""
    what = f"cannot write {path}" if path is not None else "cannot write there"
    if not os.path.exists(parent):
        raise UsageError(f"{what}: directory {parent} does not exist", setting="local_path")
    if not os.path.isdir(parent):
        raise UsageError(f"{what}: {parent} is not a directory", setting="local_path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: no permission to create files in {parent}", setting="local_path")


class Partial:
    """``NAME.partial`` being written; ``publish`` renames it to ``NAME``."""

    def __init__(self, final: Path, fd: int) -> None:
        self.final = final
        self.path = partial_of(final)
        self._fd: int | None = fd
        self.written = 0

    @classmethod
    def create(cls, local: str | os.PathLike[str], mode: int | None = None) -> Partial:
        """Check the target and create ``NAME.partial`` exclusively, 0600 or exactly ``mode``.

        Whatever interrupts it (a Ctrl-C included: the signals are held from ``open(2)`` until
        the descriptor is kept, see the module docstring), no file is left behind."""
        check_target(local)
        final = Path(local)
        partial = partial_of(final)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = -1
        try:
            with _signals_deferred():
                fd = os.open(partial, flags, DEFAULT_MODE if mode is None else mode & 0o777)
            os.fchmod(fd, DEFAULT_MODE if mode is None else mode & 0o777)
            return cls(final, fd)
        except FileExistsError:
            raise UsageError(
                f"{partial} already exists: another kzbridge run is writing it, or it was kept from an earlier run",
                hint="choose another name, or remove it once no run uses it",
                setting="local_path",
            ) from None
        except BaseException as exc:
            if fd >= 0:  # made, then interrupted (or fchmod failed): nothing of it stays
                os.unlink(partial)  # first, as in discard
                os.close(fd)
            if isinstance(exc, OSError):
                raise LocalFileError(f"cannot create {partial}: {_why(exc)}", setting="local_path") from None
            raise

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _error(self, doing: str, exc: OSError) -> LocalFileError:
        return LocalFileError(
            f"cannot {doing} {self.path}: {_why(exc)}; kept {self.written} bytes in {self.path} (partial)",
            partial_path=str(self.path),
            kept_bytes=self.written,
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; a LocalFileError (with what is kept) on any OSError."""
        if self._fd is None:
            raise ValueError("write to a closed Partial")  # a bug in kzbridge
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                self.written += n
                view = view[n:]
        except OSError as exc:
            raise self._error("write", exc) from None

    def close(self) -> None:
        """Close (idempotent); the partial file stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                raise self._error("close", exc) from None

    def discard(self) -> None:
        """Remove and close the partial file (nothing worth keeping in it). Removed first: a second
        Ctrl-C right after the first can cost a descriptor of a process that is ending, not a file."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            self.close()

    def publish(self) -> Path:
        """Close and give the data its final name, never over an existing file; the final path."""
        self.close()
        try:
            os.link(self.path, self.final, follow_symlinks=False)
        except FileExistsError:
            raise LocalFileError(
                f"{self.final} appeared while kzbridge was writing; it was left as it is and the "
                f"{self.written} bytes stay in {self.path}",
                partial_path=str(self.path),
                kept_bytes=self.written,
                setting="local_path",
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise self._error("rename", exc) from None
            if os.path.lexists(self.final):  # no hard links here: check, then rename (narrow race)
                raise LocalFileError(
                    f"{self.final} appeared while kzbridge was writing; the {self.written} bytes stay in {self.path}",
                    partial_path=str(self.path),
                    kept_bytes=self.written,
                    setting="local_path",
                ) from None
            try:
                os.rename(self.path, self.final)
            except OSError as exc2:
                raise self._error("rename", exc2) from None
            return self.final
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return self.final


@contextlib.contextmanager
def new_file(local: str | os.PathLike[str], mode: int | None = None) -> Iterator[Partial]:
    """A new file written whole or not at all: the block writes ``NAME.partial``, which takes the
    final name when the block ends and is removed if it raises, a Ctrl-C included wherever it
    lands (see the module docstring). ``part.final`` is the file's path."""
    part: Partial | None = None
    publishing = False
    try:
        with _signals_deferred():  # over the assignment too (Python 3.10 can stop as a call returns)
            part = Partial.create(local, mode)
        yield part
        with _signals_deferred():
            publishing = True
            part.publish()  # a LocalFileError here keeps the partial and names it
    except BaseException:
        if part is not None and not publishing:
            part.discard()
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP that come during the block (a few system calls) are handled as it
    ends, by the handlers that were there: the block is never cut between a system call that made
    something and the statement that keeps it. Python runs signal handlers in the main thread
    only, so it does this there; in another thread the block just runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[tuple[int, Any]] = []
    held: dict[int, Any] = {}
    over = False

    def later(signum: int, frame: Any) -> None:
        if over:  # the block is over (its handlers are being put back): as the held handler would
            held[signum](signum, frame)
        else:
            came.append((signum, frame))

    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handler = signal.getsignal(sig)
            if callable(handler):  # SIG_DFL and SIG_IGN stay: the first ends the process anyway
                held[sig] = handler
                signal.signal(sig, later)
        yield
    finally:
        over = True
        raised: BaseException | None = None
        for signum, handler in held.items():
            while True:
                try:
                    # signal.signal() runs the handlers of signals already come before it sets
                    # anything: one that raises (forwarded by ``later``) leaves it to do again.
                    signal.signal(signum, handler)
                    break
                except BaseException as exc:
                    raised = raised or exc
        if raised is not None:
            raise raised
        for signum, frame in came:
            held[signum](signum, frame)  # a KeyboardInterrupt (or Terminated) from here, as it would have


def wider_than_source(local_mode: int, source_mode: int | None) -> str | None:
    """A warning when the local copy lets group/others read what the source file did not; else None."""
    if source_mode is None:
        return None
    extra = local_mode & 0o077 & ~source_mode
    if not extra & 0o044:
        return None
    return (
        f"the local copy is mode {stat.S_IMODE(local_mode):04o} but the node's file was "
        f"{stat.S_IMODE(source_mode):04o}: others can read here what they could not read there"
    )
