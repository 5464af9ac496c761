"""Cron expressions, and the field patterns that every pgqueue schedule compiles to.

A :class:`FieldPattern` is a set of UTC instants given by the values each calendar field may
take; python-dateutil's ``rrule`` does the calendar arithmetic. :func:`parse_cron` turns a
five-field cron expression into field patterns. The grammar is in :mod:`pgqueue.schedule`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, time, timedelta
from typing import Any, Final

from dateutil.rrule import DAILY, MO, YEARLY, rrule

from .errors import InvalidJobError

__all__ = [
    "CRON_MACROS",
    "LAST_DAY",
    "MAX_SCHEDULE_LENGTH",
    "FieldPattern",
    "compile_patterns",
    "looks_like_cron",
    "next_instant",
    "parse_cron",
]

#: The longest schedule text accepted, in characters (cron or text). Longer text is refused
#: before it is parsed: it bounds the work and keeps numbers far below the 4300 digits that
#: Python's int() accepts.
MAX_SCHEDULE_LENGTH: Final = 1000

#: The value that stands for the last day of the month in :attr:`FieldPattern.monthdays`.
LAST_DAY: Final = -1

#: Every value of each field of :class:`FieldPattern`.
FULL_RANGES: Final[Mapping[str, frozenset[int]]] = {
    "seconds": frozenset(range(60)),
    "minutes": frozenset(range(60)),
    "hours": frozenset(range(24)),
    "monthdays": frozenset(range(1, 32)),
    "weekdays": frozenset(range(7)),
    "weeks": frozenset(range(1, 54)),
    "months": frozenset(range(1, 13)),
}

#: The cron macros and the expressions they stand for.
CRON_MACROS: Final[Mapping[str, str]] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# A day-level pattern that occurs at all occurs within any 28 years in a row that hold no
# century year: they repeat every kind of year (leap or not, starting on each weekday). rrule
# only stops at a result or at the year 9999, so an impossible pattern is probed over the last
# 28 years there are, 9972-9999, which makes the "never" answer quick.
_PROBE_START: Final = datetime(9972, 1, 1)

MONTH_NAMES: Final[Mapping[str, int]] = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
# Cron numbers its days of the week from Sunday = 0 (7 is Sunday again).
_CRON_DAY_NAMES: Final[Mapping[str, int]] = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}


def _sorted(values: frozenset[int] | None) -> list[int] | None:
    return None if values is None else sorted(values)


def _values(values: frozenset[int] | None, name: str) -> list[int]:
    """A time field's allowed values in order (every value of the field for None)."""
    return sorted(FULL_RANGES[name] if values is None else values)


@dataclass(frozen=True)
class FieldPattern:
    """The instants (whole seconds, UTC) whose calendar fields all take one of the given values.

    A field left at None (the default) takes any value. ``weekdays`` counts from Monday = 0 to
    Sunday = 6, ``weeks`` are ISO 8601 week numbers, and ``monthdays`` may hold
    :data:`LAST_DAY` for the last day of each month.
    """

    seconds: frozenset[int] | None = None
    minutes: frozenset[int] | None = None
    hours: frozenset[int] | None = None
    monthdays: frozenset[int] | None = None
    weekdays: frozenset[int] | None = None
    weeks: frozenset[int] | None = None
    months: frozenset[int] | None = None

    def normalized(self) -> FieldPattern:
        """Return the same pattern with every field that allows all its values set to None."""
        changes: dict[str, Any] = {}
        for name, full in FULL_RANGES.items():
            values = getattr(self, name)
            if values is not None and values >= full:
                changes[name] = None
        return replace(self, **changes)

    def is_empty(self) -> bool:
        """Return whether some field allows no value at all."""
        return any(getattr(self, f.name) == frozenset() for f in fields(self))

    def without(self, other: FieldPattern) -> list[FieldPattern]:
        """Return patterns that together hold the instants of this one that ``other`` lacks.

        An instant escapes ``other`` when at least one field that ``other`` restricts takes
        another value, so there is one pattern for each such field. ``other.monthdays`` must
        not hold :data:`LAST_DAY` (nor may ours when ``other`` restricts days of the month).
        """
        out: list[FieldPattern] = []
        for name, full in FULL_RANGES.items():
            excluded = getattr(other, name)
            if excluded is None:
                continue
            mine = getattr(self, name)
            kept = (full if mine is None else mine) - excluded
            if kept:
                out.append(replace(self, **{name: frozenset(kept)}))
        return out

    def occurs(self) -> bool:
        """Return whether any instant at all matches (``0 0 30 feb *`` does not)."""
        if self.is_empty():
            return False
        if self.monthdays is None and self.weekdays is None and self.weeks is None:
            return True
        probe = rrule(
            YEARLY,
            dtstart=_PROBE_START,
            wkst=MO,
            bymonth=_sorted(self.months),
            bymonthday=_sorted(self.monthdays),
            byweekday=_sorted(self.weekdays),
            byweekno=_sorted(self.weeks),
        )
        return probe.after(_PROBE_START, inc=True) is not None

    def days(self, dtstart: datetime) -> rrule:
        """Return an rrule of the days (at midnight, naive UTC) this pattern's date fields
        allow, from ``dtstart``'s day on."""
        return rrule(
            DAILY,
            dtstart=datetime.combine(dtstart.date(), time()),
            wkst=MO,
            bymonthday=_sorted(self.monthdays),
            byweekday=_sorted(self.weekdays),
            byweekno=_sorted(self.weeks),
            bymonth=_sorted(self.months),
        )

    def first_time(self, floor: time | None) -> time | None:
        """Return the earliest time of day this pattern's time fields allow, at or after
        ``floor`` (None: any), or None when there is none that late."""
        hours = _values(self.hours, "hours")
        minutes = _values(self.minutes, "minutes")
        seconds = _values(self.seconds, "seconds")
        low = floor or time()
        for hour in hours[bisect_left(hours, low.hour) :]:
            late = hour == low.hour
            for minute in minutes[bisect_left(minutes, low.minute) if late else 0 :]:
                later = late and minute == low.minute
                at = bisect_left(seconds, low.second) if later else 0
                if at < len(seconds):
                    return time(hour, minute, seconds[at])
        return None


def compile_patterns(patterns: Iterable[FieldPattern]) -> tuple[FieldPattern, ...]:
    """Normalize patterns, drop duplicates and those that never occur, in a stable order."""
    out: dict[FieldPattern, None] = {}
    for pattern in patterns:
        normal = pattern.normalized()
        if normal.occurs():
            out[normal] = None
    return tuple(out)


def next_instant(patterns: Iterable[FieldPattern], after: datetime) -> datetime | None:
    """Return the first instant of any of ``patterns`` strictly after ``after`` (naive UTC).

    For each pattern, the first day its date fields allow, from the day of the first whole
    second after ``after``, then the first time of that day its time fields allow (on that
    first day, not before that second); the next allowed day if there is none. (One rrule
    over every field walked the seconds and minutes in between: a pattern of many seconds
    on rare days took seconds to minutes.)
    """
    try:
        floor = after.replace(microsecond=0) + timedelta(seconds=1)
    except OverflowError:  # after the last second of 9999
        return None
    found: datetime | None = None
    for pattern in patterns:
        for day in pattern.days(floor):
            moment = pattern.first_time(floor.time() if day.date() == floor.date() else None)
            if moment is not None:
                candidate = datetime.combine(day.date(), moment)
                if found is None or candidate < found:
                    found = candidate
                break
    return found


def looks_like_cron(text: str) -> bool:
    """Return whether ``text`` is shaped like a cron expression rather than English text.

    It is when it starts with ``@``, or when its first word starts with a digit or ``*`` and
    holds only digits and ``*,-/``.
    """
    return re.match(r"\s*(@|[\d*][\d*,/-]*(\s|$))", text) is not None


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_FIELDS: Final = (
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day-of-month", 1, 31, {}),
    _FieldSpec("month", 1, 12, MONTH_NAMES),
    _FieldSpec("day-of-week", 0, 7, _CRON_DAY_NAMES),
)
_FIELD_LIST: Final = " ".join(spec.name for spec in _FIELDS)
_ITEM: Final = re.compile(r"(?:(\*)|([a-z0-9]+)(?:-([a-z0-9]+))?)(?:/([0-9]+))?", re.IGNORECASE)


def check_length(text: str) -> None:
    """Raise InvalidJobError when schedule text is longer than :data:`MAX_SCHEDULE_LENGTH`."""
    if len(text) > MAX_SCHEDULE_LENGTH:
        raise InvalidJobError(
            f"schedule text is {len(text)} characters long; at most {MAX_SCHEDULE_LENGTH}"
            " are allowed"
        )


def _fail(text: str, problem: str, position: int, why: str = "") -> InvalidJobError:
    message = f"{problem} at position {position} in {text!r}"
    return InvalidJobError(f"{message}: {why}" if why else message)


def _value(text: str, spec: _FieldSpec, word: str, position: int) -> int:
    if word.isdigit():
        value = int(word)
    elif word.lower() in spec.names:
        value = spec.names[word.lower()]
    else:
        expected = f"a number {spec.low}-{spec.high}"
        if spec.names:
            expected += f" or a name such as {', '.join(list(spec.names)[:3])}"
        raise _fail(text, f"invalid {spec.name} {word!r}", position, f"expected {expected}")
    if not spec.low <= value <= spec.high:
        raise _fail(
            text, f"{spec.name} {word!r} out of range", position, f"must be {spec.low}-{spec.high}"
        )
    return value


def _field(text: str, spec: _FieldSpec, field_text: str, position: int) -> set[int]:
    values: set[int] = set()
    for item in field_text.split(","):
        match = _ITEM.fullmatch(item)
        if not item or match is None:
            raise _fail(
                text,
                f"invalid {spec.name} {item!r}" if item else f"empty {spec.name} item",
                position,
                "expected *, a value, a range a-b, or one of those with a step such as */5",
            )
        star, first, last, step_text = match.groups()
        low = spec.low if star else _value(text, spec, first, position)
        high = spec.high if star or (step_text and not last) else low
        if last:
            high = _value(text, spec, last, position + len(first) + 1)
            if high < low:
                raise _fail(text, f"{spec.name} range {item!r} runs backwards", position)
        step = 1
        if step_text is not None:
            step = int(step_text)
            if not 1 <= step <= spec.high - spec.low + 1:
                raise _fail(
                    text,
                    f"{spec.name} step {step_text!r}",
                    position + item.index("/") + 1,
                    f"must be 1-{spec.high - spec.low + 1}",
                )
        values.update(range(low, high + 1, step))
        position += len(item) + 1
    return values


def parse_cron(text: str) -> tuple[FieldPattern, ...]:
    """Parse a five-field cron expression or a macro into field patterns, at second 0.

    Raises InvalidJobError naming the bad field and its position (counted from 1).
    """
    check_length(text)
    source = text
    stripped = text.strip()
    if stripped.startswith("@"):
        macro, *rest = stripped.split()
        position = text.index(macro) + 1
        if macro.lower() not in CRON_MACROS:
            raise _fail(
                text,
                f"unknown cron macro {macro!r}",
                position,
                f"expected one of {', '.join(CRON_MACROS)}",
            )
        if rest:
            raise _fail(
                text,
                f"unexpected {rest[0]!r} after {macro!r}",
                text.index(rest[0], position + len(macro) - 1) + 1,
            )
        text = CRON_MACROS[macro.lower()]
    words = list(re.finditer(r"\S+", text))
    if len(words) > len(_FIELDS):
        extra = words[len(_FIELDS)]
        raise _fail(
            source,
            f"unexpected 6th field {extra.group()!r}",
            extra.start() + 1,
            f"a cron expression has 5 fields: {_FIELD_LIST}",
        )
    if len(words) < len(_FIELDS):
        missing = _FIELDS[len(words)].name
        raise _fail(
            source,
            f"missing {missing} field",
            len(text) + 1,
            f"a cron expression has 5 fields: {_FIELD_LIST}"
            " (a text schedule starts with a word such as 'every')",
        )
    sets = [
        _field(source, spec, word.group(), word.start() + 1)
        for spec, word in zip(_FIELDS, words, strict=True)
    ]
    minutes, hours, monthdays, months, cron_days = sets
    weekdays = frozenset((day + 6) % 7 for day in cron_days)  # cron Sunday 0/7 -> 6
    base = FieldPattern(
        seconds=frozenset({0}),
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        months=frozenset(months),
    )
    dom_star = words[2].group().startswith("*")
    dow_star = words[4].group().startswith("*")
    if not dom_star and not dow_star:
        # Vixie cron: with both restricted, a day matches when either field does.
        return (
            replace(base, monthdays=frozenset(monthdays)),
            replace(base, weekdays=weekdays),
        )
    return (replace(base, monthdays=frozenset(monthdays), weekdays=weekdays),)
