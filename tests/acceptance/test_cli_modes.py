"""The worker's modes on the command line: --batch-size, --handler-timeout and --lease, as real processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_helpers import run_cli, wait_until

import pgqueue

#: Each job records the transaction it ran in and whether it ran inside one; "sleep" sleeps.
MODES_APP = """
import time


def record(conn, job):
    in_transaction = conn.info.transaction_status.name == "INTRANS"
    conn.execute(
        "INSERT INTO mode_results (job_id, txid, in_transaction) VALUES (%s, txid_current(), %s)",
        (job.id, in_transaction),
    )


def sleep(conn, job):
    time.sleep(float(job.data["seconds"]))


handlers = {"record": record, "sleep": sleep}
"""


@pytest.fixture
def app_dir(tmp_path: Path, conn: psycopg.Connection[Any]) -> Path:
    conn.execute(
        "CREATE TABLE mode_results (job_id bigint PRIMARY KEY, txid bigint NOT NULL,"
        " in_transaction boolean NOT NULL)"
    )
    (tmp_path / "modes_app.py").write_text(MODES_APP, encoding="utf-8")
    return tmp_path


def _workoff(dsn: str, cwd: Path, *args: str) -> str:
    result = run_cli("workoff", "--app", "modes_app:handlers", "--dsn", dsn, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _transactions(conn: psycopg.Connection[Any], ids: list[int]) -> list[list[int]]:
    """The jobs ``ids`` grouped by the transaction they ran in, in id order."""
    rows = conn.execute(
        "SELECT job_id, txid FROM mode_results WHERE job_id = ANY (%s) ORDER BY job_id", (ids,)
    ).fetchall()
    groups: dict[int, list[int]] = {}
    for job_id, txid in rows:
        groups.setdefault(txid, []).append(job_id)
    return list(groups.values())


def test_batch_size_runs_jobs_together_and_timeout_and_lease_reach_the_worker(
    dsn: str, app_dir: Path, conn: psycopg.Connection[Any]
) -> None:
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "record"}] * 7)
    assert "7 completed" in _workoff(dsn, app_dir, "--batch-size", "3")
    assert _transactions(conn, ids) == [ids[0:3], ids[3:6], ids[6:]]

    # The default: one job per transaction, as with PGQUEUE_BATCH_SIZE unset.
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "record"}] * 2)
    _workoff(dsn, app_dir)
    assert _transactions(conn, ids) == [[ids[0]], [ids[1]]]

    slow = pgqueue.add_job_to_queue(conn, name="sleep", data={"seconds": 5}, max_attempts=1)
    _workoff(dsn, app_dir, "--handler-timeout", "0.5")  # the watchdog settles it, not the slot
    job = pgqueue.get_job(conn, slow)
    assert job is not None
    assert job.status == "failed"
    assert job.last_error is not None
    assert "timed out after 0.5 s" in job.last_error

    leased = pgqueue.add_job_to_queue(conn, name="record")
    _workoff(dsn, app_dir, "--lease", "30")
    row = conn.execute("SELECT in_transaction FROM mode_results WHERE job_id = %s", (leased,))
    assert row.fetchone() == (False,), "lease mode runs the handler outside a transaction"


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--batch-size", "51"], {}, 2, "must be at most 50, got 51"),
        (["--batch-size", "0"], {}, 2, "must be at least 1, got 0"),
        (["--handler-timeout", "-1"], {}, 2, "must be more than 0"),
        (["--lease", "10", "--batch-size", "2"], {}, 1, "does not go with --batch-size"),
        ([], {"PGQUEUE_BATCH_SIZE": "many"}, 1, "PGQUEUE_BATCH_SIZE='many'"),
    ],
)
def test_bad_mode_options_are_clear_errors(
    dsn: str, app_dir: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    for command in ("workoff", "start"):
        result = run_cli(
            command, "--app", "modes_app:handlers", "--dsn", dsn, *args, env=env, cwd=app_dir
        )
        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert not (app_dir / ".pgqueue" / "run").exists() or not list(
        (app_dir / ".pgqueue" / "run").glob("*.pid")
    ), "no worker was started"


def _command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_start_passes_the_modes_to_its_workers(
    dsn: str, app_dir: Path, conn: psycopg.Connection[Any]
) -> None:
    run_dir = app_dir / "run"
    env = {"PGQUEUE_RUN_DIR": str(run_dir), "PGQUEUE_HANDLER_TIMEOUT": "2.5"}
    app = ("--app", "modes_app:handlers", "--dsn", dsn)
    started = run_cli("start", *app, "--batch-size", "4", env=env, cwd=app_dir)
    assert started.returncode == 0, started.stderr + started.stdout
    (pid_file,) = run_dir.glob("worker.*.pid")
    pid = int(pid_file.read_text(encoding="utf-8").split()[0])
    try:
        line = _command_line(pid)
        assert line[line.index("--batch-size") + 1] == "4"
        assert line[line.index("--handler-timeout") + 1] == "2.5"
        assert "--lease" not in line
        ids = pgqueue.add_jobs_to_queue(conn, [{"name": "record"}] * 4)
        wait_until(lambda: sum(map(len, _transactions(conn, ids))) == 4, what="the 4 jobs")
    finally:
        stopped = run_cli("stop", "--dsn", dsn, env=env, cwd=app_dir)
        if stopped.returncode != 0:
            os.kill(pid, signal.SIGKILL)
    assert stopped.returncode == 0, stopped.stderr
