"""Scenario 7, worker memory: RSS of an idle started worker process, and as it drains many jobs.

The worker process (``bench.worker_proc serve``) runs a default-mode worker and
a batch-mode one beside it, each on a queue of its own: both modes' code runs
a hundred thousand times or more, and 10^6 jobs fit in the run's time (default
mode alone drains about 1,400 jobs/s here: 12 minutes; it gets a tenth of them,
as a fifth ran out of time in a slow stretch). This process feeds
them jobs in chunks (keeping the backlog bounded), ``memory_batch_share`` of
each for the batch-mode worker, and reads the process's VmRSS from /proc. Growth is
reported from idle and from the first checkpoint (after the first chunk, once
caches and prepared plans exist), which is what a leak shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from .loading import load_jobs, pending_count
from .plan import Plan
from .server import Server
from .stats import rss_bytes

_ROOT = Path(__file__).resolve().parent.parent
_MIB = 2**20


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """RSS samples (jobs done, MiB) of one worker process over ``plan.memory_jobs`` jobs."""
    with server.database("memory") as dsn:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.worker_proc",
                "serve",
                "--dsn",
                dsn,
                "--threads",
                str(plan.memory_threads),
                "--batch-threads",
                str(plan.memory_batch_threads),
                "--batch-size",
                str(plan.batch_size),
                "--poll-interval",
                "1.0",
            ],
            cwd=_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            return _measure(dsn, child, plan, log)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def _measure(dsn: str, child: subprocess.Popen[str], plan: Plan, log: Any) -> dict[str, Any]:
    assert child.stdout is not None
    assert child.stdin is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("worker process did not start")
    time.sleep(2.0)
    idle = rss_bytes(child.pid)
    if idle is None:
        raise RuntimeError("worker process exited")
    log(f"  memory idle worker RSS {idle / _MIB:.1f} MiB")
    samples: list[tuple[int, float]] = [(0, idle / _MIB)]
    loaded = 0
    started = time.perf_counter()
    capped = False
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            pending = pending_count(conn)
            done = loaded - pending
            if loaded < plan.memory_jobs and pending < plan.memory_chunk // 2:
                chunk = min(plan.memory_chunk, plan.memory_jobs - loaded)
                batch = round(chunk * plan.memory_batch_share)
                load_jobs(dsn, chunk - batch)
                load_jobs(dsn, batch, queue="batch")
                loaded += chunk
            rss = rss_bytes(child.pid)
            if rss is None:
                raise RuntimeError("worker process died while draining")
            if (
                not samples
                or done - samples[-1][0] >= plan.memory_chunk
                or (loaded >= plan.memory_jobs and pending == 0)
            ):
                samples.append((done, rss / _MIB))
            if loaded >= plan.memory_jobs and pending == 0:
                break
            if time.perf_counter() - started > plan.memory_cap:
                capped = True
                samples.append((done, rss / _MIB))
                break
            time.sleep(0.5)
    elapsed = time.perf_counter() - started
    out, _ = child.communicate(timeout=60)  # closes its stdin: the worker stops
    final = samples[-1]
    warm = samples[1] if len(samples) > 2 else samples[0]
    counts = out.strip().splitlines()[-1] if out.strip() else None
    result = {
        "threads": plan.memory_threads,
        "batch_threads": plan.memory_batch_threads,
        "batch_size": plan.batch_size,
        "batch_share": plan.memory_batch_share,
        "jobs_target": plan.memory_jobs,
        "jobs_done": final[0],
        "capped": capped,
        "cap_s": plan.memory_cap,
        "elapsed_s": round(elapsed, 1),
        "jobs_per_s": round(final[0] / elapsed, 1) if elapsed else None,
        "idle_rss_mib": round(idle / _MIB, 2),
        "final_rss_mib": round(final[1], 2),
        "growth_from_idle_mib": round(final[1] - idle / _MIB, 2),
        "warm_rss_mib": round(warm[1], 2),
        "warm_at_jobs": warm[0],
        "growth_after_warmup_mib": round(final[1] - warm[1], 2),
        "samples": [(jobs, round(mib, 2)) for jobs, mib in samples],
        "worker_stats": json.loads(counts) if counts else None,
    }
    log(
        f"  memory after {final[0]} jobs: RSS {final[1]:.1f} MiB "
        f"(+{result['growth_from_idle_mib']} from idle, "
        f"+{result['growth_after_warmup_mib']} after warm-up){' (time cap hit)' if capped else ''}"
    )
    return result
