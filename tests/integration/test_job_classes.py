"""Redwood-style job classes and @task functions against a real database: what perform_later
stores, where it enqueues (transactions included), and what a worker does with them (hooks in
the job's transaction, Redwood's polynomial backoff)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from worker_helpers import Calls, create_results_table, db_now, running, scalar, wait_until

import pgqueue
from pgqueue import Job, job_handlers, task
from pgqueue.retry import REDWOOD_RETRY

#: Hook calls as Python saw them (a rolled-back attempt's rows vanish from the database).
CALLS = Calls()


class SendWelcomeEmail(Job):
    def perform(self, user_id: int, address: str) -> str:
        return f"welcome {user_id} at {address}"


class EmailJob(Job):
    queue = "email"
    priority = "high"
    max_attempts = 3

    def perform(self, *args: Any) -> None:
        pass


class Hooked(Job):
    """Records every hook in hook_calls through self.conn (the job's transaction) and in CALLS.

    perform fails while the attempt number is at most ``fail_until``."""

    def _record(self, hook: str) -> None:
        assert self.conn is not None
        assert self.job is not None
        self.conn.execute(
            "INSERT INTO hook_calls (job_id, attempt, hook) VALUES (%s, %s, %s)",
            (self.job.id, self.job.attempts, hook),
        )
        CALLS.add((self.job.id, self.job.attempts, hook))

    def before_perform(self, fail_until: int) -> None:
        self._record("before_perform")

    def perform(self, fail_until: int) -> str:
        self._record("perform")
        assert self.job is not None
        if self.job.attempts <= fail_until:
            raise RuntimeError(f"attempt {self.job.attempts} fails")
        return f"done on attempt {self.job.attempts}"

    def after_success(self, result: Any, fail_until: int) -> None:
        self._record("after_success")

    def after_failure(self, error: Exception, fail_until: int) -> None:
        self._record("after_failure")

    def after_perform(self, fail_until: int) -> None:
        self._record("after_perform")


@task(queue="notes")
def write_note(job_key: int, note: str, *, conn: psycopg.Connection[Any]) -> str:
    conn.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job_key, note))
    return note.upper()


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    CALLS.items.clear()
    monkeypatch.setattr(Job, "sql", None)
    for cls in (SendWelcomeEmail, EmailJob, Hooked):
        if "sql" in vars(cls):
            monkeypatch.delattr(cls, "sql")


def create_hook_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE hook_calls (seq bigserial PRIMARY KEY, job_id bigint, attempt int, hook text)"
    )


def hook_rows(conn: psycopg.Connection[Any], job_id: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT attempt, hook FROM hook_calls WHERE job_id = %s ORDER BY seq", (job_id,)
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    return job


# -- what perform_later stores ----------------------------------------------------------


def test_perform_later_stores_redwoods_defaults_and_the_args(conn):
    before = db_now(conn)
    job_id = SendWelcomeEmail().set(sql=conn).perform_later(335, "a@example.com")
    job = get(conn, job_id)
    assert job.name == f"{__name__}:SendWelcomeEmail"
    assert job.data == {"args": [335, "a@example.com"]}
    assert (job.queue, job.priority, job.max_attempts) == ("default", 50, 24)
    assert job.retry == REDWOOD_RETRY
    assert job.status is pgqueue.JobStatus.PENDING
    assert job.attempts == 0
    assert before <= job.scheduled_at <= db_now(conn)


def test_set_options_are_stored(conn):
    at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    first = EmailJob().set(sql=conn).perform_later({"k": [1, 2]})
    second = (
        EmailJob.set(sql=conn, queue="bulk", priority=0, max_attempts=9, retry={"backoff": "fixed"})
        .set(wait_until=at)
        .perform_later()
    )
    third = SendWelcomeEmail.set(sql=conn, wait=90).perform_later(1, "x")
    job = get(conn, first)
    assert (job.queue, job.priority, job.max_attempts) == ("email", -10, 3)
    assert job.data == {"args": [{"k": [1, 2]}]}
    job = get(conn, second)
    assert (job.queue, job.priority, job.max_attempts, job.retry) == (
        "bulk",
        0,
        9,
        {"backoff": "fixed"},
    )
    assert job.scheduled_at == at
    job = get(conn, third)
    # wait counts from the database's now(), the same clock as created_at.
    assert job.scheduled_at - job.created_at == timedelta(seconds=90)


def test_unserialisable_args_write_nothing(conn):
    with pytest.raises(pgqueue.InvalidJobError, match="not JSON-serialisable"):
        SendWelcomeEmail().set(sql=conn).perform_later(1, {"when": datetime.now(UTC)})
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


# -- where it goes ------------------------------------------------------------------------


def test_set_sql_joins_the_callers_transaction(conn, dsn):
    with psycopg.connect(dsn) as tx:
        rolled_back = SendWelcomeEmail().set(sql=tx).perform_later(1, "gone")
        assert pgqueue.get_job(tx, rolled_back) is not None
        # Not visible to others before the commit.
        assert pgqueue.get_job(conn, rolled_back) is None
        tx.rollback()
        kept = write_note.set(sql=tx).perform_later(1, "kept")
        tx.commit()
    assert pgqueue.get_job(conn, rolled_back) is None
    assert get(conn, kept).name == write_note.name


def test_config_with_a_dsn_or_a_pool_commits_at_once(conn, dsn):
    Job.config(sql=dsn)
    by_dsn = SendWelcomeEmail.perform_later(1, "dsn")
    assert get(conn, by_dsn).data == {"args": [1, "dsn"]}
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        EmailJob.config(sql=pool)
        by_pool = EmailJob().perform_later("pool")
        by_task = write_note.perform_later(2, "global dsn")
    assert get(conn, by_pool).queue == "email"
    assert get(conn, by_task).queue == "notes"
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 3


# -- running them ---------------------------------------------------------------------------


def test_a_worker_runs_job_classes_and_tasks_by_their_names(conn, dsn):
    create_results_table(conn)
    Job.config(sql=conn)
    welcome = SendWelcomeEmail.perform_later(7, "u@example.com")
    note = write_note.perform_later(41, "written with the job")
    worker = pgqueue.JobQueueWorker(
        dsn, handler=job_handlers(SendWelcomeEmail, write_note), poll_interval=0.1
    )
    with running(worker):
        wait_until(
            lambda: all(get(conn, i).status == "completed" for i in (welcome, note)),
            what="both jobs completed",
        )
    assert get(conn, welcome).result == "welcome 7 at u@example.com"
    assert get(conn, note).result == "WRITTEN WITH THE JOB"
    assert conn.execute("SELECT job_id, note FROM results").fetchall() == [
        (41, "written with the job")
    ]


def test_a_task_that_fails_after_writing_leaves_nothing(conn, dsn):
    create_results_table(conn)
    conn.execute("INSERT INTO results (job_id, note) VALUES (5, 'already there')")
    # The INSERT conflicts with the existing row: the attempt fails and is rolled back.
    job_id = write_note.set(sql=conn, max_attempts=1).perform_later(5, "duplicate")
    with running(pgqueue.JobQueueWorker(dsn, handler=job_handlers(write_note), poll_interval=0.1)):
        wait_until(lambda: get(conn, job_id).status == "failed", what="the job to fail")
    assert "UniqueViolation" in (get(conn, job_id).last_error or "")
    assert conn.execute("SELECT note FROM results").fetchall() == [("already there",)]


def test_hooks_run_in_the_jobs_transaction_and_a_failed_attempt_leaves_none(conn, dsn):
    create_hook_table(conn)
    job_id = Hooked().set(sql=conn).perform_later(1)
    worker = pgqueue.JobQueueWorker(dsn, handler=job_handlers(Hooked), poll_interval=0.1)
    with running(worker):
        wait_until(lambda: get(conn, job_id).status == "completed", what="the retried job")
    # Python saw both attempts, the failed one with after_failure...
    assert CALLS.items == [
        (job_id, 1, "before_perform"),
        (job_id, 1, "perform"),
        (job_id, 1, "after_failure"),
        (job_id, 1, "after_perform"),
        (job_id, 2, "before_perform"),
        (job_id, 2, "perform"),
        (job_id, 2, "after_success"),
        (job_id, 2, "after_perform"),
    ]
    # ...but only the successful attempt's writes were committed, with its completion.
    assert hook_rows(conn, job_id) == [
        (2, "before_perform"),
        (2, "perform"),
        (2, "after_success"),
        (2, "after_perform"),
    ]
    job = get(conn, job_id)
    assert (job.attempts, job.result) == (2, "done on attempt 2")
    assert "RuntimeError: attempt 1 fails" in (job.last_error or "")


def test_failures_back_off_like_redwood_one_then_sixteen_seconds(conn, dsn):
    create_hook_table(conn)
    job_id = Hooked.set(sql=conn).perform_later(99)
    worker = pgqueue.JobQueueWorker(dsn, handler=job_handlers(Hooked), poll_interval=0.1)

    def after_attempt(n: int) -> pgqueue.JobRecord | None:
        job = get(conn, job_id)
        return job if job.attempts == n else None

    with running(worker):
        first = wait_until(lambda: after_attempt(1), what="the first failure")
        second = wait_until(lambda: after_attempt(2), what="the second, a second later")
    assert first is not None
    assert second is not None
    # 1 s x attempts^4, no jitter, from the failing transaction's now() (= updated_at).
    assert first.scheduled_at - first.updated_at == timedelta(seconds=1)
    assert second.scheduled_at - second.updated_at == timedelta(seconds=16)
    assert second.updated_at - first.updated_at >= timedelta(seconds=1)
    assert second.status is pgqueue.JobStatus.PENDING
    assert second.scheduled_at - db_now(conn) > timedelta(seconds=10)
    assert [call[2] for call in CALLS.items if call[1] == 1] == [
        "before_perform",
        "perform",
        "after_failure",
        "after_perform",
    ]
    assert hook_rows(conn, job_id) == []


def test_a_job_out_of_attempts_fails_for_good_after_after_failure(conn, dsn):
    create_hook_table(conn)
    job_id = Hooked().set(sql=conn, max_attempts=1).perform_later(5)
    with running(pgqueue.JobQueueWorker(dsn, handler=job_handlers(Hooked), poll_interval=0.1)):
        wait_until(lambda: get(conn, job_id).status == "failed", what="the job to fail")
    assert (job_id, 1, "after_failure") in CALLS.items
    assert get(conn, job_id).attempts == 1


def test_perform_now_needs_no_database():
    job = SendWelcomeEmail()
    assert job.perform_now(3, "now@example.com") == "welcome 3 at now@example.com"
    assert job.conn is None
    assert job.job is None
