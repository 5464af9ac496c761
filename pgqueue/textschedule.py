"""English text schedules in the style of later.js, the library Reaction Commerce schedules with.

:func:`parse_text` turns text such as ``every weekday at 9:00`` into field patterns. The
grammar, and LATERJS_DIFFERENCES (where the meaning here differs from later.js's), are in
:mod:`pgqueue.schedule`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NoReturn

from .cron import LAST_DAY, FieldPattern, check_length
from .errors import InvalidJobError

__all__ = ["DAY_NAMES", "MONTH_SPELLINGS", "UNITS", "Unit", "parse_text"]


@dataclass(frozen=True)
class Unit:
    """A unit of ``every N <unit>``: the pattern field it sets and that field's values."""

    name: str
    field: str  # "" for years, which no pattern field holds
    low: int
    high: int
    spellings: tuple[str, ...]

    @property
    def max_count(self) -> int:
        """The largest N allowed in ``every N <unit>``: the number of values of the field."""
        return self.high - self.low + 1


#: The units of ``every N <unit>``, ``starting``, ``between`` and ``on the``, with their spellings.
UNITS: Final = (
    Unit("second", "seconds", 0, 59, ("s", "sec", "secs", "second", "seconds")),
    Unit("minute", "minutes", 0, 59, ("m", "min", "mins", "minute", "minutes")),
    Unit("hour", "hours", 0, 23, ("h", "hr", "hrs", "hour", "hours")),
    Unit("day", "monthdays", 1, 31, ("day", "days")),
    Unit("week", "weeks", 1, 53, ("week", "weeks")),
    Unit("month", "months", 1, 12, ("month", "months")),
    Unit("year", "", 1, 1, ("year", "years")),
)
_UNIT_BY_WORD: Final = {spelling: unit for unit in UNITS for spelling in unit.spellings}
_SECOND, _MINUTE, _HOUR, _DAY, _WEEK, _MONTH, _YEAR = UNITS


def _spellings(groups: str, first: int) -> dict[str, int]:
    """``"mon monday|tue tues"`` -> ``{"mon": first, "monday": first, "tue": first + 1, ...}``."""
    return {word: n for n, group in enumerate(groups.split("|"), first) for word in group.split()}


#: Day-name spellings, Monday = 0 to Sunday = 6.
DAY_NAMES: Final[Mapping[str, int]] = _spellings(
    "mon monday mondays|tue tues tuesday tuesdays|wed wednesday wednesdays"
    "|thu thur thurs thursday thursdays|fri friday fridays|sat saturday saturdays"
    "|sun sunday sundays",
    0,
)
#: Month-name spellings, January = 1.
MONTH_SPELLINGS: Final[Mapping[str, int]] = _spellings(
    "jan january|feb february|mar march|apr april|may|jun june|jul july|aug august"
    "|sep sept september|oct october|nov november|dec december",
    1,
)
_KEYWORDS: Final = frozenset(
    re.findall(
        r"\w+",
        "every at on the of in and also except starting start between first last to through"
        " am pm weekday weekdays weekend weekends",
    )
)
_VOCABULARY: Final = _KEYWORDS | _UNIT_BY_WORD.keys() | DAY_NAMES.keys() | MONTH_SPELLINGS.keys()
_CLAUSE: Final = "'every', 'at', 'on', 'of' or 'in'"
_RANGE_WORDS: Final = ("-", "to", "through")
_LEVELS: Final = ("seconds", "minutes", "hours", "day", "weeks", "months")
_MAX_PATTERNS: Final = 64
_TOKEN: Final = re.compile(
    r"(?P<time>\d+:\d+(?::\d+)?)|(?P<num>\d+)(?P<suffix>st|nd|rd|th)?|(?P<word>[a-z]+)|\S",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "time", "num", "word" or "other"
    text: str  # lower-cased
    raw: str
    pos: int  # counted from 1
    value: int = 0
    suffix: str = ""


@dataclass
class _Group:
    """The clauses of one schedule (between ``also`` and ``except``), as later.js collects them."""

    allowed: dict[str, set[int]] = field(default_factory=dict)
    times: list[tuple[int, int, int]] = field(default_factory=list)
    every_week: bool = False
    every_month: bool = False
    every_year: bool = False

    def add(self, name: str, values: Iterable[int]) -> None:
        self.allowed.setdefault(name, set()).update(values)

    def is_empty(self) -> bool:
        return not self.allowed and not self.times and not self.every_year


def _token(match: re.Match[str]) -> _Token:
    number = match.group("num")
    if match.group("time"):
        kind = "time"
    elif number:
        kind = "num"
    else:
        kind = "word" if match.group("word") else "other"
    return _Token(
        kind=kind,
        text=(number or match.group()).lower(),
        raw=match.group(),
        pos=match.start() + 1,
        value=int(number) if number else 0,
        suffix=(match.group("suffix") or "").lower(),
    )


def _ordinal_suffix(number: int) -> str:
    if 11 <= number % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")


def _cycle(start: int, end: int, low: int, high: int) -> range | list[int]:
    """Values from start to end; a range that runs backwards wraps around (fri-mon)."""
    if start <= end:
        return range(start, end + 1)
    return [*range(start, high + 1), *range(low, end + 1)]


def _pattern(values: Mapping[str, set[int]]) -> FieldPattern:
    return FieldPattern(**{name: frozenset(found) for name, found in values.items()})


def _at_times(
    values: Mapping[str, set[int]], times: list[tuple[int, int, int]]
) -> list[FieldPattern]:
    """One pattern per time of day, which must also fit any hours, minutes or seconds given."""
    out = []
    for time in sorted(set(times)):
        fixed = dict(values)
        for name, value in zip(("hours", "minutes", "seconds"), time, strict=True):
            fixed[name] = {value} & values[name] if name in values else {value}
        out.append(_pattern(fixed))
    return out


def _included(group: _Group) -> list[FieldPattern]:
    """The patterns of one schedule, each field filled in where its clauses leave it open.

    First the implied starts of ``every week`` (Monday), ``every month`` (the 1st) and ``every
    year`` (1 January); then, as in later.js, fields finer than the finest one given start at
    their first value.
    """
    values = {name: set(found) for name, found in group.allowed.items()}
    day_given = "monthdays" in values or "weekdays" in values
    if group.every_year and "months" not in values:
        values["months"] = {1}
    if (group.every_month or group.every_year) and not day_given and "weeks" not in values:
        values["monthdays"] = {1}
    if group.every_week and not day_given:
        values["weekdays"] = {0}
    if group.times:
        return _at_times(values, group.times)
    given = [
        level
        for level in _LEVELS
        if level in values or (level == "day" and ("monthdays" in values or "weekdays" in values))
    ]
    finest = given[0]
    for level in ("seconds", "minutes", "hours")[: _LEVELS.index(finest)]:
        values[level] = {0}
    if finest == "weeks":
        values["weekdays"] = {0}
    elif finest == "months":
        values["monthdays"] = {1}
    return [_pattern(values)]


def _excluded(group: _Group) -> list[FieldPattern]:
    """The patterns of an exception: every instant its clauses allow, nothing filled in."""
    values = {name: set(found) for name, found in group.allowed.items()}
    return _at_times(values, group.times) if group.times else [_pattern(values)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [_token(match) for match in _TOKEN.finditer(text)]
        self.index = 0

    # -- tokens ---------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token | None:
        index = self.index + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def at(self, *texts: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token is not None and token.text in texts

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, *texts: str) -> _Token | None:
        return self.take() if self.at(*texts) else None

    def fail(self, token: _Token | None, expected: str) -> NoReturn:
        if token is None:
            raise InvalidJobError(
                f"unexpected end of text at position {len(self.text) + 1} in {self.text!r}:"
                f" expected {expected}"
            )
        known = token.kind != "word" or token.text in _VOCABULARY
        what = "unexpected" if known else "unknown word"
        raise InvalidJobError(
            f"{what} {token.raw!r} at position {token.pos} in {self.text!r}: expected {expected}"
        )

    def bad(self, token: _Token, problem: str, why: str) -> NoReturn:
        raise InvalidJobError(
            f"{problem} {token.raw!r} at position {token.pos} in {self.text!r}: {why}"
        )

    def number(self, expected: str) -> _Token:
        token = self.peek()
        if token is None or token.kind != "num":
            self.fail(token, expected)
        self.take()
        if token.suffix and token.suffix != _ordinal_suffix(token.value):
            self.bad(
                token,
                "invalid ordinal",
                f"write {token.value}{_ordinal_suffix(token.value)} or {token.value}",
            )
        return token

    def in_range(self, token: _Token, low: int, high: int, what: str) -> int:
        if not low <= token.value <= high:
            self.bad(token, f"invalid {what}", f"{what}s go {low}-{high}")
        return token.value

    # -- the grammar ----------------------------------------------------------------------

    def parse(self) -> list[FieldPattern]:
        if not self.tokens:
            raise InvalidJobError("schedule text is empty")
        clauses: dict[str, Callable[[_Group], None]] = {
            "every": self.every,
            "at": self.at_times,
            "on": self.on,
            "of": self.months,
            "in": self.months,
        }
        included: list[_Group] = []
        excluded: list[tuple[_Group, _Token]] = []
        group = _Group()
        except_token: _Token | None = None
        while (token := self.peek()) is not None:
            if token.text in ("and", ","):
                self.take()
            elif token.text in ("also", "except"):
                if group.is_empty():
                    self.fail(token, _CLAUSE)
                self.take()
                if except_token is None:
                    included.append(group)
                else:
                    excluded.append((group, except_token))
                if token.text == "except":
                    except_token = token
                group = _Group()
            elif token.text in clauses:
                clauses[token.text](group)
            else:
                self.fail(token, _CLAUSE)
        if group.is_empty():
            self.fail(None, _CLAUSE)
        if except_token is None:
            included.append(group)
        else:
            excluded.append((group, except_token))
        return self.subtract([p for g in included for p in _included(g)], excluded)

    def subtract(
        self, patterns: list[FieldPattern], excluded: list[tuple[_Group, _Token]]
    ) -> list[FieldPattern]:
        for group, except_token in excluded:
            for exception in _excluded(group):
                if exception.monthdays is not None and (
                    LAST_DAY in exception.monthdays
                    or any(p.monthdays is not None and LAST_DAY in p.monthdays for p in patterns)
                ):
                    self.bad(
                        except_token,
                        "unsupported",
                        "'the last day of the month' cannot be combined with 'except'"
                        " on days of the month",
                    )
                kept = (q for p in patterns for q in p.without(exception))
                patterns = list(dict.fromkeys(q.normalized() for q in kept if not q.is_empty()))
                if len(patterns) > _MAX_PATTERNS:
                    self.bad(except_token, "too complex", "too many exceptions to combine")
        return patterns

    def unit(self, expected: str) -> Unit:
        token = self.peek()
        if token is None or token.text not in _UNIT_BY_WORD:
            self.fail(token, expected)
        self.take()
        unit = _UNIT_BY_WORD[token.text]
        tail = {"day": "month", "week": "year"}.get(unit.name)
        if tail and self.at("of") and self.at("the", ahead=1) and self.at(tail, ahead=2):
            self.index += 3
        return unit

    def same_unit(self, unit: Unit) -> None:
        """Accept an optional unit word after ``starting``/``between``; it must be ``unit``."""
        token = self.peek()
        if token is not None and token.text in _UNIT_BY_WORD and self.unit("") is not unit:
            self.bad(token, "unit", f"does not match the {unit.name}s after 'every'")

    def every(self, group: _Group) -> None:
        self.take()
        token = self.peek()
        if self.accept("weekday", "weekdays"):
            group.add("weekdays", range(5))
            return
        if self.accept("weekend", "weekends"):
            group.add("weekdays", (5, 6))
            return
        if token is not None and token.text in DAY_NAMES:
            group.add("weekdays", self.names(DAY_NAMES, 0, 6, "a day name such as 'monday'"))
            return
        count = None
        if token is not None and token.kind == "num":
            count = self.number("")
            expected = "a unit such as 'seconds', 'minutes', 'hours', 'days', 'weeks' or 'months'"
        else:
            expected = "a number, a unit such as 'minutes', a day name, 'weekday' or 'weekend'"
        unit = self.unit(expected)
        step = 1 if count is None else count.value
        if count is not None and not 1 <= step <= unit.max_count:
            if unit is _YEAR:
                self.bad(count, "invalid count", "only 'every year' (N = 1) is supported for years")
            self.bad(
                count, "invalid count", f"N in 'every N {unit.name}s' must be 1-{unit.max_count}"
            )
        if unit is _YEAR:
            group.every_year = True
            return
        low, high = unit.low, unit.high
        expected = f"a {unit.name} such as 5th"
        if self.accept("starting", "start"):
            self.accept("on", "at")
            self.accept("the")
            low = self.in_range(self.number(expected), unit.low, unit.high, unit.name)
            self.same_unit(unit)
        elif self.accept("between"):
            self.accept("the")
            low = self.in_range(self.number(expected), unit.low, unit.high, unit.name)
            if not self.accept("and", "to"):
                self.fail(self.peek(), "'and' or 'to'")
            self.accept("the")
            last = self.number(expected)
            high = self.in_range(last, unit.low, unit.high, unit.name)
            if high < low:
                self.bad(last, f"invalid {unit.name}", "'between' runs backwards")
            self.same_unit(unit)
        group.add(unit.field, range(low, high + 1, step))
        group.every_week = group.every_week or unit is _WEEK
        group.every_month = group.every_month or unit is _MONTH

    def starts_time(self, ahead: int) -> bool:
        token = self.peek(ahead)
        if token is None:
            return False
        return token.kind == "time" or (
            token.kind == "num" and self.at("am", "pm", ahead=ahead + 1)
        )

    def at_times(self, group: _Group) -> None:
        self.take()
        group.times.append(self.time())
        while self.at(",", "and") and self.starts_time(1):
            self.take()
            group.times.append(self.time())

    def time(self) -> tuple[int, int, int]:
        token = self.peek()
        if not self.starts_time(0) or token is None:
            self.fail(token, "a time such as 9:00, 17:30 or 5:30 pm")
        self.take()
        meridiem = self.accept("am", "pm")
        if token.kind == "num":  # "5 pm"
            hour, minute, second = token.value, 0, 0
            if token.suffix:
                self.bad(token, "invalid time", "write 5 pm or 5:00 pm")
        else:
            parts = token.text.split(":")
            if len(parts[0]) > 2 or any(len(part) != 2 for part in parts[1:]):
                self.bad(token, "invalid time", "write times as H:MM or H:MM:SS")
            hour, minute, second = (int(part) for part in [*parts, "0"][:3])
            if minute > 59 or second > 59:
                self.bad(token, "invalid time", "minutes and seconds go 00-59")
        if meridiem is not None:
            if not 1 <= hour <= 12:
                self.bad(token, "invalid time", "with am or pm the hour must be 1-12")
            hour = hour % 12 + (12 if meridiem.text == "pm" else 0)
        elif hour > 23:
            self.bad(token, "invalid time", "the hour must be 0-23 (1-12 with am or pm)")
        return hour, minute, second

    def on(self, group: _Group) -> None:
        self.take()
        token = self.peek()
        if self.accept("the"):
            self.ordinals(group)
        elif self.accept("weekdays", "weekday"):
            group.add("weekdays", range(5))
        elif self.accept("weekends", "weekend"):
            group.add("weekdays", (5, 6))
        elif token is not None and token.text in DAY_NAMES:
            group.add("weekdays", self.names(DAY_NAMES, 0, 6, "a day name such as 'monday'"))
        else:
            self.fail(token, "'the', a day name such as 'monday', 'weekdays' or 'weekends'")

    def ordinals(self, group: _Group) -> None:
        expected = "an ordinal such as 1st or 15th, 'first' or 'last'"
        items: list[tuple[_Token, _Token | None]] = []
        while True:
            word = self.accept("first", "last")
            if word is not None:
                items.append((word, None))
            else:
                first = self.number(expected)
                last = self.number(expected) if self.accept(*_RANGE_WORDS) else None
                items.append((first, last))
            if not (
                self.at(",", "and") and (self.at("first", "last", ahead=1) or self.at_number(1))
            ):
                break
            self.take()
        unit = _DAY
        token = self.peek()
        if token is not None and token.text in _UNIT_BY_WORD:
            unit = self.unit("")
            if unit not in (_SECOND, _MINUTE, _HOUR, _DAY):
                self.bad(token, "unit", "'on the' takes seconds, minutes, hours or days")
        elif self.at("of") and self.at("the", ahead=1) and self.at("month", ahead=2):
            self.index += 3
        values: set[int] = set()
        for first, last in items:
            if first.text == "first":
                values.add(unit.low)
            elif first.text == "last":
                values.add(LAST_DAY if unit is _DAY else unit.high)
            else:
                low = self.in_range(first, unit.low, unit.high, unit.name)
                high = low if last is None else self.in_range(last, unit.low, unit.high, unit.name)
                if last is not None and high < low:
                    self.bad(last, f"invalid {unit.name}", "the range runs backwards")
                values.update(range(low, high + 1))
        group.add(unit.field, values)

    def at_number(self, ahead: int) -> bool:
        token = self.peek(ahead)
        return token is not None and token.kind == "num"

    def months(self, group: _Group) -> None:
        self.take()
        token = self.peek()
        if token is not None and token.kind == "num" and len(token.text) == 4:
            self.bad(token, "year", "pgqueue schedules have no years; they repeat without end")
        group.add("months", self.names(MONTH_SPELLINGS, 1, 12, "a month name such as 'january'"))

    def names(self, names: Mapping[str, int], low: int, high: int, expected: str) -> set[int]:
        """A list of names and ranges of names: ``tues,thur-sat``; ranges wrap around."""
        values: set[int] = set()
        while True:
            token = self.peek()
            if token is None or token.text not in names:
                self.fail(token, expected)
            start = end = names[self.take().text]
            if self.accept(*_RANGE_WORDS):
                token = self.peek()
                if token is None or token.text not in names:
                    self.fail(token, expected)
                end = names[self.take().text]
            values.update(_cycle(start, end, low, high))
            following = self.peek(1)
            if not (self.at(",", "and") and following is not None and following.text in names):
                return values
            self.take()


def parse_text(text: str) -> list[FieldPattern]:
    """Parse an English text schedule into field patterns (not yet checked to ever occur).

    Raises InvalidJobError naming the bad word and its position (counted from 1).
    """
    check_length(text)
    return _Parser(text).parse()
