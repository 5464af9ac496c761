"""Batch mode (``batch_size`` > 1) against a real database: one transaction per batch, a savepoint
per handler, exactly once under contention, a crash retries the whole batch, handlers that end the
transaction, a commit-time failure, recurring and repeating jobs, and max_concurrency."""

from __future__ import annotations

import collections
import logging
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
import psycopg.sql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_helpers import (
    DEADLINE,
    Calls,
    create_results_table,
    db_now,
    result_ids,
    running,
    scalar,
    status,
    wait_until,
)

import pgqueue
from pgqueue import _queries, _wire

#: Retried after a fixed 1.5 s: long enough to look at a failed attempt before the retry runs.
RETRY_LATER = {"backoff": "fixed", "delay": 1.5, "jitter": 0}


class Boom(Exception):
    pass


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None, f"job {job_id} is unknown"
    return job


def txid(c: psycopg.Connection[Any]) -> int:
    """The id of the transaction the handler runs in (the top-level one, also inside a savepoint)."""
    return int(scalar(c, "SELECT txid_current()"))


def batches(calls: list[tuple[int, int]]) -> list[list[int]]:
    """Handler calls recorded as (job id, txid), grouped by transaction in call order."""
    groups: dict[int, list[int]] = {}
    for job_id, tx in calls:
        groups.setdefault(tx, []).append(job_id)
    return list(groups.values())


def work_off(worker: pgqueue.JobQueueWorker) -> pgqueue.WorkerStats:
    """``worker.work_off()`` with a deadline: a batch that fails over and over fails the test."""
    stats: list[pgqueue.WorkerStats] = []
    thread = threading.Thread(target=lambda: stats.append(worker.work_off()), daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        worker.stop()
        thread.join(DEADLINE)
        raise AssertionError(f"work_off() still running after {DEADLINE:.0f} s")
    assert stats, "work_off() raised"
    return stats[0]


def insert_result(c: psycopg.Connection[Any], job: pgqueue.JobRecord, note: object = None) -> None:
    c.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, note))


# -- exactly once, one transaction per batch ----------------------------------------------


def test_batch_workers_run_every_job_exactly_once_under_contention(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    job_count = 3000
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "count"} for _ in range(job_count)])
    calls: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        with lock:
            calls[job.id] += 1
        c.execute(
            "INSERT INTO results (job_id, note) VALUES (%s, %s || ':' || txid_current())",
            (job.id, str(threading.get_ident())),
        )

    workers = [
        pgqueue.JobQueueWorker(
            dsn, handler=handler, parallel_count=3, batch_size=20, poll_interval=0.5
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM results") == job_count,
            timeout=60,
            interval=0.1,
            what="every job to be handled",
        )
        wait_until(
            lambda: (
                scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'")
                == job_count
            ),
            what="every job to be completed",
        )
    finally:
        for worker in workers:
            worker.stop()

    assert result_ids(conn) == sorted(ids)
    assert set(calls) == set(ids)
    assert max(calls.values()) == 1
    assert conn.execute(
        "SELECT status, attempts, last_error IS NULL, count(*) FROM pgqueue.jobs GROUP BY 1, 2, 3"
    ).fetchall() == [("completed", 1, True, job_count)]
    assert sum(w.stats.completed for w in workers) == job_count
    per_tx = [
        row[0]
        for row in conn.execute(
            "SELECT count(*) FROM results GROUP BY split_part(note, ':', 2) ORDER BY 1 DESC"
        )
    ]
    assert per_tx[0] == 20, "full batches ran in one transaction each"
    assert len(per_tx) <= job_count // 10, "most transactions ran a whole batch"
    threads = scalar(conn, "SELECT count(DISTINCT split_part(note, ':', 1)) FROM results")
    assert threads > 1, "the work was shared between slots"


def test_due_jobs_share_one_transaction_up_to_batch_size(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "tx", "data": {"i": i}} for i in range(13)])
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        dsn, handler=lambda c, job: calls.add((job.id, txid(c))), batch_size=10, poll_interval=0.1
    )
    stats = work_off(worker)

    assert [job_id for job_id, _ in calls.items] == ids, "run in queue order, each once"
    assert batches(calls.items) == [ids[:10], ids[10:]]
    assert stats.as_dict() == {"completed": 13, "retried": 0, "failed": 0}
    jobs = [get(conn, i) for i in ids]
    assert all((j.status, j.attempts) == (pgqueue.JobStatus.COMPLETED, 1) for j in jobs)
    # completed_at is now(): the start of the transaction that completed the job.
    assert len({j.completed_at for j in jobs[:10]}) == 1
    assert jobs[10].completed_at == jobs[12].completed_at != jobs[0].completed_at


# -- a failing handler ------------------------------------------------------------------


def test_a_failing_handler_rolls_back_only_its_own_writes_and_is_retried(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    a, b, c = pgqueue.add_jobs_to_queue(
        conn, [{"name": name, "retry": RETRY_LATER} for name in ("a", "b", "c")]
    )
    calls = Calls()

    def handler(conn_: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(conn_)))
        insert_result(conn_, job, job.attempts)
        if job.name == "b" and job.attempts == 1:
            raise Boom("b fails on attempt 1")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)
    stats = work_off(worker)

    assert batches(calls.items) == [[a, b, c]]
    assert stats.as_dict() == {"completed": 2, "retried": 1, "failed": 0}
    assert result_ids(conn) == [a, c]
    for job_id in (a, c):
        job = get(conn, job_id)
        assert (job.status, job.attempts, job.last_error) == ("completed", 1, None)
    failed = get(conn, b)
    assert (failed.status, failed.attempts, failed.completed_at) == ("pending", 1, None)
    assert failed.last_error is not None
    assert failed.last_error.startswith("Boom: b fails on attempt 1")
    assert "Traceback" in failed.last_error
    assert failed.scheduled_at - failed.updated_at == timedelta(seconds=1.5)
    assert failed.scheduled_at > db_now(conn)

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)):
        wait_until(lambda: status(conn, b) == "completed", what="b's second attempt")
    assert [job_id for job_id, _ in calls.items] == [a, b, c, b]
    assert get(conn, b).attempts == 2
    assert conn.execute("SELECT job_id, note FROM results ORDER BY job_id").fetchall() == [
        (a, "1"),
        (b, "2"),
        (c, "1"),
    ]


def test_handlers_that_send_nothing_share_a_savepoint_that_still_undoes_only_a_failures_writes(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A savepoint is taken again only after a handler talked to the server: a job after
    silent ones starts where the savepoint is, and its rollback undoes no earlier job's writes."""
    create_results_table(conn)
    plan = {
        "silent": (False, False),
        "writes": (True, False),
        "silent again": (False, False),
        "silent, fails": (False, True),
        "writes, fails": (True, True),
        "silent last": (False, False),
        "writes last": (True, False),
    }
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": name, "retry": RETRY_LATER} for name in plan])
    savepoints = Calls()
    run = _wire.ClaimTransaction.run

    def counted_run(self: Any, statements: Any) -> Any:
        savepoints.add(sum(s.sql == _queries.SAVEPOINT_WIRE for s in statements))
        return run(self, statements)

    monkeypatch.setattr(_wire.ClaimTransaction, "run", counted_run)

    def handler(conn_: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        writes, fails = plan[job.name]
        if writes:
            insert_result(conn_, job)
        if fails:
            raise Boom(job.name)

    stats = work_off(pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=9))

    assert stats.as_dict() == {"completed": 5, "retried": 2, "failed": 0}
    by_name = dict(zip(plan, ids, strict=True))
    assert result_ids(conn) == [by_name["writes"], by_name["writes last"]]
    assert {name: status(conn, job_id) for name, job_id in by_name.items()} == {
        name: "pending" if fails else "completed" for name, (_, fails) in plan.items()
    }
    # One savepoint taken again: before "silent again", the first job after one that talked
    # to the server (a rollback to a savepoint leaves it in place; "writes last" is last).
    assert sum(savepoints.items) == 1


#: What a batch handler may do: (writes a row, talks to the server otherwise, fails).
BEHAVIOURS: dict[str, tuple[bool, bool, bool]] = {
    "silent": (False, False, False),
    "writes": (True, False, False),
    "reads": (False, True, False),
    "nested block": (True, True, False),
    "silent, fails": (False, False, True),
    "writes, fails": (True, False, True),
    "reads, fails": (False, True, True),
}


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(plan=st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=12))
def test_any_mix_of_handlers_keeps_exactly_the_writes_of_the_jobs_that_completed(
    conn: psycopg.Connection[Any], dsn: str, plan: list[str]
) -> None:
    """Whatever each handler of a batch does, the rows that stay are those of the jobs that
    completed, and each job ran once: a savepoint kept across silent handlers undoes no
    completed job's writes."""
    conn.execute("CREATE TABLE IF NOT EXISTS results (job_id bigint PRIMARY KEY, note text)")
    conn.execute("TRUNCATE results, pgqueue.jobs")
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": name, "retry": RETRY_LATER} for name in plan])
    calls = collections.Counter[int]()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls[job.id] += 1
        writes, reads, fails = BEHAVIOURS[job.name]
        if reads:
            c.execute("SELECT count(*) FROM results").fetchone()
        if writes and reads:
            with c.transaction():
                insert_result(c, job)
        elif writes:
            insert_result(c, job)
        if fails:
            raise Boom(job.name)

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=len(plan), poll_interval=9)
    stats = work_off(worker)

    assert calls == dict.fromkeys(ids, 1)
    done = [job_id for job_id, name in zip(ids, plan, strict=True) if not BEHAVIOURS[name][2]]
    writers = [
        job_id
        for job_id, name in zip(ids, plan, strict=True)
        if BEHAVIOURS[name][0] and not BEHAVIOURS[name][2]
    ]
    assert result_ids(conn) == writers
    assert stats.as_dict() == {"completed": len(done), "retried": len(ids) - len(done), "failed": 0}
    assert [status(conn, job_id) for job_id in done] == ["completed"] * len(done)


# -- a crash ----------------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import pathlib
    import sys
    import time

    import pgqueue

    dsn, log = sys.argv[1], pathlib.Path(sys.argv[2])


    def handler(conn, job):
        conn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'killed')", (job.id,))
        with log.open("a") as f:
            f.write(f"{job.id}\\n")
        if job.data["i"] == 2:
            time.sleep(600)  # Blocks in Python, not in the server: the kill finds it here.


    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=5, poll_interval=0.1)
    worker.start()
    time.sleep(600)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_worker_killed_mid_batch_retries_the_whole_batch(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "crash", "data": {"i": i}} for i in range(5)])
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    log = tmp_path / "handled"

    def handled() -> list[int]:
        # Whole lines only: the last one may be half written.
        lines = (log.read_text() if log.exists() else "").split("\n")[:-1]
        return [int(line) for line in lines]

    proc = subprocess.Popen([sys.executable, str(script), dsn, str(log)])
    try:
        wait_until(lambda: len(handled()) == 3, what="the subprocess to reach the third job")
        assert handled() == ids[:3]
        # The whole batch is claimed by the one transaction, also the two jobs not yet run.
        wait_until(
            lambda: all(status(conn, i) == "running" for i in ids), what="the batch as running"
        )
        assert result_ids(conn) == [], "nothing is committed before the batch ends"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    wait_until(
        lambda: all(status(conn, i) == "pending" for i in ids), what="the batch to be pending again"
    )
    for job_id in ids:
        job = get(conn, job_id)
        assert (job.attempts, job.last_error, job.completed_at) == (0, None, None)
    assert result_ids(conn) == [], "the first two jobs' writes died with the batch"

    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add(job.id)
        insert_result(c, job, "survivor")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=5, poll_interval=0.1)):
        wait_until(
            lambda: all(status(conn, i) == "completed" for i in ids), what="the batch to complete"
        )
    assert calls.items == ids
    assert conn.execute("SELECT job_id, note FROM results ORDER BY job_id").fetchall() == [
        (i, "survivor") for i in ids
    ]
    assert all(get(conn, i).attempts == 1 for i in ids)


# -- handlers that end the transaction ------------------------------------------------------


def test_conn_commit_in_a_batch_fails_only_that_attempt(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    a, bad, c = pgqueue.add_jobs_to_queue(
        conn,
        [{"name": "fine"}, {"name": "commits", "max_attempts": 1}, {"name": "fine"}],
    )
    calls = Calls()

    def handler(conn_: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(conn_)))
        insert_result(conn_, job)
        if job.name == "commits":
            conn_.commit()

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)
    stats = work_off(worker)

    assert batches(calls.items) == [[a, bad, c]]
    assert stats.as_dict() == {"completed": 2, "retried": 0, "failed": 1}
    assert result_ids(conn) == [a, c]
    assert (status(conn, a), status(conn, c)) == ("completed", "completed")
    job = get(conn, bad)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None
    assert "conn.commit()" in job.last_error.splitlines()[0]


def test_raw_commit_in_a_batch_commits_the_jobs_before_it_and_frees_the_rest(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    a, failing, committer, d, e = pgqueue.add_jobs_to_queue(
        conn,
        [
            {"name": "fine"},
            {"name": "fails", "max_attempts": 1},
            {"name": "raw-commit", "max_attempts": 1},
            {"name": "fine"},
            {"name": "fine"},
        ],
    )
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(c)))
        insert_result(c, job)
        if job.name == "fails":
            raise Boom("fails before the raw COMMIT")
        if job.name == "raw-commit":
            c.execute("COMMIT")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=5, poll_interval=0.05)
    stats = work_off(worker)

    # The COMMIT ended the batch: the two jobs not yet run were let go, then claimed again.
    assert batches(calls.items) == [[a, failing, committer], [d, e]]
    assert stats.as_dict() == {"completed": 3, "retried": 0, "failed": 2}
    # The raw COMMIT committed a's write, and the handler's own write before it.
    assert result_ids(conn) == [a, committer, d, e]
    for job_id in (a, d, e):
        job = get(conn, job_id)
        assert (job.status, job.attempts, job.last_error) == ("completed", 1, None)
    raw = get(conn, committer)
    assert (raw.status, raw.attempts) == ("failed", 1)
    assert raw.last_error is not None
    assert "committed or rolled back" in raw.last_error.splitlines()[0]
    # The failure before the COMMIT is recorded too, not forgotten and run again.
    job = get(conn, failing)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None
    assert job.last_error.startswith("Boom: fails before the raw COMMIT")


def test_raw_rollback_in_a_batch_runs_the_jobs_before_it_again(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_results_table(conn)
    a, b, rollbacker, d = pgqueue.add_jobs_to_queue(
        conn,
        [
            {"name": "fine"},
            {"name": "fine"},
            {"name": "raw-rollback", "max_attempts": 1},
            {"name": "fine"},
        ],
    )
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(c)))
        insert_result(c, job)
        if job.name == "raw-rollback":
            c.execute("ROLLBACK")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=5, poll_interval=0.05)
    stats = work_off(worker)

    # The ROLLBACK undid a's and b's work: they are not completed without it, but run again.
    assert batches(calls.items) == [[a, b, rollbacker], [a, b, d]]
    assert stats.as_dict() == {"completed": 3, "retried": 0, "failed": 1}
    assert result_ids(conn) == [a, b, d]
    for job_id in (a, b, d):
        job = get(conn, job_id)
        assert (job.status, job.attempts, job.last_error) == ("completed", 1, None)
    job = get(conn, rollbacker)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error is not None
    assert "committed or rolled back" in job.last_error.splitlines()[0]


@pytest.mark.parametrize("dropper", [0, 2], ids=["before others", "last"])
def test_a_batch_whose_prepared_statements_were_dropped_runs_again_once(
    conn: psycopg.Connection[Any], dsn: str, dropper: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler that has pgqueue's prepared statements dropped (psycopg's DEALLOCATE ALL, or its
    # own): the next statement sent by name fails, between two jobs or at the commit. The batch
    # runs again, its attempts not counted, and that connection sends those statements unnamed.
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "job", "data": i} for i in range(3)])
    calls = Calls()
    dropped: list[int] = []

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(c)))
        insert_result(c, job)
        if job.data == dropper and not dropped:
            dropped.append(job.id)
            names = c.execute(
                "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgqueue%'",
                prepare=False,
            ).fetchall()
            for (name,) in names:
                c.execute(psycopg.sql.SQL("DEALLOCATE {}").format(psycopg.sql.Identifier(name)))

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=5, poll_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="pgqueue.worker"):
        stats = work_off(worker)

    ran = batches(calls.items)
    assert ran == [ids[: dropper + 1], ids]
    assert stats.as_dict() == {"completed": 3, "retried": 0, "failed": 0}
    assert result_ids(conn) == ids
    assert [get(conn, job_id).attempts for job_id in ids] == [1, 1, 1]
    warned = [r.getMessage().split(":")[0] for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [f"jobs {', '.join(map(str, ids))} run again"]


# -- a failure at COMMIT --------------------------------------------------------------------


def test_a_deferred_constraint_violation_fails_every_job_of_the_batch(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    conn.execute("CREATE TABLE parents (id integer PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE children (job_id bigint PRIMARY KEY,"
        " parent integer REFERENCES parents DEFERRABLE INITIALLY DEFERRED)"
    )
    conn.execute("INSERT INTO parents VALUES (1)")
    a, orphan, c = pgqueue.add_jobs_to_queue(
        conn,
        [
            {"name": "child", "data": {"parent": 1}, "retry": RETRY_LATER},
            {"name": "child", "data": {"parent": 2}, "max_attempts": 1},
            {"name": "child", "data": {"parent": 1}, "retry": RETRY_LATER},
        ],
    )
    calls = Calls()

    def handler(conn_: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, txid(conn_)))
        conn_.execute("INSERT INTO children VALUES (%s, %s)", (job.id, job.data["parent"]))

    def children() -> list[int]:
        return [row[0] for row in conn.execute("SELECT job_id FROM children ORDER BY job_id")]

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)
    stats = work_off(worker)

    assert batches(calls.items) == [[a, orphan, c]]
    assert stats.as_dict() == {"completed": 0, "retried": 2, "failed": 1}
    assert children() == []
    for job_id, state in ((a, "pending"), (orphan, "failed"), (c, "pending")):
        job = get(conn, job_id)
        assert (job.status, job.attempts, job.completed_at) == (state, 1, None)
        assert job.last_error is not None
        assert job.last_error.startswith("ForeignKeyViolation: ")

    with running(pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)):
        wait_until(
            lambda: status(conn, a) == status(conn, c) == "completed", what="the retried jobs"
        )
    assert [job_id for job_id, _ in calls.items] == [a, orphan, c, a, c]
    assert batches(calls.items)[1] == [a, c]
    assert children() == [a, c]
    assert (get(conn, a).attempts, get(conn, c).attempts) == (2, 2)
    assert status(conn, orphan) == "failed"


# -- recurring and repeating jobs -------------------------------------------------------------


def test_recurring_and_repeating_jobs_work_in_a_batch(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    recurring = pgqueue.add_recurring_job_to_queue(conn, name="tick", interval={"seconds": 1})
    first_at = get(conn, recurring).scheduled_at
    repeating = pgqueue.add_job_to_queue(
        conn, name="minutely", schedule="* * * * *", scheduled_at=timedelta(0)
    )
    plain = pgqueue.add_job_to_queue(conn, name="plain")
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add((job.id, job.name, txid(c)))

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)
    work_off(worker)

    # The recurring job, the repeating one and the plain one ran in one batch. A row's
    # created_at is now() of the transaction that enqueued it: the batch's start time.
    first = calls.items[:2]
    assert [(job_id, name) for job_id, name, _ in first] == [
        (repeating, "minutely"),
        (plain, "plain"),
    ]
    batch_tx = first[0][2]
    assert first[1][2] == batch_tx
    batch_started = get(conn, plain).completed_at  # now() in the batch's transaction
    assert batch_started is not None
    ticks = [(job_id, tx) for job_id, name, tx in calls.items if name == "tick"]
    assert ticks, "the recurring job fired its target"
    # That target was enqueued by the batch's transaction, and ran in a later one.
    assert get(conn, ticks[0][0]).created_at == batch_started
    assert ticks[0][1] != batch_tx
    rec = get(conn, recurring)
    assert (rec.status, rec.attempts) == ("pending", 0)
    assert rec.scheduled_at >= first_at + timedelta(seconds=1)

    # The repeating job's next run is a new job, enqueued by the batch's transaction, at the
    # first minute after the job finished: a minute later than the next one after the batch's
    # start when a minute began while it ran (the following occurrence after done, as in
    # Reaction). It may have run already: when the batch ran just before a minute began, it
    # came due within work_off.
    assert status(conn, repeating) == "completed"
    [next_run] = [
        job
        for job in pgqueue.list_jobs(conn, name="minutely")
        if job.id != repeating and job.created_at == batch_started
    ]
    assert batch_started < next_run.scheduled_at <= batch_started + timedelta(minutes=2)
    assert (next_run.scheduled_at.second, next_run.scheduled_at.microsecond) == (0, 0)
    assert next_run.schedule == {"kind": "cron", "text": "* * * * *"}

    # The recurring job keeps firing, one row rescheduling itself.
    with running(pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=10, poll_interval=0.05)):
        wait_until(
            lambda: sum(1 for _, name, _ in list(calls.items) if name == "tick") >= len(ticks) + 1,
            what="the recurring job to fire again",
        )
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'pgqueue.recurring'") == 1
    assert get(conn, recurring).scheduled_at > rec.scheduled_at


# -- max_concurrency ---------------------------------------------------------------------------


def test_max_concurrency_limits_how_many_of_a_queues_jobs_one_batch_takes(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    pgqueue.configure_queue(conn, "limited", max_concurrency=2)
    jobs: list[dict[str, Any]] = []
    for i in range(10):
        jobs.append({"queue": "limited", "name": "limited", "data": {"i": i}})
        jobs.append({"queue": "free", "name": "free", "data": {"i": i}})
    ids = pgqueue.add_jobs_to_queue(conn, jobs)
    limited = set(ids[::2])
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        dsn, handler=lambda c, job: calls.add((job.id, txid(c))), batch_size=10, poll_interval=0.05
    )
    stats = work_off(worker)

    assert stats.completed == 20
    assert sorted(job_id for job_id, _ in calls.items) == ids, "each job ran once"
    per_batch = [sum(1 for i in batch if i in limited) for batch in batches(calls.items)]
    assert max(per_batch) == 2, "no transaction ran more than 2 limited jobs, and one ran 2"
    first = batches(calls.items)[0]
    assert len(first) == 10, "the limit does not keep the batch from filling with other jobs"
    assert all(status(conn, i) == "completed" for i in ids)


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 51, True, "5", 2.0, None])
def test_batch_size_must_be_an_integer_from_1_to_50(batch_size: Any) -> None:
    with pytest.raises(pgqueue.ConfigurationError, match="batch_size"):
        pgqueue.JobQueueWorker("dbname=unused", handler=lambda c, job: None, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 50])
def test_batch_size_bounds_are_accepted(batch_size: int) -> None:
    worker = pgqueue.JobQueueWorker(
        "dbname=unused", handler=lambda c, job: None, batch_size=batch_size
    )
    assert worker.batch_size == batch_size
