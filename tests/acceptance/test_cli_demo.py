"""`pgqueue demo`: on the test database, twice in a row, and on the embedded server (no DSN at all)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_helpers import clean_env, command, run_cli, wait_until


def _summary(stdout: str) -> dict[str, int]:
    numbers = {}
    for key, label in {
        "completed": "completed",
        "retried": "retried attempts",
        "failed": "failed for good",
        "recurring": "recurring runs",
        "rows": "result rows",
    }.items():
        match = re.search(rf"^  {label}\s+(\d+)", stdout, re.MULTILINE)
        assert match, f"no '{label}' line in:\n{stdout}"
        numbers[key] = int(match[1])
    return numbers


def _check_summary(stdout: str, jobs: int) -> dict[str, int]:
    numbers = _summary(stdout)
    permanent = max(1, min(5, jobs // 100))
    assert numbers["completed"] + numbers["failed"] == jobs
    assert numbers["failed"] == permanent
    # ~5% fail at first: one or two retries each, plus two per permanent failure.
    assert numbers["retried"] >= jobs // 20 + 2 * permanent
    assert numbers["recurring"] >= 1
    assert numbers["rows"] == numbers["completed"]
    assert "DemoPermanentError" in stdout
    assert re.search(r"throughput\s+\d+\s+jobs/s", stdout)
    assert re.search(r"avg time to completion\s+\d+\.\d+", stdout)
    return numbers


def _db_counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM public.pgqueue_demo_results WHERE name <> 'demo.tick'),"
        " (SELECT count(*) FROM pgqueue.jobs WHERE queue = 'pgqueue-demo'"
        "   AND status = 'completed' AND name <> 'demo.tick'),"
        " (SELECT count(*) FROM pgqueue.jobs WHERE queue = 'pgqueue-demo' AND status = 'pending')"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_demo_runs_twice(dsn: str) -> None:
    first = run_cli("demo", "--jobs", "300", "-c", "2", "--dsn", dsn, timeout=120)
    assert first.returncode == 0, first.stderr + first.stdout
    numbers = _check_summary(first.stdout, 300)
    # Not a terminal: a progress line about every 10%, ending at 100%.
    progress = [line for line in first.stderr.splitlines() if line.startswith("[")]
    percents = [int(re.findall(r"(\d+)%", line)[0]) for line in progress]
    assert 1 <= len(progress) <= 11
    assert percents == sorted(set(percents))
    assert "300/300 100%" in progress[-1]
    assert "Traceback" not in first.stderr

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _db_counts(conn) == (numbers["completed"], numbers["completed"], 0)

        # Again, smaller: the demo starts from a clean slate.
        second = run_cli("demo", "--jobs", "150", "--dsn", dsn, timeout=120)
        assert second.returncode == 0, second.stderr + second.stdout
        again = _check_summary(second.stdout, 150)
        assert _db_counts(conn) == (again["completed"], again["completed"], 0)


@pytest.mark.slow
def test_demo_on_the_embedded_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "pgdata"
    demo = run_cli("demo", "--jobs", "200", "-c", "2", "--data-dir", str(data_dir), timeout=180)
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert f"data directory {data_dir}" in demo.stderr
    numbers = _check_summary(demo.stdout, 200)
    assert (data_dir / "PG_VERSION").exists()
    # The server stopped with the command.
    assert not (data_dir / "postmaster.pid").exists()

    # The data stays: status (from PGQUEUE_DATA_DIR this time) starts it again.
    status = run_cli("status", "--json", env={"PGQUEUE_DATA_DIR": str(data_dir)}, timeout=120)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["rows"]
    demo_completed = sum(
        row["completed"]
        for row in rows
        if row["queue"] == "pgqueue-demo" and row["name"] != "demo.tick"
    )
    assert demo_completed == numbers["completed"]


def _interruptible() -> None:
    """In the child: SIGINT at its default, so that Python turns it into KeyboardInterrupt. A
    test run in a shell's background job (``&``) starts with SIGINT ignored, and a child that
    inherits that installs no handler: the demo then ran on, as ``pgqueue demo &`` would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_demo_exits_quietly(
    dsn: str, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    err = tmp_path / "stderr.txt"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            command("demo", "--jobs", "20000", "-c", "1", "--dsn", dsn),
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            env=clean_env(),
            preexec_fn=_interruptible,  # noqa: PLW1509 (a test, no threads that matter)
        )
    try:
        wait_until(lambda: "[" in err.read_text(), timeout=60, what="the progress bar")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = err.read_text()
    assert "Traceback" not in text
    assert "100%" not in text
