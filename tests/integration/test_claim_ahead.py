"""A slot's next claim goes in its commit's round trip (pgqueue._wire's ``commit(ahead=...)``).

While jobs keep coming, a job costs one round trip. A claim sent ahead that the
slot never takes (the worker stops, the process dies) was never started: its
job is due again at once, no attempt and no crash counted.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from typing import Any

import psycopg
import pytest
from worker_helpers import Calls, running, scalar, status, wait_until

import pgqueue
from pgqueue import _wire, aio


def job_state(conn: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempts, crashes, last_error,"
        " (SELECT count(*) FROM pgqueue.job_starts s WHERE s.job_id = j.id)"
        " FROM pgqueue.jobs j WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("flavour", ["threads", "asyncio"])
def test_a_job_takes_one_round_trip_while_jobs_keep_coming(
    dsn, conn, round_trips, flavour, monkeypatch
):
    monkeypatch.setattr(_wire, "STATS_EVERY", 3600.0)  # a slow machine's pause changes nothing
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "quick", "data": i} for i in range(3)])
    seen: list[int] = []
    if flavour == "threads":
        stats = pgqueue.JobQueueWorker(dsn, handler=lambda c, job: seen.append(job.id)).work_off()
    else:

        async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
            seen.append(job.id)

        stats = asyncio.run(aio.AsyncJobQueueWorker(dsn, handler=handler).work_off())
    assert stats.as_dict() == {"completed": 3, "retried": 0, "failed": 0}
    assert seen == ids
    # The first claim; each completion with the next claim (the last one finds none); the
    # empty claim's COMMIT. Two round trips per job before: 8.
    assert len(round_trips) == 5
    assert [job_state(conn, i)[:3] for i in ids] == [("completed", 1, 0)] * 3


def test_a_busy_slot_lets_autovacuum_see_the_jobs_it_completed(dsn, conn):
    """A backend hands its table statistics over only while it waits outside a transaction.
    A slot that sent every next claim with its commit never left it there while a backlog
    lasted: autovacuum never saw the rows its jobs left dead. Now a commit at least every
    STATS_EVERY seconds goes without its claim ahead."""
    pgqueue.add_jobs_to_queue(conn, [{"name": "slow"}] * 3000)
    query = "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'pgqueue.jobs'::regclass"
    before = scalar(conn, query)
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, job: time.sleep(0.002))
    with running(worker):
        wait_until(lambda: scalar(conn, query) > before, what="completed jobs in the statistics")
        pending = scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'pending'")
    assert pending > 0  # seen while the slot was still busy, not once it ran out of jobs


def test_a_claim_ahead_is_let_go_when_the_worker_stops(dsn, conn, monkeypatch):
    first, second = (pgqueue.add_job_to_queue(conn, name="job", priority=p) for p in (0, 1))
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, job: None, poll_interval=0.1)
    real = _wire.ClaimTransaction.commit
    sent_ahead: list[bool] = []

    def commit_then_stop(self: Any, statements: Any, **kwargs: Any) -> Any:
        results = real(self, statements, **kwargs)
        if kwargs.get("ahead"):
            sent_ahead.append(True)
            worker._stopping.set()  # as stop() does, between the commit and the next claim
        return results

    monkeypatch.setattr(_wire.ClaimTransaction, "commit", commit_then_stop)
    with running(worker):
        wait_until(lambda: status(conn, first) == "completed", what="the first job")
        wait_until(lambda: not any(t.is_alive() for t in worker._threads[1:]), what="the slot")
    assert sent_ahead == [True]
    # Claimed ahead, never started: due again, nothing counted, nothing locked.
    assert job_state(conn, second) == ("pending", 0, 0, None, 0)
    assert status(conn, second) == "pending"
    monkeypatch.setattr(_wire.ClaimTransaction, "commit", real)
    calls = Calls()
    with running(pgqueue.JobQueueWorker(dsn, handler=lambda c, job: calls.add(job.id))):
        assert calls.wait_for(1) == [second]
        wait_until(lambda: status(conn, second) == "completed", what="the second job")
    assert job_state(conn, second)[:4] == ("completed", 1, 0, None)


def test_an_asyncio_slot_lets_its_claim_ahead_go_when_the_worker_stops(
    dsn, conn, monkeypatch, caplog
):
    first, second = (pgqueue.add_job_to_queue(conn, name="job", priority=p) for p in (0, 1))

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        pass

    worker = aio.AsyncJobQueueWorker(dsn, handler=handler)
    real = _wire.AsyncClaimTransaction.commit

    async def commit_then_stop(self: Any, statements: Any, **kwargs: Any) -> Any:
        results = await real(self, statements, **kwargs)
        if kwargs.get("ahead"):
            worker._stopping.set()  # as stop() does, between the commit and the next claim
        return results

    monkeypatch.setattr(_wire.AsyncClaimTransaction, "commit", commit_then_stop)
    caplog.set_level(logging.WARNING, logger="pgqueue")
    assert asyncio.run(worker.work_off()).as_dict() == {"completed": 1, "retried": 0, "failed": 0}
    assert job_state(conn, first)[:3] == ("completed", 1, 0)
    assert job_state(conn, second) == ("pending", 0, 0, None, 0)
    assert status(conn, second) == "pending"
    assert [r.getMessage() for r in caplog.records] == []  # the slot rolled it back itself


DYING_WORKER = textwrap.dedent(
    """
    import os
    import sys

    import pgqueue
    from pgqueue import _wire

    real = _wire.ClaimTransaction.commit


    def commit_then_die(self, statements, **kwargs):
        results = real(self, statements, **kwargs)
        if kwargs.get("ahead"):
            os._exit(3)  # the next claim is sent and answered: its job's row is locked
        return results


    _wire.ClaimTransaction.commit = commit_then_die
    pgqueue.JobQueueWorker(sys.argv[1], handler=lambda conn, job: None).work_off()
    """
)


def test_a_claim_ahead_of_a_process_that_dies_is_not_a_crash(dsn, conn, tmp_path):
    first, second = (pgqueue.add_job_to_queue(conn, name="job", priority=p) for p in (0, 1))
    script = tmp_path / "worker.py"
    script.write_text(DYING_WORKER)
    died = subprocess.run([sys.executable, str(script), dsn], check=False, timeout=60)
    assert died.returncode == 3
    assert job_state(conn, first)[:3] == ("completed", 1, 0)
    # Postgres ends the dead client's backend, and its transaction with it.
    wait_until(lambda: status(conn, second) == "pending", what="the second job's lock to go")
    assert job_state(conn, second) == ("pending", 0, 0, None, 0)
    stats = pgqueue.JobQueueWorker(dsn, handler=lambda c, job: None).work_off()
    assert stats.as_dict() == {"completed": 1, "retried": 0, "failed": 0}
    assert job_state(conn, second)[:4] == ("completed", 1, 0, None)
