"""Jobs that repeat on a cron or text schedule, recurring jobs on a schedule, and work_off."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from worker_helpers import Calls, db_now, running, scalar, wait_until

import pgqueue
from pgqueue.errors import InvalidJobError


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None, f"job {job_id} is unknown"
    return job


def chain(conn: psycopg.Connection[Any], name: str) -> list[pgqueue.JobRecord]:
    """Every job of ``name``, oldest first."""
    return sorted(pgqueue.list_jobs(conn, name=name, limit=1000), key=lambda job: job.id)


def make_due(conn: psycopg.Connection[Any], job_id: int) -> None:
    """Pretend the job's time has come (a repeating job first runs up to a minute ahead)."""
    conn.execute("UPDATE pgqueue.jobs SET scheduled_at = now() WHERE id = %s", (job_id,))


def next_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_a_cron_job_first_runs_at_the_next_occurrence_and_repeats_as_a_new_job(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    before = db_now(conn)
    first = pgqueue.add_job_to_queue(
        conn,
        {"schedule": "* * * * *"},
        name="minutely",
        data={"shop_id": 3},
        queue="cron",
        priority=4,
        max_attempts=2,
        retry={"delay": 5},
    )
    job = get(conn, first)
    assert job.schedule == {"kind": "cron", "text": "* * * * *"}
    assert job.scheduled_at > before, "a repeating job does not run at once"
    assert job.scheduled_at in (next_minute(before), next_minute(db_now(conn)))
    assert pgqueue.pending_queue_size(conn)["scheduled_count"] == 1

    make_due(conn, first)
    calls = Calls()
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: calls.add(j.id), poll_interval=0.1)
    started_at = db_now(conn)
    assert worker.work_off().as_dict() == {"completed": 1, "retried": 0, "failed": 0}
    done_at = db_now(conn)
    assert calls.items == [first]
    assert get(conn, first).status == "completed"

    [_, again] = chain(conn, "minutely")
    assert again.id != first
    assert (again.status, again.attempts) == ("pending", 0)
    assert (again.queue, again.data, again.priority) == ("cron", {"shop_id": 3}, 4)
    assert (again.max_attempts, again.retry, again.schedule) == (2, {"delay": 5}, job.schedule)
    # The first occurrence after the run, which happened between these two readings.
    assert again.scheduled_at in (next_minute(started_at), next_minute(done_at))


def test_a_text_schedule_repeats_every_second_with_a_worker_running(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    first = pgqueue.add_job_to_queue(conn, {"schedule": "every 1 second"}, name="beat")
    assert get(conn, first).scheduled_at.microsecond == 0
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, poll_interval=0.05)
    with running(worker):
        wait_until(
            lambda: sum(job.status == "completed" for job in chain(conn, "beat")) >= 3,
            timeout=15,
            what="three runs of the beat",
        )
    jobs = chain(conn, "beat")
    completed = [job for job in jobs if job.status == "completed"]
    assert [job.status for job in jobs] == ["completed"] * len(completed) + ["pending"]
    times = [job.scheduled_at for job in jobs]
    assert all(t.microsecond == 0 for t in times), "occurrences fall on whole seconds"
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(times))
    for job in completed:
        assert job.completed_at is not None
        assert job.completed_at >= job.scheduled_at, "no run before its time"


def test_a_repeating_job_that_fails_for_good_is_still_repeated(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    flaky = pgqueue.add_job_to_queue(
        conn,
        {"schedule": "* * * * *"},
        name="flaky",
        max_attempts=2,
        retry={"backoff": "fixed", "delay": 0, "jitter": 0},
    )
    make_due(conn, flaky)
    started_at = db_now(conn)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        raise RuntimeError(f"attempt {job.attempts}")

    stats = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1).work_off()
    assert stats.as_dict() == {"completed": 0, "retried": 1, "failed": 1}
    old, again = chain(conn, "flaky")
    assert old.id == flaky
    assert (old.status, old.attempts) == ("failed", 2), "the retry did not repeat the job"
    assert old.last_error is not None
    assert old.last_error.startswith("RuntimeError: attempt 2")
    assert (again.status, again.attempts, again.schedule) == ("pending", 0, old.schedule)
    assert again.scheduled_at in (next_minute(started_at), next_minute(db_now(conn)))


def test_cancel_jobs_stops_a_chain(conn: psycopg.Connection[Any], dsn: str) -> None:
    first = pgqueue.add_job_to_queue(conn, {"schedule": "* * * * *"}, name="chained")
    make_due(conn, first)
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, poll_interval=0.1)
    assert worker.work_off().completed == 1
    [_, again] = chain(conn, "chained")
    assert pgqueue.cancel_jobs(conn, "chained") == 1
    make_due(conn, again.id)
    assert worker.work_off().completed == 1, "the cancelled job did not run"
    assert [job.status for job in chain(conn, "chained")] == ["completed", "cancelled"]


@pytest.mark.parametrize("mode", [{}, {"batch_size": 3}, {"lease": 30}], ids=str)
@pytest.mark.parametrize("outcome", ["completes", "fails"])
def test_cancelling_a_repeating_job_while_it_runs_ends_its_chain(
    conn: psycopg.Connection[Any], dsn: str, mode: dict[str, Any], outcome: str
) -> None:
    # A running job is not interrupted; it used to enqueue its next copy all the same.
    first = pgqueue.add_job_to_queue(
        conn,
        {"schedule": "* * * * *"},
        name="chained",
        max_attempts=3,
        retry={"backoff": "fixed", "delay": 0, "jitter": 0},
    )
    make_due(conn, first)
    started, release = threading.Event(), threading.Event()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        started.set()
        assert release.wait(10), "the test did not release the handler"
        if outcome == "fails":
            raise RuntimeError("after the cancel")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1, **mode)
    with running(worker):
        assert started.wait(10), "the job did not start"
        assert pgqueue.cancel_jobs(conn, "chained") == 0  # running: not cancelled, not stopped
        assert pgqueue.cancel_job(conn, first) is False
        release.set()
        wait_until(
            lambda: get(conn, first).status not in ("pending", "running"), what="the run to end"
        )
    (job,) = chain(conn, "chained")  # no next copy
    expected = ("completed", 1) if outcome == "completes" else ("cancelled", 1)
    assert (job.status, job.attempts) == expected  # a failed attempt is not retried either
    assert scalar(conn, "SELECT count(*) FROM pgqueue.cancel_requests") == 0


# -- recurring jobs on a schedule -------------------------------------------------------


def _recurring_rows(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, status, scheduled_at, data FROM pgqueue.jobs"
        " WHERE name = 'pgqueue.recurring' AND data ->> 'name' = %s ORDER BY id",
        (name,),
    ).fetchall()


@pytest.mark.parametrize("text", ["every 1 second", "every second"])
def test_a_recurring_schedule_fires_its_target_every_second(
    conn: psycopg.Connection[Any], dsn: str, text: str
) -> None:
    start = db_now(conn)
    rec_id = pgqueue.add_recurring_job_to_queue(conn, name="tick", schedule=text, data={"n": 1})
    [(_, _, first_at, data)] = _recurring_rows(conn, "tick")
    assert data == {"name": "tick", "schedule": {"kind": "text", "text": text}, "data": {"n": 1}}
    assert first_at > start, "a scheduled recurring job first runs at the next occurrence"
    assert first_at.microsecond == 0

    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        dsn, handler={"tick": lambda c, job: calls.add(job.data)}, poll_interval=0.05
    )
    with running(worker):
        wait_until(lambda: len(calls) >= 3, timeout=15, what="three ticks")
    stop = db_now(conn)
    assert calls.items[0] == {"n": 1}
    rows = conn.execute(
        "SELECT created_at FROM pgqueue.jobs WHERE name = 'tick' ORDER BY id"
    ).fetchall()
    created = [row[0] for row in rows]
    # One tick per occurrence: each in a second of its own, none before the first occurrence,
    # and no more than the seconds that passed.
    assert len({t.replace(microsecond=0) for t in created}) == len(created)
    assert min(created) >= first_at
    assert 3 <= len(created) <= (stop - start).total_seconds() + 1
    [(row_id, state, _, _)] = _recurring_rows(conn, "tick")
    assert (row_id, state) == (rec_id, "pending")


def test_upserting_a_recurring_job_with_a_schedule_keeps_one_row(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    rec_id = pgqueue.add_recurring_job_to_queue(conn, name="report", interval={"hours": 1})
    assert pgqueue.add_recurring_job_to_queue(conn, name="report", schedule="every 1 second") == (
        rec_id
    )
    [(row_id, _, _, data)] = _recurring_rows(conn, "report")
    assert row_id == rec_id
    assert data == {
        "name": "report",
        "schedule": {"kind": "text", "text": "every 1 second"},
        "data": {},
    }

    # Still due at once (an upsert keeps the next run); after it, the schedule sets the pace.
    worker = pgqueue.JobQueueWorker(dsn, handler={"report": lambda c, j: None}, poll_interval=0.1)
    ran_at = db_now(conn)
    assert worker.work_off().completed >= 1, (
        "the target ran (the recurring row itself is not counted)"
    )
    [(_, state, next_at, _)] = _recurring_rows(conn, "report")
    assert state == "pending"
    assert ran_at < next_at <= db_now(conn) + timedelta(seconds=1), "not an hour later"
    assert next_at.microsecond == 0

    # And back to an interval: still one row, with no schedule left in it.
    pgqueue.add_recurring_job_to_queue(conn, name="report", interval={"minutes": 5})
    [(row_id, _, _, data)] = _recurring_rows(conn, "report")
    assert row_id == rec_id
    assert data == {"name": "report", "interval": {"minutes": 5}, "data": {}}


def test_recurring_needs_exactly_one_of_interval_and_schedule(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(InvalidJobError, match="exactly one of interval and schedule"):
        pgqueue.add_recurring_job_to_queue(
            conn, name="x", interval={"hours": 1}, schedule="every day"
        )
    with pytest.raises(InvalidJobError, match="exactly one of interval and schedule"):
        pgqueue.add_recurring_job_to_queue(conn, name="x")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("every 5 bananas", "'bananas'"),
        ("every fortnight", "'fortnight'"),
        ("at noonish", "'noonish'"),
        ("every day at 25:00", "25:00"),
        ("61 * * * *", "61"),
    ],
)
def test_a_bad_schedule_is_rejected_naming_the_bad_word(
    conn: psycopg.Connection[Any], text: str, word: str
) -> None:
    with pytest.raises(InvalidJobError, match=word):
        pgqueue.add_recurring_job_to_queue(conn, name="x", schedule=text)
    with pytest.raises(InvalidJobError, match=word):
        pgqueue.add_job_to_queue(conn, {"schedule": text}, name="x")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


# -- work_off -------------------------------------------------------------------------------


def test_work_off_runs_what_is_due_counts_outcomes_and_leaves_the_future_alone(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    ok = [pgqueue.add_job_to_queue(conn, name="ok", data=i) for i in range(3)]
    retried = pgqueue.add_job_to_queue(
        conn, name="bad", max_attempts=3, retry={"backoff": "fixed", "delay": 60}
    )
    failed = pgqueue.add_job_to_queue(conn, name="bad", max_attempts=1)
    later = pgqueue.add_job_to_queue(conn, name="ok", scheduled_at=timedelta(hours=1))
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        calls.add(job.id)
        if job.name == "bad":
            raise ValueError("nope")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, parallel_count=2, poll_interval=0.1)
    stats = worker.work_off()
    assert stats is worker.stats
    assert stats.as_dict() == {"completed": 3, "retried": 1, "failed": 1}
    assert sorted(calls.items) == sorted([*ok, retried, failed])
    assert all(get(conn, i).status == "completed" for i in ok)
    job = get(conn, retried)
    assert (job.status, job.attempts) == ("pending", 1)
    assert job.scheduled_at > db_now(conn) + timedelta(seconds=50)
    assert get(conn, failed).status == "failed"
    assert (get(conn, later).status, get(conn, later).attempts) == ("pending", 0)
    assert not worker.is_started

    # Nothing is due any more: a second call runs nothing and keeps the counts.
    assert worker.work_off().as_dict() == {"completed": 3, "retried": 1, "failed": 1}
    assert len(calls) == 5


def test_retrying_a_repeating_job_that_failed_for_good_does_not_fork_its_chain(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    first = pgqueue.add_job_to_queue(conn, {"schedule": "* * * * *"}, name="forky", max_attempts=1)
    make_due(conn, first)
    attempts = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        attempts.add(job.id)
        if len(attempts) == 1:
            raise RuntimeError("first run fails")

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)
    assert worker.work_off().as_dict() == {"completed": 0, "retried": 0, "failed": 1}
    [_, successor] = chain(conn, "forky")

    # The failure already enqueued the next run: the retried run must not enqueue another.
    assert pgqueue.retry_job(conn, first) is True
    assert worker.work_off().as_dict() == {"completed": 1, "retried": 0, "failed": 1}
    assert attempts.items == [first, first]
    jobs = chain(conn, "forky")
    assert [(job.id, job.status) for job in jobs] == [
        (first, "completed"),
        (successor.id, "pending"),
    ]


def test_retrying_a_cancelled_repeating_job_resumes_its_chain(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    first = pgqueue.add_job_to_queue(conn, {"schedule": "* * * * *"}, name="paused")
    assert pgqueue.cancel_job(conn, first) is True
    assert pgqueue.retry_job(conn, first) is True
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, poll_interval=0.1)
    assert worker.work_off().completed == 1
    assert [job.status for job in chain(conn, "paused")] == ["completed", "pending"]
