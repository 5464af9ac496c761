"""Putting jobs into pgqueue's table for the scenarios, and the no-op handlers that run them."""

from __future__ import annotations

from typing import Any, Final

import psycopg

import pgqueue

NOOP: Final = "noop"

# Server-side generation: a backlog of a million rows loads in seconds and
# fires the statement-level NOTIFY trigger once. %(names)s > 1 spreads the
# jobs over names noop0 .. noop<names-1>.
_LOAD: Final = """
INSERT INTO pgqueue.jobs (queue, name, data, status, scheduled_at, attempts, completed_at)
SELECT %(queue)s,
       CASE WHEN %(names)s > 1 THEN 'noop' || (g %% %(names)s) ELSE 'noop' END,
       jsonb_build_object('i', g),
       %(status)s,
       now() + make_interval(secs => %(delay)s),
       CASE WHEN %(status)s = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN %(status)s = 'pending' THEN NULL ELSE now() END
FROM generate_series(1, %(count)s) AS g
"""

_PENDING: Final = "SELECT count(*) FROM pgqueue.jobs WHERE status = 'pending'"
_DUE: Final = "SELECT count(*) FROM pgqueue.jobs WHERE status = 'pending' AND scheduled_at <= now()"


def noop(conn: psycopg.Connection[Any], job: Any) -> None:
    """The benchmark's handler: does nothing, so only the queue's own cost is measured."""


def name_handlers(names: int) -> dict[str, Any]:
    """A handler mapping over ``names`` distinct job names (noop0 .. noopN-1)."""
    return {f"noop{i}": noop for i in range(names)}


def load_jobs(
    dsn: str,
    count: int,
    *,
    status: str = "pending",
    delay_seconds: float = 0.0,
    names: int = 1,
    queue: str = "default",
) -> None:
    """Insert ``count`` jobs in one statement (finished ones when ``status`` is 'completed')."""
    params = {"count": count, "status": status, "delay": delay_seconds, "names": names}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_LOAD, params | {"queue": queue})


def bulk_enqueue(dsn: str, count: int) -> None:
    """Queue ``count`` no-op jobs through pgqueue's bulk API, as an application would."""
    jobs = [{"name": NOOP, "data": {"i": i}} for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, count, 100_000):
            pgqueue.add_jobs_to_queue(conn, jobs[start : start + 100_000])


def vacuum_analyze(dsn: str) -> None:
    """VACUUM ANALYZE the jobs table, so every run starts from fresh statistics."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgqueue.jobs")


def pending_count(conn: psycopg.Connection[Any], *, due_only: bool = False) -> int:
    """How many pending jobs are left (only the due ones when ``due_only``)."""
    row = conn.execute(_DUE if due_only else _PENDING).fetchone()
    return int(row[0]) if row else 0
