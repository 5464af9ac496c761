"""Operating on jobs after they are enqueued: cancel, retry, clean up, clear, list, and queue settings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from . import _queries as q
from ._input import MAX_NAME_BYTES, check_int, check_text, dump_data
from ._sansio import Fetch, Steps, blocking
from ._show import show
from .builtins import CLEANUP_JOB_NAME
from .errors import InvalidJobError
from .queue import builtin_recurring_params
from .records import JobRecord, JobStatus
from .retry import normalize_retry
from .schedule import normalize_interval

__all__ = [
    "cancel_job",
    "cancel_jobs",
    "clear_jobs",
    "configure_queue",
    "list_jobs",
    "register_cleanup",
    "retry_failed_jobs",
    "retry_job",
    "run_cleanup",
    "run_job_now",
]

_FINISHED: Final = ("completed", "failed", "cancelled")


def _cancel_jobs(
    name: str | None = None,
    data: Any = None,
    *,
    queue: str | None = None,
) -> Steps[int]:
    """Cancel pending jobs of ``name`` (and ``queue``) whose data contains ``data``; return how many.

    ``data`` matches by JSON containment: ``{"shop_id": 1}`` matches
    ``{"shop_id": 1, "user": 2}``. A job a worker is running is not
    interrupted (and not cancelled). With no filter at all every pending job
    is cancelled.
    """
    row = yield Fetch(
        q.CANCEL_JOBS,
        (
            None if name is None else check_text("name", name),
            None if data is None else dump_data(data),
            None if queue is None else check_text("queue", queue),
        ),
    )
    return int(row[0])


cancel_jobs = blocking(_cancel_jobs)


def _cancel_job(job_id: int) -> Steps[bool]:
    """Cancel one pending job; False when it is unknown, running or already finished."""
    check_int("job id", job_id, low=-(2**63), high=2**63 - 1)
    row = yield Fetch(q.CANCEL_JOB, (job_id,))
    return bool(row and row[0])


cancel_job = blocking(_cancel_job)


def _retry_job(job_id: int) -> Steps[bool]:
    """Make a failed or cancelled job pending again, due now; False if it is neither.

    A job that used up its attempts gets one more.
    """
    check_int("job id", job_id, low=-(2**63), high=2**63 - 1)
    row = yield Fetch(q.RETRY_JOBS, ([job_id], None, None))
    return bool(row and row[0])


retry_job = blocking(_retry_job)


def _retry_failed_jobs(*, name: str | None = None, queue: str | None = None) -> Steps[int]:
    """Retry every failed or cancelled job (of ``name``, in ``queue``); return how many."""
    row = yield Fetch(
        q.RETRY_JOBS,
        (
            None,
            None if name is None else check_text("name", name),
            None if queue is None else check_text("queue", queue),
        ),
    )
    return int(row[0])


retry_failed_jobs = blocking(_retry_failed_jobs)


def _run_job_now(job_id: int) -> Steps[int | None]:
    """Run a pending job now instead of at its scheduled time; return the id of the job that will run.

    For a recurring schedule (the id of a ``pgqueue.recurring`` job, as
    returned by :func:`add_recurring_job_to_queue`) its target job is
    enqueued now and the schedule keeps its next run: the new job's id is
    returned. Any other pending job becomes due now and its own id is
    returned. None when the job is unknown, running, or not pending.
    """
    check_int("job id", job_id, low=-(2**63), high=2**63 - 1)
    row = yield Fetch(q.RUN_JOB_NOW, (job_id,))
    return None if row is None or row[0] is None else int(row[0])


run_job_now = blocking(_run_job_now)


def _clear_jobs(*, queue: str | None = None) -> Steps[int]:
    """Delete every job (of ``queue``) that no worker is running; return how many (Redwood's clear)."""
    row = yield Fetch(q.CLEAR_JOBS, (None if queue is None else check_text("queue", queue),))
    return int(row[0])


clear_jobs = blocking(_clear_jobs)


def _list_jobs(
    *,
    status: str | None = None,
    queue: str | None = None,
    name: str | None = None,
    limit: int = 100,
) -> Steps[list[JobRecord]]:
    """The newest jobs first, filtered by ``status`` (``running`` while a worker holds
    the job, as in get_job), ``queue`` and ``name``; at most ``limit``."""
    if status is not None and status not in JobStatus.__members__.values():
        raise InvalidJobError(f"unknown status {status!r}; use one of {', '.join(JobStatus)}")
    check_int("limit", limit, low=1)
    params = {
        "status": status,
        "queue": None if queue is None else check_text("queue", queue),
        "name": None if name is None else check_text("name", name),
        "limit": limit,
    }
    rows = yield Fetch(q.LIST_JOBS, params, all=True)
    return [JobRecord.from_row(row) for row in rows]


list_jobs = blocking(_list_jobs)


def _configure_queue(
    name: str,
    *,
    max_concurrency: int | None = None,
    retry: Mapping[str, Any] | None = None,
) -> Steps[None]:
    """Set a queue's settings (replacing earlier ones).

    ``max_concurrency``: at most this many of the queue's jobs run at once,
    across every worker process on every machine (enforced by the dequeue
    function with transaction-scoped advisory-lock slots); None: no limit.
    ``retry``: the queue's default retry policy; a job's own keys win.
    """
    check_text("queue", name)
    if max_concurrency is not None:
        check_int("max_concurrency", max_concurrency, low=1, high=10_000)
    policy = normalize_retry(retry)
    yield Fetch(
        q.CONFIGURE_QUEUE, (name, max_concurrency, None if policy is None else json.dumps(policy))
    )


configure_queue = blocking(_configure_queue)


def _register_cleanup(
    rules: Iterable[Mapping[str, Any]] = (),
    *,
    default_days: float | None = None,
    delete_successful_jobs: bool = False,
    delete_failed_jobs: bool = False,
    every: Mapping[str, Any] | None = None,
) -> Steps[None]:
    """Register clean-up rules and make sure the clean-up job runs.

    Each rule is ``{"type" or "name": job name, "purge_after_days": N}``
    (Reaction's spelling; ``purgeAfterDays`` works too), optionally with
    ``"statuses"``, a subset of completed / failed / cancelled (default all
    three): finished jobs of that name are deleted N days after they
    finished. ``default_days`` sets the rule for every other name.
    ``delete_successful_jobs`` / ``delete_failed_jobs`` (Redwood's worker
    options) delete every other name's completed / failed jobs at the next
    clean-up run. Nothing is deleted that no rule covers. The built-in clean-up job
    (``pgqueue.cleanup``) runs every ``every`` (default one hour) on any
    worker that is not restricted to other names. A later rule for the same
    name and status wins.
    """
    rows: dict[tuple[str, str], float] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            raise InvalidJobError(f"cleanup rule {index} must be a mapping")
        unknown = set(rule) - {"type", "name", "purge_after_days", "purgeAfterDays", "statuses"}
        if unknown:
            raise InvalidJobError(
                f"cleanup rule {index}: unknown key {sorted(map(show, unknown))[0]}"
            )
        name = rule.get("name", rule.get("type"))
        if name is None:
            raise InvalidJobError(f"cleanup rule {index} needs a type (the job name)")
        days = rule.get("purge_after_days", rule.get("purgeAfterDays"))
        statuses = rule.get("statuses", _FINISHED)
        if isinstance(statuses, str) or not set(statuses) <= set(_FINISHED) or not statuses:
            raise InvalidJobError(
                f"cleanup rule {index}: statuses must be some of {', '.join(_FINISHED)}"
            )
        seconds = _days_to_seconds(f"cleanup rule {index}: purge_after_days", days)
        name = check_text("name", name, max_bytes=MAX_NAME_BYTES)
        rows.update(((name, status), seconds) for status in statuses)
    if default_days is not None:
        seconds = _days_to_seconds("default_days", default_days)
        rows.update((("*", status), seconds) for status in _FINISHED)
    for flag, status in ((delete_successful_jobs, "completed"), (delete_failed_jobs, "failed")):
        if not isinstance(flag, bool):
            raise InvalidJobError(
                "delete_successful_jobs and delete_failed_jobs must be True or False"
            )
        if flag:
            rows[("*", status)] = 0.0
    # One statement: a bad ``every`` must not leave the rules registered without the job that
    # applies them, and on a connection in autocommit the rules and the job commit together.
    interval = normalize_interval(every or {"hours": 1})
    yield Fetch(
        q.REGISTER_CLEANUP,
        (
            [name for name, _ in rows],
            [status for _, status in rows],
            list(rows.values()),
            *builtin_recurring_params(CLEANUP_JOB_NAME, interval),
        ),
    )


register_cleanup = blocking(_register_cleanup)


def _run_cleanup() -> Steps[int]:
    """Apply the clean-up rules now; return how many jobs were deleted."""
    row = yield Fetch(q.CLEANUP)
    return int(row[0])


run_cleanup = blocking(_run_cleanup)


def _days_to_seconds(what: str, days: Any) -> float:
    if isinstance(days, bool) or not isinstance(days, (int, float)):
        raise InvalidJobError(f"{what} must be a number of days, got {show(days)}")
    if not 0 <= days <= 36_500:  # NaN fails this too
        raise InvalidJobError(f"{what} must be between 0 and 36500, got {show(days)}")
    return float(days) * 86_400.0
