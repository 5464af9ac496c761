"""Monitoring: queue sizes (pending, scheduled and running apart), average time to completion, get_job."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from worker_helpers import Calls, db_now, running, status, wait_until

import pgqueue


def _sizes(pending, scheduled, running_):
    return {"pending_count": pending, "scheduled_count": scheduled, "running_count": running_}


def test_queue_sizes_count_pending_scheduled_and_running_apart(conn):
    assert pgqueue.pending_queue_size(conn) == _sizes(0, 0, 0)
    blocked = pgqueue.add_job_to_queue(conn, name="m", priority=0)
    release = threading.Event()
    calls = Calls()

    def handler(c, job):
        calls.add(job.id)
        if job.id == blocked:
            assert release.wait(30)

    worker = pgqueue.JobQueueWorker(conn.info.dsn, "m", handler=handler, poll_interval=0.1)
    try:
        with running(worker):
            assert calls.wait_for(1) == [blocked]
            due = [pgqueue.add_job_to_queue(conn, name="m") for _ in range(2)]
            pgqueue.add_job_to_queue(conn, name="m", scheduled_at=timedelta(hours=1))
            pgqueue.add_job_to_queue(conn, name="other")
            pgqueue.add_job_to_queue(conn, name="other", scheduled_at=timedelta(minutes=5))
            pgqueue.add_job_to_queue(conn, name="other", scheduled_at=timedelta(minutes=6))

            # Seen from other sessions while the handler holds its job.
            assert worker.pending_queue_size() == _sizes(2, 1, 1)
            assert pgqueue.pending_queue_size(conn) == _sizes(3, 3, 1)
            assert pgqueue.pending_queue_size(conn, name="m") == _sizes(2, 1, 1)
            assert pgqueue.pending_queue_size(conn, name="other") == _sizes(1, 2, 0)
            assert pgqueue.pending_queue_size(conn, queues=["default"]) == _sizes(3, 3, 1)
            assert pgqueue.pending_queue_size(conn, queues=["elsewhere"]) == _sizes(0, 0, 0)
            assert status(conn, blocked) == "running"
            running_job = pgqueue.get_job(conn, blocked)
            assert running_job is not None
            assert running_job.completed_at is None

            release.set()
            wait_until(
                lambda: all(status(conn, i) == "completed" for i in [blocked, *due]),
                what="the named worker's due jobs",
            )
            assert worker.pending_queue_size() == _sizes(0, 1, 0)
    finally:
        release.set()
    assert pgqueue.pending_queue_size(conn) == _sizes(1, 3, 0)


def test_get_job_reports_running_then_completed_and_none_when_unknown(conn):
    job_id = pgqueue.add_job_to_queue(conn, name="watched", data={"k": "v"}, queue="q")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.attempts, job.queue, job.data) == ("pending", 0, "q", {"k": "v"})
    release = threading.Event()
    started = threading.Event()

    def handler(c, job):
        started.set()
        assert release.wait(30)

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    try:
        with running(worker):
            assert started.wait(30)
            during = pgqueue.get_job(conn, job_id)
            assert during is not None
            assert during.status is pgqueue.JobStatus.RUNNING
            # Stored attempts count finished attempts only.
            assert during.attempts == 0
            release.set()
            wait_until(lambda: status(conn, job_id) == "completed", what="the job to complete")
    finally:
        release.set()
    done = pgqueue.get_job(conn, job_id)
    assert done is not None
    assert done.status is pgqueue.JobStatus.COMPLETED
    assert done.attempts == 1
    assert done.completed_at is not None
    assert done.completed_at >= done.scheduled_at
    assert done.last_error is None
    assert pgqueue.get_job(conn, job_id + 1_000_000) is None


def test_average_time_to_completion_counts_only_jobs_completed_in_the_window(conn):
    start = db_now(conn)
    later = start + timedelta(hours=1)
    assert pgqueue.average_time_to_completion(conn, start, later) == 0.0

    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler=lambda c, job: calls.add(job.id), poll_interval=0.1
    )
    named = pgqueue.JobQueueWorker(conn.info.dsn, "fresh", handler=lambda c, job: None)
    with running(worker):
        # Completed before the window: scheduled 100 s before they ran.
        now = db_now(conn)
        old = [
            pgqueue.add_job_to_queue(conn, name="old", scheduled_at=now - timedelta(seconds=100))
            for _ in range(3)
        ]
        calls.wait_for(len(old))
        wait_until(lambda: all(status(conn, i) == "completed" for i in old), what="old jobs")
        middle = db_now(conn)
        # Completed in the window: scheduled 10 s before they ran, and one of another name at 1000 s.
        now = db_now(conn)
        fresh = [
            pgqueue.add_job_to_queue(conn, name="fresh", scheduled_at=now - timedelta(seconds=10))
            for _ in range(3)
        ]
        other = pgqueue.add_job_to_queue(
            conn, name="other", scheduled_at=now - timedelta(seconds=1000)
        )
        calls.wait_for(len(old) + len(fresh) + 1)
        wait_until(
            lambda: all(status(conn, i) == "completed" for i in [*fresh, other]),
            what="fresh jobs",
        )
        end = db_now(conn)

    everything = pgqueue.average_time_to_completion(conn, start, end)
    assert (3 * 100 + 3 * 10 + 1000) / 7 <= everything < (3 * 100 + 3 * 10 + 1000) / 7 + 30
    in_window = pgqueue.average_time_to_completion(conn, middle, end)
    assert (3 * 10 + 1000) / 4 <= in_window < (3 * 10 + 1000) / 4 + 30
    assert 10 <= pgqueue.average_time_to_completion(conn, middle, end, name="fresh") < 40
    assert 10 <= named.average_time_to_completion(middle, end) < 40
    assert 100 <= pgqueue.average_time_to_completion(conn, start, middle) < 130
    # Windows with no completions in them.
    assert pgqueue.average_time_to_completion(conn, start - timedelta(hours=1), start) == 0.0
    assert pgqueue.average_time_to_completion(conn, end, later) == 0.0
    assert named.average_time_to_completion(start, middle) == 0.0


def test_failed_jobs_do_not_count_as_completed(conn):
    start = db_now(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="fails", max_attempts=1)

    def handler(c, job):
        raise RuntimeError("nope")

    with running(pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)):
        wait_until(lambda: status(conn, job_id) == "failed", what="the job to fail")
    assert pgqueue.average_time_to_completion(conn, start, db_now(conn)) == 0.0
    assert pgqueue.pending_queue_size(conn) == _sizes(0, 0, 0)


def test_average_time_to_completion_rejects_naive_datetimes(conn):
    now = db_now(conn)
    with pytest.raises(pgqueue.InvalidJobError):
        pgqueue.average_time_to_completion(conn, now.replace(tzinfo=None), now)
