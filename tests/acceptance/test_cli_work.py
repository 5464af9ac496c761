"""`pgqueue work` as a real subprocess: it runs jobs, and SIGINT / SIGTERM stop it gracefully."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_helpers import CREATE_RESULTS, clean_env, command, wait_until, write_app

import pgqueue


class Worker:
    """A `pgqueue work` subprocess whose output goes to files (no pipe can fill up)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    @property
    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []
    app = write_app(tmp_path)

    def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        out, err = tmp_path / f"out{len(started)}.txt", tmp_path / f"err{len(started)}.txt"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            proc = subprocess.Popen(
                command("work", *[a.replace("APP", app) for a in args]),
                cwd=tmp_path,
                env=clean_env(env),
                stdout=out_file,
                stderr=err_file,
            )
        worker = Worker(proc, out, err)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=30)


@pytest.fixture
def results_conn(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(CREATE_RESULTS)
    return conn


def _rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM cli_results").fetchone()
    assert row is not None
    return int(row[0])


def test_work_runs_jobs_and_stops_on_sigint(
    dsn: str, results_conn: psycopg.Connection[Any], start_worker: Any
) -> None:
    conn = results_conn
    wanted = pgqueue.add_jobs_to_queue(
        conn,
        [{"name": "fast", "queue": "a"}] * 10 + [{"name": "fast", "queue": "c"}] * 10,
    )
    # Not in the worker's queues, and first in line if the filter were ignored.
    other = pgqueue.add_jobs_to_queue(conn, [{"name": "fast", "queue": "b", "priority": 0}] * 5)

    # Queues and concurrency from the environment; the callable handler form.
    worker = start_worker(
        "--app",
        "APP:fast",
        "--dsn",
        dsn,
        "--poll-interval",
        "0.2",
        env={"PGQUEUE_QUEUE": "a,c", "PGQUEUE_CONCURRENCY": "2"},
    )

    def all_done() -> bool:
        jobs = [pgqueue.get_job(conn, job_id) for job_id in wanted]
        return all(job is not None and job.status == "completed" for job in jobs)

    wait_until(all_done, what="the worker to complete its 20 jobs")
    # Every handler's row committed with its job; one INFO line per job.
    assert _rows(conn) == 20
    wait_until(lambda: worker.stderr.count(" done in ") == 20, what="20 'done in' lines")

    assert worker.stop(signal.SIGINT) == 0
    log = worker.stderr
    assert "concurrency 2" in log
    assert "queues a, c" in log
    assert "SIGINT" in log
    assert "worker stopped cleanly" in log
    assert "Traceback" not in log
    for job_id in other:
        job = pgqueue.get_job(conn, job_id)
        assert job is not None
        assert job.status == "pending"
        assert job.attempts == 0


def test_sigterm_lets_the_running_job_finish(
    dsn: str, results_conn: psycopg.Connection[Any], start_worker: Any
) -> None:
    conn = results_conn
    slow = pgqueue.add_job_to_queue(conn, name="slow", data={"seconds": 2})
    worker = start_worker("--app", "APP:handlers", "--dsn", dsn, "-c", "2")

    def running() -> bool:
        job = pgqueue.get_job(conn, slow)
        return job is not None and job.status == "running"

    wait_until(running, what="the slow job to start")
    assert worker.stop(signal.SIGTERM) == 0

    job = pgqueue.get_job(conn, slow)
    assert job is not None
    assert job.status == "completed"
    assert _rows(conn) == 1
    log = worker.stderr
    assert "SIGTERM" in log
    assert f"job {slow} slow done in" in log
    assert "names fast, slow" in log


def test_failing_handler_is_logged_and_retried(
    dsn: str, results_conn: psycopg.Connection[Any], start_worker: Any, tmp_path: Path
) -> None:
    conn = results_conn
    (tmp_path / "broken_app.py").write_text(
        "def handle(conn, job):\n"
        "    conn.execute('INSERT INTO cli_results VALUES (%s, %s, %s)',"
        " (job.id, job.name, job.attempts))\n"
        "    raise ValueError('boom from the handler')\n",
        encoding="utf-8",
    )
    job_id = pgqueue.add_job_to_queue(conn, name="x", max_attempts=1)
    worker = start_worker("--app", "broken_app:handle", "--dsn", dsn)

    def failed() -> bool:
        job = pgqueue.get_job(conn, job_id)
        return job is not None and job.status == "failed"

    wait_until(failed, what="the job to fail")
    wait_until(lambda: "boom from the handler" in worker.stderr, what="the failure in the log")
    assert worker.stop(signal.SIGINT) == 0
    # The handler's row was rolled back with the failed attempt.
    assert _rows(conn) == 0
