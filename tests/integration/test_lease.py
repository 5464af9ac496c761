"""Lease mode: long jobs run outside any transaction, held by a lease their worker keeps
extending; an expired lease is rescued and retried (at least once, not exactly once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from worker_helpers import Calls, create_results_table, result_ids, running, status, wait_until

import pgqueue


def insert_result(conn: psycopg.Connection[Any], job: pgqueue.JobRecord, note: str = "") -> None:
    conn.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, note))


def notes(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    return [tuple(r) for r in conn.execute("SELECT job_id, note FROM results ORDER BY at")]


def test_a_lease_job_runs_outside_a_transaction_and_shows_as_running(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="long")
    release = threading.Event()
    seen = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        seen.add((job.status, job.attempts, job.lease_until is not None, c.autocommit))
        insert_result(c, job, "written")
        seen.add(c.info.transaction_status)
        release.wait(30)

    try:
        with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=30, poll_interval=0.1)):
            seen.wait_for(2)
            # Committed as it went: visible while the handler still runs.
            assert result_ids(conn) == [job_id]
            job = pgqueue.get_job(conn, job_id)
            assert job is not None
            assert job.status is pgqueue.JobStatus.RUNNING
            assert job.lease_until is not None
            assert job.attempts == 1
            assert pgqueue.pending_queue_size(conn) == {
                "pending_count": 0,
                "scheduled_count": 0,
                "running_count": 1,
            }
            assert [j.id for j in pgqueue.list_jobs(conn, status="running")] == [job_id]
            assert ("default", "long", "running", 1) in conn.execute(
                "SELECT queue, name, state, count FROM pgqueue.status_counts()"
            ).fetchall()
            # A running job is neither cancelled nor deleted.
            assert pgqueue.cancel_job(conn, job_id) is False
            assert pgqueue.clear_jobs(conn) == 0
            release.set()
            wait_until(lambda: status(conn, job_id) == "completed", what="the job to complete")
    finally:
        release.set()
    assert seen.items == [
        (pgqueue.JobStatus.RUNNING, 1, True, True),
        TransactionStatus.IDLE,  # no transaction open around the handler
    ]
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.attempts, job.lease_until, job.crashes) == ("completed", 1, None, 0)


def test_heartbeats_keep_the_lease_of_a_job_longer_than_it(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    job_id = pgqueue.add_job_to_queue(conn, name="long")
    leases: set[Any] = set()

    def lease_until() -> Any:
        return conn.execute(
            "SELECT lease_until FROM pgqueue.jobs WHERE id = %s", (job_id,)
        ).fetchone()[0]  # type: ignore[index]

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        # Three leases long: the lease is extended meanwhile, and no dequeue rescues it.
        wait_until(lambda: len(leases) >= 3, what="the lease to be extended twice")

    def note_lease_and_check() -> bool:
        leases.add(lease_until())
        return status(conn, job_id) == "completed"

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=1, poll_interval=0.1)):
        wait_until(note_lease_and_check, interval=0.1, what="the job to complete")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.attempts, job.last_error) == ("completed", 1, None)


LEASE_WORKER = textwrap.dedent(
    """
    import pathlib
    import sys
    import time

    import pgqueue

    dsn, marker = sys.argv[1], pathlib.Path(sys.argv[2])


    def handler(conn, job):
        conn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'first run')", (job.id,))
        # Written whole, then renamed: the test polls for the file and reads it.
        marker.with_suffix('.tmp').write_text(str(job.id))
        marker.with_suffix('.tmp').replace(marker)
        time.sleep(600)


    worker = pgqueue.JobQueueWorker(dsn, handler=handler, lease=1, poll_interval=0.1)
    worker.start()
    time.sleep(600)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_an_expired_lease_is_rescued_and_retried_at_least_once(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    create_results_table(conn)
    conn.execute("ALTER TABLE results DROP CONSTRAINT results_pkey")  # at least once: twice here
    job_id = pgqueue.add_job_to_queue(
        conn, name="long", retry={"backoff": "fixed", "delay": 0.5, "jitter": 0}
    )
    script = tmp_path / "worker.py"
    script.write_text(LEASE_WORKER)
    marker = tmp_path / "running"
    proc = subprocess.Popen([sys.executable, str(script), dsn, str(marker)])
    try:
        wait_until(marker.exists, what="the subprocess to start the job")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # Nothing holds it now, but it is 'running' until its lease runs out.
    assert status(conn, job_id) == "running"

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        insert_result(c, job, "second run")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=5, poll_interval=0.1)):
        wait_until(lambda: status(conn, job_id) == "completed", what="the job to be rescued")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.attempts, job.crashes) == (2, 1)
    assert job.last_error is not None
    assert job.last_error.startswith("LeaseExpired: the lease ran out at")
    assert "(attempt 1 of 5)" in job.last_error
    # The first run's write stayed: effects are not atomic with completion in lease mode.
    assert notes(conn) == [(job_id, "first run"), (job_id, "second run")]


def test_a_failing_lease_handler_is_retried_and_its_writes_stay(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    conn.execute("ALTER TABLE results DROP CONSTRAINT results_pkey")
    job_id = pgqueue.add_job_to_queue(conn, name="long", max_attempts=1)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        insert_result(c, job, "before the error")
        with c.transaction():  # a real transaction, rolled back by the error
            insert_result(c, job, "never")
            raise ValueError("no luck")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=10, poll_interval=0.1)):
        wait_until(lambda: status(conn, job_id) == "failed", what="the job to fail")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.attempts, job.lease_until) == (1, None)
    assert job.last_error is not None
    assert job.last_error.startswith("ValueError: no luck")
    assert notes(conn) == [(job_id, "before the error")]


def test_a_lease_job_times_out(conn: psycopg.Connection[Any], dsn: str) -> None:
    stuck = pgqueue.add_job_to_queue(conn, name="stuck", timeout=0.5, max_attempts=1, priority=0)
    after = pgqueue.add_job_to_queue(conn, name="after", priority=1)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        if job.name == "stuck":
            c.execute("SELECT pg_sleep(30)")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=10, poll_interval=0.1)):
        wait_until(lambda: status(conn, after) == "completed", what="the job after it")
    job = pgqueue.get_job(conn, stuck)
    assert job is not None
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None
    assert job.last_error.startswith("JobTimeout: timed out after 0.5 s")


def test_built_in_jobs_still_run_in_their_transaction(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    recurring = pgqueue.add_recurring_job_to_queue(conn, name="tick", interval={"hours": 1})
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.name, job.status))

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, lease=10, poll_interval=0.1)):
        assert calls.wait_for(1) == [("tick", pgqueue.JobStatus.RUNNING)]
    job = pgqueue.get_job(conn, recurring)
    assert job is not None
    # Rescheduled in place, never 'running': the one-pending-row-per-name rule holds.
    assert job.status is pgqueue.JobStatus.PENDING
    assert job.lease_until is None


def test_a_queue_concurrency_limit_counts_lease_jobs(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    pgqueue.configure_queue(conn, "one", max_concurrency=1)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "long", "queue": "one"} for _ in range(3)])
    lock = threading.Lock()
    now = [0]
    most = [0]

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            c.execute("SELECT pg_sleep(0.3)")
        finally:
            with lock:
                now[0] -= 1

    worker = pgqueue.JobQueueWorker(
        dsn, handler=handler, lease=10, poll_interval=0.05, parallel_count=3
    )
    with running(worker):
        wait_until(lambda: all(status(conn, i) == "completed" for i in ids), what="all three")
    assert most[0] == 1


def test_lease_takes_a_timedelta() -> None:
    worker = pgqueue.JobQueueWorker(
        "dbname=x", handler=lambda c, j: None, lease=timedelta(minutes=2)
    )
    assert worker.lease == 120.0
