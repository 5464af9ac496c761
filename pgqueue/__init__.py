"""pgqueue: a background-job queue for Python that needs nothing but PostgreSQL.

Enqueue with :func:`add_job_to_queue` (inside your own transaction if you
like), run jobs with :class:`JobQueueWorker`; a handler runs inside its job's
transaction, so its effects and the job's completion commit together.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .admin import (
    cancel_job,
    cancel_jobs,
    clear_jobs,
    configure_queue,
    list_jobs,
    register_cleanup,
    retry_failed_jobs,
    retry_job,
    run_cleanup,
    run_job_now,
)
from .errors import (
    ConfigurationError,
    ConnectError,
    InvalidJobError,
    JobFailed,
    PgQueueError,
    SchemaError,
    SchemaNotMigratedError,
    SchemaTooNewError,
)
from .gadget import enqueue
from .jobs import Job, JobNotConfiguredError
from .migrate import migrate
from .priority import PRIORITY_NAMES
from .queue import (
    add_job_to_queue,
    add_jobs_to_queue,
    add_recurring_job_to_queue,
    average_time_to_completion,
    get_job,
    pending_queue_size,
)
from .reaction import BackgroundJobs, BackgroundJobsAPI, ReactionJob, ReactionJobAPI
from .records import JobRecord, JobStatus
from .schedule import Schedule, parse_schedule
from .tasks import Task, job_handlers, task
from .worker import Handler, JobQueueWorker, WorkerStats

try:
    __version__ = version("pgqueue")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "BackgroundJobs",
    "BackgroundJobsAPI",
    "ConfigurationError",
    "ConnectError",
    "Handler",
    "InvalidJobError",
    "Job",
    "JobFailed",
    "JobNotConfiguredError",
    "JobQueueWorker",
    "JobRecord",
    "JobStatus",
    "PRIORITY_NAMES",
    "PgQueueError",
    "ReactionJob",
    "ReactionJobAPI",
    "SchemaError",
    "SchemaNotMigratedError",
    "Schedule",
    "SchemaTooNewError",
    "Task",
    "WorkerStats",
    "__version__",
    "add_job_to_queue",
    "add_jobs_to_queue",
    "add_recurring_job_to_queue",
    "average_time_to_completion",
    "cancel_job",
    "cancel_jobs",
    "clear_jobs",
    "configure_queue",
    "enqueue",
    "get_job",
    "job_handlers",
    "list_jobs",
    "migrate",
    "parse_schedule",
    "pending_queue_size",
    "register_cleanup",
    "retry_failed_jobs",
    "retry_job",
    "run_cleanup",
    "run_job_now",
    "task",
]
