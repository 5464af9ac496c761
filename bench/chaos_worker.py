"""A chaos-run worker process: ``python -m bench.chaos_worker --dsn DSN --threads N``.

Runs one :class:`pgqueue.JobQueueWorker` whose handler writes a result row
(job id, this process's pid) in the job's transaction, logs to stderr, and
stops gracefully on SIGTERM or SIGINT (exit code 0). Every half second it
checks that the worker's long-lived threads (slots, listener, supervisor,
pool workers) are still alive: a dead one is logged and ends the process
with exit code 3, which the chaos run counts as a failure (a worker must
ride through anything the run does to it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Final

import psycopg

import pgqueue

#: The table every handler writes to; no unique constraint, so duplicates show.
RESULTS_TABLE_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS chaos_results ("
    " job_id bigint NOT NULL,"
    " pid integer NOT NULL,"
    " done_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
INSERT_RESULT: Final = "INSERT INTO chaos_results (job_id, pid) VALUES (%s, %s)"

#: The job name the chaos run enqueues and its workers claim.
JOB_NAME: Final = "chaos"

#: Exit code when a worker thread died.
THREAD_DIED: Final = 3

logger = logging.getLogger("bench.chaos_worker")


def handler(conn: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
    """Write the job's result row inside its transaction."""
    conn.execute(INSERT_RESULT, (job.id, os.getpid()))


def _start(worker: pgqueue.JobQueueWorker, stop: threading.Event) -> bool:
    """Start the worker, retrying while the server is unreachable (a restart); False if stopped."""
    delay = 0.1
    while not stop.is_set():
        try:
            worker.start()
            return True
        except pgqueue.ConnectError as exc:
            logger.warning("could not start (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 2.0)
    return False


def _long_lived_threads() -> set[str]:
    """The names of the worker's long-lived threads (slots, listener, supervisor, pool workers)."""
    return {
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith("pgqueue-") and not thread.name.startswith("pgqueue-timeout")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_worker")
    parser.add_argument("--dsn", required=True, help="the chaos database (with application_name)")
    parser.add_argument("--threads", type=int, default=4, help="worker slots (parallel_count)")
    parser.add_argument("--batch-size", type=int, default=1, help="jobs per slot's transaction")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(process)d %(threadName)s %(levelname)s %(name)s: "
        "%(message)s",
        datefmt="%H:%M:%S",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = pgqueue.JobQueueWorker(
        args.dsn,
        JOB_NAME,
        handler=handler,
        parallel_count=args.threads,
        poll_interval=args.poll_interval,
        batch_size=args.batch_size,
    )
    if not _start(worker, stop):
        return 0
    expected = _long_lived_threads()
    while not stop.wait(0.5):
        dead = expected - _long_lived_threads()
        if dead:
            logger.error("worker thread(s) died: %s; exiting", ", ".join(sorted(dead)))
            return THREAD_DIED
    started = time.monotonic()
    worker.stop()
    logger.info("stopped in %.1f s: %s", time.monotonic() - started, worker.stats.as_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
