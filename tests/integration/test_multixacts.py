"""A job's outcome is written by the transaction that locked its row, not by a savepoint of it.

An UPDATE inside a savepoint of a row that the transaction itself locked makes
Postgres record both (the lock and the update) in a new MultiXact. One per job
costs every later claim dearly: an index entry whose row version carries a
MultiXact is never marked dead by a scan, so each claim walks the entries of
every job finished since the last vacuum (measured: 1,400 entries per claim at
16 threads, and a third of the throughput). The counter of MultiXacts is read
from the control file, which a CHECKPOINT brings up to date.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from worker_helpers import create_results_table, running, status, wait_until

import pgqueue
from pgqueue import aio

FAST_RETRY = {"backoff": "fixed", "delay": 0.1, "jitter": 0}


def multixacts_made(conn: psycopg.Connection[Any], work: Callable[[], None]) -> int:
    """How many MultiXacts the server handed out while ``work`` ran."""

    def next_multixact() -> int:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test server's user may not run CHECKPOINT")
        row = conn.execute(
            "SELECT next_multixact_id::text::bigint FROM pg_catalog.pg_control_checkpoint()"
        ).fetchone()
        assert row is not None
        return int(row[0])

    before = next_multixact()
    work()
    return next_multixact() - before


def flaky_handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> str:
    c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
    if job.data.get("fail") and job.attempts == 1:
        raise ValueError("first attempt fails")
    return "ok"


def queue_jobs(conn: psycopg.Connection[Any]) -> list[int]:
    create_results_table(conn)
    return pgqueue.add_jobs_to_queue(
        conn,
        [{"name": "job", "data": {"fail": i % 3 == 0}, "retry": FAST_RETRY} for i in range(12)],
    )


def all_completed(conn: psycopg.Connection[Any], ids: list[int]) -> bool:
    return all(status(conn, i) == "completed" for i in ids)


@pytest.mark.parametrize("batch_size", [1, 5])
@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "limited"])
def test_completions_and_failures_make_no_multixact(conn, dsn, batch_size, limited):
    if limited:
        # Claimed by pgqueue.dequeue_limited, which finds each job in a subtransaction: the
        # row lock must be taken again by the transaction itself.
        pgqueue.configure_queue(conn, "default", max_concurrency=2)
        conn.commit()
    ids = queue_jobs(conn)

    def work() -> None:
        worker = pgqueue.JobQueueWorker(
            dsn, handler=flaky_handler, parallel_count=3, batch_size=batch_size, poll_interval=0.1
        )
        with running(worker):
            wait_until(lambda: all_completed(conn, ids), what="every job completed")

    assert multixacts_made(conn, work) == 0
    # The failing first attempts did run and were retried: the test saw both outcomes.
    retried = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE attempts = 2").fetchone()
    assert retried == (4,)


def test_the_async_worker_makes_no_multixact(conn, dsn):
    ids = queue_jobs(conn)

    async def handler(c: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> str:
        await c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        if job.data.get("fail") and job.attempts == 1:
            raise ValueError("first attempt fails")
        return "ok"

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler=handler, poll_interval=0.1):
            await asyncio.to_thread(
                wait_until, lambda: all_completed(conn, ids), what="every job completed"
            )

    assert multixacts_made(conn, lambda: asyncio.run(main())) == 0
    retried = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE attempts = 2").fetchone()
    assert retried == (4,)
