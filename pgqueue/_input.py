"""Validation of job input: every public enqueue call goes through here before any SQL is sent.

Limits, each checked before anything is written and refused with InvalidJobError:

- names and queue names: no NUL, no lone surrogate; queue names not empty; queue names and
  recurring job names at most :data:`MAX_NAME_BYTES` bytes of UTF-8 (Postgres indexes them,
  and cannot index longer text reliably);
- job data: JSON that jsonb can store (no NUL, no NaN or Infinity, string keys), at most
  :data:`MAX_DATA_DEPTH` levels of nesting, and at most :data:`MAX_PAYLOAD_BYTES` bytes as JSON
  (or ``PGQUEUE_MAX_PAYLOAD_BYTES``, see :func:`max_payload_bytes`);
- ``scheduled_at``: a time that every session time zone can read back into a Python datetime;
- a handler's str result (:func:`stored_result`): text Postgres can store, or the attempt fails.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from ._show import show
from .errors import ConfigurationError, InvalidJobError
from .priority import to_priority
from .retry import normalize_retry
from .schedule import Schedule, parse_schedule
from .timeouts import check_timeout

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
    "timeout",
)

#: The longest queue name and recurring job name, in bytes of UTF-8. Both are indexed, and a
#: btree index entry holds at most 2704 bytes, so longer names could not be enqueued reliably
#: (queue names also go out with NOTIFY, whose payload is limited to 8000 bytes); 2048 bytes
#: leave room for the other columns. The names of plain jobs are not indexed nor bounded.
MAX_NAME_BYTES: Final = 2048

#: The deepest nesting of arrays and objects allowed in job data. Python decodes JSON
#: recursively: data nested close to the interpreter's recursion limit (1000) could be written
#: but not read back by a worker whose stack is a little deeper, and would block its queue.
MAX_DATA_DEPTH: Final = 200

#: The default limit on job data, in bytes of its JSON text (UTF-8): 16 MiB. Generous on
#: purpose; large files belong elsewhere (object storage, a table) with their key in the job.
#: Each process may change it with the environment variable :data:`MAX_PAYLOAD_ENV`.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

#: The environment variable that overrides :data:`MAX_PAYLOAD_BYTES` (a positive integer).
MAX_PAYLOAD_ENV: Final = "PGQUEUE_MAX_PAYLOAD_BYTES"

# scheduled_at must lie between these (UTC): a day inside Python's datetime range, so a job's
# time can be read back in any session time zone (Postgres's own range is much wider).
_EARLIEST: Final = datetime(1, 1, 2, tzinfo=UTC)
_LATEST: Final = datetime(9999, 12, 30, tzinfo=UTC)

# A JSON "\u0000" escape that is not itself an escaped backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class EnqueueParams(NamedTuple):
    """One validated job, as the parameters of pgqueue.enqueue, in their order (a named tuple:
    a bulk enqueue builds one per job, about a microsecond less than a frozen dataclass)."""

    queue: str | None
    name: str | None
    data: str | None
    priority: int | None
    scheduled_at: datetime | None
    delay: timedelta | None
    max_attempts: int | None
    retry: str | None
    schedule: str | None
    timeout: float | None = None


_JOB_KEY_SET: Final = frozenset(JOB_KEYS)

#: The ``what`` of :func:`check_text` calls that check a queue name, everywhere in pgqueue.
_QUEUE_WHATS: Final = frozenset({"queue", "queue name"})


def check_text(what: str, value: Any, *, max_bytes: int | None = None) -> str:
    """A name or queue: a string Postgres can store (no NUL, valid Unicode), returned as is.

    Queue names (``what`` is ``"queue"`` or ``"queue name"``) must not be empty. ``max_bytes``
    bounds the UTF-8 length; by default (None) queue names are bounded by
    :data:`MAX_NAME_BYTES`, as Postgres indexes them and sends them with NOTIFY, and other text
    is not bounded.
    """
    text = _check_string(what, value)
    if what in _QUEUE_WHATS:
        if not text:
            raise InvalidJobError(f"{what} must not be empty")
        if max_bytes is None:
            max_bytes = MAX_NAME_BYTES
    if max_bytes is not None:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise InvalidJobError(
                f"{what} is {size} bytes long (UTF-8); at most {max_bytes} bytes are allowed"
            )
    return text


def _check_string(what: str, value: Any) -> str:
    """A string Postgres text and jsonb can hold: no NUL, no lone surrogate."""
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


def check_job_name(value: Any, *, max_bytes: int | None = MAX_NAME_BYTES) -> str:
    """A job name a user may enqueue: text, and not one of pgqueue's built-in names.

    ``max_bytes`` (default :data:`MAX_NAME_BYTES`, the bound for the names Postgres indexes:
    recurring job names) bounds its UTF-8 length; None: not bounded (the name of a plain job,
    which is not indexed).
    """
    name = check_text("name", value, max_bytes=max_bytes)
    if name.startswith(RESERVED_PREFIX):
        raise InvalidJobError(
            f"job names starting with {RESERVED_PREFIX!r} are reserved for pgqueue"
        )
    return name


def check_int(what: str, value: Any, low: int = INT4_MIN, high: int = INT4_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(
            f"{what} must be an integer, got {type(value).__name__} {show(value)}"
        )
    if not low <= value <= high:
        raise InvalidJobError(f"{what} must be between {low} and {high}, got {show(value)}")
    return value


def _check_json_value(value: Any, path: str, depth: int = 0) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            _check_string(f"data{path}", value)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJobError(f"data{path} is {show(value)}, which JSON cannot represent")
        return
    if isinstance(value, (list, tuple, Mapping)) and depth >= MAX_DATA_DEPTH:
        raise InvalidJobError(
            f"data is nested too deeply: more than {MAX_DATA_DEPTH} levels of arrays and objects"
        )
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJobError(
                    f"data{path} has a non-string key {show(key)}; JSON keys are strings"
                )
            _check_string(f"a key in data{path}", key)
            _check_json_value(item, f"{path}[{show(key)}]", depth + 1)
        return
    raise InvalidJobError(f"data{path} is a {type(value).__name__}, which is not JSON-serialisable")


_SCALARS: Final = frozenset((str, int, float, bool, type(None)))
_STR: Final = frozenset((str,))
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _is_flat(data: Any) -> bool:
    """An object of scalars with string keys (the usual job data), or a scalar: what json.dumps
    checks alone, apart from NUL characters and lone surrogates (looked for in its text)."""
    if type(data) is dict:
        return _STR.issuperset(map(type, data)) and _SCALARS.issuperset(map(type, data.values()))
    return type(data) in _SCALARS


def max_payload_bytes() -> int:
    """The largest job data allowed, in bytes of JSON: ``PGQUEUE_MAX_PAYLOAD_BYTES`` when set,
    else :data:`MAX_PAYLOAD_BYTES` (16 MiB).

    The variable is read at each check, so a process may change it at any time. Why an
    environment variable and not a keyword argument: job data reaches the database through
    many entry points (add_job_to_queue, add_jobs_to_queue, add_recurring_job_to_queue,
    pgqueue.enqueue, Job classes, the Reaction facade, cancel_jobs' filter), and threading a
    parameter through every one of them would grow each signature for a setting that is one
    per deployment; the environment is the least global knob that reaches them all, and it
    needs no settings object. Raises ConfigurationError naming the variable when its value is
    not a positive integer. Postgres itself refuses a jsonb value above about 255 MiB.
    """
    raw = os.environ.get(MAX_PAYLOAD_ENV, "").strip()
    if not raw:
        return MAX_PAYLOAD_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigurationError(
            f"{MAX_PAYLOAD_ENV} must be a positive whole number of bytes, got {show(raw)}"
        )
    return limit


def dump_data(data: Any, limit: int | None = None) -> str:
    """Serialise job data to JSON text Postgres's jsonb accepts, or raise InvalidJobError.

    Refused: values JSON or jsonb cannot hold (NaN, Infinity, NUL characters, lone surrogates,
    non-string keys, sets, bytes, other objects), nesting deeper than :data:`MAX_DATA_DEPTH`,
    and JSON text longer than ``limit`` bytes (default :func:`max_payload_bytes`). Tuples
    become arrays.
    """
    if limit is None:
        limit = max_payload_bytes()
    if not _is_flat(data):
        # The walk names the offending value; json.dumps would quietly turn a number key into
        # a string, and knows no depth limit.
        try:
            _check_json_value(data, "")
        except RecursionError as exc:
            raise InvalidJobError("data is nested too deeply") from exc
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        error: BaseException | None = exc
    else:
        error = None
    if error is not None:
        # Outside the except block: the error naming the value shows no encoder internals.
        _check_json_value(data, "")  # names the value, for a flat one
        raise InvalidJobError(f"data is not JSON-serialisable: {error}") from error
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in a flat one
            _check_json_value(data, "")  # names it
            raise
    # The substring test first: the regular expression takes about 0.1 s per MB.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise InvalidJobError("data must not contain NUL characters (jsonb cannot store them)")
    # Every character takes 1 to 4 bytes: measure only when the answer is not plain.
    if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit):
        size = len(text.encode("utf-8"))
        raise InvalidJobError(
            f"data is {size:,} bytes as JSON, over the limit of {limit:,} bytes; store large"
            f" content elsewhere and put its key in the job, or raise the limit with the"
            f" environment variable {MAX_PAYLOAD_ENV}"
        )
    return text


def check_when(value: Any) -> tuple[datetime | None, timedelta | None]:
    """scheduled_at: None (now), an aware datetime, or a timedelta from the database's now().

    The time must lie between 2 January of year 1 and 30 December 9999 (UTC), so that it can be
    read back into a Python datetime in any session time zone.
    """
    if value is None:
        return None, None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidJobError(
                "scheduled_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        _check_in_range(value, value)
        return value, None
    if isinstance(value, timedelta):
        try:
            when: datetime | None = datetime.now(UTC) + value
        except OverflowError:
            when = None
        _check_in_range(when, f"now + {value}")
        return None, value
    raise InvalidJobError(
        f"scheduled_at must be a datetime or a timedelta, got {type(value).__name__}"
    )


def _check_in_range(when: datetime | None, given: object) -> None:
    try:
        inside = when is not None and _EARLIEST <= when.astimezone(UTC) <= _LATEST
    except OverflowError:
        inside = False
    if not inside:
        raise InvalidJobError(
            f"scheduled_at {given} is out of range: it must be between"
            f" {_EARLIEST.date().isoformat()} and {_LATEST.date().isoformat()} UTC"
        )


def enqueue_params(
    job: Mapping[str, Any] | None, overrides: Mapping[str, Any], limit: int | None = None
) -> EnqueueParams:
    """Merge a Compas-style job dict with keyword arguments and validate the result.

    ``limit``: the payload limit (:func:`max_payload_bytes`) when the caller has read it for a
    whole batch."""
    if job is not None and type(job) is not dict and not isinstance(job, Mapping):
        raise InvalidJobError(f"job must be a dict, got {type(job).__name__}")
    merged = {**(job or {}), **overrides} if overrides else (job or {})
    if not merged.keys() <= _JOB_KEY_SET:
        unknown = sorted(map(show, set(merged) - _JOB_KEY_SET))
        raise InvalidJobError(
            f"unknown job key(s) {', '.join(unknown)}; expected some of {', '.join(JOB_KEYS)}"
        )
    name = merged.get("name")
    data = merged.get("data")
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
        name=None if name is None else check_job_name(name, max_bytes=None),
        data=None if data is None else dump_data(data, limit),
        priority=None if priority is None else to_priority(priority),
        scheduled_at=scheduled_at,
        delay=delay,
        max_attempts=None if max_attempts is None else check_int("max_attempts", max_attempts, 1),
        retry=None if retry is None else json.dumps(retry),
        schedule=schedule,
        timeout=check_timeout(merged.get("timeout")),
    )


def as_schedule(value: Any) -> Schedule:
    """A Schedule from a cron or text string (or a Schedule)."""
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise InvalidJobError(f"schedule must be a cron or text string, got {type(value).__name__}")
    return parse_schedule(value)


def stored_result(value: object) -> tuple[str | None, str | None]:
    """(error text, result) of an attempt whose handler returned ``value``: a str is the job's
    result, unless Postgres cannot store it (a NUL, a lone surrogate): then the attempt fails,
    or its completion would fail and the job would run again at once, forever. Other values
    are not kept."""
    if not isinstance(value, str):
        return None, None
    try:
        check_text("the handler's result", value)
    except InvalidJobError as exc:
        return (
            f"InvalidJobError: {exc} (a str a handler returns is stored as the job's result)",
            None,
        )
    return None, value
