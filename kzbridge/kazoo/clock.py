"""A node's clock, and the UTC instant of each line it printed.

lager stamps an event with the node's OS clock and prints it as local wall-clock time,
``HH:MM:SS.mmm``: no date, no zone (``HH:MM:SS.mmm UTC`` when the node runs with
``sasl utc_log``). Nodes of one cluster disagree by milliseconds to seconds, and may run
in different zones. To put several nodes' lines on one timeline we measure, per node:

  * its clock offset to ours: several ``os:system_time`` round trips, keeping the one with
    the smallest round trip (its offset is taken at the round trip's midpoint, and half
    the round trip bounds the error: the *uncertainty*);
  * its UTC offset at that moment (``erlang:universaltime_to_localtime`` of a fixed
    instant, so the answer does not depend on when the call ran), and so its local date;
  * whether lager prints UTC (``sasl utc_log``).

A ``Timeline`` then turns one file's printed times into UTC instants (float seconds since
the epoch, on *our* clock): the date comes from the node's date at the trace's start and
is carried across midnight (a time that jumps backwards by hours means the next day),
the zone is removed (a line stamped just before a midnight start belongs to the day
before), and the clock offset, interpolated between the measurements at start
and at stop, is subtracted.

``measure`` is the only part that talks to a node; everything else is pure.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import asdict, dataclass
from itertools import repeat
from operator import add as _add
from operator import itemgetter
from operator import mul as _mul
from operator import sub as _sub
from typing import TYPE_CHECKING, Any

from ..errors import KazooError

if TYPE_CHECKING:
    from ..wire.node import HiddenNode

# A printed time that goes back by more than this within one file is the next day
# (lager writes in order, give or take its buffering; DST moves by one hour at most).
MIDNIGHT_JUMP = 3 * 3600.0
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MICRO = 1_000_000
# The merge's hot path reads a printed time as two slices of the line: "HH:MM:SS." (whole
# seconds, parsed once per second and cached) and "mmm" (a table of the 1000 fractions).
_HEAD9 = itemgetter(slice(0, 9))
_MILLIS3 = itemgetter(slice(9, 12))
_FRACTION = {b"%03d" % k: k / 1000 for k in range(1000)}
_STRICT_SECOND = re.compile(rb"\d\d:\d\d:\d\d\.")


@dataclass(frozen=True)
class ClockSample:
    """One round trip: our clock before and after, the node's clock in between (seconds)."""

    sent: float
    node_time: float
    received: float

    @property
    def round_trip(self) -> float:
        return self.received - self.sent

    @property
    def offset(self) -> float:
        """Node clock minus ours, assuming the node read its clock half-way through."""
        return self.node_time - (self.sent + self.received) / 2


def best_sample(samples: list[ClockSample]) -> ClockSample:
    """The sample with the smallest round trip (the tightest bound on the offset)."""
    if not samples:
        raise ValueError("no clock samples")
    return min(samples, key=lambda s: s.round_trip)


@dataclass(frozen=True)
class NodeClock:
    """What one measurement told us about a node's clock.

    ``offset``: node clock minus ours, seconds (+3.5 means the node is 3.5 s ahead);
    ``uncertainty``: half the round trip of the sample used; ``utc_offset``: the node's
    local time minus UTC, seconds; ``measured_at``: our clock (epoch seconds) at the
    sample's midpoint; ``utc_log``: lager prints UTC times on that node.
    """

    offset: float
    uncertainty: float
    utc_offset: int
    measured_at: float
    utc_log: bool = False

    @property
    def node_local_start(self) -> dt.datetime:
        """The node's printed-time clock (local, or UTC with utc_log) at ``measured_at``, naive."""
        shift = 0 if self.utc_log else self.utc_offset
        return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=self.measured_at + self.offset + shift)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeClock:
        try:
            return cls(
                float(data["offset"]),
                float(data["uncertainty"]),
                int(data["utc_offset"]),
                float(data["measured_at"]),
                bool(data.get("utc_log", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KazooError(f"a clock record is malformed: {exc}") from exc

    @classmethod
    def given(cls, offset: float, *, utc_offset: int = 0, at: float | None = None, utc_log: bool = False) -> NodeClock:
        """A clock given by hand (``merge --clock NODE=OFFSET``): exact by assumption."""
        return cls(offset, 0.0, utc_offset, time.time() if at is None else at, utc_log)


def _datetime_tuple(value: dt.datetime) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((value.year, value.month, value.day), (value.hour, value.minute, value.second))


def _from_tuple(value: Any) -> dt.datetime:
    (y, mo, d), (h, mi, s) = value
    return dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))


# A sample whose round trip is this short bounds the offset to half a millisecond, finer than
# lager prints (milliseconds): more samples could not improve the merge, so measuring stops.
GOOD_ROUND_TRIP = 0.001


async def measure(
    node: HiddenNode, rounds: int = 7, timeout: float = 5.0, good_enough: float = GOOD_ROUND_TRIP
) -> NodeClock:
    """Measure ``node``'s clock against ours (see the module docstring).

    Up to ``rounds`` samples, one after another, stopping at the first whose round trip is at
    most ``good_enough`` (on a LAN, usually the first); the uncertainty is always half the
    round trip of the sample kept. Zone and utc_log are then asked at once.
    """
    import asyncio

    from ..wire.terms import Atom

    samples: list[ClockSample] = []
    for _ in range(max(1, rounds)):
        sent = time.time()
        value = await node.rpc("os", "system_time", [_MICRO], timeout=timeout)
        received = time.time()
        if type(value) is not int:
            raise KazooError(f"{node.peer_name}: os:system_time answered {value!r:.80}")
        samples.append(ClockSample(sent, value / _MICRO, received))
        if samples[-1].round_trip <= good_enough:
            break
    best = best_sample(samples)
    at = (best.sent + best.received) / 2
    # The node's UTC now, whole seconds; its local time for that same instant gives the zone.
    node_utc = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(at + best.offset))
    local, utc_log = await asyncio.gather(
        node.rpc("erlang", "universaltime_to_localtime", [_datetime_tuple(node_utc)], timeout=timeout),
        node.rpc("application", "get_env", [Atom("sasl"), Atom("utc_log")], timeout=timeout),
    )
    try:
        utc_offset = round((_from_tuple(local) - node_utc).total_seconds())
    except (TypeError, ValueError) as exc:
        raise KazooError(f"{node.peer_name}: universaltime_to_localtime answered {local!r:.80}") from exc
    return NodeClock(best.offset, best.round_trip / 2, utc_offset, at, utc_log == (Atom("ok"), Atom("true")))


@dataclass(frozen=True)
class ClockCorrection:
    """The clock at a trace's start and (when measured) at its stop; offsets in between are interpolated."""

    start: NodeClock
    stop: NodeClock | None = None

    @property
    def uncertainty(self) -> float:
        return max(self.start.uncertainty, self.stop.uncertainty if self.stop else 0.0)

    def offset_at(self, instant: float) -> float:
        stop = self.stop
        if stop is None or stop.measured_at <= self.start.measured_at:
            return self.start.offset
        share = (instant - self.start.measured_at) / (stop.measured_at - self.start.measured_at)
        share = min(1.0, max(0.0, share))
        return self.start.offset + (stop.offset - self.start.offset) * share

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.to_json(),
            "stop": self.stop.to_json() if self.stop else None,
            "uncertainty": self.uncertainty,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClockCorrection:
        if not isinstance(data, dict) or not isinstance(data.get("start"), dict):
            raise KazooError("a clock record is malformed: no start measurement")
        stop = data.get("stop")
        return cls(NodeClock.from_json(data["start"]), NodeClock.from_json(stop) if isinstance(stop, dict) else None)


def printed_seconds(text: str | bytes) -> tuple[int | None, float] | None:
    """``(day ordinal or None, seconds of day)`` of a printed lager time, or None if it is not one.

    Accepts ``HH:MM:SS.mmm`` and ``YYYY-MM-DD HH:MM:SS.mmm`` at the start of ``text``.
    """
    s = text.decode("ascii", "replace") if isinstance(text, (bytes, bytearray)) else text
    day: int | None = None
    if len(s) >= 23 and s[4] == "-" and s[7] == "-" and s[10] == " ":
        try:
            day = dt.date(int(s[0:4]), int(s[5:7]), int(s[8:10])).toordinal()
        except ValueError:
            return None
        s = s[11:]
    if len(s) < 12 or s[2] != ":" or s[5] != ":" or s[8] != ".":
        return None
    try:
        h, m, sec, ms = int(s[0:2]), int(s[3:5]), int(s[6:8]), int(s[9:12])
    except ValueError:
        return None
    if h > 23 or m > 59 or sec > 60:
        return None
    return day, h * 3600 + m * 60 + sec + ms / 1000


class Timeline:
    """One node's file: printed times in, UTC instants (our clock, epoch seconds) out.

    Feed the lines in file order. A line that does not start with a printed time (a
    continuation line) gives None; the caller keeps the previous instant. ``instants``
    does a whole batch of lines at once (the merge's hot path: ``HH:MM:SS`` is parsed once
    per second, then each line is two slices and two table look-ups, done by map over the
    batch); ``instant`` is one line. A line is a time when printed_seconds says so.
    """

    def __init__(self, correction: ClockCorrection) -> None:
        self.correction = correction
        start = correction.start.node_local_start
        self._day = start.date().toordinal()
        self._last = start.hour * 3600 + start.minute * 60 + start.second + start.microsecond / 1e6
        self._shift = 0 if correction.start.utc_log else correction.start.utc_offset
        self._seconds: dict[bytes, float] = {}
        self.days_carried = 0
        # Our clock = node clock - offset(t), offset linear between the two measurements.
        begin = correction.start
        stop = correction.stop
        self._o0 = begin.offset
        self._t0 = begin.measured_at + begin.offset
        if stop is not None and stop.measured_at > begin.measured_at:
            self._t1 = stop.measured_at + stop.offset
            self._slope = (stop.offset - begin.offset) / (self._t1 - self._t0) if self._t1 > self._t0 else 0.0
        else:
            self._t1 = self._t0
            self._slope = 0.0

    def instant(self, text: str | bytes) -> float | None:
        line = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
        return self.instants([line])[0]

    def stamps(self, stamps: list[bytes]) -> list[float | None]:
        """What ``instants`` gives for lines that are printed times alone (as report's parser takes
        them from headers), in fewer steps when times repeat (many events in one millisecond): each
        distinct time is read once and placed once, then looked up. A time's instant depends only
        on its text while no midnight falls in the batch; otherwise, and for dates, the lines go
        through ``instants``. The same values either way."""
        keys = list(dict.fromkeys(stamps))
        if len(keys) * 2 > len(stamps):
            return self.instants(stamps)
        try:
            sods = self._seconds_of_day(keys)
        except TypeError:  # a stamp that is not "HH:MM:SS.mmm" in digits
            return self.instants(stamps)
        last = self._last
        if min(min(sods), last) < max(max(sods), last) - MIDNIGHT_JUMP:
            return self._instants_one_by_one(stamps)
        instant_of = dict(zip(keys, self._placed(sods), strict=True))
        self._last = sods[keys.index(stamps[-1])]
        return list(map(instant_of.__getitem__, stamps))

    def _seconds_of_day(self, lines: list[bytes]) -> list[float]:
        """Each line's seconds of day; TypeError if one is not "HH:MM:SS.mmm" in digits."""
        seconds = self._seconds
        if len(seconds) > 4096:
            seconds.clear()
        heads = list(map(_HEAD9, lines))
        for head in set(heads).difference(seconds):
            whole = _whole_second(head)  # each new "HH:MM:SS." once
            if whole is not None:
                seconds[head] = whole
        return list(map(_add, map(seconds.get, heads), map(_FRACTION.get, map(_MILLIS3, lines))))

    def _placed(self, sods: list[float]) -> list[float]:
        """Seconds of day on the current day, as instants (our clock)."""
        base = float((self._day - _EPOCH_ORDINAL) * 86400 - self._shift)
        if self._slope:
            node_clocks = list(map(_add, repeat(base), sods))
            t0 = self._t0
            clamped = map(min, map(max, node_clocks, repeat(t0)), repeat(self._t1))
            offsets = map(_add, repeat(self._o0), map(_mul, repeat(self._slope), map(_sub, clamped, repeat(t0))))
            return list(map(_sub, node_clocks, offsets))
        return list(map(_sub, map(_add, repeat(base), sods), repeat(self._o0)))

    def instants(self, lines: list[bytes]) -> list[float | None]:
        """Each line's instant, None for a continuation line; the same values as ``instant`` line by line.

        The common batch (no date-prefixed time, no midnight within it) is done column-wise by
        builtins (map over the whole list: no Python bytecode per line); anything else takes
        the line-by-line loop.
        """
        continued: list[int] = []
        try:
            sods = self._seconds_of_day(lines)
        except TypeError:  # None + float: a line that is not "HH:MM:SS.mmm" in digits
            irregular = self._irregular(lines, list(map(_HEAD9, lines)))
            if irregular is None:
                return self._instants_one_by_one(lines)  # a date in a line: the day is its own
            sods, continued = irregular
        last = self._last
        if sods:
            if min(min(sods), last) < max(max(sods), last) - MIDNIGHT_JUMP:
                return self._instants_one_by_one(lines)  # a new day (or the day before) within the batch
            last = sods[-1]
        out: list[Any] = self._placed(sods)
        for i in continued:
            out[i] = None
        self._last = last
        return out

    def _irregular(self, lines: list[bytes], heads: list[bytes]) -> tuple[list[float], list[int]] | None:
        """Seconds of day per line where some lines are not "HH:MM:SS.mmm" in digits: each of those
        parsed in full; a continuation line repeats the previous line's value (listed in the second
        list). None when a line carries a date (the caller goes line by line)."""
        wholes: list[Any] = list(map(self._seconds.get, heads))
        fractions: list[Any] = list(map(_FRACTION.get, map(_MILLIS3, lines)))
        continued: list[int] = []
        for i in sorted(nones(wholes) | nones(fractions)):
            parsed = printed_seconds(lines[i][:23])
            if parsed is None:
                continued.append(i)
                wholes[i], fractions[i] = 0.0, 0.0
            elif parsed[0] is not None:
                return None
            else:
                wholes[i], fractions[i] = parsed[1], 0.0
        sods = list(map(_add, wholes, fractions))
        for i in continued:  # in order: the previous line's value is final
            sods[i] = sods[i - 1] if i else self._last
        return sods, continued

    def _instants_one_by_one(self, lines: list[bytes]) -> list[float | None]:
        out: list[float | None] = []
        append = out.append
        seconds = self._seconds
        day, last = self._day, self._last
        base = (day - _EPOCH_ORDINAL) * 86400 - self._shift
        o0, t0, t1, slope = self._o0, self._t0, self._t1, self._slope
        for line in lines:
            whole = seconds.get(line[:9])  # "HH:MM:SS." seen before: only the milliseconds are new
            if whole is None:
                whole = _whole_second(line[:9])
                if whole is not None:
                    seconds[line[:9]] = whole
            fraction = _FRACTION.get(line[9:12])
            if whole is not None and fraction is not None:
                sod = whole + fraction
            else:
                parsed = printed_seconds(line[:23])
                if parsed is None:
                    append(None)
                    continue
                if parsed[0] is not None:
                    day = parsed[0]
                    base = (day - _EPOCH_ORDINAL) * 86400 - self._shift
                sod = parsed[1]
            if sod < last - MIDNIGHT_JUMP:
                day += 1
                base += 86400
                self.days_carried += 1
            elif sod > last + 86400 - MIDNIGHT_JUMP:
                # Started just after midnight, and a line stamped just before it (clock
                # uncertainty, lager's buffering): that line belongs to the day before.
                day -= 1
                base -= 86400
                self.days_carried -= 1
            last = sod
            node_clock = base + sod
            if slope:
                t = t0 if node_clock < t0 else t1 if node_clock > t1 else node_clock
                append(node_clock - (o0 + slope * (t - t0)))
            else:
                append(node_clock - o0)
        self._day, self._last = day, last
        return out


def _whole_second(head: bytes) -> float | None:
    """Seconds of day of ``b"HH:MM:SS."`` in digits (as printed_seconds reads it), else None."""
    if _STRICT_SECOND.fullmatch(head) is None:
        return None
    h, m, sec = int(head[0:2]), int(head[3:5]), int(head[6:8])
    if h > 23 or m > 59 or sec > 60:
        return None
    return float(h * 3600 + m * 60 + sec)


def nones(values: list[Any]) -> set[int]:
    """The positions of None in ``values`` (list.index: a scan in C, not a Python loop per item)."""
    found: set[int] = set()
    i = -1
    try:
        while True:
            i = values.index(None, i + 1)
            found.add(i)
    except ValueError:
        return found


def format_instant(instant: float) -> str:
    """``2026-11-25T23:59:58.123Z`` (millisecond precision, as lager prints)."""
    ms = round(instant * 1000)
    whole, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac:03d}Z"
