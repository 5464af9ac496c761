"""Helpers for the worker tests: poll with a deadline, run a worker for a block, read the database clock."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, LiteralString, TypeVar

import psycopg

import pgqueue

T = TypeVar("T")

#: How long any single wait may take before the test fails.
DEADLINE = 30.0


def wait_until(
    predicate: Callable[[], T], *, timeout: float = DEADLINE, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


@contextlib.contextmanager
def running(worker: pgqueue.JobQueueWorker) -> Iterator[pgqueue.JobQueueWorker]:
    """Start ``worker`` for the block and stop it afterwards, also when the block fails."""
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    """The database's clock (clock_timestamp(), not the transaction start)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def status(conn: psycopg.Connection[Any], job_id: int) -> str:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None, f"job {job_id} is unknown"
    return job.status.value


def create_results_table(conn: psycopg.Connection[Any]) -> None:
    """``results(job_id PRIMARY KEY, note)``: handlers record their work here, in the job's transaction."""
    conn.execute(
        "CREATE TABLE results (job_id bigint PRIMARY KEY, note text,"
        " at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def result_ids(conn: psycopg.Connection[Any]) -> list[int]:
    return [row[0] for row in conn.execute("SELECT job_id FROM results ORDER BY job_id")]


class Calls:
    """A thread-safe record of handler calls, with a way to wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[Any]:
        """Wait until at least ``count`` calls were recorded; return a copy of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(
                    f"timed out after {timeout:.0f} s: {len(self.items)} of {count} handler calls"
                )
            return list(self.items)

    def __len__(self) -> int:
        with self._cond:
            return len(self.items)


def other_backends(conn: psycopg.Connection[Any]) -> int:
    """How many other backends are connected to the test database (a worker's left over)."""
    return _activity(conn, "pid <> pg_backend_pid()")


def listening(conn: psycopg.Connection[Any]) -> bool:
    """Whether a worker's LISTEN connection is there."""
    return _activity(conn, "query = 'LISTEN pgqueue_jobs'") > 0


def _activity(conn: psycopg.Connection[Any], condition: LiteralString) -> int:
    """How many backends of the test database meet ``condition`` (SQL of pg_stat_activity)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
    return int(scalar(conn, query + condition))
