"""Scenario 5b, Python's floor: the least a Python process can spend per job with pgqueue's transaction shape.

The pgbench ceiling is C code deleting a job in one statement. A Python worker
that runs its handler inside the job's transaction needs a round trip per job
(complete and commit, with the next claim after the commit, as pgqueue sends
it) and a savepoint, and it shares the machine's cores with Postgres. This
measures that shape with nothing else: threads in one process, each on its own
connection, sending through libpq directly (pipeline mode, one write per round
trip, as pgqueue does) BEGIN + a minimal ``FOR UPDATE SKIP LOCKED`` claim +
SAVEPOINT once, then RELEASE SAVEPOINT + an UPDATE to completed + COMMIT + the
next BEGIN, claim and SAVEPOINT (at least once a second without the next claim, which
then goes in a round trip of its own, as pgqueue does so that autovacuum sees the work),
on pgqueue's own table (the UPDATE outside the
savepoint, as pgqueue does: inside it, Postgres makes a MultiXact per job and
the claims slow down as they walk index entries no scan can mark dead). No start records, no handler call, no job
record: what is left between this floor and the pgbench ceiling is Python and
the round trips; what is left between pgqueue and this floor is pgqueue's own
bookkeeping. Batch mode's shape too, for handlers that send nothing (no-op
jobs; pgqueue takes a savepoint again only after a handler that talked to the
server): one RELEASE + UPDATE of 50 + COMMIT + the next claim of 50 + SAVEPOINT.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any, Final

import psycopg
from psycopg import pq

from pgqueue._wire import STATS_EVERY

from .loading import bulk_enqueue, pending_count, vacuum_analyze
from .plan import Plan
from .server import Server
from .stats import summarize

_CLAIM: Final = (
    b"SELECT id FROM pgqueue.jobs WHERE status = 'pending' AND scheduled_at <= now()"
    b" ORDER BY priority, scheduled_at, id LIMIT %d FOR UPDATE SKIP LOCKED"
)
_DONE: Final = (
    b"UPDATE pgqueue.jobs SET status = 'completed', attempts = attempts + 1,"
    b" completed_at = now(), updated_at = now() WHERE id = ANY ($1::bigint[])"
)


def _replies(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Every result up to the next sync (raises on an error)."""
    results = []
    while True:
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.DatabaseError((result.error_message or b"").decode())
        results.append(result)


def _trip(pgconn: pq.abc.PGconn, statements: list[tuple[bytes, list[bytes] | None]]) -> Any:
    for name, params in statements:
        if name.startswith(b"floor_"):
            pgconn.send_query_prepared(name, params)
        else:
            pgconn.send_query_params(name, params)
    pgconn.pipeline_sync()
    while pgconn.flush():
        select.select([], [pgconn.socket], [])
    return _replies(pgconn)


def _slot(dsn: str, batch: int, done: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        pgconn.send_prepare(b"floor_claim", _CLAIM % batch)
        pgconn.send_prepare(b"floor_done", _DONE)
        pgconn.pipeline_sync()
        pgconn.flush()
        _replies(pgconn)
        count = 0
        claiming = [(b"BEGIN", None), (b"floor_claim", None), (b"SAVEPOINT s", None)]
        claim = _trip(pgconn, claiming)[1]
        paused = time.monotonic()
        while True:
            ids = [claim.get_value(row, 0) for row in range(claim.ntuples)]
            if not ids:
                _trip(pgconn, [(b"ROLLBACK", None)])
                break
            array = b"{" + b",".join(i or b"" for i in ids) + b"}"
            complete = [(b"RELEASE SAVEPOINT s", None), (b"floor_done", [array]), (b"COMMIT", None)]
            if time.monotonic() - paused >= STATS_EVERY:  # as pgqueue._wire's commit does
                _trip(pgconn, complete)
                claim = _trip(pgconn, claiming)[1]
                paused = time.monotonic()
            else:
                claim = _trip(pgconn, [*complete, *claiming])[4]
            count += len(ids)
        done.append(count)


def drain(dsn: str, threads: int, batch: int) -> float:
    """jobs/s of ``threads`` floor slots over everything queued."""
    done: list[int] = []
    slots = [threading.Thread(target=_slot, args=(dsn, batch, done)) for _ in range(threads)]
    start = time.perf_counter()
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()
    elapsed = time.perf_counter() - start
    with psycopg.connect(dsn) as conn:
        left = pending_count(conn)
    if left or len(done) != threads:
        raise RuntimeError(
            f"the floor left {left} jobs pending ({len(done)}/{threads} slots ended)"
        )
    return sum(done) / elapsed


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """The floor at the drain scenario's thread counts, one job per transaction and batches of 50."""
    cases = {f"threads_{n}": (n, 1) for n in plan.drain_threads}
    cases.update({f"batch_{n}": (n, plan.batch_size) for n in plan.batch_threads})
    samples: dict[str, list[float]] = {key: [] for key in cases}
    for repeat in range(plan.repeats):
        for key, (threads, batch) in cases.items():
            with server.database(f"floor_{key}") as dsn:
                bulk_enqueue(dsn, plan.drain_jobs)
                vacuum_analyze(dsn)
                rate = drain(dsn, threads, batch)
            samples[key].append(rate)
            log(
                f"  floor {key:<12} {plan.drain_jobs:>7} jobs  {rate:>9.0f} jobs/s  (run {repeat + 1})"
            )
    return {key: summarize(samples[key], jobs=plan.drain_jobs) for key in cases}
