"""Recurring jobs: one row per name that enqueues its target and reschedules itself by calendar interval."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from worker_helpers import Calls, db_now, running, scalar, wait_until

import pgqueue

RECURRING = "pgqueue.recurring"


def _recurring_rows(conn, name):
    return conn.execute(
        "SELECT id, status, priority, scheduled_at, data FROM pgqueue.jobs"
        " WHERE name = %s AND data ->> 'name' = %s ORDER BY id",
        (RECURRING, name),
    ).fetchall()


def _scheduled_at(conn, job_id):
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    return job.scheduled_at


def test_add_recurring_creates_one_row_that_is_due_at_once(conn):
    before = db_now(conn)
    rec_id = pgqueue.add_recurring_job_to_queue(
        conn, name="report", interval={"hours": 1}, priority=3, data={"x": 1}
    )
    [(row_id, state, priority, scheduled_at, data)] = _recurring_rows(conn, "report")
    assert row_id == rec_id
    assert (state, priority) == ("pending", 3)
    assert before <= scheduled_at <= db_now(conn)
    assert data == {"name": "report", "interval": {"hours": 1}, "data": {"x": 1}}
    assert pgqueue.pending_queue_size(conn) == {
        "pending_count": 1,
        "scheduled_count": 0,
        "running_count": 0,
    }


def test_a_run_enqueues_the_target_and_moves_the_row_by_the_interval(conn):
    rec_id = pgqueue.add_recurring_job_to_queue(
        conn, name="report", interval={"hours": 1}, priority=3, data={"x": 1}
    )
    first = _scheduled_at(conn, rec_id)
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler={"report": lambda c, job: calls.add(job)}, poll_interval=0.1
    )
    with running(worker):
        [job] = calls.wait_for(1)
        wait_until(lambda: _scheduled_at(conn, rec_id) != first, what="the row to move")
    assert job.name == "report"
    assert job.data == {"x": 1}
    assert job.priority == 4
    assert job.queue == "default"
    assert _scheduled_at(conn, rec_id) == first + timedelta(hours=1)
    rec = pgqueue.get_job(conn, rec_id)
    assert rec is not None
    assert (rec.status, rec.attempts) == ("pending", 0)
    assert len(_recurring_rows(conn, "report")) == 1
    assert len(calls) == 1


def test_each_run_enqueues_again(conn):
    rec_id = pgqueue.add_recurring_job_to_queue(
        conn, name="tick", interval={"seconds": 1}, data={"n": "t"}, queue="clock"
    )
    first = _scheduled_at(conn, rec_id)
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler=lambda c, job: calls.add(job), poll_interval=0.05
    )
    with running(worker):
        jobs = calls.wait_for(2)
    assert [(j.name, j.data, j.priority, j.queue) for j in jobs[:2]] == [
        ("tick", {"n": "t"}, 2, "clock"),
        ("tick", {"n": "t"}, 2, "clock"),
    ]
    # The second run could not start before the first run's scheduled time + interval.
    assert jobs[1].created_at >= first + timedelta(seconds=1)
    assert len(_recurring_rows(conn, "tick")) == 1


def test_a_row_far_in_the_past_is_rescheduled_from_now(conn):
    rec_id = pgqueue.add_recurring_job_to_queue(conn, name="late", interval={"hours": 1})
    conn.execute(
        "UPDATE pgqueue.jobs SET scheduled_at = now() - interval '30 days' WHERE id = %s",
        (rec_id,),
    )
    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        conn.info.dsn, handler={"late": lambda c, job: calls.add(job.id)}, poll_interval=0.1
    )
    with running(worker):
        calls.wait_for(1)
        wait_until(lambda: _scheduled_at(conn, rec_id) > db_now(conn), what="the reschedule")
    now = db_now(conn)
    nxt = _scheduled_at(conn, rec_id)
    # now() + interval, not "30 days ago + 1 hour" nor a catch-up run per missed hour.
    assert now + timedelta(minutes=59) < nxt <= now + timedelta(hours=1)
    assert len(calls) == 1
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'late'") == 1


def test_calling_again_updates_the_row_in_place(conn):
    rec_id = pgqueue.add_recurring_job_to_queue(
        conn, name="report", interval={"hours": 1}, priority=3, data={"v": 1}
    )
    conn.execute(
        "UPDATE pgqueue.jobs SET scheduled_at = now() + interval '10 minutes' WHERE id = %s",
        (rec_id,),
    )
    scheduled = _scheduled_at(conn, rec_id)
    again = pgqueue.add_recurring_job_to_queue(
        conn, name="report", interval={"days": 2}, priority=7, data={"v": 2}
    )
    assert again == rec_id
    [(row_id, state, priority, scheduled_at, data)] = _recurring_rows(conn, "report")
    assert (row_id, state, priority) == (rec_id, "pending", 7)
    assert scheduled_at == scheduled
    assert data == {"name": "report", "interval": {"days": 2}, "data": {"v": 2}}
    # Another name is another row.
    other = pgqueue.add_recurring_job_to_queue(conn, name="other", interval={"hours": 1})
    assert other != rec_id
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 2


def test_concurrent_calls_for_one_name_leave_one_row(conn, dsn):
    threads = 10
    barrier = threading.Barrier(threads)
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def add(i):
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                barrier.wait(timeout=30)
                rec_id = pgqueue.add_recurring_job_to_queue(
                    own, name="race", interval={"minutes": 5}, priority=i, data={"i": i}
                )
            with lock:
                ids.append(rec_id)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=add, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert errors == []
    assert len(ids) == threads
    assert len(set(ids)) == 1
    [(row_id, state, priority, _, data)] = _recurring_rows(conn, "race")
    assert (row_id, state) == (ids[0], "pending")
    # The last writer wins, whole: priority and data come from the same call.
    assert data["data"] == {"i": priority}


def _run_recurring_at(conn, when, interval):
    """Run pgqueue.run_recurring for a recurring row scheduled at ``when`` (in the future, so
    not rescheduled from now), inside a transaction that is rolled back; return the next run."""
    rec_id = pgqueue.add_recurring_job_to_queue(conn, name="calendar", interval=interval)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("UPDATE pgqueue.jobs SET scheduled_at = %s WHERE id = %s", (when, rec_id))
            conn.execute(
                "SELECT pgqueue.run_recurring(j) FROM pgqueue.jobs j WHERE j.id = %s", (rec_id,)
            )
            return _scheduled_at(conn, rec_id)
    finally:
        conn.execute("DELETE FROM pgqueue.jobs")


@pytest.mark.parametrize(
    ("when", "interval", "expected"),
    [
        (
            datetime(2125, 1, 31, 12, tzinfo=UTC),
            {"months": 1},
            datetime(2125, 2, 28, 12, tzinfo=UTC),
        ),
        (
            datetime(2128, 1, 31, 12, tzinfo=UTC),
            {"months": 1},
            datetime(2128, 2, 29, 12, tzinfo=UTC),
        ),
        (datetime(2128, 2, 29, 0, tzinfo=UTC), {"years": 1}, datetime(2129, 2, 28, 0, tzinfo=UTC)),
        (
            datetime(2125, 3, 31, 0, tzinfo=UTC),
            {"months": 1, "days": 1},
            datetime(2125, 5, 1, tzinfo=UTC),
        ),
        (
            datetime(2125, 1, 1, tzinfo=UTC),
            {"weeks": 1, "hours": 2},
            datetime(2125, 1, 8, 2, tzinfo=UTC),
        ),
        (
            datetime(2125, 1, 1, tzinfo=UTC),
            {"seconds": 1.5},
            datetime(2125, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
        ),
    ],
)
def test_calendar_arithmetic(conn, when, interval, expected):
    assert _run_recurring_at(conn, when, interval) == expected


def test_calendar_arithmetic_is_in_utc_whatever_the_session_time_zone(conn):
    # 31 Jan 23:00 UTC is already 1 Feb in Tokyo: a month later must still be end of February.
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    when = datetime(2125, 1, 31, 23, tzinfo=UTC)
    assert _run_recurring_at(conn, when, {"months": 1}) == datetime(2125, 2, 28, 23, tzinfo=UTC)


def test_interval_from_json(conn):
    assert scalar(
        conn,
        "SELECT pgqueue.interval_from_json(%s::jsonb) = interval '1 year 2 months 10 days"
        " 04:05:06.5'",
        (
            '{"years": 1, "months": 2, "weeks": 1, "days": 3, "hours": 4, "minutes": 5, "seconds": 6.5}',
        ),
    )


@pytest.mark.parametrize(
    "interval",
    [{}, {"fortnights": 1}, {"hours": -1}, {"hours": 0}, {"days": 1.5}, {"hours": "1"}],
)
def test_bad_intervals_raise_and_write_nothing(conn, interval):
    with pytest.raises(pgqueue.InvalidJobError):
        pgqueue.add_recurring_job_to_queue(conn, name="bad", interval=interval)
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_a_bad_interval_leaves_an_existing_row_alone(conn):
    rec_id = pgqueue.add_recurring_job_to_queue(conn, name="keep", interval={"hours": 1})
    before = pgqueue.get_job(conn, rec_id)
    with pytest.raises(pgqueue.InvalidJobError):
        pgqueue.add_recurring_job_to_queue(conn, name="keep", interval={"fortnights": 1})
    assert pgqueue.get_job(conn, rec_id) == before
