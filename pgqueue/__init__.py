"""pgqueue: a background-job queue for Python that needs nothing but PostgreSQL.

Enqueue with :func:`add_job_to_queue` (inside your own transaction if you
like), run jobs with :class:`JobQueueWorker`; a handler runs inside its job's
transaction, so its effects and the job's completion commit together.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConfigurationError,
    ConnectError,
    InvalidJobError,
    PgQueueError,
    SchemaError,
    SchemaNotMigratedError,
    SchemaTooNewError,
)
from .migrate import migrate
from .queue import (
    add_job_to_queue,
    add_jobs_to_queue,
    add_recurring_job_to_queue,
    average_time_to_completion,
    get_job,
    pending_queue_size,
)
from .records import JobRecord, JobStatus
from .worker import Handler, JobQueueWorker

try:
    __version__ = version("pgqueue")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "Handler",
    "InvalidJobError",
    "JobQueueWorker",
    "JobRecord",
    "JobStatus",
    "PgQueueError",
    "SchemaError",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "__version__",
    "add_job_to_queue",
    "add_jobs_to_queue",
    "add_recurring_job_to_queue",
    "average_time_to_completion",
    "get_job",
    "migrate",
    "pending_queue_size",
]
