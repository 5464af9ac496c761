"""Scenario 1, enqueue: one job per transaction, many in one transaction, the bulk API, raw COPY."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

import pgqueue

from .loading import NOOP
from .plan import Plan
from .server import Server
from .stats import summarize

# The same columns pgqueue's bulk COPY fills, so COPY does the same work minus pgqueue.
_COPY: Final = (
    "COPY pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry, schedule)"
    " FROM STDIN"
)


def _single(dsn: str, count: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(count):
            pgqueue.add_job_to_queue(conn, name=NOOP, data={"i": i})
        return count / (time.perf_counter() - start)


def _many_in_one_transaction(dsn: str, count: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        with conn.transaction():
            for i in range(count):
                pgqueue.add_job_to_queue(conn, name=NOOP, data={"i": i})
        return count / (time.perf_counter() - start)


def _bulk(dsn: str, count: int) -> float:
    jobs = [{"name": NOOP, "data": {"i": i}} for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        ids = pgqueue.add_jobs_to_queue(conn, jobs)
        elapsed = time.perf_counter() - start
    assert len(ids) == count
    return count / elapsed


def _copy(dsn: str, count: int) -> float:
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as copy:
            for i in range(count):
                copy.write_row(("default", NOOP, f'{{"i": {i}}}', 1, now, 5, None, None))
        return count / (time.perf_counter() - start)


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """jobs/s of each way in; each sample on a fresh database."""
    cases = {
        "single": (_single, plan.enqueue_single),
        "many_in_one_tx": (_many_in_one_transaction, plan.enqueue_single),
        "bulk": (_bulk, plan.enqueue_bulk),
        "copy": (_copy, plan.enqueue_bulk),
    }
    samples: dict[str, list[float]] = {key: [] for key in cases}
    for repeat in range(plan.repeats):
        for key, (fn, count) in cases.items():
            with server.database(f"enqueue_{key}") as dsn:
                rate = fn(dsn, count)
            samples[key].append(rate)
            log(f"  enqueue {key:<15} {count:>7} jobs  {rate:>9.0f} jobs/s  (run {repeat + 1})")
    return {key: summarize(samples[key], jobs=cases[key][1]) for key in cases}
