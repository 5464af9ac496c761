"""The worker: claim due jobs, run each handler inside its job's transaction, complete or fail it.

Each slot (thread) owns one connection and runs, per job:

1. ``BEGIN; SELECT ... FROM pgqueue.dequeue(...); SAVEPOINT`` in one round trip
   (psycopg pipeline mode); the job's row stays locked by this transaction.
2. ``handler(conn, job)`` on that connection, inside the transaction.
3. Success: ``pgqueue.complete(id); COMMIT`` in one round trip: the handler's
   writes and the completion commit together.
   Failure: ``ROLLBACK TO SAVEPOINT; pgqueue.fail(id, error); COMMIT``: the
   handler's writes vanish, the failed attempt is recorded and the job is
   scheduled again with backoff (or marked failed when out of attempts).

A worker that dies mid-job loses nothing: Postgres rolls the transaction back
and the job is due again. Idle slots sleep until a NOTIFY (one listener
connection per worker) or ``poll_interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import psycopg
from psycopg import Transaction
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from . import _queries as q
from . import queue as _queue
from ._db import connect
from ._input import check_text
from ._waker import Waker
from .builtins import BUILTIN_NAMES, RECURRING_JOB_NAME, next_run, run_builtin
from .errors import ConfigurationError, JobFailed
from .migrate import check_schema
from .records import JobRecord, WorkerStats

__all__ = ["Handler", "JobQueueWorker", "RECURRING_JOB_NAME", "WorkerStats"]

logger = logging.getLogger(__name__)

#: A handler: called with the connection (inside the job's transaction) and the job.
Handler: TypeAlias = Callable[[psycopg.Connection[Any], JobRecord], object]

_MAX_ERROR_LENGTH: Final = 16_000
_RECONNECT_MAX_DELAY: Final = 5.0
_LISTEN_TICK: Final = 0.25


class JobQueueWorker:
    """Runs jobs from the queue in background threads.

    ``sql`` is a DSN string (the worker then keeps its own pool of
    ``parallel_count`` connections) or a psycopg_pool ConnectionPool with
    room for ``parallel_count`` connections held for the worker's life.

    ``handler(conn, job)`` is called for each job with a connection already
    inside the job's transaction and the :class:`~pgqueue.JobRecord`. Return
    normally and the handler's writes commit together with the job's
    completion; raise and they are rolled back, the failure is recorded and
    the job retried with backoff. The handler must not commit or roll back
    the transaction itself (``conn.commit()`` and ``conn.rollback()`` raise
    and fail the attempt; ``conn.transaction()`` blocks, which become
    savepoints, are fine). ``handler`` may also be a mapping of job name to
    handler: the worker then only claims jobs with those names.

    ``name`` restricts the worker to jobs of that name (Compas); ``queues``
    to jobs in those queues. ``poll_interval`` (seconds, default 1.5) is how
    often an idle worker looks for due jobs when no NOTIFY wakes it.
    ``parallel_count`` (default 1) jobs run at once.

    ``batch_size`` (default 1, at most 50) > 1 turns on batch mode: each slot claims up
    to that many jobs in one transaction, runs each handler under its own
    savepoint (a failing handler rolls back only its own writes, and its job
    is retried), records every completion and failure together and commits
    once. Much faster for short jobs, at a price: the batch's jobs finish
    (commit) together, a crash retries the whole batch, and a job's locks
    and the transaction last as long as the whole batch.
    """

    def __init__(
        self,
        sql: str | ConnectionPool[Any],
        name: str | None = None,
        *,
        handler: Handler | Mapping[str, Handler],
        poll_interval: float = 1.5,
        parallel_count: int = 1,
        queues: Sequence[str] | None = None,
        batch_size: int = 1,
    ) -> None:
        if isinstance(sql, str):
            self._conninfo = sql
            self._conn_kwargs: dict[str, Any] = {}
            self._pool: ConnectionPool[Any] | None = None
            self._owns_pool = True
        elif isinstance(sql, ConnectionPool):
            # psycopg_pool >= 3.3 also accepts callables for these.
            conninfo = sql.conninfo() if callable(sql.conninfo) else sql.conninfo
            kwargs = sql.kwargs() if callable(sql.kwargs) else sql.kwargs
            self._conninfo = conninfo
            self._conn_kwargs = dict(kwargs or {})
            self._pool = sql
            self._owns_pool = False
        else:
            raise ConfigurationError(
                f"sql must be a DSN string or a ConnectionPool, got {type(sql).__name__}"
            )
        if isinstance(handler, Mapping):
            if not handler:
                raise ConfigurationError("handler mapping is empty")
            for job_name, fn in handler.items():
                check_text("handler name", job_name)
                if not callable(fn):
                    raise ConfigurationError(f"handler for {job_name!r} is not callable")
        elif not callable(handler):
            raise ConfigurationError("handler must be a callable or a mapping of name to callable")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)):
            raise ConfigurationError("poll_interval must be a number of seconds")
        if not 0 < poll_interval <= 3600:
            raise ConfigurationError("poll_interval must be more than 0 and at most 3600 seconds")
        if isinstance(parallel_count, bool) or not isinstance(parallel_count, int):
            raise ConfigurationError("parallel_count must be an integer")
        if not 1 <= parallel_count <= 1000:
            raise ConfigurationError("parallel_count must be between 1 and 1000")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ConfigurationError("batch_size must be an integer")
        if not 1 <= batch_size <= 50:
            # Postgres caches 64 subtransactions per transaction; a batch of
            # writing handlers uses one each, and overflowing the cache slows
            # every other session down.
            raise ConfigurationError("batch_size must be between 1 and 50")
        if name is not None:
            check_text("name", name)
            if isinstance(handler, Mapping) and name not in handler:
                raise ConfigurationError(
                    f"the worker runs only jobs named {name!r}, but the handler mapping has no entry for it"
                )
        if isinstance(queues, str):
            queues = [queues]
        self.name = name
        self.poll_interval = float(poll_interval)
        self.parallel_count = parallel_count
        self.batch_size = batch_size
        self.queues: list[str] | None = (
            None if queues is None else [check_text("queue", x) for x in queues]
        )
        self._handler = handler
        self._names = self._claimable_names(name, handler)
        self._waker = Waker(parallel_count)
        self._stopping = threading.Event()
        self._draining = False
        self._threads: list[threading.Thread] = []
        self.stats = WorkerStats()

    @staticmethod
    def _claimable_names(
        name: str | None, handler: Handler | Mapping[str, Handler]
    ) -> list[str] | None:
        if name is not None:
            return [name]
        if isinstance(handler, Mapping):
            return [*handler, *BUILTIN_NAMES]
        return None

    # -- life cycle -----------------------------------------------------

    @property
    def is_started(self) -> bool:
        """True between start() and stop()."""
        return bool(self._threads)

    def start(self) -> None:
        """Check the database and start processing in background threads; returns at once.

        Raises ConnectError when the database cannot be reached and
        SchemaNotMigratedError / SchemaTooNewError when its schema does not
        fit. Starting a started worker does nothing.
        """
        if self._threads:
            return
        with self._connection() as conn:
            check_schema(conn)
        self._open_pool()
        self._stopping.clear()
        listener = threading.Thread(target=self._listen, name="pgqueue-listener", daemon=True)
        self._threads = [listener] + [
            threading.Thread(target=self._run_slot, name=f"pgqueue-slot-{i}", daemon=True)
            for i in range(self.parallel_count)
        ]
        for thread in self._threads:
            thread.start()
        logger.info(
            "worker started: %d slot(s), queues=%s, names=%s",
            self.parallel_count,
            self.queues or "all",
            self._names or "all",
        )

    def work_off(self) -> WorkerStats:
        """Process every job that is due now, then return (Redwood's workoff).

        Runs ``parallel_count`` slots until none finds a due job; jobs
        scheduled for later are left alone. Returns this worker's counts.
        :meth:`stop` ends it early, letting running jobs finish. Not for a
        started worker.
        """
        if self._threads:
            raise ConfigurationError("work_off() is for a worker that is not started")
        with self._connection() as conn:
            check_schema(conn)
        self._open_pool()
        self._draining = True
        self._stopping.clear()
        try:
            threads = [
                threading.Thread(target=self._run_slot, name=f"pgqueue-slot-{i}", daemon=True)
                for i in range(self.parallel_count)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self._draining = False
            self._close_pool()
        return self.stats

    def _open_pool(self) -> None:
        if self._owns_pool:
            self._pool = ConnectionPool(
                self._conninfo,
                min_size=self.parallel_count,
                max_size=self.parallel_count,
                kwargs={"autocommit": True},
                name="pgqueue-worker",
                open=False,
            )
            self._pool.open()

    def _close_pool(self) -> None:
        if self._owns_pool and self._pool is not None:
            self._pool.close()
            self._pool = None

    def stop(self) -> None:
        """Pick up no new jobs, let running ones finish, and return when they have.

        During :meth:`work_off` (from a signal handler, say) it only asks the
        slots to stop; work_off returns once running jobs have finished.
        """
        if self._draining:
            self._stopping.set()
            self._waker.wake_all()
            return
        if not self._threads:
            return
        self._stopping.set()
        self._waker.wake_all()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._close_pool()
        logger.info("worker stopped")

    def __enter__(self) -> JobQueueWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- monitoring -----------------------------------------------------

    def pending_queue_size(self) -> dict[str, int]:
        """Counts of this worker's jobs: ``pending_count`` (due now, waiting),
        ``scheduled_count`` (due later) and ``running_count`` (held by a worker).

        Restricted to the worker's name and queues when set.
        """
        with self._connection() as conn:
            return _queue.pending_queue_size(conn, name=self.name, queues=self.queues)

    def average_time_to_completion(self, start: datetime, end: datetime) -> float:
        """Mean seconds from scheduled_at to completion over this worker's jobs completed in (start, end]."""
        with self._connection() as conn:
            return _queue.average_time_to_completion(
                conn, start, end, name=self.name, queues=self.queues
            )

    def _connection(self) -> psycopg.Connection[Any]:
        # A connection of its own: the slots hold the pool's for the worker's life.
        return connect(self._conninfo, **{"autocommit": True, **self._conn_kwargs})

    # -- the slots --------------------------------------------------------

    def _run_slot(self) -> None:
        assert self._pool is not None
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with self._pool.connection() as conn:
                    autocommit = conn.autocommit
                    conn.autocommit = True
                    try:
                        delay = 0.1
                        self._work(conn)
                        if self._draining:
                            return
                    finally:
                        if not conn.closed and not conn.broken:
                            # An error may have left the job's transaction open.
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                conn.execute(q.ROLLBACK)
                            conn.autocommit = autocommit
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "lost the database connection (%s); reconnecting in %.1f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
            except Exception:
                # A bug of ours or an unexpected server error: keep the slot alive.
                logger.exception("worker slot error; retrying in %.1f s", delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    def _work(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            if self._process_batch(conn):
                self._waker.nudge()
            elif self._draining:
                return
            else:
                self._waker.wait(self.poll_interval)

    def _process_batch(self, conn: psycopg.Connection[Any]) -> bool:
        """Claim up to ``batch_size`` jobs in one transaction and run them; False when none was due.

        The transaction is a psycopg transaction block, so a handler's
        ``conn.commit()`` / ``conn.rollback()`` raises instead of ending it
        (which would commit half a job and free its lock while it runs).
        Round trips: BEGIN, dequeue and the first SAVEPOINT in one; one more
        (RELEASE + SAVEPOINT) before each further job of a batch; then the
        completions, the failures and COMMIT in one.
        """
        tx = psycopg.Transaction(conn)
        jobs: list[JobRecord] = []
        done: list[tuple[JobRecord, str | None]] = []
        failed: list[tuple[JobRecord, str]] = []
        xid_cur = None
        try:
            with conn.pipeline():
                tx.__enter__()
                cur = conn.execute(q.DEQUEUE, (self.batch_size, self.queues, self._names))
                if self.batch_size > 1:
                    # Claiming a job assigned the xid (row locks); none claimed: NULL.
                    xid_cur = conn.execute(q.CURRENT_XACT_ID)
                conn.execute(q.SAVEPOINT)
            jobs = [JobRecord.from_row(row) for row in cur.fetchall()]
            if not jobs:
                tx.__exit__(None, None, None)
                return False
            for index, job in enumerate(jobs):
                if index:
                    conn.execute(q.RELEASE_AND_SAVEPOINT)
                error, result = self._run_handler(conn, job)
                if error is None:
                    done.append((job, result))
                elif conn.info.transaction_status == TransactionStatus.IDLE:
                    # The handler ended the transaction itself with raw SQL. A
                    # COMMIT committed the jobs before it: complete them apart.
                    # A ROLLBACK undid their writes: leave them to run again.
                    # Failures are recorded either way; the rest of the batch
                    # is free again.
                    tx.__exit__(None, None, None)
                    if done and not self._committed(conn, xid_cur):
                        done = []
                    self._finish_apart(conn, done, [*failed, (job, error)])
                    return True
                else:
                    conn.execute(q.ROLLBACK_TO_SAVEPOINT)
                    failed.append((job, error))
            now = datetime.now(UTC)
            with conn.pipeline():
                if done:
                    conn.execute(
                        q.COMPLETE_MANY,
                        (
                            [job.id for job, _ in done],
                            [result for _, result in done],
                            [next_run(job, now) for job, _ in done],
                        ),
                    )
                fails = [
                    conn.execute(q.FAIL, (job.id, error, next_run(job, now)))
                    for job, error in failed
                ]
                tx.__exit__(None, None, None)
        except BaseException as exc:
            if tx.status == Transaction.Status.ACTIVE:
                tx.__exit__(type(exc), exc, exc.__traceback__)
            elif (
                jobs
                and isinstance(exc, psycopg.Error)
                and not isinstance(exc, psycopg.OperationalError)
            ):
                # The commit itself failed (a deferred constraint, say): the
                # server rolled everything back. Count every attempt on its own.
                self._rollback_if_open(conn)
                self._finish_apart(conn, [], [(job, _describe(exc)) for job in jobs])
                return True
            raise
        for job, _ in done:
            self._log_done(job)
        for (job, error), fail in zip(failed, fails, strict=True):
            self._log_failure(job, error, fail.fetchone())
        return True

    def _finish_apart(
        self,
        conn: psycopg.Connection[Any],
        done: list[tuple[JobRecord, str | None]],
        failed: list[tuple[JobRecord, str]],
    ) -> None:
        """Record completions and failed attempts in a transaction of their own."""
        now = datetime.now(UTC)
        with conn.transaction():
            for job, result in done:
                conn.execute(q.COMPLETE, (job.id, result, next_run(job, now)))
            rows = [
                conn.execute(q.FAIL, (job.id, error, next_run(job, now))).fetchone()
                for job, error in failed
            ]
        for job, _ in done:
            self._log_done(job)
        for (job, error), row in zip(failed, rows, strict=True):
            self._log_failure(job, error, row)

    def _log_done(self, job: JobRecord) -> None:
        if job.name not in BUILTIN_NAMES:  # pgqueue's own jobs are not counted
            self.stats.add("completed")
        logger.debug("job %d (%s) completed", job.id, job.name, extra=_extra(job, "complete"))

    def _run_handler(
        self, conn: psycopg.Connection[Any], job: JobRecord
    ) -> tuple[str | None, str | None]:
        """Run the job's handler: (None, result) on success, (error text, None) on failure."""
        handler: Handler
        if job.name in BUILTIN_NAMES:
            handler = run_builtin
        elif isinstance(self._handler, Mapping):
            handler = self._handler[job.name]
        else:
            handler = self._handler
        try:
            value = handler(conn, job)
        except JobFailed as exc:
            return _storable(str(exc)) or "job failed", None
        except psycopg.ProgrammingError as exc:
            if "forbidden within a Transaction" not in str(exc):
                return _describe(exc), None
            return (
                "RuntimeError: the handler tried to end the job's transaction (conn.commit() or "
                "conn.rollback()); the worker commits it when the handler returns "
                "and rolls it back when the handler raises\n\n" + _describe(exc),
                None,
            )
        except Exception as exc:
            return _describe(exc), None
        status = conn.info.transaction_status
        if status == TransactionStatus.IDLE:
            return (
                "RuntimeError: the handler committed or rolled back the job's transaction; "
                "handlers must leave it open (use conn.transaction() for savepoints)",
                None,
            )
        if status == TransactionStatus.INERROR:
            return (
                "RuntimeError: a statement in the handler failed and the error was caught, "
                "leaving the job's transaction aborted",
                None,
            )
        return None, value if isinstance(value, str) else None

    @staticmethod
    def _committed(conn: psycopg.Connection[Any], xid_cur: psycopg.Cursor[Any] | None) -> bool:
        """Whether the batch's transaction (already ended) committed."""
        row = xid_cur.fetchone() if xid_cur is not None else None
        if row is None or row[0] is None:
            return False
        state = conn.execute(q.XACT_STATUS, (row[0],)).fetchone()
        return state is not None and state[0] == "committed"

    @staticmethod
    def _rollback_if_open(conn: psycopg.Connection[Any]) -> None:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute(q.ROLLBACK)

    def _log_failure(self, job: JobRecord, error: str, row: tuple[Any, ...] | None) -> None:
        if job.name not in BUILTIN_NAMES:
            self.stats.add("failed" if row is not None and row[0] == "failed" else "retried")
        if row is None:
            logger.warning("job %d (%s) failed but is no longer pending", job.id, job.name)
        elif row[0] == "failed":
            logger.error(
                "job %d (%s) failed for good after %d attempt(s): %s",
                job.id,
                job.name,
                row[2],
                error.splitlines()[0],
                extra=_extra(job, "fail"),
            )
        else:
            logger.warning(
                "job %d (%s) failed (attempt %d), retrying at %s: %s",
                job.id,
                job.name,
                row[2],
                row[1].isoformat(),
                error.splitlines()[0],
                extra=_extra(job, "retry"),
            )

    # -- wake-ups ---------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._conn_kwargs) as conn:
                    conn.execute(q.LISTEN)
                    delay = 0.1
                    # Notifications sent while we were not listening are lost: look now.
                    self._waker.wake_all()
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=_LISTEN_TICK):
                            if self.queues is None or notify.payload in self.queues:
                                self._waker.notify()
            except psycopg.OperationalError as exc:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "LISTEN connection failed (%s); polling every %.1f s, retrying in %.1f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    self.poll_interval,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)


def _describe(exc: BaseException) -> str:
    """The error text kept on the job: 'Type: message', then the traceback."""
    try:
        head = f"{type(exc).__qualname__}: {exc}"
    except Exception:
        head = f"{type(exc).__qualname__}: <str() failed>"
    trace = "".join(traceback.format_exception(exc))
    return _storable(f"{head}\n\n{trace}")


def _storable(text: str) -> str:
    """Error text Postgres can store: at most 16,000 characters, NUL and lone surrogates
    escaped (or the failure could not be recorded and the job would be retried at once, forever)."""
    text = text[:_MAX_ERROR_LENGTH]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _extra(job: JobRecord, action: str) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue, "job_name": job.name, "action": action}


JobQueueWorker.__module__ = "pgqueue"
