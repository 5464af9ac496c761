"""Lease mode: run a long job outside any transaction, holding it by a lease its worker keeps extending.

Opt-in (``JobQueueWorker(..., lease=seconds)``). The slot claims the job as
usual, marks it ``running`` with ``lease_until = now() + lease`` and commits
at once, so no transaction stays open while the handler runs (an hour-long
transaction holds back VACUUM for the whole database). The handler gets the
slot's connection in autocommit mode: each statement commits on its own, and
``with conn.transaction():`` blocks are real transactions. The worker's
supervisor extends the lease every third of it; the outcome is recorded in a
short transaction of its own (``pgqueue.complete_leased`` /
``pgqueue.fail_leased``, which check that this attempt still holds the job).

The price: the handler's writes are no longer atomic with the job's
completion. A worker that dies after the handler's writes and before the
completion leaves a job whose lease expires; dequeue then counts the attempt
and retries it, and the handler runs again: at least once, not exactly once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from . import _queries as q
from ._input import stored_result
from .builtins import next_run
from .records import JobRecord
from .supervisor import new_token

if TYPE_CHECKING:
    from ._wire import ClaimTransaction
    from .claim import ClaimRunner, _Slot

__all__ = ["claim_and_run"]

logger = logging.getLogger(__name__)


def claim_and_run(
    worker: ClaimRunner,
    conn: psycopg.Connection[Any],
    tx: ClaimTransaction,
    claimed: JobRecord,
    slot: _Slot,
) -> None:
    """Lease ``claimed`` (locked by the open ``tx``), commit, run its handler, record the outcome."""
    assert worker.lease is not None
    rows = conn.execute(q.LEASE_JOBS, ([claimed.id], worker.lease)).fetchall()
    tx.commit([])  # the job is 'running', its row lock is gone
    if not rows:
        return
    job = JobRecord.from_row(rows[0])
    token = new_token()
    # Its attempt is counted already; the start record keeps its worker and next run.
    worker._supervisor.start_claim([job], token, leased=True)
    finished: list[int] = []
    try:
        _run(worker, conn, job, slot, token)
        finished.append(job.id)
    finally:
        worker._supervisor.end_claim(token, finished=finished)


def _run(
    worker: ClaimRunner,
    conn: psycopg.Connection[Any],
    job: JobRecord,
    slot: _Slot,
    token: int,
) -> None:
    supervisor = worker._supervisor
    supervisor.hold(job)
    watch = None
    try:
        timeout = worker._timeout_of(job)
        if timeout is not None:
            watch = supervisor.arm(
                slot,
                job,
                ids=[job.id],
                token=token,
                pid=conn.info.backend_pid,
                timeout=timeout,
                leased=True,
            )
        error, value = worker._call_handler(conn, job)
    finally:
        supervisor.release(job)
        fired = watch is not None and supervisor.disarm(watch)
    if fired and watch is not None:
        worker._abandon(conn, watch)
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        if error is None:
            error = (
                "RuntimeError: the handler left a transaction open on its connection; "
                "it was rolled back (in lease mode each statement commits on its own, "
                "or use `with conn.transaction():`)"
            )
        conn.rollback()
    if not conn.broken and not conn.closed:
        conn.autocommit = True
    unstorable, result = stored_result(value)
    _record(worker, conn, job, error or unstorable, result)


def _record(
    worker: ClaimRunner,
    conn: psycopg.Connection[Any],
    job: JobRecord,
    error: str | None,
    result: str | None,
) -> None:
    """Complete or fail the attempt in a short transaction; on a lost connection, once more on a new one."""
    next_at = next_run(job, datetime.now(UTC))
    for retry in (False, True):
        try:
            target = conn if not retry else worker._connection()
            try:
                with target.transaction():
                    if error is None:
                        row = target.execute(
                            q.COMPLETE_LEASED, (job.id, job.attempts, result, next_at)
                        ).fetchone()
                    else:
                        row = target.execute(
                            q.FAIL_LEASED, (job.id, job.attempts, error, next_at)
                        ).fetchone()
            finally:
                if retry:
                    target.close()
            break
        except psycopg.OperationalError:
            if retry:
                raise
            logger.warning(
                "job %d (%s): lost the connection after its handler returned; recording its"
                " outcome on a new one",
                job.id,
                job.name,
            )
    if error is None:
        if row is not None and row[0]:
            worker._log_done(job)
        else:
            logger.warning(
                "job %d (%s) finished after losing its lease (it expired, or the job timed out):"
                " its completion is not recorded",
                job.id,
                job.name,
                extra={
                    "job_id": job.id,
                    "queue": job.queue,
                    "job_name": job.name,
                    "action": "lost",
                },
            )
    else:
        worker._log_failure(job, error, row)
