"""Enqueue and inspect jobs, on a psycopg Connection (joining its transaction) or a ConnectionPool.

Each call is written once, as a steps generator (``_add_job_to_queue`` ...: validation, the
statements to send, what their answers mean; see pgqueue._sansio); the public functions here are
its blocking flavour, and pgqueue.aio's are its asyncio flavour.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from . import _queries as q
from . import _tracing
from ._input import (
    INT4_MAX,
    EnqueueParams,
    as_schedule,
    check_int,
    check_job_name,
    check_text,
    dump_data,
    enqueue_params,
    max_payload_bytes,
)
from ._sansio import Copy, Fetch, Steps, blocking
from .errors import InvalidJobError
from .priority import to_priority
from .records import JobRecord
from .retry import DEFAULT_MAX_ATTEMPTS
from .schedule import normalize_interval

#: The column defaults of pgqueue.jobs (sql/migrations/0001_jobs.sql), for
#: the bulk path that writes every column itself.
DEFAULT_QUEUE: Final = "default"
DEFAULT_PRIORITY: Final = 1

__all__ = [
    "add_job_to_queue",
    "add_jobs_to_queue",
    "add_recurring_job_to_queue",
    "average_time_to_completion",
    "get_job",
    "pending_queue_size",
]


def _add_job_to_queue(
    job: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    data: Any = None,
    scheduled_at: datetime | timedelta | None = None,
    priority: int | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    retry: Mapping[str, Any] | None = None,
    schedule: str | None = None,
    timeout: float | timedelta | None = None,
) -> Steps[int]:
    """Insert one job and return its id.

    ``job`` is a Compas-style dict with the same keys as the keyword
    arguments (keywords win). Defaults: ``name`` ``""``, ``data`` ``{}``,
    ``scheduled_at`` now (a ``timedelta`` means that long after the
    database's now()), ``priority`` 1 (lower runs first), ``queue``
    ``"default"``, ``max_attempts`` 5, ``retry`` the default exponential
    policy (see :func:`pgqueue.retry.normalize_retry`). An empty job is an
    immediate job of the highest default priority. ``schedule`` (a cron or
    text schedule) makes it a repeating job: it first runs at the next
    occurrence (unless ``scheduled_at`` says otherwise), and each time it
    finishes a copy is enqueued at the following one. ``timeout`` (seconds, or
    a timedelta; default None: the worker's ``timeout``) bounds each attempt:
    when it is up the worker ends the job's transaction and counts a failed
    attempt (see "Jobs that break their workers" in the README).

    On a Connection the insert joins the caller's open transaction: if the
    caller rolls back, the job never existed. On a pool it commits at once.
    With an OpenTelemetry tracer provider set, the insert runs in a
    ``pgqueue.enqueue`` span whose trace context the job keeps
    (``trace_context``), so that each run's span joins the trace.
    Raises InvalidJobError for bad input (nothing is written).
    """
    overrides = {
        key: value
        for key, value in {
            "name": name,
            "data": data,
            "scheduled_at": scheduled_at,
            "priority": priority,
            "queue": queue,
            "max_attempts": max_attempts,
            "retry": retry,
            "schedule": schedule,
            "timeout": timeout,
        }.items()
        if value is not None
    }
    params = enqueue_params(job, overrides)
    span = _tracing.enqueue_span((params,))  # None unless an OpenTelemetry tracer provider is set
    if span is None:
        row = yield Fetch(q.ENQUEUE, (*params, None))
        return int(row[0])
    with span:
        row = yield Fetch(q.ENQUEUE, (*params, span.carrier))
        job_id = int(row[0])
        span.set_ids([job_id])
    return job_id


add_job_to_queue = blocking(_add_job_to_queue)


def _add_jobs_to_queue(jobs: Iterable[Mapping[str, Any]]) -> Steps[list[int]]:
    """Insert many jobs with one COPY and return their ids, in input order.

    Each job is a dict as for :func:`add_job_to_queue`. One bad job raises
    InvalidJobError (naming its index) and none is written. One NOTIFY per
    queue, not per job. On a Connection the jobs join the caller's open
    transaction. With an OpenTelemetry tracer provider set, one
    ``pgqueue.enqueue`` span covers the call and every job keeps its trace
    context.

    Up to a thousand jobs are all checked before anything is sent. More are
    checked while the COPY streams, Python checking a chunk while the server
    stores the one before (a third faster for 100,000 jobs): a bad job then
    abandons the COPY, inside a savepoint when the connection is in a
    transaction, so the caller's transaction is as it was; the ids already
    drawn for the call are skipped.
    """
    todo = jobs if isinstance(jobs, list) else list(jobs)
    checked = _checked(todo, max_payload_bytes())
    if len(todo) <= _CHUNK or _tracing.tracing():  # the span names the jobs' queues first
        return (yield from _copy_jobs(list(checked)))
    return (yield from _copy_rows(len(todo), checked, None, streamed=True))


add_jobs_to_queue = blocking(_add_jobs_to_queue)

#: Jobs per chunk of COPY data.
_CHUNK: Final = 1000
_NULL: Final = "\\N"
_COPY_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _checked(jobs: Iterable[Mapping[str, Any]], limit: int) -> Iterator[EnqueueParams]:
    for index, job in enumerate(jobs):
        try:
            yield enqueue_params(job, {}, limit)
        except InvalidJobError as exc:
            raise InvalidJobError(f"job {index}: {exc}") from exc


def _copy_jobs(batch: Sequence[EnqueueParams]) -> Steps[list[int]]:
    """Insert already validated jobs with one COPY; return their ids, in input order.

    The second half of :func:`add_jobs_to_queue`, for callers that validate
    each job themselves (``pgqueue enqueue --from`` names the bad line).
    """
    if not batch:
        return []
    span = _tracing.enqueue_span(batch)  # None unless an OpenTelemetry tracer provider is set
    if span is None:
        return (yield from _copy_rows(len(batch), batch, None))
    with span:
        ids = yield from _copy_rows(len(batch), batch, span.carrier)
        span.set_ids(ids)
    return ids


def _copy_rows(
    count: int,
    batch: Iterable[EnqueueParams],
    trace_context: str | None,
    *,
    streamed: bool = False,
) -> Steps[list[int]]:
    # The ids and the transaction's now() (what the column default would give) in one round
    # trip, then the rows in one COPY.
    now, ids = yield Fetch(q.RESERVE_JOB_IDS, (count,))
    ids = sorted(ids)
    yield Copy(q.COPY_JOBS, _copy_text(ids, batch, now, trace_context), may_fail=streamed)
    return [int(job_id) for job_id in ids]


def _copy_text(
    ids: Sequence[int], batch: Iterable[EnqueueParams], now: datetime, trace_context: str | None
) -> Iterator[str]:
    """The rows of q.COPY_JOBS in COPY's text format, in chunks of :data:`_CHUNK` rows.

    Written here rather than by psycopg's ``write_row`` (which adapts every value on its own):
    a third of the Python time per job. Text goes through :func:`_copy_field`; JSON text from
    json.dumps holds no raw tab, newline or carriage return, only backslashes to double.
    """
    now_text = now.isoformat()
    trace = _NULL if trace_context is None else _copy_field(trace_context)
    lines: list[str] = []
    for job_id, p in zip(ids, batch, strict=True):
        if p.scheduled_at is not None:
            when = p.scheduled_at.isoformat()
        elif p.delay is not None:
            when = (now + p.delay).isoformat()
        else:
            when = now_text
        lines.append(
            f"{job_id}\t{DEFAULT_QUEUE if p.queue is None else _copy_field(p.queue)}"
            f"\t{'' if p.name is None else _copy_field(p.name)}"
            f"\t{'{}' if p.data is None else _copy_json(p.data)}"
            f"\t{DEFAULT_PRIORITY if p.priority is None else p.priority}\t{when}"
            f"\t{DEFAULT_MAX_ATTEMPTS if p.max_attempts is None else p.max_attempts}"
            f"\t{_NULL if p.retry is None else _copy_json(p.retry)}"
            f"\t{_NULL if p.schedule is None else _copy_json(p.schedule)}"
            f"\t{_NULL if p.timeout is None else repr(p.timeout)}\t{trace}\n"
        )
        if len(lines) == _CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _copy_field(text: str) -> str:
    """``text`` as a field of COPY's text format (backslash, tab, newline and CR escaped)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text


def _copy_json(text: str) -> str:
    """JSON text from json.dumps as a field of COPY's text format."""
    return text.replace("\\", "\\\\") if "\\" in text else text


copy_jobs = blocking(_copy_jobs)


def _add_recurring_job_to_queue(
    *,
    name: str,
    interval: Mapping[str, Any] | timedelta | None = None,
    schedule: str | None = None,
    priority: int | str = 1,
    data: Any = None,
    queue: str | None = None,
) -> Steps[int]:
    """Schedule job ``name`` to be enqueued every ``interval`` or on a ``schedule``; return the
    recurring job's id.

    A built-in recurring job (name ``pgqueue.recurring``) enqueues ``name``
    (with ``data``, at ``priority + 1``) each time it runs and reschedules
    itself. With ``interval`` (a dict of years, months, weeks, days, hours,
    minutes, seconds, or a timedelta) it first runs at once, then at its
    previous scheduled time plus ``interval``, or now plus ``interval`` when
    that is already past; calendar arithmetic in UTC. With ``schedule`` (a
    cron expression or a text schedule such as ``"every weekday at 9:00"``,
    see :func:`pgqueue.schedule.parse_schedule`) it runs at each occurrence,
    the first being the next one from now.

    Calling it again for the same name overwrites priority, interval or
    schedule, and data (and the queue, when given) of the scheduled one
    without moving its next run; it never creates a second one, also when
    called concurrently.
    """
    check_job_name(name)
    if not name:
        raise InvalidJobError("name must not be empty")
    level = to_priority(priority)
    if level > INT4_MAX - 1:
        raise InvalidJobError(f"priority must be at most {INT4_MAX - 1} for a recurring job")
    if (interval is None) == (schedule is None):
        raise InvalidJobError("give exactly one of interval and schedule")
    spec = None if interval is None else json.dumps(normalize_interval(interval))
    parsed = None if schedule is None else as_schedule(schedule)
    payload = dump_data(data) if data is not None else None
    if queue is not None:
        check_text("queue", queue)
    first_at = None if parsed is None else parsed.next_after(datetime.now(UTC))
    row = yield Fetch(
        q.ADD_RECURRING,
        (
            queue,
            name,
            level,
            spec,
            payload,
            None if parsed is None else json.dumps(parsed.to_json()),
            first_at,
        ),
    )
    return int(row[0])


add_recurring_job_to_queue = blocking(_add_recurring_job_to_queue)


def builtin_recurring_params(name: str, interval: Mapping[str, Any]) -> tuple[Any, ...]:
    """q.ADD_RECURRING's parameters for one of pgqueue's own recurring jobs (reserved names
    allowed)."""
    return (None, name, 1, json.dumps(normalize_interval(interval)), None, None, None)


def _get_job(job_id: int) -> Steps[JobRecord | None]:
    """Return the job with its status, attempts, last error and timestamps; None if unknown.

    ``status`` is ``running`` while a worker holds the job.
    """
    check_int("job id", job_id, low=-(2**63), high=2**63 - 1)
    row = yield Fetch(q.GET_JOB, (job_id,))
    return None if row is None else JobRecord.from_row(row)


get_job = blocking(_get_job)


def _pending_queue_size(
    *,
    name: str | None = None,
    queues: Sequence[str] | None = None,
) -> Steps[dict[str, int]]:
    """Count unfinished jobs: ``pending_count`` (due, waiting for a worker),
    ``scheduled_count`` (not due yet) and ``running_count`` (held by a worker now).

    Restricted to job ``name`` and/or ``queues`` when given.
    """
    names = None if name is None else [check_text("name", name)]
    queue_list = _queue_list(queues)
    row = yield Fetch(q.QUEUE_SIZE, (queue_list, names))
    return {"pending_count": row[0], "scheduled_count": row[1], "running_count": row[2]}


pending_queue_size = blocking(_pending_queue_size)


def _average_time_to_completion(
    start: datetime,
    end: datetime,
    *,
    name: str | None = None,
    queues: Sequence[str] | None = None,
) -> Steps[float]:
    """Mean seconds from scheduled_at to completion over jobs completed in (start, end]; 0.0 if none."""
    for what, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidJobError(f"{what} must be a timezone-aware datetime")
    names = None if name is None else [check_text("name", name)]
    row = yield Fetch(q.AVERAGE_TIME_TO_COMPLETION, (start, end, _queue_list(queues), names))
    return float(row[0])


average_time_to_completion = blocking(_average_time_to_completion)


def _queue_list(queues: Sequence[str] | None) -> list[str] | None:
    if queues is None:
        return None
    if isinstance(queues, str):
        return [check_text("queue", queues)]
    return [check_text("queue", queue) for queue in queues]
