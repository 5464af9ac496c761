"""Enqueue, bulk enqueue and get_job against a real database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import pgqueue
from pgqueue import InvalidJobError, JobStatus
from pgqueue._db import translate_errors

INTRANS = psycopg.pq.TransactionStatus.INTRANS


def db_now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    return row[0]


def job_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert row is not None
    return row[0]


def test_an_empty_job_is_immediate_with_the_highest_default_priority(conn):
    before = db_now(conn)
    job_id = pgqueue.add_job_to_queue(conn, {})
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.id == job_id
    assert (job.name, job.data, job.priority, job.queue) == ("", {}, 1, "default")
    assert job.status is JobStatus.PENDING
    assert (job.attempts, job.max_attempts) == (0, 5)
    assert before <= job.scheduled_at <= db_now(conn)
    assert job.last_error is None
    assert job.completed_at is None


def test_compas_dict_and_keywords(conn):
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    job_id = pgqueue.add_job_to_queue(
        conn,
        {"name": "jobWithPayload", "data": {"my": "payload"}, "priority": 10},
        priority=3,
        queue="email",
        scheduled_at=when,
        max_attempts=2,
        retry={"backoff": "fixed", "delay": 30},
    )
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.name == "jobWithPayload"
    assert job.data == {"my": "payload"}
    assert job.priority == 3
    assert job.queue == "email"
    assert job.scheduled_at == when
    assert job.max_attempts == 2
    assert job.retry == {"backoff": "fixed", "delay": 30}


def test_a_timedelta_schedules_relative_to_the_database_clock(conn):
    before = db_now(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="later", scheduled_at=timedelta(hours=2))
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert before + timedelta(hours=2) <= job.scheduled_at <= db_now(conn) + timedelta(hours=2)


@pytest.mark.parametrize(
    "data",
    [
        {"unicode": "zażółć gęślą jaźń ✓ 🎉", "quote": "'\"; DROP TABLE x; --"},
        {"deep": {"a": [1, 2, {"b": [None, True, False]}]}},
        {"big": 2**80, "neg": -(2**70), "float": 0.1, "tiny": 1.25e-300, "small": 5e-324},
        ["a", "list", 1],
        "just a string",
        42,
    ],
)
def test_data_round_trips(conn, data):
    job_id = pgqueue.add_job_to_queue(conn, name="rt", data=data)
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.data == data


def test_names_and_queues_with_hostile_text_round_trip(conn):
    name = 'x\'); DELETE FROM pgqueue.jobs; -- "ü" ' + "n" * 5000
    queue = "q;--'\"\\ 名前"
    job_id = pgqueue.add_job_to_queue(conn, name=name, queue=queue)
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.name, job.queue) == (name, queue)
    assert job_count(conn) == 1


@pytest.mark.parametrize(
    "job",
    [
        {"data": {"x": float("nan")}},
        {"data": {"x": "nul\x00"}},
        {"data": {"x": object()}},
        {"priority": "urgent"},
        {"priority": 1.5},
        {"scheduled_at": datetime(2030, 1, 1)},
        {"max_attempts": 0},
        {"retry": {"wait": 5}},
        {"colour": "blue"},
    ],
)
def test_bad_input_raises_and_writes_nothing(conn, job):
    with pytest.raises(InvalidJobError):
        pgqueue.add_job_to_queue(conn, job)
    assert job_count(conn) == 0


def test_a_value_out_of_range_is_refused_before_sql(conn):
    with pytest.raises(InvalidJobError, match="out of range"):
        pgqueue.add_job_to_queue(conn, scheduled_at=timedelta(days=999_999_999))
    assert job_count(conn) == 0


def test_a_value_the_server_refuses_is_an_invalid_job_error(conn):
    with pytest.raises(InvalidJobError, match="database refused"), translate_errors():
        conn.execute("SELECT 'x'::int")


def test_enqueue_joins_the_callers_transaction(dsn):
    with psycopg.connect(dsn) as conn:
        job_id = pgqueue.add_job_to_queue(conn, name="tx")
        with psycopg.connect(dsn) as other:
            assert pgqueue.get_job(other, job_id) is None
        conn.rollback()
        assert pgqueue.get_job(conn, job_id) is None
        kept = pgqueue.add_job_to_queue(conn, name="tx")
        conn.commit()
    with psycopg.connect(dsn) as other:
        assert pgqueue.get_job(other, kept) is not None
        assert pgqueue.get_job(other, job_id) is None


def test_enqueue_through_a_pool_commits(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
        job_id = pgqueue.add_job_to_queue(pool, name="pooled")
        ids = pgqueue.add_jobs_to_queue(pool, [{"name": "p1"}, {"name": "p2"}])
    with psycopg.connect(dsn) as conn:
        assert pgqueue.get_job(conn, job_id) is not None
        assert [j.name for j in (pgqueue.get_job(conn, i) for i in ids) if j] == ["p1", "p2"]


def test_a_wrong_sql_target_is_a_clear_error():
    with pytest.raises(pgqueue.ConfigurationError, match="psycopg Connection"):
        pgqueue.add_job_to_queue("postgresql://x", name="a")  # type: ignore[arg-type]


def test_bulk_enqueue_returns_ids_in_input_order(conn):
    jobs = [
        {"name": f"bulk-{i}", "data": {"i": i}, "priority": i % 7, "queue": ("a", "b")[i % 2]}
        for i in range(20_000)
    ]
    jobs[5]["scheduled_at"] = timedelta(minutes=5)
    jobs[6]["retry"] = {"backoff": "linear"}
    ids = pgqueue.add_jobs_to_queue(conn, jobs)
    assert len(ids) == 20_000
    assert ids == sorted(ids)
    rows = conn.execute(
        "SELECT id, name, data, priority, queue FROM pgqueue.jobs ORDER BY id"
    ).fetchall()
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        (j["name"], j["data"], j["priority"], j["queue"]) for j in jobs
    ]
    assert [r[0] for r in rows] == ids
    later = pgqueue.get_job(conn, ids[5])
    assert later is not None
    assert later.scheduled_at > db_now(conn) + timedelta(minutes=4)
    linear = pgqueue.get_job(conn, ids[6])
    assert linear is not None
    assert linear.retry == {"backoff": "linear"}


def test_bulk_enqueue_is_all_or_nothing(conn):
    jobs = [{"name": "ok"}] * 10 + [{"name": "bad", "data": {"x": float("inf")}}]
    with pytest.raises(InvalidJobError, match="job 10"):
        pgqueue.add_jobs_to_queue(conn, jobs)
    assert job_count(conn) == 0
    assert pgqueue.add_jobs_to_queue(conn, []) == []


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "in a transaction"])
def test_a_bad_job_found_while_the_copy_streams_writes_nothing_and_keeps_the_callers_transaction(
    dsn, autocommit
):
    """Past a thousand jobs, the jobs are checked while the COPY streams: a bad one late in
    the list abandons the COPY, and in a transaction only the COPY's savepoint is undone."""
    jobs = [{"name": "ok", "data": {"i": i}} for i in range(3_500)]
    jobs[3_210] = {"name": "bad", "data": {"x": float("nan")}}
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        (before,) = pgqueue.add_jobs_to_queue(conn, [{"name": "before"}])
        with pytest.raises(InvalidJobError, match=r"^job 3210: "):
            pgqueue.add_jobs_to_queue(conn, jobs)
        expected = psycopg.pq.TransactionStatus.IDLE if autocommit else INTRANS
        assert conn.info.transaction_status == expected
        (after,) = pgqueue.add_jobs_to_queue(conn, iter([{"name": "after"}]))
        conn.commit()
        rows = conn.execute("SELECT id, name FROM pgqueue.jobs ORDER BY id").fetchall()
    assert rows == [(before, "before"), (after, "after")]


@pytest.mark.parametrize("count", [3, 2_500], ids=["checked first", "checked while streaming"])
def test_bulk_enqueue_stores_awkward_values_as_a_single_enqueue_does(conn, count):
    """The bulk path writes COPY's text format itself: tabs, newlines, backslashes, quotes and
    non-ASCII text in names, queues and data, time zones and floats come back unchanged."""
    odd = 'tab\there, new\nline, cr\rback\\slash \\N "quoted" é ✓ \\u0041'
    zone = timezone(timedelta(hours=-3, minutes=-30))
    varied = [
        {"name": odd, "queue": "q\t\\n", "data": {"s": odd, odd: [odd, 1.5, None]}},
        {
            "name": "timed",
            "scheduled_at": datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=zone),
            "timeout": 0.125,
            "max_attempts": 2,
            "priority": -7,
            "retry": {"backoff": "fixed", "delay": 0.5},
        },
        {"name": "repeats", "schedule": "every 5 minutes", "data": odd},
    ]
    jobs = [varied[i % len(varied)] for i in range(count)]
    ids = pgqueue.add_jobs_to_queue(conn, jobs)
    for job_id, job in zip(ids[:3], jobs[:3], strict=True):
        with conn.transaction():
            single_id = pgqueue.add_job_to_queue(conn, job)
        bulk, single = pgqueue.get_job(conn, job_id), pgqueue.get_job(conn, single_id)
        assert bulk is not None
        assert single is not None
        fields = ("queue", "name", "data", "priority", "max_attempts", "retry", "schedule")
        assert [getattr(bulk, f) for f in fields] == [getattr(single, f) for f in fields]
        assert bulk.timeout == single.timeout
        if "scheduled_at" in job:
            assert bulk.scheduled_at == single.scheduled_at == job["scheduled_at"]
    assert pgqueue.get_job(conn, ids[0]).name == odd  # type: ignore[union-attr]


def test_bulk_enqueue_sends_one_notification_per_queue(dsn, conn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_jobs")
        jobs = [{"name": "n", "queue": ("a", "b")[i % 2]} for i in range(5_000)]
        jobs.append({"name": "future", "queue": "c", "scheduled_at": timedelta(hours=1)})
        pgqueue.add_jobs_to_queue(conn, jobs)
        received = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            received.extend(n.payload for n in listener.notifies(timeout=0.2))
    assert sorted(received) == ["a", "b"]


def test_get_job_of_an_unknown_id_is_none(conn):
    assert pgqueue.get_job(conn, 123456789) is None
    with pytest.raises(InvalidJobError):
        pgqueue.get_job(conn, "1")  # type: ignore[arg-type]


def test_an_unmigrated_database_says_to_run_migrate(empty_dsn):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(pgqueue.SchemaNotMigratedError, match="pgqueue migrate"):
            pgqueue.add_job_to_queue(conn, name="a")
        with pytest.raises(pgqueue.SchemaNotMigratedError, match="pgqueue migrate"):
            pgqueue.pending_queue_size(conn)


def test_bulk_and_single_enqueue_store_the_same_defaults(conn):
    single = pgqueue.get_job(conn, pgqueue.add_job_to_queue(conn, {}))
    (bulk_id,) = pgqueue.add_jobs_to_queue(conn, [{}])
    bulk = pgqueue.get_job(conn, bulk_id)
    assert single is not None
    assert bulk is not None
    fields = ("queue", "name", "data", "priority", "status", "attempts", "max_attempts", "retry")
    assert [getattr(bulk, f) for f in fields] == [getattr(single, f) for f in fields]
    assert bulk.scheduled_at <= db_now(conn)


def test_bulk_enqueue_joins_the_callers_transaction(dsn):
    with psycopg.connect(dsn) as conn:
        ids = pgqueue.add_jobs_to_queue(conn, [{"name": "a"}, {"name": "b"}])
        conn.rollback()
        assert all(pgqueue.get_job(conn, i) is None for i in ids)
