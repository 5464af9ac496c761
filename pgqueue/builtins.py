"""pgqueue's own jobs, run by every worker that is not restricted to other names."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import psycopg

from . import _queries as q
from ._sansio import Fetch, Steps, run_steps
from .records import JobRecord
from .schedule import Schedule

__all__ = [
    "BUILTIN_NAMES",
    "CLEANUP_JOB_NAME",
    "RECURRING_JOB_NAME",
    "builtin_steps",
    "next_run",
    "run_builtin",
]

#: Enqueues a recurring job's target and reschedules itself (the work is
#: done by pgqueue.complete in SQL).
RECURRING_JOB_NAME: Final = "pgqueue.recurring"

#: Applies the clean-up rules (pgqueue.register_cleanup).
CLEANUP_JOB_NAME: Final = "pgqueue.cleanup"

BUILTIN_NAMES: Final = (RECURRING_JOB_NAME, CLEANUP_JOB_NAME)


def builtin_steps(job: JobRecord) -> Steps[str | None]:
    """A built-in job (for either flavour of worker), returning its result message."""
    if job.name == CLEANUP_JOB_NAME:
        row = yield Fetch(q.CLEANUP)
        return f"deleted {row[0] if row else 0} finished job(s)"
    return None


def run_builtin(conn: psycopg.Connection[Any], job: JobRecord) -> str | None:
    """Run a built-in job inside its transaction; return its result message."""
    return run_steps(conn, builtin_steps(job))


def next_run(job: JobRecord, now: datetime) -> datetime | None:
    """When a job on a cron or text schedule runs next: the first occurrence after
    both ``now`` and its own scheduled time; None for jobs without such a schedule."""
    spec = job.schedule
    if spec is None and job.name == RECURRING_JOB_NAME and isinstance(job.data, dict):
        spec = job.data.get("schedule")
    if spec is None:
        return None
    return Schedule.from_json(spec).next_after(max(now, job.scheduled_at))
