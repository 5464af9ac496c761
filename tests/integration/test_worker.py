"""The worker's promises, against a real database: order, due time, exactly once, rollback means
retry, transactional enqueue, NOTIFY wake-up, graceful stop, filters, and handlers that misbehave."""

from __future__ import annotations

import collections
import json
import logging
import statistics
import threading
import time
from datetime import timedelta

import psycopg
import psycopg.sql
import pytest
from psycopg_pool import ConnectionPool
from worker_helpers import (
    Calls,
    create_results_table,
    db_now,
    other_backends,
    result_ids,
    running,
    scalar,
    status,
    wait_until,
)

import pgqueue

# -- connection sources -----------------------------------------------------------


def test_a_worker_runs_on_the_callers_pool_and_leaves_it_usable(conn, dsn):
    create_results_table(conn)
    with ConnectionPool(dsn, min_size=2, max_size=2, open=True) as pool:
        ids = [pgqueue.add_job_to_queue(pool, name="pooled", data=i) for i in range(20)]

        def handler(c, job):
            c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

        worker = pgqueue.JobQueueWorker(pool, handler=handler, parallel_count=2, poll_interval=0.1)
        with running(worker):
            wait_until(lambda: result_ids(conn) == ids, what="every pooled job")
            assert worker.pending_queue_size()["pending_count"] == 0
        assert not pool.closed
        with pool.connection() as c:
            # The worker gave the connections back as it found them.
            assert not c.autocommit
            assert c.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        assert pgqueue.get_job(pool, ids[-1]) is not None
    assert all(status(conn, i) == "completed" for i in ids)


def test_workers_of_other_queues_on_one_pool_each_claim_their_own(conn, dsn):
    # Each worker prepares its claim on the pool's connections: the names must not collide.
    create_results_table(conn)
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        ids = {
            queue: [pgqueue.add_job_to_queue(pool, name="q", queue=queue) for _ in range(10)]
            for queue in ("red", "blue")
        }
        seen: dict[str, set[str]] = {"red": set(), "blue": set()}

        def handler_for(queue):
            def handler(c, job):
                seen[queue].add(job.queue)
                c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

            return handler

        workers = [
            pgqueue.JobQueueWorker(pool, handler=handler_for(q), queues=[q], poll_interval=0.05)
            for q in ("red", "blue")
        ]
        for worker in workers:
            worker.work_off()
    assert seen == {"red": {"red"}, "blue": {"blue"}}
    assert result_ids(conn) == sorted(ids["red"] + ids["blue"])


def test_a_claim_whose_prepared_statement_was_dropped_is_prepared_again(conn, caplog):
    # psycopg drops every prepared statement of its connection after some ROLLBACKs (and a
    # DROP or ALTER) its handler sends, and a handler may DEALLOCATE them itself: the worker
    # prepares its claim again, a job whose completion was dropped runs again (its transaction
    # is lost), once per connection, and no job is lost or counted twice.
    create_results_table(conn)
    ids = [pgqueue.add_job_to_queue(conn, name="dropper", data=i) for i in range(20)]
    prepared: list[set[str]] = []
    runs: list[int] = []
    find = "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgqueue%'"

    def handler(c, job):
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        names = [row[0] for row in c.execute(find, prepare=False).fetchall()]
        prepared.append({name.rstrip("0123456789abcdef") for name in names})
        runs.append(job.data)
        if job.data % 2:
            for name in names:
                c.execute(psycopg.sql.SQL("DEALLOCATE {}").format(psycopg.sql.Identifier(name)))

    with caplog.at_level(logging.WARNING, logger="pgqueue.worker"):
        stats = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler).work_off()
    assert (stats.completed, stats.failed, stats.retried) == (20, 0, 0)
    assert result_ids(conn) == ids
    assert scalar(conn, "SELECT max(attempts) FROM pgqueue.jobs") == 1
    # Job 1 dropped its own completion: it ran again; from then on the commit's statements
    # (RELEASE, the completion, COMMIT) are unnamed.
    assert runs == [0, 1, 1, *range(2, 20)]
    # The claim's first round trip prepares the claim, BEGIN and SAVEPOINT again each time.
    claim = {"pgqueue_claim_", "pgqueue_begin_", "pgqueue_savepoint_"}
    every = {*claim, "pgqueue_complete_", "pgqueue_release_", "pgqueue_commit_"}
    assert prepared == [every, every, claim, *[claim] * 18]
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warned] == [f"jobs {ids[1]} run again"]


def test_a_handler_that_makes_psycopg_drop_prepared_statements_loses_no_job(conn, caplog):
    # psycopg's own DEALLOCATE ALL: once it has prepared a statement of the handler's, a
    # ROLLBACK (here to a savepoint) makes it drop everything before its next statement.
    create_results_table(conn)
    ids = [pgqueue.add_job_to_queue(conn, name="psycopg-dropper", data=i) for i in range(10)]
    runs: list[int] = []

    def handler(c, job):
        runs.append(job.data)
        c.execute("SELECT 1", prepare=True)
        c.execute("SAVEPOINT mine")
        c.execute("ROLLBACK TO SAVEPOINT mine")
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

    with caplog.at_level(logging.WARNING, logger="pgqueue.worker"):
        stats = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler).work_off()
    assert (stats.completed, stats.failed, stats.retried) == (10, 0, 0)
    assert result_ids(conn) == ids
    assert scalar(conn, "SELECT max(attempts) FROM pgqueue.jobs") == 1
    assert runs == [0, *range(10)]  # the first ran twice: its completion was dropped
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


# -- order and due time ---------------------------------------------------------


def test_jobs_run_by_priority_then_scheduled_at_then_id(conn):
    now = db_now(conn)
    same_time = now - timedelta(seconds=20)
    # Enqueued in an order that matches none of the sort keys alone.
    specs = [
        ("late-low", 2, now - timedelta(seconds=30)),
        ("p1-recent", 1, now - timedelta(seconds=5)),
        ("p1-tie-first", 1, same_time),
        ("p1-old", 1, now - timedelta(seconds=25)),
        ("p1-tie-second", 1, same_time),
        ("urgent", 0, now - timedelta(seconds=1)),
        ("p1-tie-third", 1, same_time),
        ("negative", -5, now),
    ]
    ids = {
        label: pgqueue.add_job_to_queue(
            conn, name="order", data=label, priority=prio, scheduled_at=at
        )
        for label, prio, at in specs
    }
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler=lambda c, job: calls.add(job.data), poll_interval=0.1
    )
    with running(worker):
        order = calls.wait_for(len(specs))
    assert order == [
        "negative",
        "urgent",
        "p1-old",
        "p1-tie-first",
        "p1-tie-second",
        "p1-tie-third",
        "p1-recent",
        "late-low",
    ]
    assert ids["p1-tie-first"] < ids["p1-tie-second"] < ids["p1-tie-third"]
    assert all(status(conn, job_id) == "completed" for job_id in ids.values())


def test_only_due_jobs_run(conn):
    far = pgqueue.add_job_to_queue(conn, name="due", data="far", scheduled_at=timedelta(hours=1))
    near = pgqueue.add_job_to_queue(
        conn, name="due", data="near", scheduled_at=timedelta(seconds=1.5)
    )
    near_job = pgqueue.get_job(conn, near)
    assert near_job is not None
    seen = Calls()

    def handler(c, job):
        # now() is the start of the job's transaction, i.e. when dequeue claimed it.
        seen.add((job.id, scalar(c, "SELECT now()")))

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        [(job_id, started_at)] = seen.wait_for(1)
        wait_until(lambda: status(conn, near) == "completed", what="the near job to complete")
    assert job_id == near
    assert started_at >= near_job.scheduled_at
    assert len(seen) == 1
    far_job = pgqueue.get_job(conn, far)
    assert far_job is not None
    assert far_job.status is pgqueue.JobStatus.PENDING
    assert far_job.attempts == 0
    assert pgqueue.pending_queue_size(conn) == {
        "pending_count": 0,
        "scheduled_count": 1,
        "running_count": 0,
    }


# -- exactly once ----------------------------------------------------------------


def test_each_job_runs_exactly_once_under_contention(conn):
    job_count = 5000
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "count"} for _ in range(job_count)])
    calls: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def handler(c, job):
        with lock:
            calls[job.id] += 1
        c.execute(
            "INSERT INTO results (job_id, note) VALUES (%s, %s)",
            (job.id, threading.current_thread().name + str(id(threading.current_thread()))),
        )

    workers = [
        pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, parallel_count=4, poll_interval=0.5)
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    try:
        wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM results") == job_count,
            timeout=120,
            interval=0.2,
            what="every job to be handled",
        )
    finally:
        for worker in workers:
            worker.stop()

    assert result_ids(conn) == sorted(ids)
    assert set(calls) == set(ids)
    assert max(calls.values()) == 1
    rows = conn.execute(
        "SELECT status, attempts, count(*) FROM pgqueue.jobs GROUP BY 1, 2"
    ).fetchall()
    assert rows == [("completed", 1, job_count)]
    # The work really was shared between threads.
    assert scalar(conn, "SELECT count(DISTINCT note) FROM results") > 1


# -- failure, rollback and retry ------------------------------------------------------


class Boom(Exception):
    pass


def test_a_failing_handler_rolls_back_and_is_retried_later(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(
        conn, name="boom", retry={"backoff": "fixed", "delay": 30, "jitter": 0}
    )

    def handler(c, job):
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        raise Boom(f"exploded on attempt {job.attempts}")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        job = wait_until(
            lambda: (j := pgqueue.get_job(conn, job_id)) and j.attempts == 1 and j,
            what="the first attempt to be recorded",
        )
    assert job.status is pgqueue.JobStatus.PENDING
    assert job.last_error is not None
    assert job.last_error.startswith("Boom: exploded on attempt 1")
    assert "Traceback" in job.last_error
    assert job.scheduled_at > db_now(conn)
    assert job.scheduled_at - job.updated_at == timedelta(seconds=30)
    assert job.completed_at is None
    assert result_ids(conn) == []


def test_a_job_that_keeps_failing_ends_failed_after_max_attempts(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(
        conn,
        name="boom",
        max_attempts=3,
        retry={"backoff": "fixed", "delay": 0.2, "jitter": 0},
    )
    calls = Calls()

    def handler(c, job):
        calls.add(job.attempts)
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        raise Boom(f"attempt {job.attempts}")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.05)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "failed", what="the job to fail for good")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.status is pgqueue.JobStatus.FAILED
    assert job.attempts == 3
    assert calls.items == [1, 2, 3]
    assert job.last_error is not None
    assert job.last_error.startswith("Boom: attempt 3")
    assert job.completed_at is None
    assert result_ids(conn) == []
    assert pgqueue.pending_queue_size(conn) == {
        "pending_count": 0,
        "scheduled_count": 0,
        "running_count": 0,
    }


def test_a_job_that_fails_once_then_succeeds_is_completed_with_its_write_once(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(
        conn, name="flaky", retry={"backoff": "fixed", "delay": 0.2, "jitter": 0}
    )
    calls = Calls()

    def handler(c, job):
        calls.add(job.attempts)
        c.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, job.attempts))
        if job.attempts == 1:
            raise Boom("first time unlucky")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.05)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "completed", what="the job to complete")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.attempts == 2
    assert job.completed_at is not None
    assert calls.items == [1, 2]
    assert conn.execute("SELECT job_id, note FROM results").fetchall() == [(job_id, "2")]


def _fail_directly(conn, job_id, error):
    """Record a failed attempt with pgqueue.fail in a transaction; return (delay, row)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT scheduled_at - updated_at, status, attempts, last_error"
            " FROM pgqueue.fail(%s, %s)",
            (job_id, error),
        ).fetchone()
    assert row is not None
    return row


def test_exponential_backoff_grows_by_the_factor(conn):
    job_id = pgqueue.add_job_to_queue(
        conn, name="exp", max_attempts=4, retry={"delay": 1, "factor": 3, "jitter": 0}
    )
    delays = []
    for attempt in (1, 2, 3):
        delay, state, attempts, last_error = _fail_directly(conn, job_id, f"error {attempt}")
        assert (state, attempts, last_error) == ("pending", attempt, f"error {attempt}")
        delays.append(delay)
    assert delays == [timedelta(seconds=1), timedelta(seconds=3), timedelta(seconds=9)]
    # The last attempt marks the job failed and keeps scheduled_at where it was.
    before = pgqueue.get_job(conn, job_id)
    _, state, attempts, last_error = _fail_directly(conn, job_id, "final error")
    assert (state, attempts, last_error) == ("failed", 4, "final error")
    after = pgqueue.get_job(conn, job_id)
    assert before is not None
    assert after is not None
    assert after.scheduled_at == before.scheduled_at
    # A failed job is not failed again.
    assert conn.execute("SELECT * FROM pgqueue.fail(%s, 'again')", (job_id,)).fetchall() == []


def test_the_worker_applies_the_exponential_policy(conn):
    job_id = pgqueue.add_job_to_queue(
        conn, name="exp", max_attempts=3, retry={"delay": 0.3, "factor": 3, "jitter": 0}
    )
    calls = Calls()

    def handler(c, job):
        # The row as the previous failed attempt left it.
        calls.add(
            scalar(c, "SELECT scheduled_at - updated_at FROM pgqueue.jobs WHERE id = %s", (job.id,))
        )
        raise Boom("always")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.05)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "failed", what="three failed attempts")
    assert calls.items[1:] == [timedelta(seconds=0.3), timedelta(seconds=0.9)]


def test_default_retry_policy_has_jitter_and_a_ten_second_base(conn):
    job_id = pgqueue.add_job_to_queue(conn, name="default-retry")
    delay, state, attempts, _ = _fail_directly(conn, job_id, "x")
    assert (state, attempts) == ("pending", 1)
    assert timedelta(seconds=10) <= delay < timedelta(seconds=11)


@pytest.mark.parametrize(
    ("policy", "attempt", "seconds"),
    [
        ({"backoff": "fixed", "delay": 7, "jitter": 0}, 4, 7),
        ({"backoff": "linear", "delay": 2, "jitter": 0}, 3, 6),
        ({"backoff": "exponential", "delay": 2, "factor": 2, "jitter": 0}, 4, 16),
        ({"backoff": "polynomial", "delay": 1, "factor": 4, "jitter": 0}, 3, 81),
        ({"delay": 10, "factor": 2, "max_delay": 60, "jitter": 0}, 30, 60),
        ({"delay": 10, "factor": 2, "jitter": 0}, 1000, 3600),
    ],
)
def test_retry_delay_policies(conn, policy, attempt, seconds):
    delay = scalar(conn, "SELECT pgqueue.retry_delay(%s::jsonb, %s)", (json.dumps(policy), attempt))
    assert delay == timedelta(seconds=seconds)


def test_a_retry_that_would_fall_after_until_fails_the_job(conn):
    until = db_now(conn) + timedelta(seconds=5)
    job_id = pgqueue.add_job_to_queue(
        conn, name="until", retry={"delay": 2, "jitter": 0, "until": until}
    )
    _, state, attempts, _ = _fail_directly(conn, job_id, "first")
    assert (state, attempts) == ("pending", 1)
    _, state, attempts, _ = _fail_directly(conn, job_id, "second")
    assert (state, attempts) == ("pending", 2)
    # The third retry would come 8 s from now, after until.
    _, state, attempts, last_error = _fail_directly(conn, job_id, "third")
    assert (state, attempts, last_error) == ("failed", 3, "third")


def test_jobs_enqueued_by_a_handler_share_its_fate(conn):
    first = pgqueue.add_job_to_queue(
        conn, name="parent", retry={"backoff": "fixed", "delay": 0.1, "jitter": 0}
    )
    calls = Calls()

    def parent(c, job):
        calls.add((job.name, job.attempts))
        pgqueue.add_job_to_queue(c, name="child", data={"attempt": job.attempts})
        if job.attempts == 1:
            raise Boom("roll my child back")

    def child(c, job):
        calls.add((job.name, job.data))

    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler={"parent": parent, "child": child}, poll_interval=0.05
    )
    with running(worker):
        seen = calls.wait_for(3)
        wait_until(
            lambda: (
                scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'") == 2
            ),
            what="parent and child to complete",
        )
    assert seen == [("parent", 1), ("parent", 2), ("child", {"attempt": 2})]
    assert status(conn, first) == "completed"
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'child'") == 1


# -- transactional enqueue ---------------------------------------------------------


def test_enqueue_joins_the_callers_transaction(conn, dsn):
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        dsn, handler=lambda c, job: calls.add(job.data), poll_interval=0.1
    )
    with running(worker), psycopg.connect(dsn) as tx_conn:
        rolled_back = pgqueue.add_job_to_queue(tx_conn, name="tx", data="rolled back")
        # Not visible to anyone else before the commit.
        assert pgqueue.get_job(conn, rolled_back) is None
        tx_conn.rollback()
        assert pgqueue.get_job(tx_conn, rolled_back) is None
        assert pgqueue.get_job(conn, rolled_back) is None
        assert pgqueue.pending_queue_size(conn) == {
            "pending_count": 0,
            "scheduled_count": 0,
            "running_count": 0,
        }
        tx_conn.commit()

        committed = pgqueue.add_job_to_queue(
            tx_conn, name="tx", data="committed", scheduled_at=timedelta(hours=1)
        )
        assert pgqueue.get_job(conn, committed) is None
        tx_conn.commit()
        assert status(conn, committed) == "pending"
        assert pgqueue.pending_queue_size(conn)["scheduled_count"] == 1

        runs = pgqueue.add_job_to_queue(tx_conn, name="tx", data="runs")
        tx_conn.commit()
        assert calls.wait_for(1) == ["runs"]
        wait_until(lambda: status(conn, runs) == "completed", what="the committed job")
    assert calls.items == ["runs"]
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 2


# -- NOTIFY wake-up ----------------------------------------------------------------


def _listening(conn) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN pgqueue_jobs'",
        )
    )


def _slot_idle(conn) -> bool:
    # A slot that found nothing ends its dequeue transaction, then waits.
    return bool(
        scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle' AND query IN ('COMMIT', 'ROLLBACK')",
        )
    )


def test_an_idle_worker_wakes_on_notify_well_before_poll_interval(conn):
    poll_interval = 5.0
    started: dict[int, float] = {}
    event = threading.Event()

    def handler(c, job):
        started[job.id] = time.monotonic()
        event.set()

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=poll_interval)
    latencies = []
    with running(worker):
        wait_until(lambda: _listening(conn), what="the worker to LISTEN")
        for _ in range(20):
            wait_until(lambda: _slot_idle(conn), what="the slot to be idle")
            event.clear()
            before = time.monotonic()
            job_id = pgqueue.add_job_to_queue(conn, name="ping")
            assert event.wait(2 * poll_interval), "the job did not run"
            latencies.append(started[job_id] - before)
            wait_until(
                lambda job_id=job_id: status(conn, job_id) == "completed",
                what="the job to complete",
            )
    median = statistics.median(latencies)
    print(
        f"\nNOTIFY wake-up latency over {len(latencies)} jobs: median {median * 1000:.1f} ms,"
        f" max {max(latencies) * 1000:.1f} ms (poll_interval {poll_interval:.0f} s)"
    )
    # Polling every 5 s would put the median near 2.5 s.
    assert median < 0.5
    assert max(latencies) < poll_interval / 2


def test_a_job_scheduled_later_is_found_by_polling(conn):
    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=lambda c, job: None, poll_interval=0.3)
    with running(worker):
        wait_until(lambda: _listening(conn), what="the worker to LISTEN")
        # Not due at insert: no NOTIFY is sent for it.
        job_id = pgqueue.add_job_to_queue(conn, name="later", scheduled_at=timedelta(seconds=1))
        job = wait_until(
            lambda: (j := pgqueue.get_job(conn, job_id)) and j.completed_at and j,
            what="the scheduled job to run",
        )
    assert job.completed_at >= job.scheduled_at


# -- graceful stop -----------------------------------------------------------------


def test_stop_waits_for_the_running_handler_and_then_takes_nothing(conn):
    create_results_table(conn)
    started = threading.Event()
    finished: list[float] = []

    def handler(c, job):
        started.set()
        time.sleep(1)
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        finished.append(time.monotonic())

    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler=handler, parallel_count=2, poll_interval=0.1
    )
    worker.start()
    try:
        job_id = pgqueue.add_job_to_queue(conn, name="slow")
        assert started.wait(10)
        assert status(conn, job_id) == "running"
    finally:
        worker.stop()
    stopped_at = time.monotonic()
    assert len(finished) == 1
    assert finished[0] <= stopped_at
    assert status(conn, job_id) == "completed"
    assert result_ids(conn) == [job_id]
    assert not worker.is_started
    # The worker let go of its connections: nothing is left to pick up a job.
    wait_until(
        lambda: other_backends(conn) == 0,
        what="the worker's connections to close",
    )
    after = pgqueue.add_job_to_queue(conn, name="slow")
    late = pgqueue.get_job(conn, after)
    assert late is not None
    assert (late.status, late.attempts) == (pgqueue.JobStatus.PENDING, 0)
    assert len(finished) == 1


def test_stop_on_an_idle_worker_returns_promptly(conn):
    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=lambda c, job: None, poll_interval=60)
    worker.start()
    wait_until(lambda: _listening(conn), what="the worker to LISTEN")
    before = time.monotonic()
    worker.stop()
    assert time.monotonic() - before < 5


# -- filters -------------------------------------------------------------------------


def test_a_named_worker_runs_only_that_name_and_no_recurring_jobs(conn):
    other = pgqueue.add_job_to_queue(conn, name="b", priority=0)
    recurring = pgqueue.add_recurring_job_to_queue(conn, name="a", interval={"hours": 1})
    before = pgqueue.get_job(conn, recurring)
    # Runs after the others in queue order: if the worker could take them, it would have first.
    mine = pgqueue.add_job_to_queue(conn, name="a", priority=5)
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, "a", handler=lambda c, job: calls.add(job.id), poll_interval=0.1
    )
    with running(worker):
        assert calls.wait_for(1) == [mine]
        wait_until(lambda: status(conn, mine) == "completed", what="the named job")
        assert worker.pending_queue_size() == {
            "pending_count": 0,
            "scheduled_count": 0,
            "running_count": 0,
        }
    assert calls.items == [mine]
    assert status(conn, other) == "pending"
    after = pgqueue.get_job(conn, recurring)
    assert after == before
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'a'") == 1


def test_a_queue_filtered_worker_runs_only_those_queues(conn):
    skipped = pgqueue.add_job_to_queue(conn, name="q", queue="q3", priority=0)
    mine = [
        pgqueue.add_job_to_queue(conn, name="q", queue=queue, priority=5)
        for queue in ("q1", "q2", "q1")
    ]
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn,
        handler=lambda c, job: calls.add((job.id, job.queue)),
        queues=["q1", "q2"],
        poll_interval=0.1,
    )
    with running(worker):
        seen = calls.wait_for(3)
        wait_until(lambda: all(status(conn, i) == "completed" for i in mine), what="q1/q2 jobs")
    assert seen == [(mine[0], "q1"), (mine[1], "q2"), (mine[2], "q1")]
    assert status(conn, skipped) == "pending"
    assert pgqueue.pending_queue_size(conn, queues=["q3"])["pending_count"] == 1


def test_a_handler_mapping_claims_only_its_names_and_the_recurring_job(conn):
    skipped = pgqueue.add_job_to_queue(conn, name="b", priority=0)
    pgqueue.add_recurring_job_to_queue(conn, name="a", interval={"hours": 1}, data={"from": "r"})
    direct = pgqueue.add_job_to_queue(conn, name="a", data={"from": "direct"}, priority=5)
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler={"a": lambda c, job: calls.add(job.data)}, poll_interval=0.1
    )
    with running(worker):
        # The recurring job (priority 1) runs first and enqueues "a" at priority 2.
        assert calls.wait_for(2) == [{"from": "r"}, {"from": "direct"}]
        wait_until(lambda: status(conn, direct) == "completed", what="the direct job")
    assert status(conn, skipped) == "pending"
    b_job = pgqueue.get_job(conn, skipped)
    assert b_job is not None
    assert b_job.attempts == 0


def test_a_named_worker_needs_a_handler_for_its_name():
    # Its jobs would otherwise fail one after the other with KeyError.
    with pytest.raises(pgqueue.ConfigurationError, match="'a'"):
        pgqueue.JobQueueWorker("dbname=unused", "a", handler={"b": lambda c, job: None})


# -- handlers that misuse the connection --------------------------------------------------


def test_a_handler_that_commits_fails_the_attempt_and_writes_nothing(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="commits", max_attempts=1)

    def handler(c, job):
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        c.commit()

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "failed", what="the attempt to fail")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.attempts == 1
    assert job.last_error is not None
    first_line = job.last_error.splitlines()[0]
    assert "commit" in first_line
    assert "handler" in first_line
    assert result_ids(conn) == []


def test_a_handler_that_rolls_back_fails_the_attempt(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="rolls-back", max_attempts=1)

    def handler(c, job):
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        c.rollback()

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "failed", what="the attempt to fail")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.last_error is not None
    assert "roll" in job.last_error.splitlines()[0]
    assert result_ids(conn) == []


def test_a_handler_that_sends_commit_as_sql_fails_the_attempt_and_the_worker_goes_on(conn):
    # psycopg cannot stop a raw COMMIT; the worker notices and records the attempt as failed.
    bad = pgqueue.add_job_to_queue(conn, name="raw-commit", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        if job.name == "raw-commit":
            c.execute("COMMIT")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, good) == "completed", what="the next job to complete")
        wait_until(lambda: status(conn, bad) == "failed", what="the attempt to be recorded")
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert job.attempts == 1
    assert job.last_error is not None
    assert "handler committed or rolled back" in job.last_error.splitlines()[0]


def test_a_handler_that_swallows_a_sql_error_fails_and_the_worker_goes_on(conn):
    create_results_table(conn)
    bad = pgqueue.add_job_to_queue(conn, name="swallow", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        if job.name == "swallow":
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("SELECT 1 / 0")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, good) == "completed", what="the next job to complete")
        assert status(conn, bad) == "failed"
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert job.last_error is not None
    first_line = job.last_error.splitlines()[0]
    assert "failed" in first_line
    assert "aborted" in first_line
    assert result_ids(conn) == [good]


def test_a_handler_that_uses_savepoints_keeps_its_other_writes(conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="savepoint")

    def handler(c, job):
        c.execute("INSERT INTO results (job_id, note) VALUES (%s, 'kept')", (job.id,))
        with pytest.raises(psycopg.errors.UniqueViolation), c.transaction():
            c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "completed", what="the job to complete")
    assert conn.execute("SELECT job_id, note FROM results").fetchall() == [(job_id, "kept")]


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


@pytest.mark.parametrize(
    ("error", "first_line"),
    [
        (Boom("NUL \x00 inside"), "Boom: NUL \\x00 inside"),
        (Boom("lone surrogate \udcff inside"), "Boom: lone surrogate \\udcff inside"),
        (Unprintable(), "Unprintable: <str() failed>"),
    ],
    ids=["nul", "surrogate", "unprintable"],
)
def test_an_error_text_postgres_cannot_store_is_still_recorded(conn, error, first_line):
    # Once, these errors could not be written, and the job was retried at once, forever.
    job_id = pgqueue.add_job_to_queue(conn, name="odd-error", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        if job.name == "odd-error":
            raise error

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, job_id) == "failed", timeout=10, what="the failure")
        wait_until(lambda: status(conn, good) == "completed", what="the next job")
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.attempts == 1
    assert job.last_error is not None
    assert job.last_error.splitlines()[0] == first_line


class Stop(BaseException):
    pass


@pytest.mark.parametrize("batch_size", [1, 3], ids=["single", "batch"])
@pytest.mark.parametrize(
    ("error", "first_line"),
    [
        (SystemExit(3), "SystemExit: 3"),
        (KeyboardInterrupt(), "KeyboardInterrupt: "),
        (Stop("here"), "Stop: here"),
    ],
    ids=["sys.exit", "keyboard-interrupt", "base-exception"],
)
def test_a_handler_raising_a_base_exception_fails_its_attempt_and_its_slot_goes_on(
    conn, error, first_line, batch_size
):
    # These used to end the slot's thread: the job counted as a crash later, the worker ran
    # with one slot fewer (none, here) and logged nothing.
    bad = pgqueue.add_job_to_queue(conn, name="exits", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        if job.name == "exits":
            raise error

    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler=handler, poll_interval=0.1, batch_size=batch_size
    )
    with running(worker):
        wait_until(lambda: status(conn, bad) == "failed", timeout=10, what="the failure")
        wait_until(lambda: status(conn, good) == "completed", what="the next job")
        later = pgqueue.add_job_to_queue(conn, name="fine")
        wait_until(lambda: status(conn, later) == "completed", what="a later job")
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert (job.attempts, job.crashes) == (1, 0)
    assert job.last_error is not None
    assert job.last_error.splitlines()[0] == first_line


@pytest.mark.parametrize("mode", [{}, {"batch_size": 3}, {"lease": 30}], ids=str)
@pytest.mark.parametrize(
    "result", ["NUL \x00 inside", "lone surrogate \udcff"], ids=["nul", "surrogate"]
)
def test_a_result_postgres_cannot_store_fails_the_attempt_once(conn, result, mode):
    # Its completion could not be sent: the transaction rolled back and the job ran again at
    # once, forever, holding up the jobs behind it.
    bad = pgqueue.add_job_to_queue(conn, name="odd-result", max_attempts=2)
    good = pgqueue.add_job_to_queue(conn, name="fine")
    calls = Calls()

    def handler(c, job):
        calls.add(job.id)
        return result if job.name == "odd-result" else "ok"

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1, **mode)
    with running(worker):
        wait_until(lambda: status(conn, good) == "completed", what="the next job")
        wait_until(lambda: pgqueue.get_job(conn, bad).last_error, what="the failed attempt")
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert (job.status, job.attempts, job.crashes) == ("pending", 1, 0)  # retried later
    assert job.last_error is not None
    assert job.last_error.startswith("InvalidJobError: the handler's result ")
    assert calls.items.count(bad) == 1
    assert pgqueue.get_job(conn, good).result == "ok"


def test_a_handler_that_closes_its_connection_is_named_in_the_log(conn, caplog):
    bad = pgqueue.add_job_to_queue(conn, name="closes", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        if job.name == "closes":
            c.close()

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with caplog.at_level(logging.ERROR, logger="pgqueue"), running(worker):
        wait_until(lambda: status(conn, good) == "completed", what="the next job")
        wait_until(lambda: status(conn, bad) == "failed", what="the crash to be counted")
    assert f"job {bad} (closes): its handler closed the job's connection" in caplog.text
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert job.crashes == 1


def test_a_commit_that_fails_counts_the_attempt_and_keeps_nothing(conn):
    # A deferred constraint fails at COMMIT, after the handler returned:
    # the server rolls everything back, and the worker records the failure apart.
    conn.execute(
        "CREATE TABLE parents (id int PRIMARY KEY);"
        " CREATE TABLE children (parent_id int REFERENCES parents DEFERRABLE INITIALLY DEFERRED)"
    )
    bad = pgqueue.add_job_to_queue(
        conn, name="orphan", max_attempts=2, retry={"delay": 0.05, "jitter": 0}
    )
    good = pgqueue.add_job_to_queue(conn, name="fine")

    def handler(c, job):
        if job.name == "orphan":
            c.execute("INSERT INTO children VALUES (42)")

    worker = pgqueue.JobQueueWorker(conn.info.dsn, handler=handler, poll_interval=0.1)
    with running(worker):
        wait_until(lambda: status(conn, bad) == "failed", what="the attempts to be recorded")
        wait_until(lambda: status(conn, good) == "completed", what="the next job to complete")
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert job.attempts == 2
    assert job.last_error is not None
    assert job.last_error.startswith("ForeignKeyViolation")
    assert scalar(conn, "SELECT count(*) FROM children") == 0
