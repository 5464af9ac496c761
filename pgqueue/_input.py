"""Validation of job input: every public enqueue call goes through here before any SQL is sent."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .errors import InvalidJobError
from .priority import to_priority
from .retry import normalize_retry
from .schedule import Schedule, parse_schedule

INT4_MIN: Final = -(2**31)
INT4_MAX: Final = 2**31 - 1

JOB_KEYS: Final = (
    "name",
    "data",
    "scheduled_at",
    "priority",
    "queue",
    "max_attempts",
    "retry",
    "schedule",
)

# A JSON "\u0000" escape that is not itself an escaped backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True, slots=True)
class EnqueueParams:
    """One validated job, as the parameters of pgqueue.enqueue."""

    queue: str | None
    name: str | None
    data: str | None
    priority: int | None
    scheduled_at: datetime | None
    delay: timedelta | None
    max_attempts: int | None
    retry: str | None
    schedule: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.queue,
            self.name,
            self.data,
            self.priority,
            self.scheduled_at,
            self.delay,
            self.max_attempts,
            self.retry,
            self.schedule,
        )


def check_text(what: str, value: Any) -> str:
    """A name or queue: a string Postgres can store (no NUL, valid Unicode)."""
    if not isinstance(value, str):
        raise InvalidJobError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidJobError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(f"{what} is not valid Unicode: {exc.reason}") from exc
    return value


#: Job names starting with this are pgqueue's own built-in jobs.
RESERVED_PREFIX: Final = "pgqueue."


def check_job_name(value: Any) -> str:
    """A job name a user may enqueue: text, and not one of pgqueue's built-in names."""
    name = check_text("name", value)
    if name.startswith(RESERVED_PREFIX):
        raise InvalidJobError(
            f"job names starting with {RESERVED_PREFIX!r} are reserved for pgqueue"
        )
    return name


def check_int(what: str, value: Any, low: int = INT4_MIN, high: int = INT4_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidJobError(f"{what} must be between {low} and {high}, got {value}")
    return value


def _check_json_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            check_text(f"data{path}", value)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJobError(f"data{path} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJobError(
                    f"data{path} has a non-string key {key!r}; JSON keys are strings"
                )
            check_text(f"a key in data{path}", key)
            _check_json_value(item, f"{path}[{key!r}]")
        return
    raise InvalidJobError(f"data{path} is a {type(value).__name__}, which is not JSON-serialisable")


def dump_data(data: Any) -> str:
    """Serialise job data to JSON text Postgres's jsonb accepts, or raise InvalidJobError."""
    try:
        _check_json_value(data, "")
    except RecursionError as exc:
        raise InvalidJobError("data is nested too deeply") from exc
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJobError(f"data is not JSON-serialisable: {exc}") from exc
    if _NUL_ESCAPE.search(text):
        raise InvalidJobError("data must not contain NUL characters (jsonb cannot store them)")
    return text


def check_when(value: Any) -> tuple[datetime | None, timedelta | None]:
    """scheduled_at: None (now), an aware datetime, or a timedelta from the database's now()."""
    if value is None:
        return None, None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidJobError(
                "scheduled_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        return value, None
    if isinstance(value, timedelta):
        return None, value
    raise InvalidJobError(
        f"scheduled_at must be a datetime or a timedelta, got {type(value).__name__}"
    )


def enqueue_params(job: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> EnqueueParams:
    """Merge a Compas-style job dict with keyword arguments and validate the result."""
    if job is not None and not isinstance(job, Mapping):
        raise InvalidJobError(f"job must be a dict, got {type(job).__name__}")
    merged = {**(job or {}), **overrides}
    unknown = sorted(set(merged) - set(JOB_KEYS))
    if unknown:
        raise InvalidJobError(
            f"unknown job key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(JOB_KEYS)}"
        )
    name = merged.get("name")
    queue = merged.get("queue")
    priority = merged.get("priority")
    max_attempts = merged.get("max_attempts")
    scheduled_at, delay = check_when(merged.get("scheduled_at"))
    retry = normalize_retry(merged.get("retry"))
    schedule = None
    if merged.get("schedule") is not None:
        parsed = as_schedule(merged["schedule"])
        schedule = json.dumps(parsed.to_json())
        if scheduled_at is None and delay is None:
            # A repeating job first runs at its next occurrence, not now.
            scheduled_at = parsed.next_after(datetime.now(UTC))
    return EnqueueParams(
        queue=None if queue is None else check_text("queue", queue),
        name=None if name is None else check_job_name(name),
        data=dump_data(merged["data"]) if merged.get("data") is not None else None,
        priority=None if priority is None else to_priority(priority),
        scheduled_at=scheduled_at,
        delay=delay,
        max_attempts=None if max_attempts is None else check_int("max_attempts", max_attempts, 1),
        retry=None if retry is None else json.dumps(retry),
        schedule=schedule,
    )


def as_schedule(value: Any) -> Schedule:
    """A Schedule from a cron or text string (or a Schedule)."""
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise InvalidJobError(f"schedule must be a cron or text string, got {type(value).__name__}")
    return parse_schedule(value)
