"""Each seed system's retry policy, end to end: the delay pgqueue.fail computes in SQL, the
attempt limits, the total time limits, the queue's default policy, and retrying a failed job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from worker_helpers import db_now

import pgqueue
from pgqueue.retry import REDWOOD_MAX_ATTEMPTS, REDWOOD_RETRY, gadget_retry, reaction_retry


def fail_once(
    conn: psycopg.Connection[Any], job_id: int, error: str = "boom"
) -> tuple[str, int, float]:
    """Record one failed attempt as a worker does; return (status, attempts, seconds until
    scheduled_at), measured from the now() that pgqueue.fail used."""
    with conn.transaction():
        row = conn.execute(
            "SELECT status, attempts, extract(epoch FROM scheduled_at - now())::float8"
            " FROM pgqueue.fail(%s, %s)",
            (job_id, error),
        ).fetchone()
    assert row is not None, f"job {job_id} is not pending"
    return row[0], row[1], row[2]


def delays(conn: psycopg.Connection[Any], job_id: int, failures: int) -> list[float]:
    """Fail the job ``failures`` times; the delays of the attempts that were rescheduled."""
    out = []
    for n in range(1, failures + 1):
        state, attempts, delay = fail_once(conn, job_id, f"boom {n}")
        assert (state, attempts) == ("pending", n)
        out.append(round(delay, 3))
    return out


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    return job


def enqueue(
    conn: psycopg.Connection[Any], policy: tuple[int, dict[str, Any] | None], **kw: Any
) -> int:
    max_attempts, retry = policy
    return pgqueue.add_job_to_queue(
        conn, name="flaky", max_attempts=max_attempts, retry=retry, **kw
    )


# -- Reaction -------------------------------------------------------------------------------


def test_reaction_exponential_waits_double_without_jitter_then_the_job_fails(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = enqueue(conn, reaction_retry({"retries": 5, "wait": 60000, "backoff": "exponential"}))
    assert get(conn, job_id).max_attempts == 6
    assert delays(conn, job_id, 5) == [60, 120, 240, 480, 960]
    before = get(conn, job_id).scheduled_at
    assert fail_once(conn, job_id, "last straw")[:2] == ("failed", 6)
    job = get(conn, job_id)
    assert (job.status, job.attempts, job.last_error) == ("failed", 6, "last straw")
    assert job.scheduled_at == before, "a job that failed for good is not rescheduled"


def test_reaction_constant_backoff_waits_five_minutes_by_default(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = enqueue(conn, reaction_retry({"retries": 2}))
    assert delays(conn, job_id, 2) == [300, 300]
    assert fail_once(conn, job_id)[:2] == ("failed", 3)


def test_until_stops_retrying_when_the_next_run_would_be_later(
    conn: psycopg.Connection[Any],
) -> None:
    until = db_now(conn) + timedelta(seconds=90)
    policy = {"backoff": "fixed", "delay": 60, "jitter": 0, "until": until}
    job_id = pgqueue.add_job_to_queue(conn, retry=policy)
    assert delays(conn, job_id, 1) == [60]
    job_id = pgqueue.add_job_to_queue(conn, retry={**policy, "delay": 120})
    assert fail_once(conn, job_id)[:2] == ("failed", 1), "now + 120 s is past `until`"


def test_reaction_until_survives_enqueue_and_stops_retrying(conn: psycopg.Connection[Any]) -> None:
    now = db_now(conn)
    job_id = enqueue(conn, reaction_retry({"wait": 60000, "until": now + timedelta(seconds=90)}))
    assert delays(conn, job_id, 1) == [60]
    job_id = enqueue(conn, reaction_retry({"wait": 60000, "until": now + timedelta(seconds=30)}))
    assert fail_once(conn, job_id)[:2] == ("failed", 1)


def test_reaction_without_retry_runs_once_then_fails(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = enqueue(conn, reaction_retry(None))

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        raise RuntimeError(f"no luck on attempt {job.attempts}")

    stats = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1).work_off()
    assert stats.as_dict() == {"completed": 0, "retried": 0, "failed": 1}
    job = get(conn, job_id)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 1, 1)
    assert job.last_error is not None
    assert job.last_error.startswith("RuntimeError: no luck on attempt 1")


# -- Gadget ---------------------------------------------------------------------------------


def test_gadget_default_is_six_retries_doubling_from_one_second(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = enqueue(conn, gadget_retry(None))
    assert get(conn, job_id).max_attempts == 7
    assert delays(conn, job_id, 6) == [1, 2, 4, 8, 16, 32]
    assert fail_once(conn, job_id)[:2] == ("failed", 7)


def test_gadget_max_interval_caps_the_delay(conn: psycopg.Connection[Any]) -> None:
    job_id = enqueue(conn, gadget_retry({"retry_count": 10, "max_interval": 5000}))
    assert delays(conn, job_id, 5) == [1, 2, 4, 5, 5]


def test_gadget_randomize_interval_spreads_each_delay_over_d_to_2d(
    conn: psycopg.Connection[Any],
) -> None:
    spec = {"retryCount": 3, "initialInterval": 10_000, "randomizeInterval": True}
    ids = [enqueue(conn, gadget_retry(spec)) for _ in range(8)]
    first = [fail_once(conn, job_id)[2] for job_id in ids]
    second = [fail_once(conn, job_id)[2] for job_id in ids]
    assert all(10 <= d < 20 for d in first), first
    assert all(20 <= d < 40 for d in second), second
    assert len({round(d, 3) for d in first}) > 1, "the delays are randomised"


def test_gadget_stops_retrying_seven_days_after_the_job_was_created(
    conn: psycopg.Connection[Any],
) -> None:
    old = enqueue(conn, gadget_retry(None))
    nearly = enqueue(conn, gadget_retry(None))
    conn.execute(
        "UPDATE pgqueue.jobs SET created_at = now() - interval '8 days' WHERE id = %s", (old,)
    )
    conn.execute(
        "UPDATE pgqueue.jobs SET created_at = now() - interval '7 days' + interval '1 minute'"
        " WHERE id = %s",
        (nearly,),
    )
    assert fail_once(conn, old)[:2] == ("failed", 1), "attempts were left, but time ran out"
    assert get(conn, old).last_error == "boom"
    # One minute left: a retry in 1 s fits.
    assert delays(conn, nearly, 1) == [1]
    # One second left: the next retry, in 2 s, would come too late.
    conn.execute(
        "UPDATE pgqueue.jobs SET created_at = created_at - interval '59 seconds' WHERE id = %s",
        (nearly,),
    )
    assert fail_once(conn, nearly)[:2] == ("failed", 2)


# -- Redwood --------------------------------------------------------------------------------


def test_redwood_waits_attempts_to_the_fourth_seconds(conn: psycopg.Connection[Any]) -> None:
    job_id = pgqueue.add_job_to_queue(
        conn, name="flaky", max_attempts=REDWOOD_MAX_ATTEMPTS, retry=REDWOOD_RETRY
    )
    assert delays(conn, job_id, 4) == [1, 16, 81, 256]
    conn.execute("UPDATE pgqueue.jobs SET attempts = 19 WHERE id = %s", (job_id,))
    # After attempt 20: 20^4 s = 160000 s (Redwood's 160000000 ms).
    assert fail_once(conn, job_id)[1:] == (20, 160_000)
    conn.execute("UPDATE pgqueue.jobs SET attempts = 23 WHERE id = %s", (job_id,))
    assert fail_once(conn, job_id)[:2] == ("failed", 24)


# -- queue defaults -------------------------------------------------------------------------


def test_a_queue_retry_policy_applies_to_its_jobs_and_a_jobs_own_keys_win(
    conn: psycopg.Connection[Any],
) -> None:
    pgqueue.configure_queue(conn, "fixed7", retry={"backoff": "fixed", "delay": 7})
    plain = pgqueue.add_job_to_queue(conn, name="flaky", queue="fixed7")
    own = pgqueue.add_job_to_queue(
        conn, name="flaky", queue="fixed7", retry={"delay": 30, "jitter": 0}
    )
    elsewhere = pgqueue.add_job_to_queue(conn, name="flaky", queue="other")

    # The queue's policy, with the default jitter of 10 %.
    for _ in range(3):
        assert 7 <= fail_once(conn, plain)[2] < 7.7 + 1e-6
    # The job's delay and jitter, the queue's fixed backoff (not the default exponential).
    assert delays(conn, own, 3) == [30, 30, 30]
    # Another queue: the default policy, 10 s then 20 s (plus up to 10 %).
    first, second = fail_once(conn, elsewhere)[2], fail_once(conn, elsewhere)[2]
    assert 10 <= first < 11 + 1e-6
    assert 20 <= second < 22 + 1e-6

    # Changing the queue's policy changes the next delay of jobs without their own.
    pgqueue.configure_queue(conn, "fixed7", retry={"backoff": "fixed", "delay": 2, "jitter": 0})
    assert fail_once(conn, plain)[2] == pytest.approx(2)


# -- failing for good, and back -------------------------------------------------------------


def test_a_job_out_of_attempts_fails_keeps_its_error_and_retry_job_gives_it_one_more(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = pgqueue.add_job_to_queue(
        conn, name="flaky", max_attempts=2, retry={"backoff": "fixed", "delay": 0, "jitter": 0}
    )

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> str:
        if job.attempts < 3:
            raise ValueError(f"boom {job.attempts}")
        return "third time lucky"

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)
    assert worker.work_off().as_dict() == {"completed": 0, "retried": 1, "failed": 1}
    job = get(conn, job_id)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 2, 2)
    assert job.last_error is not None
    assert job.last_error.startswith("ValueError: boom 2")
    assert pgqueue.list_jobs(conn, status="failed")[0].id == job_id

    assert pgqueue.retry_job(conn, job_id) is True
    job = get(conn, job_id)
    assert (job.status, job.attempts, job.max_attempts) == ("pending", 2, 3)
    assert job.scheduled_at <= db_now(conn)

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)
    assert worker.work_off().as_dict() == {"completed": 1, "retried": 0, "failed": 0}
    job = get(conn, job_id)
    assert (job.status, job.attempts, job.result) == ("completed", 3, "third time lucky")
    assert pgqueue.retry_job(conn, job_id) is False, "a completed job is not retried"
    assert pgqueue.retry_job(conn, 10**12) is False
