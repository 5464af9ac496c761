"""No plan of the claim can read the finished jobs, whatever the statistics say.

A worker prepares its claim once per connection and Postgres settles on a
generic plan, so one bad plan costs every claim until the next ANALYZE. The
claim's lease check (is any lease-mode job overdue?) asks for running rows,
meant for jobs_lease_idx. While the index over finished jobs took running rows
too, statistics taken before any job finished (bench/: a template database
vacuumed empty, a bulk enqueue of 20,000 jobs, VACUUM ANALYZE) had the check
planned on that index, and each claim read every job finished so far: 200
million index entries read while draining those 20,000 jobs, at half the rate.
The test takes jobs_lease_idx away (in a transaction rolled back) and makes
every other way look dear: the finished jobs' index must still not be usable.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.sql
import pytest

import pgqueue
from pgqueue import _queries as q


def generic_plan(conn: psycopg.Connection[Any], statement: bytes, params: list[Any]) -> str:
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.execute(b"PREPARE probe AS " + statement)
    args = psycopg.sql.SQL(", ").join(map(psycopg.sql.Literal, params))
    explain = psycopg.sql.SQL("EXPLAIN EXECUTE probe ({})" if params else "EXPLAIN EXECUTE probe")
    try:
        return "\n".join(row[0] for row in conn.execute(explain.format(args)))
    finally:
        conn.execute("DEALLOCATE probe")


@pytest.mark.parametrize("queues", [None, ["default"], ["default", "other"]])
def test_no_plan_of_the_claim_reads_the_finished_jobs(conn, queues):
    pgqueue.add_jobs_to_queue(conn, [{"name": "noop"} for _ in range(100)])
    conn.execute("UPDATE pgqueue.jobs SET status = 'completed' WHERE id % 2 = 0")
    conn.commit()
    claim, params = q.claim_statement(1, queues, None)
    with conn.transaction(force_rollback=True):
        conn.execute("DROP INDEX pgqueue.jobs_lease_idx")
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        plan = generic_plan(conn, claim, params)
    assert "jobs_finished_idx" not in plan, plan


@pytest.mark.parametrize("bloated", [False, True])
def test_start_records_are_looked_up_by_their_ids(conn, bloated):
    # job_starts churns a row per claim: between vacuums (or while a long job holds the
    # horizon back) it spans many pages of dead rows around a few live ones, and its
    # statistics then make a sequential scan look cheapest; statistics taken while it was
    # empty made a walk of its whole index look cheapest, with sequential scans off. Either
    # reads every row per start. The finished attempts' rows must be looked up by their ids.
    # (Planned once per connection: force_generic_plan.)
    if bloated:
        conn.execute(
            "INSERT INTO pgqueue.job_starts (job_id, attempt, token)"
            " SELECT i, 1, i FROM generate_series(1, 20000) AS i"
        )
        conn.execute("DELETE FROM pgqueue.job_starts WHERE job_id % 5000 <> 0")
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE pgqueue.job_starts")
    conn.autocommit = False
    params = [[1], [1], [None], "w", 1, [1], [2], [3], [False]]
    with conn.transaction(force_rollback=True):
        conn.execute(q.START_SETTINGS)
        plan = generic_plan(conn, q.START_JOBS, params)
    assert "Seq Scan" not in plan, plan
    assert "Index Cond: (job_id = ANY" in plan, plan
    # Matched with the finished pairs by a hash, not pair by pair: a plan made while the table
    # was empty nested the loops and compared every row with every pair (105 ms for 800).
    assert "Nested Loop" not in plan, plan


@pytest.mark.parametrize("queues", [None, ["limited"], ["default", "limited"]])
def test_a_limited_queue_is_asked_for_a_pending_job_through_its_index(conn, queues):
    # With a limited queue in reach, the claim asks whether the queue has a pending job (if not,
    # the plain claim goes on). Statistics taken while the table was empty must not make that
    # question a read of every job, once per claim.
    conn.execute("ANALYZE pgqueue.jobs")
    pgqueue.configure_queue(conn, "limited", max_concurrency=1)
    pgqueue.add_jobs_to_queue(conn, [{"name": "noop"} for _ in range(1000)])
    conn.commit()
    claim, params = q.claim_statement(1, queues, None)
    with conn.transaction(force_rollback=True):
        plan = generic_plan(conn, claim, params)
    assert "jobs_queue_dequeue_idx on jobs l" in plan, plan
    assert "Seq Scan on jobs l" not in plan, plan
