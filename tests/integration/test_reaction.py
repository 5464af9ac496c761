"""Reaction's background-jobs facade (pgqueue.reaction) against a real database: the seed doc's
examples end to end, meteor-job-collection's tests ported, and Reaction's defaults."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool
from worker_helpers import Calls, create_results_table, db_now, scalar, status, wait_until

import pgqueue
from pgqueue import JobRecord, JobStatus
from pgqueue.reaction import (
    NO_OUTCOME_MESSAGE,
    WORKERS_ENABLED_ENV,
    BackgroundJobs,
    BackgroundJobsAPI,
    ReactionJob,
    ReactionJobAPI,
)

#: Idle workers look for jobs that became due (retries, schedules) this often, in seconds.
POLL = 0.05
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@pytest.fixture(autouse=True)
def _workers_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENABLED_ENV, raising=False)


@pytest.fixture
def jobs(dsn: str) -> Iterator[BackgroundJobs]:
    with BackgroundJobs(dsn) as facade:
        yield facade


def finished(conn: psycopg.Connection[Any], job_id: int) -> JobRecord:
    """Wait until the job is completed, failed or cancelled; return it."""

    def check() -> JobRecord | None:
        job = pgqueue.get_job(conn, job_id)
        return job if job is not None and job.status in FINISHED else None

    job = wait_until(check, what=f"job {job_id} to finish")
    assert job is not None
    return job


def get(conn: psycopg.Connection[Any], job_id: int) -> JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None, f"job {job_id} is unknown"
    return job


# -- the seed doc's examples ------------------------------------------------------


def test_done_message_is_the_result_and_only_the_first_call_counts(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    seen = Calls()
    kept: list[ReactionJob] = []

    def worker(job: ReactionJob) -> None:
        kept.append(job)
        first = job.done("Done message")
        again = job.done("again")
        late_fail = job.fail("too late")
        seen.add((job.id, job.type, job.data, job.attempts, first, again, late_fail))
        seen.add(isinstance(job, ReactionJobAPI))

    # A pool as the source: schedule and get borrow it, the worker gets its own.
    with (
        ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool,
        BackgroundJobs(pool) as jobs,
    ):
        started = jobs.add_worker(type="someUniqueJobType", worker=worker)
        assert isinstance(started, pgqueue.JobQueueWorker)
        assert started.name == "someUniqueJobType"
        assert started.parallel_count == 3
        assert started.is_started
        assert jobs.workers == [started]
        job = jobs.schedule_job(type="someUniqueJobType", data={"shop_id": 7})
        assert job.status is JobStatus.PENDING
        assert job.priority == 0
        assert job.max_attempts == 1

        done = finished(conn, job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.result == "Done message"
        assert done.attempts == 1
        assert done.last_error is None
        assert seen.wait_for(2) == [
            (job.id, "someUniqueJobType", {"shop_id": 7}, 1, True, False, False),
            True,
        ]
        # Once the worker function has returned, the job can no longer be settled.
        assert kept[0].done("later") is False
        fetched = jobs.get_job(job.id)
        assert fetched is not None
        assert fetched.result == "Done message"
        with pool.connection() as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    assert not started.is_started
    assert jobs.workers == []


def test_workers_connect_with_the_pools_conninfo_and_keywords(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    # Everything in kwargs, with a connection-only keyword libpq would refuse.
    kwargs: dict[str, Any] = {**conninfo_to_dict(dsn), "autocommit": True}
    with (
        ConnectionPool("", kwargs=kwargs, min_size=1, max_size=1, open=True) as pool,
        BackgroundJobs(pool) as jobs,
    ):
        jobs.add_worker(type="kw", worker=lambda job: job.done("connected"))
        job = jobs.schedule_job(type="kw")
        assert finished(conn, job.id).result == "connected"


def test_fail_keeps_the_reason_and_the_default_is_no_retry(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    jobs.add_worker(type="failing", worker=lambda job: job.fail(job.data.get("reason")))
    job = jobs.schedule_job(type="failing", data={"reason": "why"})
    silent = jobs.schedule_job(type="failing")
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 1
    assert failed.max_attempts == 1
    assert failed.last_error == "why"
    # No reason: Reaction's text.
    assert finished(conn, silent.id).last_error == "No error information provided"


def test_fail_with_exponential_retry_doubles_the_wait(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    attempts = Calls()

    def worker(job: ReactionJob) -> None:
        now = scalar(job.conn, "SELECT now()")  # the attempt's transaction start
        attempts.add((job.attempts, job.record.scheduled_at, job.record.updated_at, now))
        job.fail("why")

    jobs.add_worker(type="flaky", worker=worker, poll_interval=POLL)
    job = jobs.schedule_job(
        type="flaky", retry={"retries": 2, "wait": 100, "backoff": "exponential"}
    )
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 3
    assert failed.last_error == "why"

    runs = attempts.wait_for(3)
    assert [run[0] for run in runs] == [1, 2, 3]
    for ((_, _, _, previous_now), (_, scheduled_at, updated_at, now)), wait in zip(
        itertools.pairwise(runs), (0.1, 0.2), strict=True
    ):
        # The failure was recorded at the previous attempt's now(), the retry set wait later ...
        assert updated_at == previous_now
        assert abs((scheduled_at - updated_at).total_seconds() - wait) < 0.001
        # ... and it did not run before then.
        assert now >= scheduled_at
        assert (now - previous_now).total_seconds() >= wait


def test_an_exception_fails_the_job_with_its_message(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    def worker(job: ReactionJob) -> None:
        raise ValueError(f"boom {job.data['n']}")

    jobs.add_worker(type="explodes", worker=worker)
    job = jobs.schedule_job(type="explodes", data={"n": 1})
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 1
    assert failed.last_error is not None
    assert failed.last_error.splitlines()[0] == "ValueError: boom 1"
    assert "Traceback" in failed.last_error


def test_returning_without_done_or_fail_fails_the_attempt_at_once(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    # meteor-job-collection's autofail test ({retries: 2, wait: 0}, the first run never
    # calls done, the retry completes), without waiting for a work timeout.
    def worker(job: ReactionJob) -> None:
        if job.attempts == job.data["done_on"]:
            job.done("second time lucky")

    jobs.add_worker(type="forgetful", worker=worker, poll_interval=POLL)
    no_retry = jobs.schedule_job(type="forgetful", data={"done_on": 0})
    retried = jobs.schedule_job(
        type="forgetful", data={"done_on": 2}, retry={"retries": 2, "wait": 0}
    )

    failed = finished(conn, no_retry.id)
    assert failed.status is JobStatus.FAILED
    assert failed.last_error == NO_OUTCOME_MESSAGE

    completed = finished(conn, retried.id)
    assert completed.status is JobStatus.COMPLETED
    assert completed.attempts == 2
    assert completed.result == "second time lucky"
    assert completed.last_error == NO_OUTCOME_MESSAGE  # the first attempt's, kept


def test_writes_on_job_conn_commit_with_done_and_vanish_with_fail(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    create_results_table(conn)

    def worker(job: ReactionJob) -> None:
        job.conn.execute(
            "INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, job.data["outcome"])
        )
        if job.data["outcome"] == "done":
            job.done({"rows": 1})
        else:
            job.fail("rolled back")

    jobs.add_worker(type="writer", worker=worker)
    ok = jobs.schedule_job(type="writer", data={"outcome": "done"})
    bad = jobs.schedule_job(type="writer", data={"outcome": "fail"})
    assert finished(conn, ok.id).status is JobStatus.COMPLETED
    assert finished(conn, ok.id).result == '{"rows": 1}'  # not a str: kept as JSON
    assert finished(conn, bad.id).status is JobStatus.FAILED
    assert conn.execute("SELECT job_id, note FROM results").fetchall() == [(ok.id, "done")]


def test_async_worker_functions_are_refused(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    async def worker(job: ReactionJob) -> None:
        job.done()

    with pytest.raises(pgqueue.ConfigurationError, match="async"):
        jobs.add_worker(type="async", worker=worker)
    assert jobs.workers == []

    # A plain function that hands back a coroutine fails its attempt instead.
    def hands_back_a_coroutine(job: ReactionJob) -> object:
        return worker(job)

    jobs.add_worker(type="async", worker=hands_back_a_coroutine)
    job = jobs.schedule_job(type="async")
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.last_error is not None
    assert "async worker functions are not supported" in failed.last_error


def test_close_lets_running_jobs_finish(conn: psycopg.Connection[Any], dsn: str) -> None:
    started, release = threading.Event(), threading.Event()

    def worker(job: ReactionJob) -> None:
        started.set()
        release.wait(30)
        job.done("finished during close")

    jobs = BackgroundJobs(dsn)
    worker_object = jobs.add_worker(type="slow", worker=worker)
    job = jobs.schedule_job(type="slow")
    assert started.wait(30)
    closer = threading.Thread(target=jobs.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a job was running"
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert worker_object is not None
    assert not worker_object.is_started
    assert get(conn, job.id).result == "finished during close"
    jobs.close()  # again: nothing to do


# -- meteor-job-collection's tests, ported -----------------------------------------


def test_priority_low_high_default_run_high_default_low(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    for label, priority in (("low", "low"), ("high", "high"), ("default", None)):
        jobs.schedule_job(type="prio", data=label, priority=priority)
    order = Calls()

    def worker(job: ReactionJob) -> None:
        order.add(job.data)
        job.done()

    jobs.add_worker(type="prio", worker=worker, concurrency=1)
    assert order.wait_for(3) == ["high", "default", "low"]


def test_named_priorities_in_order_and_medium_outranks_normal(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    names: list[int | str] = ["normal", "LOW", "medium", "Critical", "high", 3]
    for name in names:
        jobs.schedule_job(type="named", data=str(name), priority=name)
    order = Calls()

    def worker(job: ReactionJob) -> None:
        order.add(job.data)
        job.done()

    jobs.add_worker(type="named", worker=worker, concurrency=1)
    assert order.wait_for(6) == ["Critical", "high", "medium", "normal", "3", "LOW"]


def test_invalid_priority_raises_and_writes_nothing(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    kept = jobs.schedule_job(type="prio")
    with pytest.raises(pgqueue.InvalidJobError, match="urgent"):
        jobs.schedule_job(type="prio", priority="urgent", cancel_repeats=True)
    # The cancel of cancel_repeats was rolled back with the failed insert.
    assert status(conn, kept.id) == "pending"
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 1


def test_exponential_retry_makes_three_attempts_then_fails(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    jobs.add_worker(type="retry", worker=lambda job: job.fail(f"attempt {job.attempts}"))
    job = jobs.schedule_job(
        type="retry", retry={"retries": 2, "wait": 200, "backoff": "exponential"}
    )
    assert job.max_attempts == 3
    assert job.retry is not None
    assert job.retry["delay"] == 0.2
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 3
    assert failed.last_error == "attempt 3"


def test_until_stops_retrying_before_the_retries_run_out(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    until = db_now(conn) + timedelta(seconds=1.5)
    jobs.add_worker(type="until", worker=lambda job: job.fail("again"), poll_interval=POLL)
    # No "retries": Reaction retries forever, until "until".
    job = jobs.schedule_job(type="until", retry={"wait": 500, "until": until})
    assert job.max_attempts == 2**31 - 1
    failed = finished(conn, job.id)
    assert failed.status is JobStatus.FAILED
    assert 2 <= failed.attempts <= 3
    # It stopped because the next attempt would have come after "until".
    assert failed.updated_at <= until < failed.updated_at + timedelta(seconds=0.5)


def test_500_jobs_are_all_cancelled(conn: psycopg.Connection[Any], dsn: str) -> None:
    with (
        ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool,
        BackgroundJobs(pool) as jobs,
    ):
        ids = [jobs.schedule_job(type="bulk", data={"n": n}).id for n in range(500)]
        other = jobs.schedule_job(type="other")
        assert jobs.cancel_jobs(type="bulk") == 500
        assert jobs.cancel_jobs(type="bulk") == 0
    cancelled = pgqueue.list_jobs(conn, status="cancelled", name="bulk", limit=1000)
    assert sorted(job.id for job in cancelled) == ids
    assert status(conn, other.id) == "pending"


def test_a_repeating_schedule_reruns_with_new_ids_until_cancelled(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    runs = Calls()

    def worker(job: ReactionJob) -> None:
        runs.add(job.record)
        job.done(f"run {job.id}")

    before = db_now(conn)
    first = jobs.schedule_job(
        type="tick",
        data={"k": 1},
        schedule="every 1 second",
        priority="high",
        retry={"retries": 1, "wait": 1000},
    )
    # Never at save time: at the next whole second.
    assert first.scheduled_at > before
    assert first.scheduled_at.microsecond == 0
    assert first.schedule == {"kind": "text", "text": "every 1 second"}
    jobs.add_worker(type="tick", worker=worker, poll_interval=POLL)

    seen: list[JobRecord] = runs.wait_for(3)[:3]
    assert seen[0].id == first.id
    assert len({job.id for job in seen}) == 3
    for earlier, later in itertools.pairwise(seen):
        assert later.scheduled_at > earlier.scheduled_at
        assert later.scheduled_at.microsecond == 0
        # A copy: same data, priority and retry policy, its attempts counted afresh.
        assert later.data == {"k": 1}
        assert (later.priority, later.max_attempts, later.retry) == (-10, 2, first.retry)
        assert later.attempts == 1
        assert get(conn, earlier.id).result == f"run {earlier.id}"

    def next_run_well_ahead() -> JobRecord | None:
        pending = pgqueue.list_jobs(conn, status="pending", name="tick")
        if len(pending) != 1:
            return None
        ahead = pending[0].scheduled_at - db_now(conn)
        return pending[0] if ahead > timedelta(seconds=0.3) else None

    upcoming = wait_until(next_run_well_ahead, what="a pending run at least 0.3 s away")
    assert upcoming is not None
    assert jobs.cancel_jobs(type="tick") == 1
    count = len(runs)
    # Past the time it would have run, and the one after: nothing ran, nothing is pending.
    wait_until(lambda: db_now(conn) > upcoming.scheduled_at + timedelta(seconds=1.5))
    assert len(runs) == count
    assert pgqueue.list_jobs(conn, status="pending", name="tick") == []
    assert status(conn, upcoming.id) == "cancelled"


# -- Reaction's scheduleJob options --------------------------------------------------
def test_a_repeating_job_that_fails_for_good_still_runs_at_its_next_occurrence(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    # Reaction drops the schedule after a final failure; pgqueue keeps it.
    runs = Calls()

    def worker(job: ReactionJob) -> None:
        runs.add(job.id)
        job.fail("down for maintenance")

    first = jobs.schedule_job(type="fragile", schedule="every 1 second")
    jobs.add_worker(type="fragile", worker=worker, poll_interval=POLL)
    ids = runs.wait_for(2)[:2]
    assert ids[0] == first.id
    assert ids[1] != first.id
    assert get(conn, first.id).status is JobStatus.FAILED
    assert get(conn, first.id).last_error == "down for maintenance"
    jobs.cancel_jobs(type="fragile")


def test_every_day_means_daily_not_the_first_of_the_month(jobs: BackgroundJobs) -> None:
    job = jobs.schedule_job(type="nightly", schedule="every day")
    assert job.schedule is not None
    assert (job.scheduled_at.hour, job.scheduled_at.minute, job.scheduled_at.second) == (0, 0, 0)
    following = pgqueue.Schedule.from_json(job.schedule).next_after(job.scheduled_at)
    assert following - job.scheduled_at == timedelta(days=1)


def test_retry_spellings_and_reactions_defaults(jobs: BackgroundJobs) -> None:
    job = jobs.schedule_job(type="mail", retry={"retries": 5})
    assert job.max_attempts == 6
    assert job.retry is not None
    # wait: 5 minutes, constant, no jitter.
    assert (job.retry["backoff"], job.retry["delay"], job.retry["jitter"]) == ("fixed", 300, 0)
    assert jobs.schedule_job(type="mail", retry=2).max_attempts == 3
    with pytest.raises(pgqueue.InvalidJobError, match="backoff"):
        jobs.schedule_job(type="mail", retry={"retries": 1, "backoff": "linear"})
    with pytest.raises(pgqueue.InvalidJobError, match="cancel_repeats"):
        jobs.schedule_job(type="mail", cancel_repeats="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["every weekday at 9:00", "*/5 * * * *", "Every 24 hours"])
def test_a_scheduled_job_first_runs_at_its_next_occurrence(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs, schedule: str
) -> None:
    expected = pgqueue.parse_schedule(schedule).next_after(datetime.now(UTC))
    job = jobs.schedule_job(type="report", schedule=schedule)
    assert job.status is JobStatus.PENDING
    assert job.scheduled_at == expected
    assert job.scheduled_at > db_now(conn)


def test_an_unknown_schedule_word_is_named_and_nothing_is_written(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    with pytest.raises(pgqueue.InvalidJobError, match="blursday"):
        jobs.schedule_job(type="report", schedule="every blursday")
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0


def test_cancel_repeats_cancels_other_pending_jobs_of_the_type_only(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    old = [jobs.schedule_job(type="sitemap", data={"shop_id": n}) for n in (1, 2)]
    other = jobs.schedule_job(type="other", data={"shop_id": 1})
    fresh = jobs.schedule_job(
        type="sitemap", data={"shop_id": 3}, schedule="every 24 hours", cancel_repeats=True
    )
    assert [status(conn, job.id) for job in old] == ["cancelled", "cancelled"]
    assert status(conn, other.id) == "pending"
    assert status(conn, fresh.id) == "pending"
    # Also without a schedule (as Reaction's documentation says; its code needs one).
    latest = jobs.schedule_job(type="sitemap", cancel_repeats=True)
    assert status(conn, fresh.id) == "cancelled"
    assert status(conn, latest.id) == "pending"
    assert status(conn, other.id) == "pending"


# -- cancelJobs, getJob, cleanup ---------------------------------------------------


def test_cancel_jobs_matches_data_by_containment(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    match = jobs.schedule_job(type="notify", data={"shop_id": 1, "user": 2})
    exact = jobs.schedule_job(type="notify", data={"shop_id": 1})
    miss = jobs.schedule_job(type="notify", data={"shop_id": 2})
    other_type = jobs.schedule_job(type="email", data={"shop_id": 1})
    assert jobs.cancel_jobs(type="notify", data={"shop_id": 1}) == 2
    assert status(conn, match.id) == "cancelled"
    assert status(conn, exact.id) == "cancelled"
    assert status(conn, miss.id) == "pending"
    assert status(conn, other_type.id) == "pending"
    # No data: every pending job of the type.
    assert jobs.cancel_jobs(type="notify") == 1
    assert status(conn, miss.id) == "cancelled"


def test_cancel_jobs_does_not_interrupt_a_running_job(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    started, release = threading.Event(), threading.Event()

    def worker(job: ReactionJob) -> None:
        started.set()
        release.wait(30)
        job.done("ran to the end")

    jobs.add_worker(type="long", worker=worker)
    job = jobs.schedule_job(type="long")
    assert started.wait(30)
    try:
        assert status(conn, job.id) == "running"
        assert jobs.cancel_jobs(type="long") == 0
    finally:
        release.set()
    done = finished(conn, job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.result == "ran to the end"


def test_get_job_of_an_unknown_id_is_none(jobs: BackgroundJobs) -> None:
    assert jobs.get_job(123456789) is None


def _finished_jobs(
    conn: psycopg.Connection[Any],
    jobs: BackgroundJobs,
    specs: Iterable[tuple[str, str, int]],
) -> dict[str, int]:
    """Jobs finished ``days`` ago: ``{label: id}`` for (label, type, days); label is also the data."""
    ids = {}
    for label, job_type, days in specs:
        job_id = jobs.schedule_job(type=job_type, data=label).id
        conn.execute(
            "UPDATE pgqueue.jobs SET status = %s, updated_at = now() - make_interval(days => %s)"
            " WHERE id = %s",
            ("completed" if days % 2 else "cancelled", days, job_id),
        )
        ids[label] = job_id
    return ids


def test_register_cleanup_deletes_jobs_finished_longer_ago_than_purge_after_days(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKERS_ENABLED_ENV, "false")  # no maintenance worker: we run it
    ids = _finished_jobs(
        conn,
        jobs,
        [
            ("local-old", "saveImage/local", 9),
            ("local-old-2", "saveImage/local", 8),
            ("local-new", "saveImage/local", 6),
            ("remote-old", "saveImage/remote", 4),
            ("remote-new", "saveImage/remote", 2),
            ("other-old", "sitemap", 30),
        ],
    )
    pending = jobs.schedule_job(type="saveImage/local", data="pending")
    conn.execute(
        "UPDATE pgqueue.jobs SET updated_at = now() - interval '30 days' WHERE id = %s",
        (pending.id,),
    )
    jobs.register_cleanup(
        [
            {"type": "saveImage/local", "purge_after_days": 7},
            {"type": "saveImage/remote", "purgeAfterDays": 3},
        ]
    )
    assert pgqueue.run_cleanup(conn) == 3
    left = {job.data for job in pgqueue.list_jobs(conn) if not job.name.startswith("pgqueue.")}
    assert left == {"local-new", "remote-new", "other-old", "pending"}
    assert jobs.get_job(ids["local-old"]) is None


def test_register_cleanup_runs_it_without_any_other_worker(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs
) -> None:
    ids = _finished_jobs(conn, jobs, [("old", "saveImage/local", 8), ("new", "saveImage/local", 1)])
    jobs.add_worker(type="saveImage/local", worker=lambda job: job.done())
    jobs.register_cleanup([{"type": "saveImage/local", "purge_after_days": 7}])
    wait_until(lambda: jobs.get_job(ids["old"]) is None, what="the clean-up job")
    assert jobs.get_job(ids["new"]) is not None


def test_workers_disabled_by_environment_start_nothing(
    conn: psycopg.Connection[Any], jobs: BackgroundJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKERS_ENABLED_ENV, "false")
    calls = Calls()
    assert jobs.add_worker(type="disabled", worker=calls.add) is None
    job = jobs.schedule_job(type="disabled")
    jobs.register_cleanup([{"type": "disabled", "purge_after_days": 1}])
    assert jobs.workers == []
    # No worker, no maintenance worker: once the facade's short connections are gone,
    # this test's connection is the only one (a worker would keep its pool connected).
    wait_until(
        lambda: scalar(
            conn,
            "SELECT count(*) = 0 FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ),
        what="no other connection to the test database",
    )
    assert status(conn, job.id) == "pending"
    assert len(calls) == 0


# -- the Protocol ------------------------------------------------------------------


class InMemoryJobs:
    """A second implementation of the facade, as a plugin's tests might use."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}

    def add_worker(
        self,
        *,
        type: str,
        worker: Callable[[ReactionJobAPI], object],
        concurrency: int = 3,
        poll_interval: float = 1.5,
    ) -> object:
        return None

    def schedule_job(
        self,
        *,
        type: str,
        data: Any = None,
        retry: int | Mapping[str, Any] | None = None,
        priority: int | str | None = None,
        schedule: str | None = None,
        cancel_repeats: bool = False,
        queue: str | None = None,
    ) -> JobRecord:
        now = datetime.now(UTC)
        job = JobRecord(
            id=len(self.jobs) + 1,
            queue=queue or "default",
            name=type,
            data=data,
            priority=0,
            status=JobStatus.PENDING,
            scheduled_at=now,
            attempts=0,
            max_attempts=1,
            retry=None,
            last_error=None,
            result=None,
            created_at=now,
            updated_at=now,
            completed_at=None,
        )
        self.jobs[job.id] = job
        return job

    def cancel_jobs(self, *, type: str, data: Any = None) -> int:
        return 0

    def get_job(self, id: int) -> JobRecord | None:
        return self.jobs.get(id)

    def register_cleanup(self, rules: Iterable[Mapping[str, Any]]) -> None:
        return None


def plugin_startup(api: BackgroundJobsAPI) -> JobRecord | None:
    """A plugin written against the Protocol only."""
    job = api.schedule_job(type="plugin/refresh", data={"shop_id": 1})
    return api.get_job(job.id)


def test_another_implementation_satisfies_the_protocol(dsn: str) -> None:
    fake: BackgroundJobsAPI = InMemoryJobs()  # checked by mypy
    assert isinstance(fake, BackgroundJobsAPI)
    fetched = plugin_startup(fake)
    assert fetched is not None
    assert fetched.data == {"shop_id": 1}

    with BackgroundJobs(dsn) as real:
        api: BackgroundJobsAPI = real
        assert isinstance(api, BackgroundJobsAPI)
        stored = plugin_startup(api)
        assert stored is not None
        assert stored.data == {"shop_id": 1}
        assert stored.status is JobStatus.PENDING

    class Incomplete:
        def schedule_job(self, **options: Any) -> None:
            return None

    assert not isinstance(Incomplete(), BackgroundJobsAPI)
