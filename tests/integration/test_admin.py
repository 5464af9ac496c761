"""Operating on jobs after they are enqueued: cancel, retry, clear, list, clean-up rules and the
built-in clean-up job, and queue settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from worker_helpers import Calls, listening, running, scalar, status, wait_until

import pgqueue
from pgqueue.errors import InvalidJobError


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None, f"job {job_id} is unknown"
    return job


def finish(conn: psycopg.Connection[Any], job_id: int, state: str, days_ago: float = 0) -> None:
    """Give a job a final status, as if it had finished ``days_ago`` days ago."""
    conn.execute(
        "UPDATE pgqueue.jobs SET status = %s, attempts = 1,"
        " completed_at = CASE WHEN %s = 'completed' THEN now() END,"
        " updated_at = now() - make_interval(secs => %s * 86400) WHERE id = %s",
        (state, state, days_ago, job_id),
    )


class Blocker:
    """A handler that holds its job (and the job's transaction) until released."""

    def __init__(self) -> None:
        self.started = Calls()
        self.release = threading.Event()

    def __call__(self, conn: psycopg.Connection[Any], job: pgqueue.JobRecord) -> str:
        self.started.add(job.id)
        assert self.release.wait(30), "the test never released the job"
        return "done"


@pytest.fixture
def blocked(dsn: str) -> Iterator[Blocker]:
    """A started worker that runs only jobs named "slow", each blocked until released."""
    blocker = Blocker()
    worker = pgqueue.JobQueueWorker(dsn, "slow", handler=blocker, poll_interval=0.05)
    with running(worker):
        try:
            yield blocker
        finally:
            blocker.release.set()


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_jobs_by_name_data_containment_and_queue(conn: psycopg.Connection[Any]) -> None:
    a = pgqueue.add_job_to_queue(conn, name="sitemap", data={"shop_id": 1, "x": 2})
    b = pgqueue.add_job_to_queue(conn, name="sitemap", data={"shop_id": 2})
    c = pgqueue.add_job_to_queue(conn, name="sitemap", data={"shop_id": 1}, queue="q2")
    d = pgqueue.add_job_to_queue(conn, name="other", data={"shop_id": 1})
    done = pgqueue.add_job_to_queue(conn, name="sitemap", data={"shop_id": 1})
    finish(conn, done, "completed")

    assert pgqueue.cancel_jobs(conn, "sitemap", {"shop_id": 1}) == 2
    assert [status(conn, i) for i in (a, b, c, d, done)] == [
        "cancelled",
        "pending",
        "cancelled",
        "pending",
        "completed",
    ]
    assert pgqueue.cancel_jobs(conn, "sitemap", {"shop_id": 1}) == 0, "nothing pending is left"

    e = pgqueue.add_job_to_queue(conn, name="other", queue="q2")
    assert pgqueue.cancel_jobs(conn, queue="q2") == 1
    assert status(conn, e) == "cancelled"
    assert pgqueue.cancel_jobs(conn, "other") == 1
    assert status(conn, d) == "cancelled"
    assert pgqueue.cancel_jobs(conn, data={"shop_id": 2}) == 1
    assert status(conn, b) == "cancelled"
    assert get(conn, b).updated_at > get(conn, b).created_at


def test_cancel_jobs_leaves_a_running_job_alone_and_it_completes(
    conn: psycopg.Connection[Any], blocked: Blocker
) -> None:
    runner = pgqueue.add_job_to_queue(conn, name="slow", data={"shop_id": 1})
    assert blocked.started.wait_for(1) == [runner]
    waiting = pgqueue.add_job_to_queue(conn, name="slow", data={"shop_id": 1, "n": 2})

    assert pgqueue.cancel_jobs(conn, "slow", {"shop_id": 1}) == 1
    assert pgqueue.cancel_job(conn, runner) is False
    assert status(conn, waiting) == "cancelled"
    assert status(conn, runner) == "running"

    blocked.release.set()
    wait_until(lambda: status(conn, runner) == "completed", what="the running job to complete")
    assert get(conn, runner).result == "done"
    assert len(blocked.started) == 1, "the cancelled job never ran"


def test_cancel_job_is_true_only_for_a_pending_job(conn: psycopg.Connection[Any]) -> None:
    job = pgqueue.add_job_to_queue(conn, name="one")
    assert pgqueue.cancel_job(conn, job) is True
    assert status(conn, job) == "cancelled"
    assert pgqueue.cancel_job(conn, job) is False, "already cancelled"
    assert pgqueue.cancel_job(conn, 10**12) is False, "unknown"
    done = pgqueue.add_job_to_queue(conn, name="one")
    finish(conn, done, "completed")
    assert pgqueue.cancel_job(conn, done) is False
    assert status(conn, done) == "completed"
    with pytest.raises(InvalidJobError):
        pgqueue.cancel_job(conn, "1")  # type: ignore[arg-type]


# -- retry ----------------------------------------------------------------------------------


def test_retry_failed_jobs_counts_them_and_wakes_an_idle_worker(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    failed = pgqueue.add_job_to_queue(conn, name="x", data={"n": 1})
    cancelled = pgqueue.add_job_to_queue(conn, name="x", data={"n": 2})
    other = pgqueue.add_job_to_queue(conn, name="y")
    done = pgqueue.add_job_to_queue(conn, name="x", data={"n": 3})
    finish(conn, failed, "failed")
    finish(conn, cancelled, "cancelled")
    finish(conn, other, "failed")
    finish(conn, done, "completed")
    conn.execute("UPDATE pgqueue.jobs SET max_attempts = 1, last_error = 'boom'")

    calls = Calls()
    # Polls every 60 s: only a NOTIFY can make it pick the retried jobs up in time.
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda c, job: calls.add(job.id), poll_interval=60)
    with running(worker):
        wait_until(lambda: listening(conn), what="the worker to LISTEN")
        sentinel = pgqueue.add_job_to_queue(conn, name="sentinel")
        assert calls.wait_for(1, timeout=10) == [sentinel]

        assert pgqueue.retry_failed_jobs(conn, name="x") == 2
        assert sorted(calls.wait_for(3, timeout=10)[1:]) == [failed, cancelled]
        wait_until(
            lambda: status(conn, failed) == status(conn, cancelled) == "completed",
            timeout=10,
            what="the retried jobs to complete",
        )
    job = get(conn, failed)
    assert (job.attempts, job.max_attempts) == (2, 2), "one more attempt was allowed"
    assert status(conn, other) == "failed"
    assert status(conn, done) == "completed"
    assert pgqueue.retry_failed_jobs(conn, name="x") == 0
    assert pgqueue.retry_failed_jobs(conn, queue="nowhere") == 0
    assert pgqueue.retry_failed_jobs(conn) == 1
    assert status(conn, other) == "pending"


def test_retrying_a_cancelled_recurring_row_does_not_collide_with_its_replacement(
    conn: psycopg.Connection[Any],
) -> None:
    pgqueue.add_recurring_job_to_queue(conn, name="report", interval={"hours": 1})
    assert pgqueue.cancel_jobs(conn) == 1, "cancelling everything stops the recurring row too"
    pgqueue.add_recurring_job_to_queue(conn, name="report", interval={"hours": 2})
    stale = pgqueue.add_job_to_queue(conn, name="stale")
    pgqueue.cancel_job(conn, stale)

    # The cancelled recurring row has a pending replacement: it stays cancelled.
    assert pgqueue.retry_failed_jobs(conn) == 1
    assert status(conn, stale) == "pending"
    rows = conn.execute(
        "SELECT status, data -> 'interval' FROM pgqueue.jobs"
        " WHERE name = 'pgqueue.recurring' ORDER BY id"
    ).fetchall()
    assert rows == [("cancelled", {"hours": 1}), ("pending", {"hours": 2})]

    # Two cancelled rows for one target and no pending one: the newest comes back.
    assert pgqueue.cancel_jobs(conn, "pgqueue.recurring") == 1
    assert pgqueue.retry_failed_jobs(conn, name="pgqueue.recurring") == 1
    rows = conn.execute(
        "SELECT status, data -> 'interval' FROM pgqueue.jobs"
        " WHERE name = 'pgqueue.recurring' ORDER BY id"
    ).fetchall()
    assert rows == [("cancelled", {"hours": 1}), ("pending", {"hours": 2})]


# -- clear ----------------------------------------------------------------------------------


def test_a_job_whose_id_is_a_running_ones_plus_2_31_is_not_taken_for_running(
    conn: psycopg.Connection[Any], blocked: Blocker
) -> None:
    # The running marker (an advisory lock) was keyed by the id modulo 2^31: once ids passed
    # 2^31, a pending job looked running while another ran, and could not be cancelled,
    # cleared or run now.
    runner = pgqueue.add_job_to_queue(conn, name="slow")
    assert blocked.started.wait_for(1) == [runner]
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('pgqueue.jobs', 'id'), %s)", (2**31 + runner - 1,)
    )
    twin = pgqueue.add_job_to_queue(conn, name="other", queue="z")
    assert twin == runner + 2**31

    assert (get(conn, runner).status, get(conn, twin).status) == ("running", "pending")
    assert [job.id for job in pgqueue.list_jobs(conn, status="running")] == [runner]
    assert pgqueue.pending_queue_size(conn, queues=["z"]) == {
        "pending_count": 1,
        "scheduled_count": 0,
        "running_count": 0,
    }
    assert pgqueue.run_job_now(conn, twin) is not None
    assert pgqueue.cancel_job(conn, twin) is True
    assert pgqueue.clear_jobs(conn, queue="z") == 1
    assert status(conn, runner) == "running"


def test_clear_jobs_deletes_everything_but_running_jobs(
    conn: psycopg.Connection[Any], blocked: Blocker
) -> None:
    runner = pgqueue.add_job_to_queue(conn, name="slow", queue="a")
    assert blocked.started.wait_for(1) == [runner]
    in_a = [pgqueue.add_job_to_queue(conn, name="n", queue="a") for _ in range(3)]
    in_b = [pgqueue.add_job_to_queue(conn, name="n", queue="b") for _ in range(2)]
    finish(conn, in_a[0], "completed")
    finish(conn, in_b[0], "failed")

    assert pgqueue.clear_jobs(conn, queue="b") == 2
    assert all(pgqueue.get_job(conn, i) is None for i in in_b)
    assert all(pgqueue.get_job(conn, i) is not None for i in in_a)

    assert pgqueue.clear_jobs(conn) == 3
    assert all(pgqueue.get_job(conn, i) is None for i in in_a)
    assert status(conn, runner) == "running"

    blocked.release.set()
    wait_until(lambda: status(conn, runner) == "completed", what="the running job to complete")
    assert pgqueue.clear_jobs(conn) == 1
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


# -- list -----------------------------------------------------------------------------------


def test_list_jobs_filters_and_shows_the_newest_first(conn: psycopg.Connection[Any]) -> None:
    ids = [
        pgqueue.add_job_to_queue(conn, name=name, queue=queue)
        for name, queue in [("a", "q1"), ("b", "q1"), ("a", "q2"), ("a", "q1"), ("b", "q2")]
    ]
    finish(conn, ids[1], "failed")
    finish(conn, ids[3], "completed")

    def listed(**kw: Any) -> list[int]:
        return [job.id for job in pgqueue.list_jobs(conn, **kw)]

    assert listed() == ids[::-1]
    assert listed(limit=2) == [ids[4], ids[3]]
    assert listed(name="a") == [ids[3], ids[2], ids[0]]
    assert listed(queue="q1") == [ids[3], ids[1], ids[0]]
    assert listed(name="a", queue="q1") == [ids[3], ids[0]]
    assert listed(status="pending") == [ids[4], ids[2], ids[0]]
    assert listed(status="failed") == [ids[1]]
    assert listed(status="completed", name="b") == []
    assert listed(name="zzz") == []
    [job] = pgqueue.list_jobs(conn, status="completed")
    assert (job.id, job.status, job.name, job.queue) == (ids[3], "completed", "a", "q1")

    with pytest.raises(InvalidJobError, match="unknown status 'done'"):
        pgqueue.list_jobs(conn, status="done")
    with pytest.raises(InvalidJobError):
        pgqueue.list_jobs(conn, limit=0)


# -- clean-up -------------------------------------------------------------------------------


def _rules(conn: psycopg.Connection[Any]) -> set[tuple[str, str, float]]:
    rows = conn.execute(
        "SELECT name, status, extract(epoch FROM purge_after)::float8 / 86400"
        " FROM pgqueue.cleanup_rules"
    ).fetchall()
    return {(name, state, round(days, 6)) for name, state, days in rows}


def test_cleanup_rules_delete_only_jobs_finished_longer_ago_than_their_rule(
    conn: psycopg.Connection[Any],
) -> None:
    pgqueue.register_cleanup(
        conn,
        [
            {"type": "saveImage/local", "purge_after_days": 7},
            {"name": "sitemap", "purgeAfterDays": 3, "statuses": ["completed"]},
        ],
        default_days=30,
    )
    assert _rules(conn) == {
        ("saveImage/local", "completed", 7),
        ("saveImage/local", "failed", 7),
        ("saveImage/local", "cancelled", 7),
        ("sitemap", "completed", 3),
        ("*", "completed", 30),
        ("*", "failed", 30),
        ("*", "cancelled", 30),
    }

    cases = [
        ("saveImage/local", "completed", 8, False),
        ("saveImage/local", "completed", 6, True),
        ("saveImage/local", "failed", 8, False),
        ("saveImage/local", "cancelled", 7.01, False),
        ("sitemap", "completed", 4, False),
        ("sitemap", "completed", 2.9, True),
        ("sitemap", "failed", 4, True),  # no sitemap rule for failed: the default, 30 days
        ("sitemap", "failed", 31, False),
        ("other", "completed", 29, True),
        ("other", "cancelled", 31, False),
        ("other", "pending", 100, True),  # pending jobs are never cleaned up
    ]
    ids = []
    for name, state, days, _ in cases:
        job_id = pgqueue.add_job_to_queue(conn, name=name)
        if state == "pending":
            conn.execute(
                "UPDATE pgqueue.jobs SET updated_at = now() - interval '100 days',"
                " created_at = now() - interval '100 days' WHERE id = %s",
                (job_id,),
            )
        else:
            finish(conn, job_id, state, days)
        ids.append(job_id)

    expected_gone = sum(1 for *_, kept in cases if not kept)
    assert pgqueue.run_cleanup(conn) == expected_gone
    for (name, state, days, kept), job_id in zip(cases, ids, strict=True):
        assert (pgqueue.get_job(conn, job_id) is not None) == kept, (name, state, days)
    assert pgqueue.run_cleanup(conn) == 0


def test_without_rules_nothing_is_cleaned_up(conn: psycopg.Connection[Any]) -> None:
    job_id = pgqueue.add_job_to_queue(conn, name="x")
    finish(conn, job_id, "completed", 10_000)
    assert pgqueue.run_cleanup(conn) == 0
    pgqueue.register_cleanup(conn, [{"type": "y", "purge_after_days": 1}])
    assert pgqueue.run_cleanup(conn) == 0, "a rule for another name does not apply"
    pgqueue.register_cleanup(conn, default_days=0)
    assert pgqueue.run_cleanup(conn) == 1


@pytest.mark.parametrize(
    ("rules", "kw", "message"),
    [
        (["saveImage"], {}, "must be a mapping"),
        ([{"purge_after_days": 7}], {}, "needs a type"),
        ([{"type": "x", "purge_after_days": 7, "colour": 1}], {}, "unknown key 'colour'"),
        ([{"type": "x"}], {}, "must be a number of days"),
        ([{"type": "x", "purge_after_days": "7"}], {}, "must be a number of days"),
        ([{"type": "x", "purge_after_days": True}], {}, "must be a number of days"),
        ([{"type": "x", "purge_after_days": -1}], {}, "between 0 and 36500"),
        ([{"type": "x", "purge_after_days": float("nan")}], {}, "between 0 and 36500"),
        ([{"type": "x", "purge_after_days": 1, "statuses": ["pending"]}], {}, "statuses"),
        ([{"type": "x", "purge_after_days": 1, "statuses": "failed"}], {}, "statuses"),
        ([{"type": "x", "purge_after_days": 1, "statuses": []}], {}, "statuses"),
        ([{"type": 5, "purge_after_days": 1}], {}, "name must be a string"),
        ([], {"default_days": -2}, "default_days"),
        ([{"type": "ok", "purge_after_days": 1}], {"default_days": "30"}, "default_days"),
        ([{"type": "ok", "purge_after_days": 1}], {"every": {"fortnights": 1}}, "fortnights"),
        ([{"type": "ok", "purge_after_days": 1}], {"every": {"hours": 0}}, "positive"),
    ],
)
def test_bad_cleanup_rules_are_rejected_and_nothing_is_written(
    conn: psycopg.Connection[Any], rules: list[Any], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        pgqueue.register_cleanup(conn, rules, **kw)
    assert _rules(conn) == set()
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_register_cleanup_schedules_one_cleanup_job_that_a_worker_runs(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    old = pgqueue.add_job_to_queue(conn, name="x")
    young = pgqueue.add_job_to_queue(conn, name="x")
    finish(conn, old, "completed", 2)
    finish(conn, young, "completed", 0.5)
    pgqueue.register_cleanup(conn, default_days=1)
    pgqueue.register_cleanup(conn, [{"type": "x", "purge_after_days": 1}], every={"minutes": 10})
    [(row_id, data)] = conn.execute(
        "SELECT id, data FROM pgqueue.jobs WHERE name = 'pgqueue.recurring'"
    ).fetchall()
    assert data == {"name": "pgqueue.cleanup", "interval": {"minutes": 10}, "data": {}}

    calls = Calls()
    worker = pgqueue.JobQueueWorker(
        dsn, handler={"x": lambda c, job: calls.add(job.id)}, poll_interval=0.1
    )
    with running(worker):
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM pgqueue.jobs WHERE name = 'pgqueue.cleanup' AND status = 'completed'"
            ).fetchone(),
            what="the clean-up job to run",
        )
    [(result,)] = conn.execute(
        "SELECT result FROM pgqueue.jobs WHERE name = 'pgqueue.cleanup'"
    ).fetchall()
    assert result == "deleted 1 finished job(s)"
    assert pgqueue.get_job(conn, old) is None
    assert pgqueue.get_job(conn, young) is not None
    rec = get(conn, row_id)
    assert rec.status == "pending"
    assert rec.scheduled_at > rec.created_at, "the recurring row moved on to its next run"
    assert len(calls) == 0


# -- queue settings -------------------------------------------------------------------------


def test_configure_queue_stores_replaces_and_validates_settings(
    conn: psycopg.Connection[Any],
) -> None:
    pgqueue.configure_queue(conn, "email", max_concurrency=3)
    pgqueue.configure_queue(conn, "video", retry={"backoff": "linear", "delay": 5})
    assert conn.execute(
        "SELECT name, max_concurrency, retry FROM pgqueue.queues ORDER BY name"
    ).fetchall() == [("email", 3, None), ("video", None, {"backoff": "linear", "delay": 5})]
    pgqueue.configure_queue(conn, "email", retry={"delay": 1})
    assert conn.execute(
        "SELECT max_concurrency, retry FROM pgqueue.queues WHERE name = 'email'"
    ).fetchone() == (None, {"delay": 1}), "settings are replaced, not merged"

    bad: list[dict[str, Any]] = [
        {"max_concurrency": 0},
        {"max_concurrency": -1},
        {"max_concurrency": True},
        {"max_concurrency": "2"},
        {"max_concurrency": 10_001},
        {"retry": {"backoff": "sometimes"}},
        {"retry": {"delay": -1}},
        {"retry": {"retries": 3}},
        {"retry": [1, 2]},
    ]
    for kw in bad:
        with pytest.raises(InvalidJobError):
            pgqueue.configure_queue(conn, "email", **kw)
    with pytest.raises(InvalidJobError):
        pgqueue.configure_queue(conn, 7)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError):
        pgqueue.configure_queue(conn, "bad\x00name")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.queues") == 2


def test_a_pending_job_locked_for_a_moment_is_cancelled_not_skipped(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """A row lock that is not a running job (a dequeue probing a full limited queue holds one for
    an instant) makes cancel_job, cancel_jobs and clear_jobs wait, not skip the job."""
    one = pgqueue.add_job_to_queue(conn, name="held")
    two = pgqueue.add_job_to_queue(conn, name="held")
    three = pgqueue.add_job_to_queue(conn, name="held")
    outcomes: dict[str, Any] = {}

    def in_thread(key: str, fn: Any, *args: Any) -> threading.Thread:
        def target() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                outcomes[key] = fn(c, *args)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def waiting_for_lock() -> int:
        return int(
            scalar(
                conn,
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
        )

    calls: list[tuple[str, Any, tuple[Any, ...], int]] = [
        ("cancel_job", pgqueue.cancel_job, (one,), one),
        ("cancel_jobs", pgqueue.cancel_jobs, ("held",), two),
        ("clear_jobs", pgqueue.clear_jobs, (), three),
    ]
    for key, fn, args, job_id in calls:
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (job_id,))
            thread = in_thread(key, fn, *args)
            wait_until(lambda: waiting_for_lock() == 1, what=f"{key} to wait for the row lock")
            assert key not in outcomes
            holder.rollback()
        thread.join(10)
        assert not thread.is_alive()
    assert outcomes == {"cancel_job": True, "cancel_jobs": 2, "clear_jobs": 3}


def test_redwoods_delete_successful_jobs_maps_onto_cleanup_rules(conn):
    done = pgqueue.add_job_to_queue(conn, name="welcome")
    failed = pgqueue.add_job_to_queue(conn, name="welcome")
    conn.execute("UPDATE pgqueue.jobs SET status = 'completed' WHERE id = %s", (done,))
    conn.execute("UPDATE pgqueue.jobs SET status = 'failed' WHERE id = %s", (failed,))
    pgqueue.register_cleanup(conn, delete_successful_jobs=True)
    assert pgqueue.run_cleanup(conn) == 1
    assert pgqueue.get_job(conn, done) is None
    assert pgqueue.get_job(conn, failed) is not None  # Redwood keeps failed jobs by default
    pgqueue.register_cleanup(conn, delete_failed_jobs=True)
    assert pgqueue.run_cleanup(conn) == 1
    assert pgqueue.get_job(conn, failed) is None
    with pytest.raises(pgqueue.InvalidJobError):
        pgqueue.register_cleanup(conn, delete_failed_jobs="yes")  # type: ignore[arg-type]
