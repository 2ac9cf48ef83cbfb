"""Numbers a caller gives kzbridge: checked once, here, before anything reaches a node.

Every time limit and size is a finite number inside a documented range; ``nan``,
``inf`` and values a node would answer with ``badarg`` (``timer:apply_after`` takes
at most 2^32-1 ms) are refused with a UsageError naming the setting. The command
line's option types (cli.NumberType, cli.SizeType) and the library's entry points
(tracing.start_trace, kazoo.session) call the same functions, so the Python API is
as safe as the command line.

Also here: ``Deadline``, one clock for a whole operation, so a limit given in
seconds bounds the operation, not each read inside it.
"""

from __future__ import annotations

import math
import time

from .errors import UsageError

# What one remote call may take when the caller gives no limit of its own.
CALL_TIMEOUT = 10.0
WEEK = 7 * 24 * 3600.0
DAY = 24 * 3600.0

# setting -> (lowest, highest, unit). Seconds unless the unit says otherwise.
RANGES: dict[str, tuple[float, float, str]] = {
    "timeout": (0.1, DAY, "seconds"),
    "duration": (0.1, WEEK, "seconds"),
    "lease": (1.0, WEEK, "seconds"),
    "max_size": (1, 1 << 40, "bytes"),
    "max_total_size": (1, 1 << 40, "bytes"),
    "max_rate": (0.0, 100_000.0, "events per second"),
    "rate": (0.0, 100_000.0, "events per second"),
}

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
_UNITS.update({"t": 1 << 40, "tb": 1 << 40})


def _words(setting: str) -> str:
    return "the " + setting.replace("_", " ")


def check_number(
    value: object, setting: str, lo: float | None = None, hi: float | None = None, *, name: str | None = None
) -> float:
    """``value`` as a float if it is a finite number in [lo, hi] (defaults from RANGES); else UsageError.

    The error names ``name`` (a face's own word for the setting, e.g. ``--duration``) or, by
    default, the setting in words, and carries ``setting`` when no name was given.
    """
    default_lo, default_hi, unit = RANGES.get(setting, (-math.inf, math.inf, ""))
    lo = default_lo if lo is None else lo
    hi = default_hi if hi is None else hi
    what = name or _words(setting)
    about = None if name else setting
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, not {value!r}", setting=about)
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"{what} must be a finite number, not {number!r}", setting=about)
    if not lo <= number <= hi:
        raise UsageError(f"{what} must be between {lo:g} and {hi:g} {unit}, not {number:g}".rstrip(), setting=about)
    return number


def check_seconds(value: object, setting: str) -> float:
    return check_number(value, setting)


def check_size(value: object, setting: str = "max_size") -> int:
    return int(check_number(value, setting))


def parse_number(
    text: str, setting: str, lo: float | None = None, hi: float | None = None, *, name: str | None = None
) -> float:
    """A number typed on a command line ("30", "1.5", "1e3"), checked against the setting's range."""
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(
            f"{name or _words(setting)} must be a number, not {text!r}", setting=None if name else setting
        ) from None
    return check_number(value, setting, lo, hi, name=name)


def parse_size(text: str, setting: str = "max_size", *, name: str | None = None) -> int:
    """A size as typed: 100MB, 512k, 1048576, 1.5g; finite, positive and in range."""
    t = text.strip().lower()
    num = t.rstrip("kmgtb")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        unit = "?"
    if unit not in _UNITS:
        raise UsageError(f"bad size {text!r}: write e.g. 100MB, 512k or 1048576", setting=setting)
    if not math.isfinite(value):
        raise UsageError(f"bad size {text!r}: {name or _words(setting)} must be finite", setting=setting)
    return int(check_number(value * _UNITS[unit], setting, name=name))


class Deadline:
    """The end of an operation on the monotonic clock; ``remaining()`` bounds each step inside it."""

    __slots__ = ("at", "seconds")  # a plain class: a dataclass costs a millisecond at every start

    def __init__(self, at: float, seconds: float) -> None:
        self.at = at
        self.seconds = seconds

    @classmethod
    def after(cls, seconds: float, setting: str = "timeout") -> Deadline:
        seconds = check_number(seconds, setting)
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at
