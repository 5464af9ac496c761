"""The asyncio flavour of the enqueue and admin calls: the same steps generators as the
blocking ones (pgqueue.queue, pgqueue.admin), run on a psycopg AsyncConnection or an
AsyncConnectionPool."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeAlias, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from .. import admin as _admin
from .. import queue as _queue
from .._db import translate_errors
from .._sansio import Stepper, Steps, describe_call
from ..errors import ConfigurationError

P = ParamSpec("P")
T = TypeVar("T")

AsyncSqlTarget: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]"


@contextlib.asynccontextmanager
async def aconnection(sql: AsyncSqlTarget) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Yield an AsyncConnection as is (statements join the caller's open transaction) or one
    checked out of an AsyncConnectionPool (committed when the block ends)."""
    if isinstance(sql, psycopg.AsyncConnection):
        yield sql
    elif isinstance(sql, AsyncConnectionPool):
        async with sql.connection() as conn:
            yield conn
    else:
        raise ConfigurationError(
            "expected a psycopg AsyncConnection or a psycopg_pool AsyncConnectionPool, "
            f"got {type(sql).__name__}"
        )


async def arun_steps(conn: psycopg.AsyncConnection[Any], steps: Steps[T] | Stepper) -> T:
    """Run a call on an AsyncConnection (no transaction of its own); psycopg's errors that
    mean something to pgqueue are raised as pgqueue's, in the call too."""
    stepper = steps if isinstance(steps, Stepper) else Stepper(steps)
    while stepper.step is not None:
        try:
            with translate_errors():
                answer = await stepper.step.arun(conn)
        except Exception as exc:
            stepper.fail(exc)
        else:
            stepper.send(answer)
    value: T = stepper.value
    return value


def awaitable(
    steps: Callable[P, Steps[T]],
) -> Callable[Concatenate[AsyncSqlTarget, P], Coroutine[Any, Any, T]]:
    """The asyncio flavour of a call: ``sql`` is an AsyncConnection (joining the caller's
    open transaction) or an AsyncConnectionPool (a connection is checked out and committed).

    Bad input raises before a connection is touched, as in the blocking flavour (but for
    the jobs that add_jobs_to_queue checks while its COPY streams).
    """

    async def call(sql: AsyncSqlTarget, /, *args: P.args, **kwargs: P.kwargs) -> T:
        stepper = Stepper(steps(*args, **kwargs))
        if stepper.done:
            value: T = stepper.value
            return value
        async with aconnection(sql) as conn:
            with translate_errors():
                return await arun_steps(conn, stepper)

    return describe_call(call, steps, "AsyncSqlTarget", "pgqueue.aio")


add_job_to_queue = awaitable(_queue._add_job_to_queue)
add_jobs_to_queue = awaitable(_queue._add_jobs_to_queue)
add_recurring_job_to_queue = awaitable(_queue._add_recurring_job_to_queue)
get_job = awaitable(_queue._get_job)
pending_queue_size = awaitable(_queue._pending_queue_size)
average_time_to_completion = awaitable(_queue._average_time_to_completion)
cancel_job = awaitable(_admin._cancel_job)
cancel_jobs = awaitable(_admin._cancel_jobs)
retry_job = awaitable(_admin._retry_job)
retry_failed_jobs = awaitable(_admin._retry_failed_jobs)
run_job_now = awaitable(_admin._run_job_now)
clear_jobs = awaitable(_admin._clear_jobs)
list_jobs = awaitable(_admin._list_jobs)
configure_queue = awaitable(_admin._configure_queue)
register_cleanup = awaitable(_admin._register_cleanup)
run_cleanup = awaitable(_admin._run_cleanup)
