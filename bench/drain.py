"""Scenario 2, drain: a queued backlog worked off by 1, 4, 16 threads, 2 processes, asyncio, batch mode.

The batch mode is the lead's opt-in ``JobQueueWorker(batch_size=...)``; it is
detected with inspect.signature and skipped with a note while it does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

import pgqueue
from pgqueue import aio, supervisor

from .loading import bulk_enqueue, noop, pending_count, vacuum_analyze
from .plan import Plan
from .server import Server
from .stats import summarize

_ROOT = Path(__file__).resolve().parent.parent


def has_batch_mode() -> bool:
    """True when JobQueueWorker takes ``batch_size`` (the lead's batch mode)."""
    return "batch_size" in inspect.signature(pgqueue.JobQueueWorker.__init__).parameters


def drain_threads(dsn: str, threads: int, *, batch_size: int = 0) -> tuple[float, int]:
    """Time ``work_off()`` with ``threads`` slots over everything queued; (jobs/s, jobs done)."""
    kwargs: dict[str, Any] = {"handler": noop, "parallel_count": threads}
    if batch_size:
        kwargs["batch_size"] = batch_size
    worker = pgqueue.JobQueueWorker(dsn, **kwargs)
    start = time.perf_counter()
    stats = worker.work_off()
    elapsed = time.perf_counter() - start
    with psycopg.connect(dsn) as conn:
        left = pending_count(conn)
    if left:
        raise RuntimeError(f"work_off() returned with {left} jobs still pending")
    return stats.completed / elapsed, stats.completed


@contextlib.contextmanager
def without_start_records() -> Iterator[None]:
    """An ablation, not a mode pgqueue has: the JobQueueWorkers made inside write no start records.

    A start record is what counts an attempt whose handler killed its process (see "Jobs that
    break their workers" in the README); the default mode writes one per claim on the worker's
    side connection. Measured side by side with the real worker (scenario 8), the difference is
    what crash accounting costs, and the rate without it what the rest of the worker reaches.
    The finished attempts still go to the side connection once, when the worker stops.
    """
    saved = supervisor.to_record
    supervisor.to_record = lambda jobs, token: None
    try:
        yield
    finally:
        supervisor.to_record = saved


def drain_asyncio(dsn: str, slots: int) -> tuple[float, int]:
    """Time pgqueue.aio's ``work_off()`` with ``slots`` tasks; (jobs/s, jobs done)."""

    async def handler(conn: Any, job: Any) -> None:
        return None

    async def work_off() -> tuple[float, int]:
        worker = aio.AsyncJobQueueWorker(dsn, handler=handler, parallel_count=slots)
        start = time.perf_counter()
        stats = await worker.work_off()
        return stats.completed / (time.perf_counter() - start), stats.completed

    rate, done = asyncio.run(work_off())
    with psycopg.connect(dsn) as conn:
        left = pending_count(conn)
    if left:
        raise RuntimeError(f"work_off() returned with {left} jobs still pending")
    return rate, done


def drain_processes(
    dsn: str, processes: int, threads: int, *, batch_size: int = 0
) -> tuple[float, int]:
    """``processes`` subprocesses each run work_off() with ``threads`` slots, started together."""
    command = [
        sys.executable,
        "-m",
        "bench.worker_proc",
        "drain",
        "--dsn",
        dsn,
        "--threads",
        str(threads),
        "--batch-size",
        str(batch_size),
    ]
    children = [
        subprocess.Popen(
            command, cwd=_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"worker process did not start (said {line!r})")
        start = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=600)[0] for child in children]
        elapsed = time.perf_counter() - start
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    completed = sum(json.loads(out.strip().splitlines()[-1])["completed"] for out in outputs)
    return completed / elapsed, completed


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """jobs/s until the queue is empty, per worker shape; each sample on a fresh database."""
    cases: dict[str, dict[str, Any]] = {
        f"threads_{n}": {"threads": n, "processes": 1, "batch_size": 0} for n in plan.drain_threads
    }
    cases[f"processes_{plan.drain_processes}x{plan.threads_per_process}"] = {
        "threads": plan.threads_per_process,
        "processes": plan.drain_processes,
        "batch_size": 0,
    }
    for n in plan.drain_asyncio:
        cases[f"asyncio_{n}"] = {"threads": n, "processes": 1, "batch_size": 0, "asyncio": True}
    batch = has_batch_mode()
    if batch:
        for n in plan.batch_threads:
            cases[f"batch_{n}"] = {"threads": n, "processes": 1, "batch_size": plan.batch_size}
    samples: dict[str, list[float]] = {key: [] for key in cases}
    for repeat in range(plan.repeats):
        for key, case in cases.items():
            with server.database(f"drain_{key}") as dsn:
                bulk_enqueue(dsn, plan.drain_jobs)
                vacuum_analyze(dsn)
                if case.get("asyncio"):
                    rate, done = drain_asyncio(dsn, case["threads"])
                elif case["processes"] == 1:
                    rate, done = drain_threads(dsn, case["threads"], batch_size=case["batch_size"])
                else:
                    rate, done = drain_processes(
                        dsn, case["processes"], case["threads"], batch_size=case["batch_size"]
                    )
            if done != plan.drain_jobs:
                log(f"  drain {key}: {done} jobs completed of {plan.drain_jobs}")
            samples[key].append(rate)
            log(
                f"  drain {key:<16} {plan.drain_jobs:>7} jobs  {rate:>9.0f} jobs/s  (run {repeat + 1})"
            )
    result: dict[str, Any] = {
        key: summarize(samples[key], jobs=plan.drain_jobs, **cases[key]) for key in cases
    }
    result["batch_mode"] = (
        {"available": True, "batch_size": plan.batch_size}
        if batch
        else {
            "available": False,
            "note": "JobQueueWorker has no batch_size parameter yet: batch scenarios skipped",
        }
    )
    return result
