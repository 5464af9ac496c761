"""Scenario 4, scale: the drain rate with big backlogs, long history, future jobs and many names.

Each case loads its rows server-side, VACUUM ANALYZEs, then a started worker
(4 threads) runs a fixed number of jobs; the rate is taken between the first
and the last of those handler starts, so start-up is not in it. Dequeue should
stay flat: each case is reported as a ratio to the smallest pending backlog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

import pgqueue

from .loading import load_jobs, name_handlers, vacuum_analyze
from .plan import Plan
from .server import Server
from .stats import ratio


def timed_drain(
    dsn: str, drained: int, threads: int, handlers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run a started worker until ``drained`` handlers have started; jobs/s between first and last."""
    stamps: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def handler(conn: psycopg.Connection[Any], job: Any) -> None:
        now = time.perf_counter()
        with lock:
            if len(stamps) < drained:
                stamps.append(now)
                if len(stamps) == drained:
                    done.set()

    mapping: Callable[..., Any] | dict[str, Any]
    mapping = dict.fromkeys(handlers, handler) if handlers else handler
    worker = pgqueue.JobQueueWorker(dsn, handler=mapping, parallel_count=threads, poll_interval=1.0)
    worker.start()
    try:
        finished = done.wait(timeout=max(120.0, drained / 50))
    finally:
        worker.stop()
    if not finished or len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} of {drained} jobs ran")
    elapsed = stamps[-1] - stamps[0]
    return {"jobs_per_s": (len(stamps) - 1) / elapsed, "drained": len(stamps)}


def _cases(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = [
        (f"pending_{n}", {"pending": n, "kind": "pending"}) for n in plan.scale_pending
    ]
    cases.append(
        (
            f"history_{plan.scale_history}",
            {"pending": plan.scale_due, "history": plan.scale_history, "kind": "history"},
        )
    )
    cases.append(
        (
            f"future_{plan.scale_future}",
            {"pending": plan.scale_due, "future": plan.scale_future, "kind": "future"},
        )
    )
    cases.append(
        (
            f"names_{plan.scale_names}",
            {"pending": plan.scale_due, "names": plan.scale_names, "kind": "names"},
        )
    )
    return cases


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """Drain rate (C=4) per backlog shape and its ratio to the smallest pending backlog."""
    results: dict[str, Any] = {}
    for key, case in _cases(plan):
        with server.database(f"scale_{case['kind']}") as dsn:
            started = time.perf_counter()
            if case.get("history"):
                load_jobs(dsn, case["history"], status="completed")
            if case.get("future"):
                load_jobs(dsn, case["future"], delay_seconds=86_400)
            load_jobs(dsn, case["pending"], names=case.get("names", 1))
            vacuum_analyze(dsn)
            load_s = time.perf_counter() - started
            drained = min(plan.scale_drained, case["pending"])
            handlers = name_handlers(case["names"]) if case.get("names") else None
            measured = timed_drain(dsn, drained, plan.scale_threads, handlers)
        results[key] = {
            **case,
            **measured,
            "load_s": round(load_s, 1),
            "threads": plan.scale_threads,
        }
        log(
            f"  scale {key:<16} {measured['jobs_per_s']:>9.0f} jobs/s "
            f"({measured['drained']} drained, load {load_s:.1f} s)"
        )
    base = results.get(f"pending_{plan.scale_pending[0]}", {}).get("jobs_per_s")
    for entry in results.values():
        entry["ratio_to_smallest"] = ratio(entry["jobs_per_s"], base)
    return results
