"""The worker: claim due jobs, run each handler inside its job's transaction, complete or fail it.

Each slot (thread) owns one connection and runs, per job (pgqueue.claim, through libpq's
pipeline directly: pgqueue._wire):

1. ``BEGIN``, the claim (a plain ``FOR UPDATE SKIP LOCKED`` statement; ``pgqueue.dequeue``
   instead when a crash is to be settled, a lease has expired or a queue has a concurrency
   limit) and ``SAVEPOINT`` in one round trip; the job's row stays locked by this transaction.
2. ``handler(conn, job)`` on that connection, inside the transaction.
3. Success: ``RELEASE SAVEPOINT``, the completion (a prepared UPDATE for a plain job) and
   ``COMMIT`` in one round trip: the handler's writes and the completion commit together.
   Failure: ``ROLLBACK TO SAVEPOINT``, then ``RELEASE SAVEPOINT``, ``pgqueue.fail(id, error)``
   and ``COMMIT``: the handler's writes vanish, the failed attempt is recorded and the job is
   scheduled again with backoff (or marked failed when out of attempts). The outcome is
   written outside the savepoint, by the transaction that locked the row: written inside it,
   Postgres would create a MultiXact per job (see ``ClaimRunner._process_batch``). Step 1 of
   the slot's next claim follows the ``COMMIT`` in the same round trip (the server runs it only
   if the commit went through), unless the worker is stopping: one round trip per job while
   jobs keep coming. A claim sent ahead and never taken is rolled back with the connection's
   next use: its job was never started, and nothing is counted.

A worker that dies mid-job loses nothing: Postgres rolls the transaction back
and the job is due again. Idle slots sleep until a NOTIFY (one listener
connection per worker) or ``poll_interval`` seconds.

Jobs that break their workers (pgqueue.supervisor): before the handlers of a
claim run, their starts are recorded on a side connection, committed, so that
a handler that kills its process is counted as a crashed attempt by the next
dequeue. A job with a timeout is watched: when its time is up its transaction
is ended and the attempt fails. With ``lease`` a job runs outside any
transaction instead (pgqueue.lease).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from . import _queries as q
from . import queue as _queue
from ._db import connect
from ._options import WorkerOptions
from ._waker import Waker
from ._wire import Statement, statement_name
from .builtins import RECURRING_JOB_NAME
from .claim import ClaimRunner, Handler, _Abandoned, _extra, _Slot
from .errors import ConfigurationError, ConnectError
from .migrate import check_schema
from .records import WorkerStats
from .supervisor import Supervisor, Watch
from .timeouts import check_timeout

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .metrics import WorkerInstruments

__all__ = ["Handler", "JobQueueWorker", "RECURRING_JOB_NAME", "WorkerStats"]

logger = logging.getLogger(__name__)

#: The largest batch_size. Postgres caches 64 subtransactions per transaction; a batch of
#: writing handlers uses one each, and overflowing the cache slows every other session down.
MAX_BATCH_SIZE: Final = 50

_RECONNECT_MAX_DELAY: Final = 5.0
_LISTEN_TICK: Final = 0.25
#: How often stop() and work_off() look again for slots that were replaced (seconds).
_JOIN_TICK: Final = 0.2


class JobQueueWorker(ClaimRunner):
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

    ``timeout`` (seconds or a timedelta, default None: no limit) bounds each
    handler call; a job's own ``timeout`` wins over it. When it is up, the
    worker ends the job's transaction (it terminates the slot's backend),
    the attempt fails with a "timed out after N s" error and the slot goes
    on with a new connection. Python cannot stop a thread: a handler stuck in
    Python code runs on until it returns (its statements fail, its
    connection is gone), and after a second its slot is replaced by a new
    one. A handler that kills its process does not loop forever either: each
    start is recorded outside the job's transaction, and an attempt that
    never finished counts (see "Jobs that break their workers" in the README).

    ``lease`` (seconds, default None: off) turns on lease mode for long jobs:
    each slot claims one job, marks it ``running`` with a lease and commits;
    the handler runs outside any transaction on an autocommit connection
    (its writes commit as they go, not together with the completion: at
    least once, not exactly once); the lease is extended every third of it;
    a job whose lease expires is retried. Needs ``batch_size=1``. Built-in
    jobs still run in their transaction.

    Behind pgbouncer in transaction-pooling mode (see "Deployment: pgbouncer"
    in the README): ``listen`` (default True) keeps one connection that
    LISTENs for new-job notifications, which transaction pooling cannot
    deliver; give ``listen_dsn`` (default None: the ``sql`` DSN), a direct
    DSN for that one connection, or ``listen=False`` to only poll every
    ``poll_interval`` (logged once at start). ``prepare=False`` (default
    True) turns psycopg's automatic server-side prepared statements off on
    the worker's connections (``prepare_threshold=None``), which pgbouncer
    1.18 cannot keep; with a ConnectionPool, create it with
    ``kwargs={"prepare_threshold": None}``.

    ``metrics`` (default False) turns on the Prometheus instruments of
    :mod:`pgqueue.metrics` (the ``metrics`` extra): processed and failed
    attempts, handler durations, the wait from due to start, busy slots.
    True registers them in prometheus-client's default registry; a
    ``CollectorRegistry`` in that one. Serve them with
    :func:`pgqueue.metrics.start_http_server` (``pgqueue work --metrics-port``)
    or any prometheus-client exposition.
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
        timeout: float | timedelta | None = None,
        lease: float | timedelta | None = None,
        listen: bool = True,
        listen_dsn: str | None = None,
        prepare: bool = True,
        metrics: bool | CollectorRegistry = False,
    ) -> None:
        self._metrics = _instruments(metrics)
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise ConfigurationError("batch_size must be an integer")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ConfigurationError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        self.timeout = check_timeout(timeout, error=ConfigurationError)
        self.lease = check_timeout(lease, what="lease", error=ConfigurationError)
        if self.lease is not None and batch_size != 1:
            raise ConfigurationError("lease mode runs one job per slot at a time: use batch_size=1")
        if not prepare:
            # pgbouncer's transaction pooling cannot keep server-side prepared statements.
            if not self._owns_pool and self._conn_kwargs.get("prepare_threshold", 5) is not None:
                raise ConfigurationError(
                    "prepare=False with a ConnectionPool: create the pool with "
                    "kwargs={'prepare_threshold': None} (the worker does not change its connections)"
                )
            self._conn_kwargs["prepare_threshold"] = None
        self.listen = listen
        self.prepare = prepare
        self._listen_dsn = listen_dsn
        self.name = name
        self.poll_interval = options.poll_interval
        self.parallel_count = parallel_count
        self.batch_size = batch_size
        self.queues: list[str] | None = options.queues
        self._handler = handler
        self._names = options.names
        claim, params = q.claim_statement(batch_size, self.queues, self._names)
        # Named for its text: workers of other queues may share a pool's connections.
        self._claim = Statement(claim, params, statement_name(b"pgqueue_claim_", claim))
        self._waker = Waker(parallel_count)
        self._stopping = threading.Event()
        self._draining = False
        self._threads: list[threading.Thread] = []
        self._slots: list[_Slot] = []
        self._slots_lock = threading.Lock()
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._supervisor = Supervisor(
            self._connection,
            worker_id=self._worker_id,
            on_orphan=self._on_orphan,
            lease=self.lease,
            prepare=prepare,
        )
        self.stats = WorkerStats()

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
        self._start_supervisor()
        listener = threading.Thread(target=self._listen, name="pgqueue-listener", daemon=True)
        listener.start()
        if self._metrics is not None:
            self._metrics.slots.inc(self.parallel_count)
        self._threads = [listener] + [self._spawn_slot(i) for i in range(self.parallel_count)]
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
        if self._metrics is not None:
            self._metrics.slots.inc(self.parallel_count)
        try:
            self._start_supervisor()
            for i in range(self.parallel_count):
                self._spawn_slot(i)
            self._join_slots()
        finally:
            if self._metrics is not None:
                self._metrics.slots.dec(self.parallel_count)
            self._draining = False
            self._supervisor.stop()
            self._close_pool()
        return self.stats

    def _open_pool(self) -> None:
        if self._owns_pool:
            kwargs: dict[str, Any] = {"autocommit": True}
            if not self.prepare:
                kwargs["prepare_threshold"] = None
            self._pool = ConnectionPool(
                self._conninfo,
                min_size=self.parallel_count,
                max_size=self.parallel_count,
                kwargs=kwargs,
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
        self._threads[0].join()  # the listener
        self._join_slots()
        self._threads = []
        if self._metrics is not None:
            self._metrics.slots.dec(self.parallel_count)
        self._supervisor.stop()
        self._close_pool()
        logger.info("worker stopped")

    def _start_supervisor(self) -> None:
        with self._slots_lock:
            self._slots = []
        self._supervisor.start()

    def _spawn_slot(self, index: int, *, dedicated: bool = False) -> threading.Thread:
        slot = _Slot(index, dedicated=dedicated)
        slot.thread = threading.Thread(
            target=self._run_slot, args=(slot,), name=f"pgqueue-slot-{index}", daemon=True
        )
        with self._slots_lock:
            self._slots.append(slot)
        slot.thread.start()
        return slot.thread

    def _join_slots(self) -> None:
        """Wait for every slot that is not orphaned (slots replaced meanwhile included)."""
        while True:
            with self._slots_lock:
                live = [s for s in self._slots if not s.orphaned and s.thread.is_alive()]
            if not live:
                return
            live[0].thread.join(_JOIN_TICK)

    def _on_orphan(self, owner: object, watch: Watch) -> None:
        """A timed-out handler has not returned: let its slot go and start another in its place."""
        assert isinstance(owner, _Slot)
        self.count_timeout(watch)
        with self._slots_lock:
            if owner.orphaned:
                return
            owner.orphaned = True
            orphans = sum(s.orphaned and s.thread.is_alive() for s in self._slots)
        logger.warning(
            "job %d (%s): its handler still runs after its %g s timeout; Python cannot stop it,"
            " so its thread is left to finish on its own (%d such thread(s) now) and a new slot"
            " takes its place",
            watch.job.id,
            watch.job.name,
            watch.timeout,
            orphans,
            extra=_extra(watch.job, "orphan"),
        )
        if not self._stopping.is_set():
            thread = self._spawn_slot(owner.index, dedicated=True)
            if self._threads:
                self._threads.append(thread)

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

    @contextlib.contextmanager
    def _slot_connection(self, slot: _Slot) -> Iterator[psycopg.Connection[Any]]:
        if slot.dedicated:
            with self._connection() as conn:
                yield conn
        else:
            assert self._pool is not None
            with self._pool.connection() as conn:
                yield conn

    def _run_slot(self, slot: _Slot) -> None:
        delay = 0.1
        while not self._stopping.is_set() and not slot.orphaned:
            try:
                with self._slot_connection(slot) as conn:
                    autocommit = conn.autocommit
                    conn.autocommit = True
                    try:
                        delay = 0.1
                        self._work(conn, slot)
                        if self._draining:
                            return
                    finally:
                        if not conn.closed and not conn.broken:
                            # An error may have left the job's transaction open.
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                conn.execute(q.ROLLBACK)
                            conn.autocommit = autocommit
            except _Abandoned:
                continue  # the watchdog ended the claim and its connection: take another
            except (psycopg.OperationalError, PoolTimeout, ConnectError) as exc:
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

    def _work(self, conn: psycopg.Connection[Any], slot: _Slot) -> None:
        while not self._stopping.is_set():
            if self._process_batch(conn, slot):
                self._waker.nudge()
            elif self._draining:
                return
            else:
                self._waker.wait(self.poll_interval)

    # -- wake-ups ---------------------------------------------------------

    def _listen(self) -> None:
        if not self.listen:
            logger.info(
                "LISTEN is off (listen=False): polling for due jobs every %.1f s",
                self.poll_interval,
            )
            return
        # A listen_dsn is a complete DSN of its own: the pool's kwargs are not for it.
        conninfo, kwargs = (
            (self._conninfo, self._conn_kwargs)
            if self._listen_dsn is None
            else (self._listen_dsn, {"prepare_threshold": None})
        )
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(conninfo, **{**kwargs, "autocommit": True}) as conn:
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


def _instruments(metrics: object) -> WorkerInstruments | None:
    """The worker's Prometheus instruments for its ``metrics`` argument; None when off."""
    if metrics is False:
        return None
    try:  # the optional extra, imported only when asked for
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from .metrics import worker_instruments  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError(
            "metrics needs prometheus-client: pip install 'pgqueue[metrics]'"
        ) from None
    if metrics is True:
        return worker_instruments()
    if isinstance(metrics, CollectorRegistry):
        return worker_instruments(metrics)
    raise ConfigurationError("metrics must be True, False or a prometheus_client CollectorRegistry")


JobQueueWorker.__module__ = "pgqueue"
