"""What a job looks like to Python: the JobRecord handed to handlers and returned by get_job."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["JobRecord", "JobStatus", "WorkerStats"]


class JobStatus(enum.StrEnum):
    """Where a job stands.

    ``pending`` jobs wait for their ``scheduled_at``; ``running`` is reported
    (by get_job) while a worker's transaction holds the job, and stored for a
    job run in lease mode; ``completed``, ``failed`` (attempts used up) and
    ``cancelled`` are final and kept for inspection.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job, as stored.

    Handed to handlers (then ``attempts`` counts the attempt now running,
    1 for the first) and returned by :func:`pgqueue.get_job` (then it counts
    the attempts made so far).
    """

    id: int
    queue: str
    name: str
    data: Any
    priority: int
    status: JobStatus
    scheduled_at: datetime
    attempts: int
    max_attempts: int
    retry: dict[str, Any] | None
    last_error: str | None
    result: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    #: ``{"kind": "cron" | "text", "text": ...}`` for a job that repeats on a schedule.
    schedule: dict[str, Any] | None = None
    #: Seconds an attempt may run before its worker gives up on it; None: the worker's own.
    timeout: float | None = None
    #: Attempts whose worker died (or lost its connection) before recording them. Such a job
    #: runs alone in its worker from then on.
    crashes: int = 0
    #: Lease mode: while ``status`` is running, the worker must extend this or lose the job.
    lease_until: datetime | None = None
    #: The W3C trace context of the span that enqueued the job (``{"traceparent": ...}``), when
    #: OpenTelemetry tracing was on; the span of each run is its child. None otherwise.
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """Build a record from a row selected as ``_queries.JOB_COLUMNS``."""
        values = list(row)
        values[5] = _STATUSES[values[5]]  # a dict lookup: JobStatus(...) runs Enum's Python code
        return cls(*values)


_STATUSES: dict[str, JobStatus] = {status.value: status for status in JobStatus}


class WorkerStats:
    """What a worker has done since it was made: jobs ``completed``, attempts
    that failed and will be ``retried``, and jobs ``failed`` for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.completed = 0
        self.retried = 0
        self.failed = 0

    def add(self, outcome: str) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        with self._lock:
            return {"completed": self.completed, "retried": self.retried, "failed": self.failed}

    def __repr__(self) -> str:
        return f"WorkerStats({self.as_dict()})"


JobStatus.__module__ = "pgqueue"
WorkerStats.__module__ = "pgqueue"
JobRecord.__module__ = "pgqueue"
