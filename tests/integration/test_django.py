"""pgqueue as a Django task backend, in a real Django project (tests/django_project) on the real
database: the backport (django-tasks) on Python < 3.12, Django 6's own django.tasks on 3.12+.

Django's settings are process-wide, so the project runs in subprocesses: one enqueues (through
a request and in atomic() blocks) and one reads results through the framework's API; between
them a real `pgqueue workoff --app pgqueue.django:handlers` runs the tasks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

import pgqueue

TESTS = Path(__file__).resolve().parents[1]
DEADLINE = 120


def _env(dsn: str, *, settings: bool = True, max_attempts: int = 1) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGQUEUE_", "DJANGO_")) and key != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["PGQUEUE_DJANGO_DSN"] = dsn
    env["PGQUEUE_DJANGO_MAX_ATTEMPTS"] = str(max_attempts)
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    return env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def _step(dsn: str, *args: str, max_attempts: int = 1) -> dict[str, Any]:
    done = _run("-m", "django_project.steps", *args, env=_env(dsn, max_attempts=max_attempts))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _workoff(dsn: str, *, settings: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(
        "-m",
        "pgqueue",
        "workoff",
        "--app",
        "pgqueue.django:handlers",
        "--dsn",
        dsn,
        "--json",
        env=_env(dsn, settings=settings),
    )


def _jobs(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, queue, priority, status, scheduled_at > now() + interval '50 minutes',"
        " completed_at, data FROM pgqueue.jobs WHERE name = 'django.task' ORDER BY id"
    ).fetchall()
    return {
        str(row[0]): {
            "queue": row[1],
            "priority": row[2],
            "status": row[3],
            "later": row[4],
            "completed_at": row[5],
            "data": row[6],
        }
        for row in rows
    }


def test_django_tasks_enqueue_in_the_transaction_run_in_a_worker_and_report_results(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE django_notes (text text NOT NULL)")
    ids = _step(dsn, "enqueue")

    # Which framework ran: Django 6's own on 3.12+, the backport before.
    expected = "django.tasks.base" if sys.version_info >= (3, 12) else "django_tasks.base"
    assert ids["framework"] == expected

    jobs = _jobs(conn)
    # The request that failed and both rolled-back blocks left no job behind.
    assert ids["failed_view_status"] == 500
    assert ids["rolled_back"] not in jobs
    assert ids["bad_args"].startswith("TypeError")
    enqueued = [ids[key] for key in ("view", "committed", "explode", "describe", "note")]
    enqueued += [ids[key] for key in ("urgent", "later", "double", "unserialisable")]
    assert sorted(jobs, key=int) == sorted(enqueued, key=int)
    assert {job["data"]["args"] == [100, 200] for job in jobs.values()} == {False}
    assert {job["data"]["args"] == [7, 7] for job in jobs.values()} == {False}
    assert ids["ready_status"] == "READY"
    assert ids["ready_enqueued_at"] is True
    # Priorities: Django's -100..100 (higher first) stored negated (pgqueue: lower first).
    assert jobs[ids["note"]]["priority"] == -50
    assert jobs[ids["note"]]["queue"] == "emails"
    assert jobs[ids["urgent"]]["priority"] == -100
    assert jobs[ids["committed"]]["priority"] == 0
    assert jobs[ids["later"]]["later"] is True
    assert jobs[ids["committed"]]["data"]["task"] == "django_project.tasks.add"

    worker = _workoff(dsn)
    assert worker.returncode == 0, worker.stderr
    summary = json.loads(worker.stdout)
    assert (summary["completed"], summary["retried"], summary["failed"]) == (6, 0, 2)

    jobs = _jobs(conn)
    finished = sorted(
        (job["completed_at"], job_id) for job_id, job in jobs.items() if job["completed_at"]
    )
    assert finished[0][1] == ids["urgent"]  # the highest Django priority ran first
    assert jobs[ids["later"]]["status"] == "pending"
    # The task's own writes went through Django's connection in the worker.
    assert conn.execute("SELECT text FROM django_notes").fetchall() == [("hello",)]

    results = _step(dsn, "results", json.dumps(ids))
    for key, value in (("view", 5), ("committed", 42), ("note", "HELLO"), ("double", 42)):
        assert results[key]["status"] == "SUCCESSFUL", (key, results[key])
        assert results[key]["return_value"] == value
        assert results[key]["is_finished"] is True
        assert results[key]["attempts"] == 1
        assert results[key]["errors"] == []
        assert results[key]["started_at"]
        assert results[key]["finished_at"]
        # Once the database's completion time, its transaction's start: before the task's.
        started, finished = (
            datetime.fromisoformat(results[key][k]) for k in ("started_at", "finished_at")
        )
        assert finished >= started
    assert results["committed"]["args"] == [40, 2]
    assert results["note"]["priority"] == 50
    assert results["note"]["queue_name"] == "emails"
    assert results["urgent"]["priority"] == 100

    described = results["describe"]
    assert described["status"] == "SUCCESSFUL"
    assert described["kwargs"] == {"extra": {"k": [1, 2]}}
    assert described["return_value"] == {
        "label": "ctx",
        "extra": {"k": [1, 2]},
        "id": ids["describe"],
        "attempt": 1,
        "status": "RUNNING",
    }

    failed = results["explode"]
    assert failed["status"] == "FAILED"
    assert failed["is_finished"] is True
    assert failed["attempts"] == 1
    assert failed["started_at"]
    assert failed["finished_at"]
    assert datetime.fromisoformat(failed["finished_at"]) >= datetime.fromisoformat(
        failed["started_at"]
    )
    [error] = failed["errors"]
    assert error["path"] == "builtins.ValueError"
    assert error["class"] == "ValueError"
    assert "ValueError: boom" in error["traceback"]
    assert "raise ValueError(message)" in error["traceback"]

    [bad_return] = results["unserialisable"]["errors"]
    assert results["unserialisable"]["status"] == "FAILED"
    assert bad_return["path"] == "builtins.TypeError"

    later = results["later"]
    assert later["status"] == "READY"
    assert later["is_finished"] is False
    assert later["attempts"] == 0

    assert results["refreshed_status"] == "SUCCESSFUL"
    assert results["missing"] == ["999999999", "not-a-number"]
    assert results["mismatch"] == "TaskResultMismatch"

    # The stored forms, for anyone reading the job with pgqueue's own tools.
    job = pgqueue.get_job(conn, int(ids["committed"]))
    assert job is not None
    assert job.result is not None
    assert json.loads(job.result)["return_value"] == 42
    failed_job = pgqueue.get_job(conn, int(ids["explode"]))
    assert failed_job is not None
    assert failed_job.last_error is not None
    assert failed_job.last_error.startswith("builtins.ValueError: boom\n")


def test_a_worker_without_django_settings_refuses_to_start(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = pgqueue.add_job_to_queue(
        conn,
        name="django.task",
        data={"task": "django_project.tasks.add", "args": [1, 2], "kwargs": {}},
    )
    worker = _workoff(dsn, settings=False)
    assert worker.returncode != 0
    assert "DJANGO_SETTINGS_MODULE" in worker.stderr
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.status == "pending"
    assert job.attempts == 0


def test_a_cancelled_task_reads_as_failed(dsn: str, conn: psycopg.Connection[Any]) -> None:
    ids = _step(dsn, "enqueue")
    assert pgqueue.cancel_job(conn, int(ids["later"]))
    results = _step(dsn, "results", json.dumps(ids))
    assert results["later"]["status"] == "FAILED"
    [error] = results["later"]["errors"]
    assert error["path"] == "pgqueue.django.TaskCancelled"


def test_a_failed_attempt_with_attempts_left_reads_as_ready_with_its_error(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    ids = _step(dsn, "explode", max_attempts=2)
    worker = _workoff(dsn)
    assert worker.returncode == 0, worker.stderr
    assert (json.loads(worker.stdout)["retried"], json.loads(worker.stdout)["failed"]) == (1, 0)
    results = _step(dsn, "results", json.dumps(ids), max_attempts=2)
    waiting = results["explode"]
    assert waiting["status"] == "READY"
    assert waiting["attempts"] == 1
    assert waiting["started_at"]
    assert not waiting["finished_at"]
    [error] = waiting["errors"]
    assert error["path"] == "builtins.ValueError"
    assert "ValueError: first try" in error["traceback"]


def test_a_task_that_runs_now_reads_as_running(dsn: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    ids = _step(dsn, "wait", str(release))
    log = tmp_path / "worker.log"
    with (
        log.open("w") as output,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgqueue",
                "work",
                "--app",
                "pgqueue.django:handlers",
                "--dsn",
                dsn,
            ],
            env=_env(dsn),
            cwd=TESTS,
            stdout=output,
            stderr=subprocess.STDOUT,
        ) as worker,
    ):
        _watch_running(dsn, ids, release, worker, log)


def _watch_running(
    dsn: str, ids: dict[str, Any], release: Path, worker: subprocess.Popen[bytes], log: Path
) -> None:
    try:
        deadline = time.monotonic() + DEADLINE
        while (status := _step(dsn, "results", json.dumps(ids))["wait_for"])["status"] == "READY":
            assert time.monotonic() < deadline, "the worker never started the task"
            assert worker.poll() is None, log.read_text()
        assert status["status"] == "RUNNING"
        assert status["attempts"] == 1
        assert status["is_finished"] is False
        release.touch()
        while (status := _step(dsn, "results", json.dumps(ids))["wait_for"])[
            "status"
        ] != "SUCCESSFUL":
            assert status["status"] == "RUNNING"
            assert time.monotonic() < deadline, "the task never finished"
        assert status["return_value"] == "released"
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_enqueue_on_a_database_never_migrated_says_to_migrate(empty_dsn: str) -> None:
    # It raised Django's ProgrammingError: relation "pgqueue.jobs" does not exist.
    said = _step(empty_dsn, "unmigrated")["enqueue"]
    assert said.startswith("SchemaNotMigratedError: pgqueue's schema is missing")
    assert "run `pgqueue migrate`" in said
