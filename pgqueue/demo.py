"""``pgqueue demo``: enqueue a few thousand jobs, process them with a progress bar, summarise.

The jobs live in the queue ``pgqueue-demo`` and write their results to the
table ``public.pgqueue_demo_results``; both are emptied at the start, so the
demo can be run again and again. About 5% of the jobs fail on their first
attempt(s) and succeed on retry, a handful fail for good, and one recurring
job ticks every second. Each handler inserts its row inside the job's
transaction: a failed attempt leaves no row, so at the end the table holds
exactly one row per completed job.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TextIO

import psycopg

from . import _queries as q
from ._db import connect, describe_dsn, translate_errors
from ._progress import Progress
from .errors import PgQueueError
from .migrate import latest_version, migrate
from .queue import (
    add_jobs_to_queue,
    add_recurring_job_to_queue,
    average_time_to_completion,
    get_job,
)
from .records import JobRecord
from .worker import Handler, JobQueueWorker

__all__ = ["DEMO_QUEUE", "run_demo"]

#: The queue all demo jobs go to.
DEMO_QUEUE: Final = "pgqueue-demo"
JOB_NAMES: Final = ("demo.send_email", "demo.resize_image", "demo.charge_card")
TICK_NAME: Final = "demo.tick"
MAX_ATTEMPTS: Final = 3
#: Retry quickly so the demo shows retries without waiting for them.
RETRY: Final = {"backoff": "fixed", "delay": 0.2, "jitter": 0}
#: Give up when nothing finishes for this long (the worker logs why).
STALL_SECONDS: Final = 60.0

CREATE_RESULTS: Final = (
    "CREATE TABLE IF NOT EXISTS public.pgqueue_demo_results ("
    " job_id bigint PRIMARY KEY,"
    " name text NOT NULL,"
    " attempt integer NOT NULL,"
    " done_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
CLEAR_RESULTS: Final = "TRUNCATE public.pgqueue_demo_results"
# The demo owns its queue: earlier runs' jobs (and their recurring job) go.
CLEAR_DEMO_JOBS: Final = "DELETE FROM pgqueue.jobs WHERE queue = %s"
CLEAR_PENDING_DEMO_JOBS: Final = "DELETE FROM pgqueue.jobs WHERE queue = %s AND status = 'pending'"
INSERT_RESULT: Final = (
    "INSERT INTO public.pgqueue_demo_results (job_id, name, attempt) VALUES (%s, %s, %s)"
)
RESULT_COUNTS: Final = (
    "SELECT count(*) FILTER (WHERE name <> %s),"
    " coalesce(sum(attempt - 1) FILTER (WHERE name <> %s), 0),"
    " count(*) FILTER (WHERE name <> %s AND attempt > 1)"
    " FROM public.pgqueue_demo_results"
)
DB_CLOCK: Final = "SELECT clock_timestamp()"
# Fresh statistics after the bulk insert: until autovacuum analyzes the
# table, the planner may think it nearly empty and sort every pending job
# on each dequeue.
ANALYZE_JOBS: Final = "ANALYZE pgqueue.jobs"


class DemoTransientError(Exception):
    """A simulated failure that goes away on retry."""


class DemoPermanentError(Exception):
    """A simulated failure that never goes away."""


def _handle(conn: psycopg.Connection[Any], job: JobRecord) -> None:
    """Every demo job: record the attempt, then fail if the job's data says so."""
    conn.execute(INSERT_RESULT, (job.id, job.name, job.attempts))
    fail_times = int(job.data.get("fail_times", 0))
    if job.attempts <= fail_times:
        # The row inserted above is rolled back with the attempt.
        if fail_times >= MAX_ATTEMPTS:
            raise DemoPermanentError(
                f"{job.name} #{job.data['n']}: the remote service refused it "
                "(simulated permanent failure)"
            )
        raise DemoTransientError(
            f"{job.name} #{job.data['n']}: timed out "
            f"(simulated, attempt {job.attempts} of the first {fail_times} that fail)"
        )


def _tick(conn: psycopg.Connection[Any], job: JobRecord) -> None:
    conn.execute(INSERT_RESULT, (job.id, job.name, job.attempts))


def demo_jobs(count: int) -> tuple[list[dict[str, Any]], int, int]:
    """The demo batch, and how many of its jobs fail first and how many fail for good.

    Failures are decided by the data (``fail_times``), compared by the handler
    with the attempt number, so a run is the same every time.
    """
    permanent = max(1, min(5, count // 100))
    # Spread out, and across the job names.
    doomed = {min(count - 1, int((k + 0.5) * count / permanent) + k) for k in range(permanent)}
    jobs: list[dict[str, Any]] = []
    flaky = 0
    for n in range(count):
        fail_times = 0
        if n in doomed:
            fail_times = 99
        elif n % 20 == 7:
            fail_times = 2 if (n // 20) % 3 == 0 else 1
            flaky += 1
        jobs.append(
            {
                "name": JOB_NAMES[n % len(JOB_NAMES)],
                "queue": DEMO_QUEUE,
                "priority": (n * 7) % 10,
                "data": {"n": n, "fail_times": fail_times},
                "max_attempts": MAX_ATTEMPTS,
                "retry": RETRY,
            }
        )
    return jobs, flaky, len(doomed)


class _QuietRetries(logging.Filter):
    """Drops the worker's per-attempt retry and failure lines: the demo reports them at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "action", None) not in ("retry", "fail") and (
            record.levelno >= logging.WARNING
        )


@dataclass
class _Counts:
    completed: int = 0
    failed: int = 0
    ticks: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed


def _counts(conn: psycopg.Connection[Any]) -> _Counts:
    counts = _Counts()
    with translate_errors():
        rows = conn.execute(q.STATUS_COUNTS).fetchall()
    for queue, name, state, count in rows:
        if queue != DEMO_QUEUE:
            continue
        if name == TICK_NAME and state == "completed":
            counts.ticks += count
        elif name in JOB_NAMES and state == "completed":
            counts.completed += count
        elif name in JOB_NAMES and state == "failed":
            counts.failed += count
    return counts


def _clock(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute(DB_CLOCK).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _process(
    conn: psycopg.Connection[Any],
    worker: JobQueueWorker,
    total: int,
    progress: Progress,
) -> tuple[_Counts, float]:
    """Run the worker until every demo job finished and the recurring job ran; return counts and seconds."""
    started = time.monotonic()
    last_change, last_finished = started, -1
    worker.start()
    try:
        while True:
            counts = _counts(conn)
            now = time.monotonic()
            progress.update(counts.finished, note=f"{counts.failed} failed")
            if counts.finished >= total and counts.ticks >= 1:
                return counts, now - started
            if counts.finished != last_finished:
                last_change, last_finished = now, counts.finished
            elif now - last_change > STALL_SECONDS:
                raise PgQueueError(
                    f"the demo stalled: no job finished for {STALL_SECONDS:.0f} s "
                    f"({counts.finished}/{total} done); see the log above"
                )
            time.sleep(0.1)
    finally:
        progress.close()
        worker.stop()


def run_demo(
    dsn: str,
    *,
    jobs: int = 3000,
    concurrency: int = 4,
    verbose: int = 0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Migrate, enqueue ``jobs`` demo jobs, process them with ``concurrency`` slots, print a summary.

    Returns the exit code: 0, or 1 if the result table does not match the
    completed jobs (which would be a bug in pgqueue).
    """
    out = out or sys.stdout
    err = err or sys.stderr

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"pgqueue demo on {describe_dsn(dsn)}")
    with connect(dsn, autocommit=True) as conn:
        applied = migrate(conn)
        say(f"  schema: {'migrated' if applied else 'up to date'} (version {latest_version()})")
        with conn.transaction():
            conn.execute(CREATE_RESULTS)
            conn.execute(CLEAR_RESULTS)
            conn.execute(CLEAR_DEMO_JOBS, (DEMO_QUEUE,))

        batch, flaky, doomed = demo_jobs(jobs)
        started = time.perf_counter()
        ids = add_jobs_to_queue(conn, batch)
        conn.execute(ANALYZE_JOBS)
        say(
            f"  enqueued {len(ids)} jobs in {(time.perf_counter() - started) * 1000:.0f} ms "
            f"(priorities 0-9; {flaky} fail at first and succeed on retry, {doomed} always fail; "
            f"at most {MAX_ATTEMPTS} attempts, {RETRY['delay']} s apart)"
        )
        add_recurring_job_to_queue(
            conn, name=TICK_NAME, interval={"seconds": 1}, priority=0, queue=DEMO_QUEUE
        )
        say(f"  recurring job {TICK_NAME}: every second")
        say(f"  processing with {concurrency} worker slot(s)...")

        handlers: Mapping[str, Handler] = {
            **dict.fromkeys(JOB_NAMES, _handle),
            TICK_NAME: _tick,
        }
        worker = JobQueueWorker(
            dsn,
            handler=handlers,
            parallel_count=concurrency,
            poll_interval=0.2,
            queues=[DEMO_QUEUE],
        )
        worker_logger = logging.getLogger("pgqueue.worker")
        quiet = _QuietRetries()
        if not verbose:
            worker_logger.addFilter(quiet)
        window_start = _clock(conn)
        try:
            counts, elapsed = _process(
                conn, worker, len(ids), Progress(len(ids), err, plain=True, interval=0)
            )
        finally:
            worker_logger.removeFilter(quiet)
        window_end = _clock(conn)

        # Leave nothing running behind: the recurring job and any tick it queued.
        conn.execute(CLEAR_PENDING_DEMO_JOBS, (DEMO_QUEUE,))
        row = conn.execute(RESULT_COUNTS, (TICK_NAME, TICK_NAME, TICK_NAME)).fetchone()
        assert row is not None
        result_rows, retried_completed, recovered = (int(v) for v in row)
        failed_jobs = [
            job
            for job in (
                get_job(conn, ids[i])
                for i, j in enumerate(batch)
                if j["data"]["fail_times"] >= MAX_ATTEMPTS
            )
            if job is not None
        ]
        retried = retried_completed + sum(job.attempts - 1 for job in failed_jobs)
        average = average_time_to_completion(conn, window_start, window_end, queues=[DEMO_QUEUE])

    example = next((job for job in failed_jobs if job.last_error), None)
    say()
    say("Summary")
    say(f"  completed              {counts.completed:>7}  ({recovered} of them after a retry)")
    say(f"  retried attempts       {retried:>7}  (failed attempts that were run again)")
    say(f"  failed for good        {counts.failed:>7}  (after {MAX_ATTEMPTS} attempts each)")
    if example is not None and example.last_error:
        say(f"    e.g. job {example.id}: {example.last_error.splitlines()[0]}")
    say(f"  recurring runs         {counts.ticks:>7}  ({TICK_NAME}, every second)")
    say(f"  elapsed                {elapsed:>7.2f}  s")
    say(f"  throughput             {counts.finished / elapsed:>7.0f}  jobs/s")
    say(f"  avg time to completion {average:>7.3f}  s (scheduled_at to completed_at)")
    matches = result_rows == counts.completed
    say(
        f"  result rows            {result_rows:>7}  in public.pgqueue_demo_results: "
        + (
            "one per completed job; failed attempts were rolled back with their writes"
            if matches
            else f"MISMATCH with {counts.completed} completed jobs"
        )
    )
    say()
    say("Next: `pgqueue status` shows the counts per queue, name and state;")
    say("      `pgqueue work --app yourmodule:handlers` runs your own jobs.")
    return 0 if matches else 1
