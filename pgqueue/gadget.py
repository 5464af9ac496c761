"""Gadget's spelling of an enqueue: ``pgqueue.enqueue(action, params, start_at=..., retries=...,
queue=..., priority=...)``, a thin layer over :func:`pgqueue.add_job_to_queue`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from ._input import check_int, check_text, enqueue_params
from .admin import configure_queue
from .errors import InvalidJobError
from .jobs import Job, JobTarget, _open
from .queue import add_job_to_queue
from .retry import gadget_retry
from .tasks import Task

__all__ = ["GADGET_DEFAULT_PRIORITY", "enqueue"]

logger = logging.getLogger(__name__)

#: Gadget's DEFAULT priority on pgqueue's scale ("HIGH" is -10, "LOW" 10).
GADGET_DEFAULT_PRIORITY: Final = 0

_QUEUE_KEYS: Final = {
    "name": "name",
    "max_concurrency": "max_concurrency",
    "maxConcurrency": "max_concurrency",
}


def enqueue(
    action: type[Job] | Job | Task[..., Any] | str,
    params: Any = None,
    *,
    sql: JobTarget | None = None,
    start_at: datetime | str | None = None,
    retries: int | Mapping[str, Any] | None = None,
    queue: str | Mapping[str, Any] | None = None,
    priority: int | str | None = None,
) -> int:
    """Enqueue ``action`` to run in the background with ``params``; return the job id (Gadget's ``api.enqueue``).

    ``action`` is a Job subclass (or a Job instance from ``.set()``), a
    :func:`pgqueue.task`, or a job name. For a class or task, ``params`` is
    its one argument: ``enqueue(SendEmail, {"to": ...})`` is
    ``SendEmail.perform_later({"to": ...})`` (stored as
    ``{"args": [params]}``; ``params=None`` means no argument). For a job
    name, ``params`` is stored as the job's data as it is (default ``{}``).

    Options (keyword-only):

    - ``sql``: where to enqueue (a Connection joins your open transaction);
      default the action's own, else ``pgqueue.Job.config(sql=...)``'s.
    - ``start_at``: a timezone-aware datetime or an ISO-8601 string with an
      offset or a trailing ``Z``; default now.
    - ``retries``: an int n (n retries after the first run, 0 = none) or
      Gadget's mapping ``retry_count`` (6), ``initial_interval`` (ms, 1000),
      ``backoff_factor`` (2), ``max_interval`` (ms, unbounded),
      ``randomize_interval`` (False); camelCase works too. Default: 6
      retries, exponential from 1 s; retrying stops 7 days after enqueue.
    - ``queue``: a name, which like Gadget sets that queue's global
      ``max_concurrency`` to 1, or ``{"name": ..., "max_concurrency": N}``
      (or ``maxConcurrency``), which sets it to N (left as it is when
      omitted). Default ``"default"``, whose limit is not touched.
    - ``priority``: ``"LOW"``, ``"DEFAULT"``, ``"HIGH"`` in any case (10,
      0, -10), another priority name, or an int. Default DEFAULT (0).

    An option left out comes from the action when it sets it itself (a
    subclass's own class attributes, the decorator's arguments, ``.set()``;
    ``max_attempts`` and ``retry`` count as one), otherwise from Gadget's
    defaults above, not Redwood's. Raises InvalidJobError (nothing
    written) for invalid input, JobNotConfiguredError when there is no
    ``sql`` target.
    """
    job = _as_job(action)
    if job is None:
        assert isinstance(action, str)
        fields: dict[str, Any] = {"name": check_text("action", action), "data": params}
    else:
        fields = {"name": job.name, "data": {"args": [] if params is None else [params]}}

    limit: int | None = None
    if queue is not None:
        fields["queue"], limit = _gadget_queue(queue)
    elif job is not None and job._configured("queue"):
        fields["queue"] = job.queue

    if priority is not None:
        fields["priority"] = priority
    elif job is not None and job._configured("priority"):
        fields["priority"] = job.priority
    else:
        fields["priority"] = GADGET_DEFAULT_PRIORITY

    if (
        retries is None
        and job is not None
        and (job._configured("max_attempts") or job._configured("retry"))
    ):
        fields["max_attempts"], fields["retry"] = job.max_attempts, job.retry
    else:
        fields["max_attempts"], fields["retry"] = gadget_retry(retries)

    if start_at is not None:
        fields["scheduled_at"] = _start_at(start_at)
    elif job is not None and (job._configured("wait") or job._configured("wait_until")):
        fields["scheduled_at"] = job.scheduled_at

    fields = {key: value for key, value in fields.items() if value is not None}
    enqueue_params(None, fields)
    target = sql if sql is not None else job.sql if job is not None else Job.sql
    with _open(target, repr(fields["name"])) as conn:
        if limit is not None:
            _configure_queue(conn, fields["queue"], limit)
        job_id = add_job_to_queue(conn, **fields)
    logger.debug(
        "enqueued job %d (%s)",
        job_id,
        fields["name"],
        extra={
            "job_id": job_id,
            "queue": fields.get("queue", "default"),
            "job_name": fields["name"],
            "action": "enqueue",
        },
    )
    return job_id


def _as_job(action: object) -> Job | None:
    if isinstance(action, str):
        return None
    if isinstance(action, Task):
        job: Job = action._job
    elif isinstance(action, Job):
        job = action
    elif isinstance(action, type) and issubclass(action, Job):
        job = action()
    else:
        raise InvalidJobError(
            "action must be a Job subclass, a @pgqueue.task function or a job name, "
            f"got {type(action).__name__}"
        )
    if type(job).perform is Job.perform:
        raise TypeError(f"{type(job).__qualname__} does not implement perform()")
    return job


def _gadget_queue(queue: object) -> tuple[str, int | None]:
    """(name, max_concurrency) from Gadget's queue option: a string means a limit of 1."""
    if isinstance(queue, str):
        return check_text("queue", queue), 1
    if not isinstance(queue, Mapping):
        raise InvalidJobError(
            f"queue must be a name or a mapping with name and max_concurrency, got {type(queue).__name__}"
        )
    options: dict[str, Any] = {}
    for key, value in queue.items():
        if key not in _QUEUE_KEYS:
            raise InvalidJobError(f"unknown queue key {key!r}; expected name, max_concurrency")
        if _QUEUE_KEYS[key] in options:
            raise InvalidJobError("give max_concurrency or maxConcurrency, not both")
        options[_QUEUE_KEYS[key]] = value
    if "name" not in options:
        raise InvalidJobError("the queue mapping needs a name")
    limit = options.get("max_concurrency")
    if limit is not None:
        check_int("queue max_concurrency", limit, low=1)
    return check_text("queue name", options["name"]), limit


def _start_at(value: object) -> datetime:
    """An aware datetime from a datetime or an ISO-8601 string (a trailing Z is UTC)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidJobError(f"start_at {value!r} is not an ISO-8601 date and time") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise InvalidJobError(
            f"start_at must be a datetime or an ISO-8601 string, got {type(value).__name__}"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidJobError(
            f"start_at {value!s} has no time zone; add one (e.g. 'Z' or '+00:00')"
        )
    return parsed


def _configure_queue(conn: Any, name: str, max_concurrency: int) -> None:
    configure_queue(conn, name, max_concurrency=max_concurrency)
