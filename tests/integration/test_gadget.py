"""Gadget's enqueue(action, params, start_at=..., retries=..., queue=..., priority=...) against a
real database: what it stores, Gadget's defaults versus the action's own settings, queue limits,
and a worker running what it enqueued."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from worker_helpers import Calls, db_now, running, scalar, wait_until

import pgqueue
import pgqueue.queue
from pgqueue import Job, JobNotConfiguredError, job_handlers, task
from pgqueue.gadget import enqueue
from pgqueue.retry import gadget_retry

#: What the action saw, in the order the worker ran it.
SEEN = Calls()


class Publish(Job):
    """A Gadget-style action: one params object."""

    def perform(self, params: Any) -> str:
        SEEN.add(params)
        return json.dumps(params, sort_keys=True)


class Tuned(Job):
    queue = "tuned"
    priority = 20
    max_attempts = 2
    wait = 3600

    def perform(self, params: Any) -> None:
        pass


@task
def sync_product(params: Any) -> None:
    SEEN.add(params)


@task(queue="shopify", priority="low")
def sync_to_shopify(params: Any) -> None:
    pass


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    SEEN.items.clear()
    monkeypatch.setattr(Job, "sql", None)


def get(conn: psycopg.Connection[Any], job_id: int) -> pgqueue.JobRecord:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    return job


def queue_limit(conn: psycopg.Connection[Any], name: str) -> Any:
    row = conn.execute(
        "SELECT max_concurrency FROM pgqueue.queues WHERE name = %s", (name,)
    ).fetchone()
    return None if row is None else row[0]


def job_count(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgqueue.jobs"))


# -- what it stores --------------------------------------------------------------------


def test_gadgets_defaults(conn):
    before = db_now(conn)
    job_id = enqueue(Publish, {"postId": 1}, sql=conn)
    job = get(conn, job_id)
    assert job.name == Publish.name
    assert job.data == {"args": [{"postId": 1}]}
    # Not Redwood's 50 / 24 attempts: DEFAULT priority, 6 retries, exponential from 1 s, 7 days.
    assert (job.queue, job.priority, job.max_attempts) == ("default", 0, 7)
    assert job.retry == {
        "backoff": "exponential",
        "delay": 1,
        "factor": 2,
        "max_delay": 315576000,
        "jitter": 0,
        "max_duration": 7 * 24 * 3600,
    }
    assert before <= job.scheduled_at <= db_now(conn)


@pytest.mark.parametrize(
    "start_at",
    [
        "2030-04-03T12:00:00.000Z",
        "2030-04-03T14:00:00+02:00",
        datetime(2030, 4, 3, 12, tzinfo=UTC),
        datetime(2030, 4, 3, 7, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_start_at_as_string_or_datetime(conn, start_at):
    job_id = enqueue(sync_product, {}, sql=conn, start_at=start_at)
    assert get(conn, job_id).scheduled_at == datetime(2030, 4, 3, 12, tzinfo=UTC)


@pytest.mark.parametrize("start_at", ["2030-04-03T12:00:00", datetime(2030, 4, 3, 12)])
def test_a_naive_start_at_raises_and_writes_nothing(conn, start_at):
    with pytest.raises(pgqueue.InvalidJobError, match="no time zone"):
        enqueue(Publish, {"postId": 1}, sql=conn, start_at=start_at, queue="never-configured")
    assert job_count(conn) == 0
    assert queue_limit(conn, "never-configured") is None


def test_retries_as_a_count_or_gadgets_mapping(conn):
    none = get(conn, enqueue(Publish, {}, sql=conn, retries=0))
    assert none.max_attempts == 1
    one = get(conn, enqueue(Publish, {}, sql=conn, retries=1))
    assert one.max_attempts == 2
    policy = {
        "retryCount": 5,
        "maxInterval": 60000,
        "backoffFactor": 3,
        "initialInterval": 500,
        "randomizeInterval": True,
    }
    tuned = get(conn, enqueue(Publish, {}, sql=conn, retries=policy))
    assert tuned.max_attempts == 6
    assert tuned.retry == {
        "backoff": "exponential",
        "delay": 0.5,
        "factor": 3,
        "max_delay": 60,
        "jitter": 1,
        "max_duration": 7 * 24 * 3600,
    }
    assert (tuned.max_attempts, tuned.retry) == (
        gadget_retry(policy)[0],
        gadget_retry(policy)[1],
    )


@pytest.mark.parametrize(
    ("priority", "stored"),
    [("HIGH", -10), ("high", -10), ("Default", 0), ("LOW", 10), (7, 7), (0, 0)],
)
def test_priority_names_and_integers(conn, priority, stored):
    assert get(conn, enqueue(Publish, {}, sql=conn, priority=priority)).priority == stored


def test_queue_as_a_name_means_a_limit_of_one(conn):
    job_id = enqueue(Publish, {"n": 1}, sql=conn, queue="emails")
    assert get(conn, job_id).queue == "emails"
    assert queue_limit(conn, "emails") == 1


def test_queue_as_a_mapping_sets_its_limit(conn):
    first = enqueue(Publish, {}, sql=conn, queue={"name": "dedicated", "maxConcurrency": 4})
    second = enqueue(Publish, {}, sql=conn, queue={"name": "open"})
    assert (get(conn, first).queue, get(conn, second).queue) == ("dedicated", "open")
    assert queue_limit(conn, "dedicated") == 4
    assert enqueue(Publish, {}, sql=conn, queue={"name": "dedicated", "max_concurrency": 2})
    assert queue_limit(conn, "dedicated") == 2
    # A mapping without a limit leaves the queue's setting alone.
    assert queue_limit(conn, "open") is None


def test_an_action_name_stores_params_as_the_data(conn):
    job = get(conn, enqueue("reports.build", {"month": 5}, sql=conn, priority="high"))
    assert (job.name, job.data, job.priority, job.max_attempts) == (
        "reports.build",
        {"month": 5},
        -10,
        7,
    )
    assert get(conn, enqueue("reports.build", sql=conn)).data == {}
    assert get(conn, enqueue(Publish, sql=conn)).data == {"args": []}


def test_the_actions_own_settings_beat_gadgets_defaults(conn):
    job = get(conn, enqueue(Tuned, {"x": 1}, sql=conn))
    assert (job.queue, job.priority, job.max_attempts) == ("tuned", 20, 2)
    assert job.scheduled_at - job.created_at == timedelta(hours=1)
    job = get(conn, enqueue(sync_to_shopify, {"id": 3}, sql=conn))
    assert (job.queue, job.priority, job.max_attempts) == ("shopify", 10, 7)
    # A set() copy counts as the action's own settings too.
    job = get(conn, enqueue(Publish().set(queue="copied", max_attempts=4), {}, sql=conn))
    assert (job.queue, job.priority, job.max_attempts) == ("copied", 0, 4)
    # And enqueue's own options beat them all.
    job = get(
        conn,
        enqueue(
            Tuned,
            {},
            sql=conn,
            queue={"name": "override"},
            priority="HIGH",
            retries=0,
            start_at="2030-01-01T00:00:00Z",
        ),
    )
    assert (job.queue, job.priority, job.max_attempts) == ("override", -10, 1)
    assert job.scheduled_at == datetime(2030, 1, 1, tzinfo=UTC)


# -- where it goes ---------------------------------------------------------------------


def test_enqueue_joins_the_callers_transaction(conn, dsn):
    with psycopg.connect(dsn) as tx:
        gone = enqueue(Publish, {"postId": 1}, sql=tx, queue={"name": "tx", "maxConcurrency": 3})
        tx.rollback()
        kept = enqueue(sync_product, {"id": 2}, sql=tx)
    assert pgqueue.get_job(conn, gone) is None
    assert queue_limit(conn, "tx") is None
    assert get(conn, kept).data == {"args": [{"id": 2}]}


def test_enqueue_uses_the_configured_target(conn, dsn):
    with pytest.raises(JobNotConfiguredError):
        enqueue(Publish, {})
    Job.config(sql=dsn)
    job_id = enqueue("by-name", {"a": 1})
    assert get(conn, job_id).data == {"a": 1}
    Publish.config(sql=conn)
    assert get(conn, enqueue(Publish, {"b": 2})).name == Publish.name


# -- running it ---------------------------------------------------------------------------


def test_a_worker_runs_enqueued_actions_high_priority_first(conn, dsn):
    low = enqueue(Publish, {"p": "low"}, sql=conn, priority="LOW")
    default = enqueue(Publish, {"p": "default"}, sql=conn)
    high = enqueue(Publish, {"p": "high"}, sql=conn, priority="HIGH")
    # By name, with plain data: the job class gets the data as its one argument.
    by_name = enqueue(Publish.name, {"p": "by name"}, sql=conn, priority="LOW")
    task_job = enqueue(sync_product, {"p": "task"}, sql=conn, priority=20)
    worker = pgqueue.JobQueueWorker(
        dsn, handler=job_handlers(Publish, sync_product), poll_interval=0.1
    )
    with running(worker):
        seen = SEEN.wait_for(5)
    assert seen == [{"p": "high"}, {"p": "default"}, {"p": "low"}, {"p": "by name"}, {"p": "task"}]
    wait_until(
        lambda: all(
            get(conn, i).status == "completed" for i in (low, default, high, by_name, task_job)
        ),
        what="every job completed",
    )
    assert get(conn, high).result == '{"p": "high"}'
