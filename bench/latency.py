"""Scenario 3, latency: enqueue-commit to handler-start on an idle, started worker.

The worker polls only every 5 s, so what wakes it is the NOTIFY. Both ends are
stamped with time.perf_counter in this one process: the enqueuer when its
autocommit insert returned (the commit is done), the handler when it starts.
The first few jobs warm the worker up and are not counted (the same for peers).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

import pgqueue

from .loading import NOOP
from .plan import Plan
from .server import Server
from .stats import latency_summary

WARMUP_JOBS = 5


def measure(dsn: str, plan: Plan, count: int) -> list[float]:
    """Delays in seconds of ``count`` jobs enqueued ``plan.latency_spacing`` apart."""
    total = count + WARMUP_JOBS
    started: dict[int, float] = {}
    all_started = threading.Event()

    def handler(conn: psycopg.Connection[Any], job: Any) -> None:
        started[job.data["i"]] = time.perf_counter()
        if len(started) >= total:
            all_started.set()

    worker = pgqueue.JobQueueWorker(
        dsn,
        handler={NOOP: handler},
        parallel_count=plan.latency_threads,
        poll_interval=plan.latency_poll_interval,
    )
    committed: dict[int, float] = {}
    worker.start()
    try:
        time.sleep(1.0)  # let the slots go idle and the listener LISTEN
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(total):
                pgqueue.add_job_to_queue(conn, name=NOOP, data={"i": i})
                committed[i] = time.perf_counter()
                time.sleep(plan.latency_spacing)
        all_started.wait(timeout=plan.latency_poll_interval * 2 + 5)
    finally:
        worker.stop()
    return [started[i] - committed[i] for i in range(WARMUP_JOBS, total) if i in started]


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """p50/p95/p99 over every repeat's samples pooled, plus each repeat's own."""
    pooled: list[float] = []
    runs = []
    for repeat in range(plan.repeats):
        with server.database("latency") as dsn:
            delays = measure(dsn, plan, plan.latency_jobs)
        summary = latency_summary(delays, expected=plan.latency_jobs)
        runs.append(summary)
        pooled.extend(delays)
        log(
            f"  latency p50 {summary['p50_ms']} ms  p95 {summary['p95_ms']} ms  "
            f"p99 {summary['p99_ms']} ms  ({summary['count']} jobs, run {repeat + 1})"
        )
    return {
        **latency_summary(pooled, expected=plan.latency_jobs * plan.repeats),
        "runs": runs,
        "threads": plan.latency_threads,
        "poll_interval_s": plan.latency_poll_interval,
        "spacing_ms": plan.latency_spacing * 1000,
        "warmup_jobs": WARMUP_JOBS,
    }
