"""`pgqueue enqueue`: one job from options, bulk from a JSON-lines file or stdin, all or nothing;
`migrate --json`; progress bars drawn on a terminal only."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_helpers import clean_env, command, run_cli, write_app

import pgqueue
from pgqueue._cli_enqueue import CHUNK
from pgqueue.migrate import latest_version


def _count(dsn: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM pgqueue.jobs WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def run_tty(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``python -m pgqueue ARGS`` with stderr on a pseudo-terminal; (code, stdout, stderr)."""
    main, side = os.openpty()
    try:
        proc = subprocess.Popen(
            command(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=side,
            env=clean_env(),
            cwd=cwd,
        )
    finally:
        os.close(side)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=timeout)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    return code, out, b"".join(chunks).decode(errors="replace")


def test_one_job_from_options(dsn: str) -> None:
    result = run_cli(
        "enqueue",
        "--dsn",
        dsn,
        "--name",
        "email.send",
        "--data",
        '{"to": "a@example.com"}',
        "--queue",
        "mail",
        "--priority",
        "high",
        "--max-attempts",
        "2",
        "--at",
        "2031-05-06T07:08:09+02:00",
    )
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"enqueued job (\d+)\n", result.stdout)
    assert match, result.stdout
    with psycopg.connect(dsn) as conn:
        job = pgqueue.get_job(conn, int(match[1]))
    assert job is not None
    assert (job.name, job.queue, job.data, job.priority, job.max_attempts) == (
        "email.send",
        "mail",
        {"to": "a@example.com"},
        -10,
        2,
    )
    assert job.scheduled_at == datetime(2031, 5, 6, 5, 8, 9, tzinfo=UTC)

    as_json = run_cli("enqueue", "--dsn", dsn, "--name", "plain", "--priority", "7", "--json")
    assert as_json.returncode == 0, as_json.stderr
    job_id = json.loads(as_json.stdout)["id"]
    with psycopg.connect(dsn) as conn:
        plain = pgqueue.get_job(conn, job_id)
    assert plain is not None
    assert (plain.name, plain.queue, plain.priority, plain.status) == (
        "plain",
        "default",
        7,
        "pending",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "2031-01-01T00:00:00"], "has no time zone"),
        (["--at", "soon"], "is not an ISO-8601"),
        (["--data", "{oops"], "--data is not valid JSON"),
        (["--priority", "urgent"], "unknown priority name"),
        (["--name", "pgqueue.recurring"], "reserved"),
        (["--from", "/nonexistent/jobs.jsonl"], "No such file"),
    ],
)
def test_bad_options_are_clear_errors(dsn: str, args: list[str], message: str) -> None:
    result = run_cli("enqueue", "--dsn", dsn, *args)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _count(dsn) == 0


def test_bulk_from_a_file_in_chunks(dsn: str, tmp_path: Path) -> None:
    total = 2 * CHUNK + 17  # three COPYs
    source = tmp_path / "jobs.jsonl"
    with source.open("w", encoding="utf-8") as f:
        for n in range(total):
            job: dict[str, Any] = {"name": "resize", "data": {"n": n}}
            if n % 1000 == 0:
                job.update(queue="images", priority=3, scheduled_at="2031-01-01T00:00:00Z")
            f.write(json.dumps(job) + "\n")
            if n == 5:
                f.write("\n")  # blank lines are skipped
    result = run_cli("enqueue", "--dsn", dsn, "--from", str(source), "--queue", "bulk")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"enqueued {total:,} jobs from {re.escape(str(source))} in \d+\.\d\d s "
        r"\([\d,]+ jobs/s\)\n",
        result.stdout,
    ), result.stdout
    # Not a terminal: no progress bar.
    assert result.stderr == ""
    assert _count(dsn) == total
    # The options are defaults; a line's own keys win.
    assert _count(dsn, "queue = 'bulk' AND priority = 1") == total - 11
    assert _count(dsn, "queue = 'images' AND priority = 3 AND scheduled_at > now()") == 11
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT (data->>'n')::int), min((data->>'n')::int),"
            " max((data->>'n')::int) FROM pgqueue.jobs"
        ).fetchone()
    assert row == (total, 0, total - 1)


def test_bulk_from_stdin_with_json_summary(dsn: str) -> None:
    lines = "".join(json.dumps({"name": "s", "data": {"n": n}}) + "\n" for n in range(3))
    result = subprocess.run(
        command("enqueue", "--dsn", dsn, "--from", "-", "--json", "--delay", "60"),
        input=lines,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enqueued"] == 3
    assert summary["source"] == "standard input"
    assert summary["elapsed_seconds"] >= 0
    assert summary["jobs_per_second"] >= 0
    assert _count(dsn, "name = 's' AND scheduled_at > now() + interval '30 seconds'") == 3


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"nmae": "typo"}', "unknown job key(s) 'nmae'"),
        ('{"name": "x", "scheduled_at": "2031-01-01"}', "has no time zone"),
        ('{"name": "x", "priority": "urgent"}', "unknown priority name"),
        ('{"name": "x", "data": {"s": "\\u0000"}}', "NUL"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_written(
    dsn: str, tmp_path: Path, bad: str, message: str
) -> None:
    # The bad line comes after a whole chunk has been copied: the transaction undoes it.
    bad_line = CHUNK + 3
    source = tmp_path / "jobs.jsonl"
    with source.open("w", encoding="utf-8") as f:
        for n in range(1, CHUNK + 10):
            f.write((bad if n == bad_line else json.dumps({"name": "ok", "data": {"n": n}})) + "\n")
    result = run_cli("enqueue", "--dsn", dsn, "--from", str(source))
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(f"pgqueue: error: line {bad_line}: "), result.stderr
    assert message in result.stderr
    assert "nothing was enqueued" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert _count(dsn) == 0


def test_a_line_that_is_not_utf8(dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_bytes(b'{"name": "a"}\n{"name": "\xff"}\n')
    result = run_cli("enqueue", "--dsn", dsn, "--from", str(source))
    assert result.returncode == 1
    assert "line 2: not UTF-8" in result.stderr
    assert _count(dsn) == 0


def test_migrate_json(empty_dsn: str) -> None:
    first = run_cli("migrate", "--dsn", empty_dsn, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["version"] == latest_version()
    assert report["applied"][0] == "0001_jobs"
    assert len(report["applied"]) == latest_version()
    again = json.loads(run_cli("migrate", "--dsn", empty_dsn, "--json").stdout)
    assert again == {"applied": [], "version": latest_version(), "roles": False}


def test_progress_bars_on_a_terminal(dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        "".join(json.dumps({"name": "fast", "data": {"n": n}}) + "\n" for n in range(300)),
        encoding="utf-8",
    )
    code, out, err = run_tty("enqueue", "--dsn", dsn, "--from", str(source))
    assert code == 0, err
    assert out.startswith("enqueued 300 jobs")
    assert "\r[##############################] 300 jobs 100%" in err

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE cli_results (job_id bigint PRIMARY KEY, name text NOT NULL,"
            " attempt int NOT NULL)"
        )
    app = write_app(tmp_path)
    code, out, err = run_tty(
        "workoff", "--dsn", dsn, "--app", f"{app}:handlers", "-c", "2", cwd=tmp_path
    )
    assert code == 0, err
    assert out.strip().endswith(": 300 completed, 0 retried, 0 failed")
    assert "\r[##############################] 300/300 100%" in err
    assert "0 failed" in err
    # The per-job INFO lines are left out while the bar is drawn.
    assert " done in " not in err
    assert "Traceback" not in err
