"""The asyncio worker's claim: the blocking worker's two round trips per job (pgqueue._wire's
AsyncClaimTransaction), its slow path through pgqueue.dequeue, and what a handler can do to the
transaction it runs in."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from worker_helpers import (
    create_results_table,
    other_backends,
    result_ids,
    scalar,
    status,
    wait_until,
)

import pgqueue
from pgqueue import _wire, aio

RETRY_NOW = {"backoff": "fixed", "delay": 0, "jitter": 0}


def work_off(dsn: str, handler: Any, **options: Any) -> dict[str, int]:
    worker = aio.AsyncJobQueueWorker(dsn, handler=handler, **options)
    return asyncio.run(worker.work_off()).as_dict()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The AsyncClaimTransaction calls made, in order: one round trip each."""
    calls: list[str] = []
    for method in ("begin", "run", "commit", "rollback"):
        real = getattr(_wire.AsyncClaimTransaction, method)

        def counted(
            self: Any, *args: Any, _real: Any = real, _name: str = method, **kw: Any
        ) -> Any:
            calls.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(_wire.AsyncClaimTransaction, method, counted)
    return calls


@pytest.mark.parametrize("prepare", [True, False])
def test_a_job_is_claimed_and_completed_in_two_round_trips(dsn, conn, trips, prepare):
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "quick", "data": i} for i in range(3)])

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> str:
        await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        return f"r{job.data}"

    assert work_off(dsn, handler, prepare=prepare) == {"completed": 3, "retried": 0, "failed": 0}
    assert result_ids(conn) == ids
    # Per job: BEGIN + claim + SAVEPOINT; RELEASE + completion + COMMIT. Then the empty claim.
    assert trips == ["begin", "commit"] * 4
    rows = conn.execute("SELECT status, attempts, result FROM pgqueue.jobs ORDER BY id").fetchall()
    assert rows == [("completed", 1, f"r{i}") for i in range(3)]


def test_a_failure_is_undone_and_recorded_in_the_commits_round_trip(dsn, conn, trips):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="flaky", retry=RETRY_NOW)

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'x')", (job.id,))
        if job.attempts == 1:
            await aconn.execute("SELECT 1/0")  # leaves the transaction aborted

    assert work_off(dsn, handler) == {"completed": 1, "retried": 1, "failed": 0}
    assert trips == ["begin", "commit"] * 3
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.attempts) == (pgqueue.JobStatus.COMPLETED, 2)
    assert job.last_error is not None
    assert job.last_error.startswith("DivisionByZero: division by zero")
    assert result_ids(conn) == [job_id]  # the first attempt's insert was undone


def test_a_handlers_own_savepoints_nest_inside_the_jobs(dsn, conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="nested")

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'kept')", (job.id,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with aconn.transaction():
                await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        with pytest.raises(psycopg.ProgrammingError):
            await aconn.commit()

    assert work_off(dsn, handler) == {"completed": 1, "retried": 0, "failed": 0}
    assert status(conn, job_id) == "completed"
    assert conn.execute("SELECT note FROM results").fetchall() == [("kept",)]


def test_limited_queues_and_recurring_jobs_go_through_the_slow_path(dsn, conn, trips):
    pgqueue.configure_queue(conn, "limited", max_concurrency=1)
    ids = [pgqueue.add_job_to_queue(conn, name="mail", queue="limited") for _ in range(2)]
    recurring = pgqueue.add_recurring_job_to_queue(
        conn, name="mail", interval=timedelta(hours=1), queue="limited"
    )
    seen: list[int] = []

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        seen.append(job.id)

    stats = work_off(dsn, {"mail": handler}, queues=["limited"], parallel_count=2)
    # The recurring row enqueued one more "mail" job, which ran too.
    assert stats == {"completed": 3, "retried": 0, "failed": 0}
    assert sorted(seen)[:2] == ids
    assert len(seen) == 3
    assert "run" in trips  # each claim of the limited queue went through pgqueue.dequeue
    assert all(status(conn, i) == "completed" for i in ids)
    # The recurring row is pending again, an hour on.
    row = conn.execute(
        "SELECT status, scheduled_at > now() + interval '59 minutes' FROM pgqueue.jobs"
        " WHERE id = %s",
        (recurring,),
    ).fetchone()
    assert row == ("pending", True)


def test_a_handler_that_drops_the_prepared_completion_loses_no_job(dsn, conn, caplog):
    create_results_table(conn)
    ids = [pgqueue.add_job_to_queue(conn, name="dropper", data=i) for i in range(4)]
    runs: list[int] = []

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        runs.append(job.data)
        await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        if job.data == 1:
            await aconn.execute("DEALLOCATE ALL")

    with caplog.at_level(logging.WARNING, logger="pgqueue.worker"):
        stats = work_off(dsn, handler)
    assert stats == {"completed": 4, "retried": 0, "failed": 0}
    assert result_ids(conn) == ids
    assert scalar(conn, "SELECT max(attempts) FROM pgqueue.jobs") == 1
    # Job 1 dropped its own completion: its transaction was lost and it ran again, once.
    assert runs == [0, 1, 1, 2, 3]
    warned = [r.getMessage().split(":")[0] for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [f"jobs {ids[1]} run again"]
    assert scalar(conn, "SELECT count(*) FROM pgqueue.job_starts") == 0


def test_a_commit_that_fails_counts_the_attempt(dsn, conn):
    conn.execute("CREATE TABLE parents (id integer PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE children (job_id bigint PRIMARY KEY,"
        " parent integer REFERENCES parents DEFERRABLE INITIALLY DEFERRED)"
    )
    job_id = pgqueue.add_job_to_queue(conn, name="child", data={"parent": 2}, max_attempts=1)

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO children VALUES (%s, %s)", (job.id, job.data["parent"]))

    assert work_off(dsn, handler) == {"completed": 0, "retried": 0, "failed": 1}
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.attempts) == (pgqueue.JobStatus.FAILED, 1)
    assert job.last_error is not None
    assert job.last_error.startswith("ForeignKeyViolation: ")
    assert scalar(conn, "SELECT count(*) FROM children") == 0


def test_a_cancelled_claim_leaves_the_job_to_run_again(dsn, conn):
    job_id = pgqueue.add_job_to_queue(conn, name="slow", retry=RETRY_NOW)
    started = asyncio.Event()

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("SELECT 1")
        started.set()
        # In asyncio, not in the server: a cancel request can reach a backend before the query
        # it means to cancel has started, and be lost (the query then runs its course).
        await asyncio.sleep(30)

    async def main() -> None:
        worker = aio.AsyncJobQueueWorker(dsn, handler=handler)
        task = asyncio.create_task(worker.work_off())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # The job's transaction was rolled back; the worker's connections are closed.
    wait_until(
        lambda: other_backends(conn) == 0,
        what="the cancelled worker's backends to end",
    )
    # Pending, no attempt recorded in its row (its start record counts it as a crash at the
    # next claim).
    row = conn.execute("SELECT status, attempts FROM pgqueue.jobs WHERE id = %s", (job_id,))
    assert row.fetchone() == ("pending", 0)

    async def quick(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        return None

    assert work_off(dsn, quick) == {"completed": 1, "retried": 0, "failed": 0}
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.status is pgqueue.JobStatus.COMPLETED
