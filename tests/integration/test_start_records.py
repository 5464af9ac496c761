"""Start records (pgqueue.supervisor for the blocking worker, pgqueue.aio._starts for the
asyncio one): each sent on a side connection before its handler runs, committed while it runs,
and dropped once
the attempt is over; a side connection that the server ended is replaced before a start is
sent on it (a write to a closed socket seems to succeed)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg
import pytest
from worker_helpers import scalar

import pgqueue
from pgqueue import aio


def start_records(dsn: str, job_id: int) -> list[tuple[Any, ...]]:
    """The job's start records, seen from a connection of the test's own once committed (sent
    before the handler runs, not waited for: the side backend may commit it a moment later);
    none if none is committed within 5 s."""
    deadline = time.monotonic() + 5
    with psycopg.connect(dsn, autocommit=True) as other:
        while True:
            rows = other.execute(
                "SELECT attempt, shared, worker FROM pgqueue.job_starts WHERE job_id = %s",
                (job_id,),
            ).fetchall()
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.01)


def end_side_connections(dsn: str) -> bool:
    """Terminate the backend whose last statement recorded starts (the worker's side
    connection), waiting for it to exit; whether there was one."""
    with psycopg.connect(dsn, autocommit=True) as other:
        rows = other.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND query LIKE 'WITH gone AS%'"
        ).fetchall()
    return bool(rows) and all(row[0] for row in rows)


def run(dsn: str, flavour: str, handler: Any, **options: Any) -> dict[str, int]:
    """Work off the queue with the blocking worker (``handler`` called in a thread) or the
    asyncio one (``handler`` awaited through asyncio.to_thread): its counts."""
    if flavour == "blocking":
        return pgqueue.JobQueueWorker(dsn, handler=handler, **options).work_off().as_dict()

    async def ahandler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await asyncio.to_thread(handler, None, job)

    worker = aio.AsyncJobQueueWorker(dsn, handler=ahandler, **options)
    return asyncio.run(worker.work_off()).as_dict()


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_a_start_is_committed_before_the_handler_runs_and_dropped_after(dsn, conn, flavour):
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "seen"} for _ in range(3)])
    seen: dict[int, list[tuple[Any, ...]]] = {}

    def handler(_: Any, job: pgqueue.JobRecord) -> None:
        seen[job.id] = start_records(dsn, job.id)

    assert run(dsn, flavour, handler, parallel_count=2)["completed"] == 3
    assert sorted(seen) == ids
    for job_id in ids:
        ((attempt, shared, worker),) = seen[job_id]
        assert (attempt, shared) == (1, False)
        assert worker.endswith(f":{os.getpid()}")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.job_starts") == 0


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_a_side_connection_the_server_ended_is_replaced_before_the_next_start(dsn, conn, flavour):
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "cut", "data": i} for i in range(4)])
    seen: dict[int, int] = {}
    ended: list[bool] = []

    def handler(_: Any, job: pgqueue.JobRecord) -> None:
        seen[job.id] = len(start_records(dsn, job.id))
        if job.data == 1:
            ended.append(end_side_connections(dsn))

    assert run(dsn, flavour, handler) == {"completed": 4, "retried": 0, "failed": 0}
    assert ended == [True]
    assert seen == dict.fromkeys(ids, 1)  # each start committed before its handler ran
    assert scalar(conn, "SELECT max(attempts) FROM pgqueue.jobs") == 1
