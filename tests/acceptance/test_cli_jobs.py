"""`pgqueue jobs`, `clear`, `retry` and `cancel` as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import psycopg
import pytest
from cli_helpers import clean_env, command, run_cli

import pgqueue


def _fail(conn: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
    raise ValueError("x" * 100 + "\nsecond line of the error")


def _make_failed(dsn: str, count: int, *, name: str = "bad", queue: str = "default") -> list[int]:
    """``count`` jobs that failed for good, with a long first line of error."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = pgqueue.add_jobs_to_queue(
            conn, [{"name": name, "queue": queue, "max_attempts": 1}] * count
        )
    stats = pgqueue.JobQueueWorker(dsn, name, handler=_fail, queues=[queue]).work_off()
    assert stats.failed == count
    return ids


def _statuses(conn: psycopg.Connection[Any], ids: list[int]) -> list[str]:
    found = []
    for job_id in ids:
        job = pgqueue.get_job(conn, job_id)
        found.append("missing" if job is None else str(job.status))
    return found


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert row is not None
    return int(row[0])


# -- jobs ---------------------------------------------------------------------------------


def test_jobs_lists_newest_first_and_filters(dsn: str, conn: psycopg.Connection[Any]) -> None:
    hello = pgqueue.add_jobs_to_queue(conn, [{"name": "hello"}] * 3)
    mail = pgqueue.add_jobs_to_queue(conn, [{"name": "send", "queue": "mail"}] * 2)
    (failed,) = _make_failed(dsn, 1)

    table = run_cli("jobs", "--dsn", dsn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "QUEUE",
        "NAME",
        "STATUS",
        "ATTEMPTS",
        "SCHEDULED_AT",
        "LAST_ERROR",
    ]
    assert set(lines[1]) <= {"-", " "}
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == sorted([*hello, *mail, failed], reverse=True)
    first = rows[0]
    assert first[:5] == [str(failed), "default", "bad", "failed", "1/1"]
    # Only the first line of the error, cut short.
    assert "ValueError: xxx" in lines[2]
    assert lines[2].endswith("...")
    assert "second line" not in table.stdout
    by_id = {int(row[0]): row for row in rows}
    assert by_id[mail[0]][1:5] == ["mail", "send", "pending", "0/5"]

    def ids(*args: str) -> list[int]:
        result = run_cli("jobs", "--json", "--dsn", dsn, *args)
        assert result.returncode == 0, result.stderr
        return [job["id"] for job in json.loads(result.stdout)["jobs"]]

    assert ids("--status", "failed") == [failed]
    assert ids("--queue", "mail") == sorted(mail, reverse=True)
    assert ids("--name", "hello") == sorted(hello, reverse=True)
    assert ids("--name", "hello", "--status", "pending", "--limit", "2") == sorted(hello)[::-1][:2]
    assert ids("--queue", "nowhere") == []

    as_json = run_cli("jobs", "--json", "--status", "failed", "--dsn", dsn)
    (job,) = json.loads(as_json.stdout)["jobs"]
    assert job["status"] == "failed"
    assert (job["attempts"], job["max_attempts"]) == (1, 1)
    assert job["last_error"].startswith("ValueError: xxx")
    assert "T" in job["scheduled_at"]

    empty = run_cli("jobs", "--queue", "nowhere", "--dsn", dsn)
    assert empty.stdout.strip() == "no jobs found"
    bad = run_cli("jobs", "--status", "lost", "--dsn", dsn)
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr
    assert "pending" in bad.stderr
    assert "JobStatus" not in bad.stderr  # the plain words, not the enum's repr


# -- clear --------------------------------------------------------------------------------


def test_clear_needs_yes_without_a_terminal(dsn: str, conn: psycopg.Connection[Any]) -> None:
    pgqueue.add_jobs_to_queue(conn, [{"name": "a"}] * 3 + [{"name": "b", "queue": "mail"}] * 2)

    refused = run_cli("clear", "--dsn", dsn)  # stdin is not a terminal
    assert refused.returncode == 1
    assert "pgqueue: error: clear would delete 5 jobs" in refused.stderr
    assert "--yes" in refused.stderr
    assert _count(conn) == 5

    one_queue = run_cli("clear", "--yes", "--queue", "mail", "--dsn", dsn)
    assert one_queue.returncode == 0, one_queue.stderr
    assert one_queue.stdout.strip() == "deleted 2 jobs of queue mail"
    assert _count(conn) == 3

    everything = run_cli("clear", "--yes", "--json", "--dsn", dsn)
    assert everything.returncode == 0, everything.stderr
    assert json.loads(everything.stdout) == {"deleted": 3}
    assert _count(conn) == 0

    # Nothing to delete: nothing to confirm either.
    nothing = run_cli("clear", "--dsn", dsn)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.strip() == "deleted 0 jobs"


@pytest.mark.parametrize(("answer", "left"), [("y\n", 0), ("n\n", 2), ("", 2)])
def test_clear_asks_on_a_terminal(
    dsn: str, conn: psycopg.Connection[Any], answer: str, left: int
) -> None:
    pgqueue.add_jobs_to_queue(conn, [{"name": "a"}] * 2)
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            command("clear", "--dsn", dsn),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            text=True,
        )
        os.write(controller, answer.encode() or b"\x04")  # ^D: end of input
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert "Delete 2 jobs in " in out
    assert out.split("? [y/N] ")[1].strip() == (
        "deleted 2 jobs" if left == 0 else "nothing deleted"
    )
    assert proc.returncode == (0 if left == 0 else 1), err
    assert _count(conn) == left


# -- retry --------------------------------------------------------------------------------


def test_retry_ids_and_failed(dsn: str, conn: psycopg.Connection[Any]) -> None:
    bad = _make_failed(dsn, 3)
    mail = _make_failed(dsn, 2, name="mailer", queue="mail")
    pending = pgqueue.add_job_to_queue(conn, name="fine")

    one = run_cli("retry", str(bad[0]), "--dsn", dsn)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "retried 1 of 1 job"
    assert _statuses(conn, bad) == ["pending", "failed", "failed"]

    # A pending job and an unknown id are not retried: said, and exit 1.
    some = run_cli("retry", str(bad[1]), str(pending), "999999", "--dsn", dsn)
    assert some.returncode == 1
    assert some.stdout.strip() == "retried 1 of 3 jobs"
    assert f"job {pending} was not retried" in some.stderr
    assert "job 999999 was not retried" in some.stderr
    assert _statuses(conn, bad) == ["pending", "pending", "failed"]

    # --failed with a filter: only the mail queue's.
    only_mail = run_cli("retry", "--failed", "--queue", "mail", "--json", "--dsn", dsn)
    assert only_mail.returncode == 0, only_mail.stderr
    assert json.loads(only_mail.stdout) == {"count": 2}
    assert _statuses(conn, mail) == ["pending", "pending"]
    assert _statuses(conn, bad)[2] == "failed"

    rest = run_cli("retry", "--failed", "--dsn", dsn)
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.strip() == "retried 1 failed or cancelled job"
    assert _statuses(conn, bad) == ["pending"] * 3
    job = pgqueue.get_job(conn, bad[2])
    assert job is not None
    # Out of attempts before: one more.
    assert job.attempts < job.max_attempts

    for args in (["retry"], ["retry", "1", "--failed"], ["retry", "1", "--name", "x"]):
        wrong = run_cli(*args, "--dsn", dsn)
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("pgqueue: error: ")


# -- cancel -------------------------------------------------------------------------------


def test_cancel_ids_and_by_name_and_data(dsn: str, conn: psycopg.Connection[Any]) -> None:
    ids = pgqueue.add_jobs_to_queue(
        conn,
        [
            {"name": "sync", "data": {"shop": 1, "full": True}},
            {"name": "sync", "data": {"shop": 1}},
            {"name": "sync", "data": {"shop": 2}},
            {"name": "sync", "data": {"shop": 1}, "queue": "slow"},
            {"name": "other", "data": {"shop": 1}},
        ],
    )
    (failed,) = _make_failed(dsn, 1)

    by_id = run_cli("cancel", str(ids[4]), str(failed), "--dsn", dsn)
    assert by_id.returncode == 1
    assert by_id.stdout.strip() == "cancelled 1 of 2 jobs"
    assert f"job {failed} was not cancelled" in by_id.stderr
    assert _statuses(conn, [ids[4], failed]) == ["cancelled", "failed"]

    in_queue = run_cli(
        "cancel", "--name", "sync", "--queue", "slow", "--data", '{"shop": 1}', "--dsn", dsn
    )
    assert in_queue.returncode == 0, in_queue.stderr
    assert in_queue.stdout.strip() == "cancelled 1 pending job"

    # Containment: {"shop": 1} matches {"shop": 1, "full": true} too.
    by_data = run_cli("cancel", "--name", "sync", "--data", '{"shop": 1}', "--json", "--dsn", dsn)
    assert by_data.returncode == 0, by_data.stderr
    assert json.loads(by_data.stdout) == {"count": 2}
    assert _statuses(conn, ids) == ["cancelled", "cancelled", "pending", "cancelled", "cancelled"]

    for args in (["cancel"], ["cancel", "1", "--name", "sync"], ["cancel", "--data", "{bad"]):
        wrong = run_cli(*args, "--dsn", dsn)
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("pgqueue: error: ")
        assert "Traceback" not in wrong.stderr
    assert _statuses(conn, ids)[2] == "pending"
