"""pgqueue for asyncio: the enqueue and admin calls on a psycopg AsyncConnection (joining its
open transaction) or an AsyncConnectionPool, and a worker that awaits ``async def`` handlers,
each inside its job's async transaction.

    from pgqueue import aio

    async with aconn.transaction():          # your request's transaction
        await aio.add_job_to_queue(aconn, name="welcome", data={"user_id": 42})

The calls are the blocking ones' own code (pgqueue._sansio): same arguments, validation,
errors and SQL.
"""

from __future__ import annotations

from ._api import (
    AsyncSqlTarget,
    add_job_to_queue,
    add_jobs_to_queue,
    add_recurring_job_to_queue,
    average_time_to_completion,
    cancel_job,
    cancel_jobs,
    clear_jobs,
    configure_queue,
    get_job,
    list_jobs,
    pending_queue_size,
    register_cleanup,
    retry_failed_jobs,
    retry_job,
    run_cleanup,
    run_job_now,
)
from ._worker import AsyncHandler, AsyncJobQueueWorker

# By role: enqueue, inspect, operate, run.
__all__ = [
    "AsyncSqlTarget",
    "add_job_to_queue",
    "add_jobs_to_queue",
    "add_recurring_job_to_queue",
    "get_job",
    "list_jobs",
    "pending_queue_size",
    "average_time_to_completion",
    "cancel_job",
    "cancel_jobs",
    "retry_job",
    "retry_failed_jobs",
    "run_job_now",
    "clear_jobs",
    "configure_queue",
    "register_cleanup",
    "run_cleanup",
    "AsyncHandler",
    "AsyncJobQueueWorker",
]
