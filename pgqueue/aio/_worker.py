"""The asyncio worker: ``async def`` handlers, ``parallel_count`` at once as tasks on one event loop.

Each slot (a task) holds one AsyncConnection and runs, per job, the blocking worker's claim
(pgqueue.claim) in two round trips through libpq (pgqueue._wire's AsyncClaimTransaction, awaited
on the event loop): ``BEGIN``, the claim (one job, its row locked until the end) and ``SAVEPOINT``;
the start record (pgqueue.aio._starts, sent from the event loop); ``await handler(conn, job)``; then
``RELEASE SAVEPOINT``, the completion and ``COMMIT``, or ``ROLLBACK TO SAVEPOINT``,
``RELEASE SAVEPOINT``, ``pgqueue.fail`` and ``COMMIT`` (the outcome outside the savepoint: no
MultiXact per job), with the slot's next claim after the COMMIT in the same round trip while the
worker goes on (one round trip per job then). A crash to settle, an expired lease or a limited
queue sends the claim through ``pgqueue.dequeue`` instead, as there.
The statements, what a handler's exception or a transaction left open means, the log lines and
the counts are the blocking worker's own (pgqueue._queries, pgqueue.claim, pgqueue._options).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .. import _queries as q
from .._db import connect
from .._input import stored_result
from .._options import WorkerOptions
from .._wire import AsyncClaimTransaction, Statement, StatementDropped, statement_name
from ..builtins import BUILTIN_NAMES, builtin_steps, next_run
from ..claim import (
    COMPLETE_ONE,
    RELEASE,
    ROLLBACK_TO,
    SAVEPOINT,
    commit_failed,
    dequeue_instead,
    gives_up_itself,
    handler_error,
    log_done,
    log_dropped,
    log_failure,
    outcomes,
    transaction_error,
    user_handler,
)
from ..errors import ConfigurationError, ConnectError
from ..migrate import check_schema
from ..records import JobRecord, WorkerStats
from ..supervisor import Supervisor, new_token
from ..timeouts import check_timeout, server_limit_ms
from . import _api
from ._starts import AsyncStarts

__all__ = ["AsyncHandler", "AsyncJobQueueWorker"]

logger = logging.getLogger("pgqueue.worker")

#: An asyncio handler: awaited with the AsyncConnection (inside the job's transaction) and the job.
AsyncHandler: TypeAlias = Callable[[psycopg.AsyncConnection[Any], JobRecord], Awaitable[object]]

T = TypeVar("T")

_RECONNECT_MAX_DELAY: Final = 5.0


class _Waker:
    """Wakes idle slots on one event loop: one per notification, a busy slot wakes one more;
    a wake-up that finds no slot waiting is kept (up to one per slot)."""

    def __init__(self, slots: int) -> None:
        self._cap = slots
        self._tokens = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self, timeout: float) -> None:
        if self._tokens:
            self._tokens -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_one(self) -> bool:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def notify(self) -> None:
        if not self._wake_one():
            self._tokens = min(self._tokens + 1, self._cap)

    def nudge(self) -> None:
        self._wake_one()

    def wake_all(self) -> None:
        while self._wake_one():
            pass
        self._tokens = self._cap


class AsyncJobQueueWorker:
    """Runs jobs from the queue with ``async def`` handlers, ``parallel_count`` at once on the
    running event loop.

    ``sql`` is a DSN string (the worker keeps its own AsyncConnectionPool of ``parallel_count``
    connections) or a psycopg_pool AsyncConnectionPool with room for ``parallel_count``
    connections held for the worker's life.

    ``await handler(conn, job)`` is called for each job with an AsyncConnection already inside
    the job's transaction and the :class:`~pgqueue.JobRecord`. Return and the handler's writes
    commit together with the job's completion; raise and they are rolled back, the failure is
    recorded and the job retried per its retry policy. The handler must not commit or roll back
    the transaction itself (``async with conn.transaction():`` blocks are savepoints and fine).
    ``handler`` may be a mapping of job name to handler; the worker then claims only those names.

    ``name``, ``queues``, ``poll_interval`` (default 1.5 s), ``parallel_count`` (default 1),
    ``listen`` (default True), ``listen_dsn`` (default None) and ``prepare`` (default True) mean
    what they mean for :class:`pgqueue.JobQueueWorker`. ``timeout`` (seconds or a timedelta,
    default None: no limit; a job's own ``timeout`` wins) cancels a handler that runs too long
    (``asyncio.timeout``): its writes are rolled back and the attempt fails with a
    ``JobTimeout`` error. Not here: batch mode, lease mode, and the watchdog that ends a
    blocked handler's transaction (Postgres's own limits, the timeout plus 5 s, still apply).
    A handler that kills its process is counted as a crashed attempt, as with the blocking
    worker (start records, quarantine).
    """

    def __init__(
        self,
        sql: str | AsyncConnectionPool[Any],
        name: str | None = None,
        *,
        handler: AsyncHandler | Mapping[str, AsyncHandler],
        poll_interval: float = 1.5,
        parallel_count: int = 1,
        queues: Sequence[str] | None = None,
        timeout: float | timedelta | None = None,
        listen: bool = True,
        listen_dsn: str | None = None,
        prepare: bool = True,
    ) -> None:
        self._pool: AsyncConnectionPool[Any] | None
        if isinstance(sql, str):
            self._conninfo, self._conn_kwargs = sql, {}
            self._pool, self._owns_pool = None, True
        elif isinstance(sql, AsyncConnectionPool):
            if not isinstance(sql.conninfo, str) or callable(sql.kwargs):
                raise ConfigurationError(
                    "the worker opens side connections like the pool's: give the pool its"
                    " conninfo and kwargs as values, not callables"
                )
            self._conninfo, self._conn_kwargs = sql.conninfo, dict(sql.kwargs or {})
            self._pool, self._owns_pool = sql, False
        else:
            raise ConfigurationError(
                f"sql must be a DSN string or an AsyncConnectionPool, got {type(sql).__name__}"
            )
        options = WorkerOptions(
            handler=handler,
            name=name,
            queues=queues,
            poll_interval=poll_interval,
            parallel_count=parallel_count,
            listen=listen,
            listen_dsn=listen_dsn,
            prepare=prepare,
        )
        if not prepare:
            self._conn_kwargs["prepare_threshold"] = None
        self.name = name
        self.queues = options.queues
        self.poll_interval = options.poll_interval
        self.parallel_count = parallel_count
        self.timeout = check_timeout(timeout, error=ConfigurationError)
        self.listen = listen
        self.prepare = prepare
        self._options = options
        self._handler = handler
        claim, params = q.claim_statement(1, self.queues, options.names)
        # Named for its text: workers of other queues may share a pool's connections.
        self._claim_sql = Statement(claim, params, statement_name(b"pgqueue_claim_", claim))
        self._waker = _Waker(parallel_count)
        self._stopping = asyncio.Event()
        self._draining = False
        self._listener: asyncio.Task[None] | None = None
        self._slots: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._starts: AsyncStarts | None = None
        self._supervisor = Supervisor(
            self._connect,
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            on_orphan=lambda owner, watch: None,  # no watchdog here: nothing is orphaned
        )
        self.stats = WorkerStats()

    # -- life cycle -----------------------------------------------------

    @property
    def is_started(self) -> bool:
        """True between start() and stop()."""
        return bool(self._slots) and not self._draining

    async def start(self) -> None:
        """Check the database and start the slots (and the listener) as tasks; returns at once.

        Raises ConnectError or SchemaNotMigratedError / SchemaTooNewError as
        :meth:`pgqueue.JobQueueWorker.start` does. Starting a started worker does nothing.
        """
        if self._slots:
            return
        await self._open()
        self._listener = asyncio.create_task(self._listen(), name="pgqueue-listener")
        self._slots = [
            asyncio.create_task(self._run_slot(), name=f"pgqueue-slot-{i}")
            for i in range(self.parallel_count)
        ]
        logger.info(
            "asyncio worker started: %d slot(s), queues=%s, names=%s",
            self.parallel_count,
            self.queues or "all",
            self._options.names or "all",
        )

    async def work_off(self) -> WorkerStats:
        """Process every job that is due now, then return this worker's counts (Redwood's
        workoff); jobs scheduled for later are left alone. :meth:`stop` ends it early, letting
        running jobs finish. Not for a started worker."""
        if self._slots:
            raise ConfigurationError("work_off() is for a worker that is not started")
        await self._open()
        self._draining = True
        try:
            self._slots = [
                asyncio.create_task(self._run_slot()) for _ in range(self.parallel_count)
            ]
            await asyncio.gather(*self._slots)
        finally:
            self._draining = False
            self._slots = []
            await self._close()
        return self.stats

    async def stop(self) -> None:
        """Pick up no new jobs, let running ones finish, and return when they have."""
        self._stopping.set()
        self._waker.wake_all()
        if self._draining or not self._slots:
            return
        if self._listener is not None:
            self._listener.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        self._slots, self._listener = [], None
        await self._close()
        logger.info("asyncio worker stopped")

    async def __aenter__(self) -> AsyncJobQueueWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _open(self) -> None:
        def check() -> None:
            with self._connect() as conn:
                check_schema(conn)

        await asyncio.to_thread(check)
        self._stopping.clear()
        self._executor = ThreadPoolExecutor(self.parallel_count + 1, "pgqueue-aio-supervisor")
        self._starts = AsyncStarts(self._supervisor, self._aconnect, prepare=self.prepare)
        if self._owns_pool:
            self._pool = AsyncConnectionPool(
                self._conninfo,
                min_size=self.parallel_count,
                max_size=self.parallel_count,
                kwargs={"autocommit": True, **self._conn_kwargs},
                name="pgqueue-aio-worker",
                open=False,
            )
            await self._pool.open()

    async def _close(self) -> None:
        if self._starts is not None:
            await self._starts.close()
            self._starts = None
        await self._in_thread(self._supervisor.stop)
        assert self._executor is not None
        self._executor.shutdown()
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _connect(self) -> psycopg.Connection[Any]:
        """A blocking autocommit connection (the schema check, the supervisor's side one)."""
        return connect(self._conninfo, **{**self._conn_kwargs, "autocommit": True})

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The supervisor blocks (its side connection, the quarantine): off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- monitoring -----------------------------------------------------

    async def pending_queue_size(self) -> dict[str, int]:
        """Counts of this worker's jobs, as :meth:`pgqueue.JobQueueWorker.pending_queue_size`."""
        async with await self._aconnect() as conn:
            return await _api.pending_queue_size(conn, name=self.name, queues=self.queues)

    async def average_time_to_completion(self, start: datetime, end: datetime) -> float:
        """Mean seconds from scheduled_at to completion over this worker's jobs completed in (start, end]."""
        async with await self._aconnect() as conn:
            return await _api.average_time_to_completion(
                conn, start, end, name=self.name, queues=self.queues
            )

    async def _aconnect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._conninfo, **{**self._conn_kwargs, "autocommit": True}
        )

    # -- the slots and the listener ------------------------------------------

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_slot(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                assert self._pool is not None
                async with self._pool.connection() as conn:
                    autocommit = conn.autocommit
                    await conn.set_autocommit(True)
                    tx = AsyncClaimTransaction(conn, prepare=self.prepare)
                    try:
                        delay = 0.1
                        while not self._stopping.is_set():
                            if await self._claim(conn, tx):
                                self._waker.nudge()
                            elif self._draining:
                                return
                            else:
                                await self._waker.wait(self.poll_interval)
                    finally:
                        if not conn.closed and not conn.broken:
                            # A claim sent ahead (or an error) may have left a transaction open.
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                await conn.execute(q.ROLLBACK)
                            await conn.set_autocommit(autocommit)
            except (psycopg.OperationalError, PoolTimeout, ConnectError) as exc:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "lost the database connection (%s); reconnecting in %.1f s", exc, delay
                )
                await self._pause(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)
            except Exception:
                logger.exception("worker slot error; retrying in %.1f s", delay)
                await self._pause(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    async def _listen(self) -> None:
        if not self.listen:
            logger.info("LISTEN is off (listen=False): polling every %.1f s", self.poll_interval)
            return
        conninfo, kwargs = (
            (self._conninfo, self._conn_kwargs)
            if self._options.listen_dsn is None
            else (self._options.listen_dsn, {"prepare_threshold": None})
        )
        delay = 0.1
        while not self._stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, **{**kwargs, "autocommit": True}
                )
                async with conn:
                    await conn.execute(q.LISTEN)
                    delay = 0.1
                    self._waker.wake_all()  # notifications sent while not listening are lost
                    async for notify in conn.notifies():
                        if self.queues is None or notify.payload in self.queues:
                            self._waker.notify()
            except psycopg.OperationalError as exc:
                logger.warning("LISTEN connection failed (%s); retrying in %.1f s", exc, delay)
                await self._pause(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    # -- one claim --------------------------------------------------------

    async def _claim(self, conn: psycopg.AsyncConnection[Any], tx: AsyncClaimTransaction) -> bool:
        """Claim one job in a transaction, run its handler and record the outcome; False when
        none was due. The blocking worker's round trips (pgqueue.claim), awaited."""
        token = new_token()
        job: JobRecord | None = None
        recorded = False
        finished: list[int] = []
        error: str | None = None
        fail: tuple[Any, ...] | None = None
        try:
            claiming = [self._claim_sql, SAVEPOINT]
            results = await tx.begin(claiming, later=[COMPLETE_ONE, RELEASE])
            rows = tx.rows(results[0])
            jobs = [JobRecord.from_row(row[1:-1]) for row in rows if row[1] is not None]
            if rows[0][0]:
                # A crash to settle, a lease expired or a limited queue: pgqueue.dequeue
                # claims instead, before the job's savepoint (see q.claim_statement).
                results = await tx.run(dequeue_instead(1, self.queues, self._options.names))
                jobs = [JobRecord.from_row(row) for row in tx.rows(results[1])]
            if not jobs:
                await tx.commit([])
                return False
            (job,) = jobs
            # Before the handler runs: if it kills the process, the next dequeue counts the crash.
            assert self._starts is not None
            await self._starts.start_claim(
                job,
                token,
                functools.partial(self._in_thread, self._supervisor.start_claim, [job], token),
            )
            recorded = True
            error, result = await self._attempt(conn, job)
            # The outcome is written outside the savepoint (see ClaimRunner._process_batch),
            # the next claim sent along (AsyncClaimTransaction.commit) unless the worker stops.
            ahead = [] if self._stopping.is_set() else claiming
            if error is None:
                await tx.commit([RELEASE, *outcomes([(job, result)], [])], ahead=ahead)
            elif conn.info.transaction_status != TransactionStatus.IDLE:
                results = await tx.commit(
                    [ROLLBACK_TO, RELEASE, *outcomes([], [(job, error)])], ahead=ahead
                )
                answer = tx.rows(results[-1])
                fail = answer[0] if answer else None
            else:
                # The handler ended the transaction itself: record the failure on its own.
                tx.release()
                fail = await self._fail(conn, job, error)
            finished = [job.id]
        except BaseException as exc:
            if tx.open:
                dropped = isinstance(exc, StatementDropped)
                if recorded and job is not None and (dropped or gives_up_itself(exc)):
                    await self._in_thread(self._supervisor.forget_starts, [job.id], token)
                await tx.rollback()
                if dropped and job is not None:
                    log_dropped([job])  # not the job's fault: it runs again, not counted
                    return True
                raise
            if job is not None and recorded and commit_failed(exc):
                # The commit itself failed (a deferred constraint, say): the server rolled
                # everything back; count the attempt on its own.
                error = handler_error(exc, None, 0.0)
                fail = await self._fail(conn, job, error)
                finished = [job.id]
            else:
                raise
        finally:
            if recorded:
                # Not off the event loop: it takes two locks that nobody holds for long.
                self._supervisor.end_claim(token, finished=finished)
        assert job is not None
        if error is None:
            log_done(self.stats, job)
        else:
            log_failure(self.stats, job, error, fail)
        return True

    async def _fail(
        self, conn: psycopg.AsyncConnection[Any], job: JobRecord, error: str
    ) -> tuple[Any, ...] | None:
        """pgqueue.fail: count the failed attempt, retry or fail for good; its answer."""
        cur = await conn.execute(q.FAIL, (job.id, error, next_run(job, datetime.now(UTC))))
        return await cur.fetchone()

    async def _attempt(
        self, conn: psycopg.AsyncConnection[Any], job: JobRecord
    ) -> tuple[str | None, str | None]:
        """Await the job's handler: (None, result) on success, (error text, None) on failure."""
        timeout = job.timeout if job.timeout is not None else self.timeout
        if timeout is not None:
            # A backstop for a handler that blocks the event loop: Postgres ends the transaction.
            limit = server_limit_ms(timeout)
            await conn.execute(q.SET_TIMEOUTS, (limit, limit))
        started = time.monotonic()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if job.name in BUILTIN_NAMES:
                    value: object = await _api.arun_steps(conn, builtin_steps(job))
                else:
                    value = user_handler(self._handler, job)(conn, job)
                    if inspect.isawaitable(value):
                        value = await value
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                return (
                    f"JobTimeout: timed out after {timeout:g} s"
                    f" (attempt {job.attempts} of {job.max_attempts})",
                    None,
                )
            return handler_error(exc, timeout, time.monotonic() - started), None
        error = transaction_error(conn.pgconn.transaction_status)
        if error is not None:
            return error, None
        return stored_result(value)


AsyncJobQueueWorker.__module__ = "pgqueue.aio"
