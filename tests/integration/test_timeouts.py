"""Hung handlers: a per-job or per-worker timeout ends the job's transaction, fails the attempt
with a "timed out" error, and the slot goes on, also when the handler's thread cannot be stopped."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from worker_helpers import Calls, create_results_table, result_ids, running, status, wait_until

import pgqueue


def insert_result(conn: psycopg.Connection[Any], job: pgqueue.JobRecord, note: str = "") -> None:
    conn.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, note))


def test_timeouts_are_validated_and_stored(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pgqueue.ConfigurationError, match="timeout"):
        pgqueue.JobQueueWorker("dbname=x", handler=lambda c, j: None, timeout=0)
    with pytest.raises(pgqueue.ConfigurationError, match="lease"):
        pgqueue.JobQueueWorker("dbname=x", handler=lambda c, j: None, lease=-1)
    with pytest.raises(pgqueue.ConfigurationError, match="batch_size=1"):
        pgqueue.JobQueueWorker("dbname=x", handler=lambda c, j: None, lease=10, batch_size=2)
    bad_values: list[Any] = [-1, 0, float("nan"), float("inf"), "5", True, 10**400]
    for bad in bad_values:
        with pytest.raises(pgqueue.InvalidJobError, match="timeout"):
            pgqueue.add_job_to_queue(conn, name="t", timeout=bad)
    one = pgqueue.add_job_to_queue(conn, name="t", timeout=timedelta(seconds=2.5))
    other = pgqueue.add_job_to_queue(conn, {"name": "t", "timeout": 3})
    bulk = pgqueue.add_jobs_to_queue(conn, [{"name": "t", "timeout": 0.25}, {"name": "t"}])
    timeouts = [pgqueue.get_job(conn, i).timeout for i in [one, other, *bulk]]  # type: ignore[union-attr]
    assert timeouts == [2.5, 3.0, 0.25, None]


def test_a_handler_stuck_in_python_times_out_and_its_slot_goes_on(
    conn: psycopg.Connection[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    create_results_table(conn)
    stuck = pgqueue.add_job_to_queue(conn, name="stuck", priority=0, timeout=0.5, max_attempts=1)
    after = pgqueue.add_job_to_queue(conn, name="after", priority=1)
    release = threading.Event()
    later = Calls()
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add(job.id)
        insert_result(c, job)
        if job.name == "stuck":
            release.wait(30)  # Python code: nothing can interrupt it
            try:
                c.execute("SELECT 1")
            except Exception as exc:
                later.add(type(exc))
                raise
            later.add(None)

    caplog.set_level(logging.WARNING, logger="pgqueue")
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)
    started = time.monotonic()
    try:
        with running(worker):
            # One slot, its handler stuck: the job after it runs all the same.
            wait_until(lambda: status(conn, after) == "completed", what="the job after it")
            assert calls.items == [stuck, after]
            assert status(conn, stuck) == "failed"
            assert time.monotonic() - started < 10
            release.set()
            # The handler's thread ran on; its statements fail: its connection is gone.
            [error] = later.wait_for(1)
            assert error is not None
            assert issubclass(error, psycopg.OperationalError)
    finally:
        release.set()
    job = pgqueue.get_job(conn, stuck)
    assert job is not None
    assert job.attempts == 1
    assert job.crashes == 0
    assert job.last_error is not None
    assert job.last_error.startswith("JobTimeout: timed out after 0.5 s (attempt 1 of 1")
    assert result_ids(conn) == [after], "the stuck job's write died with its transaction"
    assert "its handler still runs after its 0.5 s timeout" in caplog.text
    # Counted once, when its slot was given up (the watchdog recorded it; it was not counted).
    assert worker.stats.as_dict() == {"completed": 1, "retried": 0, "failed": 1}


def test_a_handler_stuck_in_sql_times_out_and_the_slot_recovers_itself(
    conn: psycopg.Connection[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    create_results_table(conn)
    stuck = pgqueue.add_job_to_queue(conn, name="stuck", priority=0, max_attempts=2)
    after = pgqueue.add_job_to_queue(conn, name="after", priority=1)
    errors = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        insert_result(c, job)
        if job.name == "stuck":
            try:
                c.execute("SELECT pg_sleep(30)")
            except Exception as exc:
                errors.add(type(exc))
                raise

    caplog.set_level(logging.WARNING, logger="pgqueue")
    started = time.monotonic()
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1, timeout=0.5)
    with running(worker):
        wait_until(lambda: status(conn, after) == "completed", what="the job after it")
        elapsed = time.monotonic() - started
    assert [issubclass(e, psycopg.OperationalError) for e in errors.items] == [True]  # terminated
    assert elapsed < 10
    job = pgqueue.get_job(conn, stuck)
    assert job is not None
    # Counted, and retried later (after the default backoff).
    assert (job.status, job.attempts) == (pgqueue.JobStatus.PENDING, 1)
    assert job.last_error is not None
    assert job.last_error.startswith("JobTimeout: timed out after")
    assert result_ids(conn) == [after]
    # The handler came back at once: the slot carried on in its own thread.
    assert "still runs after" not in caplog.text
    assert worker.stats.as_dict() == {"completed": 1, "retried": 1, "failed": 0}


def test_a_job_timeout_wins_over_the_worker_timeout(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    short = pgqueue.add_job_to_queue(conn, name="short", timeout=0.3, max_attempts=1)
    long = pgqueue.add_job_to_queue(conn, name="long", timeout=30)
    plain = pgqueue.add_job_to_queue(conn, name="plain", max_attempts=1)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        c.execute("SELECT pg_sleep(0.8)")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1, timeout=0.5)):
        wait_until(
            lambda: {status(conn, i) for i in (short, long, plain)} <= {"completed", "failed"},
            what="all three",
        )
    assert [status(conn, i) for i in (short, long, plain)] == ["failed", "completed", "failed"]
    errors = [pgqueue.get_job(conn, i).last_error or "" for i in (short, plain)]  # type: ignore[union-attr]
    assert errors[0].startswith("JobTimeout: timed out after 0.3 s")
    assert errors[1].startswith("JobTimeout: timed out after 0.5 s")


def test_a_timeout_in_a_batch_blames_only_its_job(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_results_table(conn)
    before, stuck, after = pgqueue.add_jobs_to_queue(
        conn,
        [
            {"name": "quick"},
            {"name": "stuck", "timeout": 0.5, "max_attempts": 1},
            {"name": "quick"},
        ],
    )
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add(job.id)
        insert_result(c, job)
        if job.name == "stuck":
            c.execute("SELECT pg_sleep(30)")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1, batch_size=3)):
        wait_until(
            lambda: (
                [status(conn, i) for i in (before, stuck, after)]
                == ["completed", "failed", "completed"]
            ),
            what="the batch to settle",
        )
    # The first job's work died with the batch's transaction, and it ran again: not blamed.
    assert calls.items[:2] == [before, stuck]
    assert calls.items.count(before) == 2
    for job_id in (before, after):
        job = pgqueue.get_job(conn, job_id)
        assert job is not None
        assert (job.attempts, job.crashes, job.last_error) == (1, 0, None)
    job = pgqueue.get_job(conn, stuck)
    assert job is not None
    assert job.last_error is not None
    assert job.last_error.startswith("JobTimeout: timed out after 0.5 s")
    assert result_ids(conn) == [before, after]


def test_postgres_own_limits_back_up_the_watchdog(conn: psycopg.Connection[Any], dsn: str) -> None:
    timed, untimed = pgqueue.add_jobs_to_queue(
        conn, [{"name": "timed", "timeout": 2}, {"name": "untimed"}]
    )
    seen: dict[int, tuple[str, str]] = {}

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        row = c.execute(
            "SELECT current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()
        assert row is not None
        seen[job.id] = (row[0], row[1])

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1, batch_size=2)):
        wait_until(lambda: status(conn, untimed) == "completed", what="both jobs")
    # The timeout plus a grace of 5 s, for that job's transaction only.
    assert seen == {timed: ("7s", "7s"), untimed: ("0", "0")}
