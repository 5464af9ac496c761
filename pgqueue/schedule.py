"""Schedules for recurring jobs: Compas intervals, cron expressions and later.js-style text.

:func:`normalize_interval` checks a Compas interval. :func:`parse_schedule` turns a cron
expression or an English text schedule into a :class:`Schedule`, whose
:meth:`~Schedule.next_after` gives the next run time; python-dateutil's rrule does the calendar
arithmetic. The parsers live in :mod:`pgqueue.cron` and :mod:`pgqueue.textschedule`.

## Schedule grammar

Every schedule is evaluated in UTC and aligned to the clock, as later.js does: `every 5 minutes`
runs at minutes 0, 5, ..., 55 of each hour, whenever it was created; it is not an interval
counted from now. `next_after(moment)` returns the first occurrence strictly after `moment`.
A schedule that starts with `@`, or whose first word starts with a digit or `*` and holds only
digits and `*,-/`, is a cron expression; anything else is a text schedule. Error messages name
the offending word or field and its position, counting characters from 1. Schedule text is at
most 1000 characters (`MAX_SCHEDULE_LENGTH`). A schedule that never occurs (`0 0 30 feb *`,
`on the 31st day of february`) is rejected; this is checked against a whole 28-year cycle of
weekdays and leap years, so rare ones such as `0 0 29 2 *` and `on the 29th of february on
monday` (about every 28 years) are accepted.

### Cron expressions

Five fields separated by spaces: `minute hour day-of-month month day-of-week`, at second 0.

| field        | values                   | names                       |
|--------------|--------------------------|-----------------------------|
| minute       | 0-59                     |                             |
| hour         | 0-23                     |                             |
| day-of-month | 1-31                     |                             |
| month        | 1-12                     | `jan` ... `dec`             |
| day-of-week  | 0-7 (0 and 7 are Sunday) | `sun` ... `sat`             |

A field is a comma-separated list of items. An item is `*` (every value), a value (`5`), a
range (`1-5`, `mon-fri`), or one of these with a step: `*/15`, `1-30/2`, or `5/15` (from 5 to
the end of the field). A step runs from 1 to the number of values of the field. Names are
case-insensitive. A range may not run backwards. When both day-of-month and day-of-week are
restricted (neither starts with `*`), a day matches if either matches, as in Vixie cron
(`0 0 1 * mon` runs on the 1st and on every Monday); otherwise a day must match both.

Macros: `@hourly` = `0 * * * *`, `@daily` and `@midnight` = `0 0 * * *`, `@weekly` =
`0 0 * * 0`, `@monthly` = `0 0 1 * *`, `@yearly` and `@annually` = `0 0 1 1 *`.

### Text schedules

Case-insensitive; extra spaces are ignored. A schedule is a list of clauses that must all hold
at once; the same kind of clause given twice adds values (`at 5:00 at 17:00`). `also` starts
another schedule whose occurrences are added; `except` starts a schedule whose instants are
removed (`also` after `except` adds another exception, and so does another `except`). `and`
and commas may stand between clauses.

```
schedule  = part { ("also" | "except") part }
part      = clause { ["and" | ","] clause }
clause    = every | at | on | months
every     = "every" ( "weekday" | "weekdays" | "weekend" | "weekends" | days
                    | [N] unit [start | between] )
start     = ("starting" | "start") ["on" | "at"] ["the"] rank [unit]
between   = "between" ["the"] rank ("and" | "to") ["the"] rank [unit]
at        = "at" time { ("and" | ",") time }
time      = H:MM [am | pm]  |  H:MM:SS [am | pm]  |  H (am | pm)
on        = "on" ( days | "weekday" | "weekdays" | "weekend" | "weekends"
                 | "the" ordinal { ("and" | ",") ordinal } [unit | "of the month"] )
ordinal   = "first" | "last" | rank [("-" | "to" | "through") rank]
months    = ("of" | "in") month [("-" | "to" | "through") month] { ("and" | ",") ... }
days      = day [("-" | "to" | "through") day] { ("and" | ",") ... }
N, rank   = a number, optionally with its ordinal suffix: 4, 4th, 21st
```

| unit   | spellings                           | N in `every N` | values | `every N <unit>` means                       |
|--------|-------------------------------------|----------------|--------|----------------------------------------------|
| second | `s` `sec` `secs` `second` `seconds` | 1-60           | 0-59   | seconds 0, N, 2N, ... of each minute         |
| minute | `m` `min` `mins` `minute` `minutes` | 1-60           | 0-59   | minutes 0, N, 2N, ... at second 0            |
| hour   | `h` `hr` `hrs` `hour` `hours`       | 1-24           | 0-23   | hours 0, N, 2N, ... at minute 0              |
| day    | `day` `days` [`of the month`]       | 1-31           | 1-31   | days of the month 1, 1+N, ... at 00:00       |
| week   | `week` `weeks` [`of the year`]      | 1-53           | 1-53   | ISO weeks 1, 1+N, ..., Mondays at 00:00      |
| month  | `month` `months`                    | 1-12           | 1-12   | months 1, 1+N, ..., the 1st at 00:00         |
| year   | `year` `years`                      | 1 only         |        | 1 January at 00:00 (no `starting`/`between`) |

Without N, `every <unit>` is `every 1 <unit>`. `starting` moves the first value of the unit
(`every 15 minutes starting on the 4th minute`: 4, 19, 34, 49); `between` bounds them
(`every 2 hours between the 5th and 10th hour`: 5, 7, 9); the optional unit after them must be
the same unit. When N does not divide the unit evenly, the values still restart at each larger
unit, as in later.js: `every 7 hours` is 0:00, 7:00, 14:00, 21:00 and then 0:00 again (3 hours
later); `every 2 days` runs on the 31st and then on the 1st.

Day names: `mon`/`monday`, `tue`/`tues`/`tuesday`, `wed`/`wednesday`, `thu`/`thur`/`thurs`/
`thursday`, `fri`/`friday`, `sat`/`saturday`, `sun`/`sunday`; full names may take a plural `s`
(`mondays`). Month names: `jan`/`january` ... `dec`/`december`, also `sept`. Ranges of day or
month names wrap around (`fri-mon`, `nov-feb`). `weekday` is Monday to Friday, `weekend`
Saturday and Sunday.

Times: `H:MM` or `H:MM:SS` is 24-hour (H 0-23); with `am` or `pm`, H is 1-12, `12:30 am` is
00:30 and `12:30 pm` is 12:30. `H am` and `H pm` (`5 pm`) are whole hours.

`on the` takes ordinals of days of the month (1st-31st; `first` is the 1st, `last` the last day
of the month), or, when followed by that unit, of hours (0-23), minutes or seconds (0-59; `first`
and `last` are the first and last value); no other unit. `on the 15th`, `on the 15th day` and
`on the 15th day of the month` are the same.

What fires when:

- Within a schedule, fields finer than the finest one given start at their first value, as in
  later.js: `every 2 hours` runs at minute 0 second 0; `on monday` and `every weekday` run at
  00:00; `of may-dec` runs on the 1st of each of those months at 00:00. A time given with `at`
  fixes the hour, minute and second. Fields coarser than those given are free: `every 5 minutes
  on monday` runs all Monday.
- `every week` and `every N weeks` run on Mondays and `every month` and `every N months` on the
  1st (`every year`: 1 January), unless the schedule names days itself; so `every week at 9:00`
  is Mondays at 09:00.
- An exception removes every instant its clauses allow, nothing filled in: `every 5 minutes
  except on sunday` skips all of Sunday, `at 5:00 also at 10:00 except at 10:00` is 05:00 only.
  `the last day of the month` cannot be combined with `except` on days of the month.
- Years are not supported (`in 2024` is rejected): schedules repeat without end.
- LATERJS_DIFFERENCES lists the texts whose meaning differs from later.js's.

### Examples

- `every 5 minutes`: minutes 0, 5, ..., 55
- `every 15 s`: seconds 0, 15, 30, 45
- `every minute`, `every hour`, `every day`, `every week`, `every month`, `every year`
- `every 24 hours`: daily at 00:00
- `every 7 hours`: 00:00, 07:00, 14:00, 21:00
- `every weekday at 9:00`: Monday to Friday at 09:00
- `every weekend`: Saturday and Sunday at 00:00
- `every day at 2:00 am` and `at 2:00 am every day`: daily at 02:00
- `every monday at 8:30`: Mondays at 08:30
- `every 2 weeks on friday at 17:00`: Fridays of odd ISO weeks at 17:00
- `at 10:15 am`, `at 5:00 pm`, `at 17:30`, `at 9:00`, `at 5 pm`: daily at that time
- `at 5:00 also at 10:00` and `at 5:00 and 10:00`: daily at 05:00 and 10:00
- `on tues,thur-sat`: Tuesday, Thursday, Friday and Saturday at 00:00
- `on the first day of the month`, `on the 1st day of the month`, `on the 15th`
- `on the last day of the month at 23:00`
- `on the 1st and 15th at 6:00`
- `on the 30th minute`: every hour at minute 30
- `of may-dec`, `in january`: the 1st of those months at 00:00
- `at 9:00 in january`: every day of January at 09:00
- `every 2 hours between the 5th and 10th hour`: 05:00, 07:00, 09:00
- `every 15 minutes starting on the 4th minute`: minutes 4, 19, 34, 49
- `every 5 days of the month`: days 1, 6, 11, 16, 21, 26, 31
- `every 5 minutes except on sunday`
- `*/5 * * * *`, `0 9 * * mon-fri`, `0 0 1 * *`, `30 2 * * 0`, `@daily`
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from ._show import show
from .cron import FieldPattern, compile_patterns, looks_like_cron, next_instant, parse_cron
from .errors import InvalidJobError
from .textschedule import parse_text

__all__ = [
    "INTERVAL_KEYS",
    "LATERJS_DIFFERENCES",
    "Schedule",
    "ScheduleKind",
    "normalize_interval",
    "parse_schedule",
]

#: The keys an interval may have; at least one must be positive.
INTERVAL_KEYS: Final = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")

_MAX_UNIT: Final = 1_000_000


#: How a schedule's text is read: as a cron expression or as English text.
ScheduleKind = Literal["cron", "text"]

#: The texts whose meaning in pgqueue differs from later.js 1.2.0's, the parser Reaction
#: Commerce used, as (text, later.js meaning, pgqueue meaning); all times UTC. Where later.js
#: contradicts its own documentation, pgqueue follows the documented intent.
LATERJS_DIFFERENCES: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "every day",
        "the 1st of each month at 00:00 (read as day-of-month 1, with a parse error)",
        "every day at 00:00",
    ),
    (
        "every day at 2:00 am",
        "the 1st of each month at 00:00 (parsing stops at 'day', so the time is lost)",
        "every day at 02:00",
    ),
    ("at 2:00 am every day", "the 1st of each month at 02:00", "every day at 02:00"),
    (
        "every week",
        "Monday 00:00 of ISO week 1, once a year",
        "every Monday at 00:00",
    ),
    ("every month", "1 January at 00:00, once a year", "the 1st of each month at 00:00"),
    ("every year", "1 January 1970 only: never fires again", "1 January at 00:00, every year"),
    ("every hour", "00:00 each day (hour 0 only)", "every hour at minute 0"),
    ("every minute", "minute 0 of each hour", "every minute at second 0"),
    ("every second", "second 0 of each minute", "every second"),
    (
        "every monday at 8:30",
        "never fires (parse error at 'monday', empty schedule)",
        "Mondays at 08:30",
    ),
    (
        "every 1 week at 9:00",
        "every day at 09:00 (every day lies in some week)",
        "Mondays at 09:00",
    ),
    (
        "every 1 month at 9:00",
        "every day at 09:00 (every day lies in some month)",
        "the 1st of each month at 09:00",
    ),
    (
        "on the 15th",
        "never fires (parse error: 'on the' needs a unit such as 'day')",
        "the 15th of each month at 00:00",
    ),
    (
        "in january",
        "never fires ('in' takes only years)",
        "1 January at 00:00 (like 'of january')",
    ),
    ("at 12:30 am", "12:30 (noon: 'am' is ignored with hour 12)", "00:30"),
    (
        "on sat-sun",
        "Saturdays at 00:00 (the backwards range leaves an empty list)",
        "Saturdays and Sundays at 00:00 (ranges of names wrap around)",
    ),
    (
        "every 60 minutes",
        "never fires (numbers above 59 do not parse)",
        "every hour at minute 0 (N may be up to the number of values of its unit)",
    ),
    ("every 0 minutes", "every minute (0 is taken as 1)", "rejected: N must be at least 1"),
    (
        "in 2012,2014-2016",
        "only in those years",
        "rejected: schedules have no years and repeat without end",
    ),
    (
        "every 5 minutes foo",
        "every 5 minutes: an unparsed tail only sets an error position, which Reaction ignores",
        "rejected: unknown word 'foo' at position 17",
    ),
    (
        "at 5:00 except on 10:00",
        "05:00 daily with an empty exception (error position 18, counted from 0)",
        "rejected: unexpected '10:00' at position 19 (positions count from 1)",
    ),
    (
        "every 1 hour",
        "next() at 10:07:30 returns 10:07:30 itself (inside a matching hour), then 11:00",
        "next_after(10:07:30) is 11:00: an occurrence is the start of a matching period,"
        " strictly after the given moment",
    ),
)


@dataclass(frozen=True)
class Schedule:
    """A recurring schedule: a cron expression or an English text schedule, in UTC.

    Make one with :func:`parse_schedule`, or with ``Schedule(text, kind)``, which parses
    ``text`` as that kind; both raise InvalidJobError for text they do not accept or that never
    occurs. Two schedules are equal when their text and kind are.
    """

    #: The text as given.
    text: str
    #: ``"cron"`` or ``"text"``.
    kind: ScheduleKind
    _patterns: tuple[FieldPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidJobError(f"schedule must be a string, got {type(self.text).__name__}")
        if self.kind == "cron":
            patterns = compile_patterns(parse_cron(self.text))
        elif self.kind == "text":
            patterns = compile_patterns(parse_text(self.text))
        else:
            raise InvalidJobError(f"schedule kind must be 'cron' or 'text', got {show(self.kind)}")
        if not patterns:
            raise InvalidJobError(
                f"schedule {self.text!r} never occurs: no date and time matches all its fields"
            )
        object.__setattr__(self, "_patterns", patterns)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first occurrence strictly after ``moment``, as a UTC datetime.

        ``moment`` must be timezone-aware (any zone: it is converted to UTC); occurrences fall
        on whole seconds, clock-aligned in UTC, whatever the zone of ``moment``.
        """
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidJobError(f"moment must be timezone-aware, got {moment!r}")
        found = next_instant(self._patterns, moment.astimezone(UTC).replace(tzinfo=None))
        if found is None:  # only past 31 December 9999
            raise InvalidJobError(f"schedule {self.text!r} has no occurrence after {moment}")
        return found.replace(tzinfo=UTC)

    def to_json(self) -> dict[str, str]:
        """Return ``{"kind": ..., "text": ...}``, all that :meth:`from_json` needs."""
        return {"kind": self.kind, "text": self.text}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from the output of :meth:`to_json`, parsing its text again."""
        if not isinstance(data, Mapping):
            raise InvalidJobError(f"a stored schedule must be a mapping, got {show(data)}")
        text, kind = data.get("text"), data.get("kind")
        if not isinstance(text, str) or kind not in ("cron", "text"):
            raise InvalidJobError(
                f"a stored schedule needs a text and a kind 'cron' or 'text', got {show(dict(data))}"
            )
        return cls(text, kind)


def parse_schedule(text: str) -> Schedule:
    """Parse a cron expression or an English text schedule (grammar in the module docs).

    Text that starts with ``@``, or whose first word starts with a digit or ``*`` and holds only
    digits and ``*,-/``, is read as cron; anything else as text. Raises InvalidJobError naming
    the offending word or field and its position (counted from 1), or saying that the schedule
    never occurs.
    """
    if not isinstance(text, str):
        raise InvalidJobError(f"schedule must be a string, got {type(text).__name__}")
    return Schedule(text, "cron" if looks_like_cron(text) else "text")


def normalize_interval(interval: Mapping[str, Any] | timedelta) -> dict[str, int | float]:
    """Check an interval and return it as stored.

    A mapping of :data:`INTERVAL_KEYS` to non-negative whole numbers of at most 1,000,000
    (``seconds`` may be fractional), at least one of them positive; or a
    positive ``timedelta``. The whole interval must be at least one microsecond (Postgres's
    resolution: less would repeat the job without pause) and at most 1000 years (so the next
    run stays a date Postgres and Python can hold). Months and years are calendar months and
    years: 31 January + 1 month is the end of February. Raises InvalidJobError that
    names the bad key.
    """
    if isinstance(interval, timedelta):
        if interval <= timedelta(0):
            raise InvalidJobError(f"interval must be positive, got {interval}")
        spec = {"days": interval.days, "seconds": interval.seconds + interval.microseconds / 1e6}
        _check_interval_length(spec)
        return spec
    if not isinstance(interval, Mapping):
        raise InvalidJobError(
            f"interval must be a mapping like {{'hours': 1}} or a timedelta, got {type(interval).__name__}"
        )
    out: dict[str, int | float] = {}
    for key, given in interval.items():
        value = given
        if key not in INTERVAL_KEYS:
            raise InvalidJobError(
                f"unknown interval key {show(key)}; expected some of {', '.join(INTERVAL_KEYS)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidJobError(f"interval {key} must be a number, got {show(value)}")
        if isinstance(value, float) and key != "seconds":
            if not value.is_integer():
                raise InvalidJobError(f"interval {key} must be a whole number, got {show(value)}")
            value = int(value)
        # math.isfinite() only for floats: it overflows on a huge int.
        if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
            raise InvalidJobError(f"interval {key} must not be negative, got {show(value)}")
        if value > _MAX_UNIT:
            raise InvalidJobError(f"interval {key} must be at most {_MAX_UNIT}, got {show(value)}")
        out[key] = value
    if not any(out.values()):
        raise InvalidJobError("interval must have at least one positive key, e.g. {'hours': 1}")
    _check_interval_length(out)
    return out


# Seconds per unit, rounded up (a year of 366 days, a month of 31), for the length bounds.
_UNIT_SECONDS: Final = {
    "years": 366 * 86400,
    "months": 31 * 86400,
    "weeks": 7 * 86400,
    "days": 86400,
    "hours": 3600,
    "minutes": 60,
    "seconds": 1,
}
_MAX_INTERVAL_SECONDS: Final = 1000 * 366 * 86400


def _check_interval_length(interval: Mapping[str, int | float]) -> None:
    """At least one microsecond, at most 1000 years (bounds of every unit already checked)."""
    seconds = sum(_UNIT_SECONDS[key] * value for key, value in interval.items())
    if seconds < 1e-6:
        raise InvalidJobError(
            f"interval must be at least one microsecond, got {show(dict(interval))}"
        )
    if seconds > _MAX_INTERVAL_SECONDS:
        raise InvalidJobError(
            f"interval must be at most 1000 years (so the next run is a date Postgres and Python"
            f" can hold), got {show(dict(interval))}"
        )
