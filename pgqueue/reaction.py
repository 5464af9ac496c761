"""Reaction Commerce's background-jobs API (``context.backgroundJobs``) on pgqueue: :class:`BackgroundJobs`.

A thin layer: ``add_worker`` starts a :class:`~pgqueue.JobQueueWorker` restricted to one job
name, ``schedule_job`` is :func:`~pgqueue.add_job_to_queue` with Reaction's defaults, and
``cancel_jobs``, ``get_job`` and ``register_cleanup`` are pgqueue's own. :class:`BackgroundJobsAPI`
is the Protocol another implementation can satisfy ("you can swap in a different plugin, but
... make the same API available").
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NoReturn, Protocol, runtime_checkable

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.pq import Conninfo
from psycopg_pool import ConnectionPool

from ._db import connect
from .admin import cancel_jobs as _cancel_jobs
from .admin import register_cleanup as _register_cleanup
from .builtins import CLEANUP_JOB_NAME, run_builtin
from .errors import ConfigurationError, InvalidJobError, JobFailed
from .queue import add_job_to_queue
from .queue import get_job as _get_job
from .records import JobRecord
from .retry import reaction_retry
from .worker import JobQueueWorker

__all__ = [
    "NO_OUTCOME_MESSAGE",
    "REACTION_DEFAULT_PRIORITY",
    "WORKERS_ENABLED_ENV",
    "BackgroundJobs",
    "BackgroundJobsAPI",
    "ReactionJob",
    "ReactionJobAPI",
    "workers_enabled",
]

logger = logging.getLogger(__name__)

#: Reaction's default priority, "normal" (pgqueue's Compas-style default is 1).
REACTION_DEFAULT_PRIORITY: Final = 0

#: Set to ``false`` (or ``0``, ``no``, ``off``) and :meth:`BackgroundJobs.add_worker` starts nothing.
WORKERS_ENABLED_ENV: Final = "REACTION_WORKERS_ENABLED"

#: The error kept on an attempt whose worker function returned without calling done() or fail().
NO_OUTCOME_MESSAGE: Final = "worker returned without calling job.done() or job.fail()"

#: Reaction's (meteor-job-collection's) text for fail() without a reason.
_NO_REASON: Final = "No error information provided"
_MAX_TEXT: Final = 16_000
_DISABLED_VALUES: Final = frozenset({"false", "0", "no", "off"})
_LIBPQ_KEYWORDS: Final = frozenset(
    option.keyword.decode() for option in Conninfo.get_defaults() if option.keyword
)


def workers_enabled() -> bool:
    """False when ``REACTION_WORKERS_ENABLED`` is ``false``, ``0``, ``no`` or ``off`` (any case).

    Read at each call, as Reaction reads ``process.env``; unset means enabled.
    """
    value = os.environ.get(WORKERS_ENABLED_ENV)
    return value is None or value.strip().lower() not in _DISABLED_VALUES


@runtime_checkable
class ReactionJobAPI(Protocol):
    """What a worker function may use of the job it is handed, in any implementation."""

    @property
    def id(self) -> int:
        """The job's id."""

    @property
    def type(self) -> str:
        """The job's type (pgqueue's job name)."""

    @property
    def data(self) -> Any:
        """The job's data, as scheduled."""

    @property
    def attempts(self) -> int:
        """Which attempt this is: 1 for the first run."""

    def done(self, message: object = None) -> bool:
        """Finish the job successfully, keeping ``message`` as its result."""

    def fail(self, reason: object = _NO_REASON) -> bool:
        """Fail this attempt with ``reason``; the retry policy decides what comes next."""


@runtime_checkable
class BackgroundJobsAPI(Protocol):
    """Reaction's ``context.backgroundJobs``: what every background-jobs implementation offers.

    :class:`BackgroundJobs` is pgqueue's; another one (a fake for tests, a different
    backend) satisfies this Protocol by having these five methods. Starting and stopping
    workers is the application owner's business, not the plugins', so it is not part of it.
    """

    def add_worker(
        self,
        *,
        type: str,
        worker: Callable[[ReactionJobAPI], object],
        concurrency: int = 3,
        poll_interval: float = 1.5,
    ) -> object:
        """Start running jobs of ``type`` with ``worker``; return the worker (None if disabled)."""

    def schedule_job(
        self,
        *,
        type: str,
        data: Any = None,
        retry: int | Mapping[str, Any] | None = None,
        priority: int | str | None = None,
        schedule: str | None = None,
        cancel_repeats: bool = False,
        queue: str | None = None,
    ) -> JobRecord:
        """Save a job of ``type``; return it."""

    def cancel_jobs(self, *, type: str, data: Any = None) -> int:
        """Cancel the pending jobs of ``type`` whose data contains ``data``; return how many."""

    def get_job(self, id: int) -> JobRecord | None:
        """The job with this id, or None."""

    def register_cleanup(self, rules: Iterable[Mapping[str, Any]]) -> None:
        """Delete finished jobs of each rule's type ``purge_after_days`` after they finished."""


class ReactionJob:
    """The job a worker function is handed: ``data``, ``id``, ``type``, ``attempts``, ``conn``,
    ``record``, ``done()`` and ``fail()``.

    ``conn`` is the worker's connection, inside the job's transaction: what the worker
    function writes with it commits together with ``done()`` and is rolled back by
    ``fail()`` or an exception. Do not commit or roll back on it (``conn.transaction()``
    savepoints are fine). ``record`` is the :class:`~pgqueue.JobRecord` as claimed.

    The worker function must call ``done()`` or ``fail()`` before it returns; only the
    first call counts (later ones log a warning and return False, as Reaction's do). An
    exception raised after ``done()`` still fails the attempt.
    """

    __slots__ = ("_closed", "_lock", "_outcome", "conn", "record")

    def __init__(self, record: JobRecord, conn: psycopg.Connection[Any]) -> None:
        self.record = record
        self.conn = conn
        self._lock = threading.Lock()
        self._outcome: tuple[bool, str | None] | None = None
        self._closed = False

    @property
    def id(self) -> int:
        """The job's id."""
        return self.record.id

    @property
    def type(self) -> str:
        """The job's type (pgqueue's job name)."""
        return self.record.name

    @property
    def data(self) -> Any:
        """The job's data, as scheduled (``{}`` when none was given)."""
        return self.record.data

    @property
    def attempts(self) -> int:
        """Which attempt this is: 1 for the first run, 2 for the first retry, ..."""
        return self.record.attempts

    def done(self, message: object = None) -> bool:
        """Finish the job successfully once the worker function returns; True if this call counted.

        ``message`` (default None: no result) is kept as the job's ``result``: a string as
        it is, anything else as JSON (or ``str()`` when JSON cannot hold it). A job with a
        schedule is then enqueued again at its next occurrence, as a new job.
        """
        return self._settle(ok=True, value=message, what="done")

    def fail(self, reason: object = _NO_REASON) -> bool:
        """Fail this attempt with ``reason`` as the job's ``last_error``; True if this call counted.

        A failure without an exception: the worker function's writes on ``conn`` are rolled
        back, and the job's retry policy decides whether it runs again (Reaction's default
        is no retry, so the job is then failed). ``reason`` is kept as for :meth:`done`;
        None or empty: Reaction's "No error information provided" (the default).
        """
        return self._settle(ok=False, value=reason, what="fail")

    def _settle(self, *, ok: bool, value: object, what: str) -> bool:
        with self._lock:
            if self._closed or self._outcome is not None:
                logger.warning(
                    "job %d (%s): job.%s() ignored, the job was already %s",
                    self.id,
                    self.type,
                    what,
                    "settled" if self._outcome is not None else "handed back to the worker",
                    extra={"job_id": self.id, "job_name": self.type, "action": what},
                )
                return False
            if value is None and not ok:
                value = _NO_REASON
            text = None if value is None else _as_text(value)
            self._outcome = (ok, text)
            return True

    def _close(self) -> tuple[bool, str | None] | None:
        """Stop accepting done()/fail() and return the outcome (None: neither was called)."""
        with self._lock:
            self._closed = True
            return self._outcome

    def __repr__(self) -> str:
        return f"ReactionJob(id={self.id}, type={self.type!r}, attempts={self.attempts})"


def _handler_for(
    worker: Callable[[ReactionJob], object],
) -> Callable[[psycopg.Connection[Any], JobRecord], str | None]:
    """Adapt a Reaction worker function to pgqueue's ``handler(conn, job)``."""

    def handler(conn: psycopg.Connection[Any], record: JobRecord) -> str | None:
        job = ReactionJob(record, conn)
        try:
            value = worker(job)
        finally:
            outcome = job._close()
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if callable(close):
                close()
            _fail(
                "the worker function returned an awaitable; async worker functions are not supported"
            )
        if outcome is None:
            _fail(NO_OUTCOME_MESSAGE)
        ok, text = outcome
        if not ok:
            _fail(text or _NO_REASON)
        return text

    return handler


def _fail(reason: str) -> NoReturn:
    raise JobFailed(reason)


class BackgroundJobs:
    """Reaction's background-jobs API on pgqueue (``context.backgroundJobs``).

    ``sql`` is a DSN string (each call then opens a short connection of its own) or a
    psycopg_pool ConnectionPool (calls borrow one of its connections). Workers always get
    pools of their own, built from the DSN or from the pool's conninfo and connection
    keywords, so they never hold the caller's pool's connections.

    Use it as a context manager, or call :meth:`close`, to stop the workers it started.
    The differences from Reaction's job-queue plugin are listed in each method's docstring.
    """

    def __init__(self, sql: str | ConnectionPool[Any]) -> None:
        if isinstance(sql, str):
            self._dsn: str | None = sql
            self._pool: ConnectionPool[Any] | None = None
        elif isinstance(sql, ConnectionPool):
            self._dsn = None
            self._pool = sql
        else:
            raise ConfigurationError(
                f"sql must be a DSN string or a ConnectionPool, got {sql.__class__.__name__}"
            )
        self._lock = threading.Lock()
        self._workers: list[JobQueueWorker] = []
        self._maintenance: JobQueueWorker | None = None

    # -- workers ----------------------------------------------------------

    def add_worker(
        self,
        *,
        type: str,
        worker: Callable[[ReactionJob], object],
        concurrency: int = 3,
        poll_interval: float = 1.5,
    ) -> JobQueueWorker | None:
        """Start running jobs of ``type`` with ``worker(job)`` at once; return the started worker.

        ``worker`` gets a :class:`ReactionJob` and must call ``job.done(message)`` or
        ``job.fail(reason)``. An exception fails the attempt with the exception's type,
        message and traceback as ``last_error``. Returning without calling either fails
        the attempt at once with :data:`NO_OUTCOME_MESSAGE` (Reaction leaves such a job
        running until its ``workTimeout``, 60 s, and then fails it); pgqueue has no work
        timeout. Async worker functions are not supported (ConfigurationError).

        ``concurrency`` (default 3, as Reaction's) jobs run at once, each in its own
        thread and transaction. ``poll_interval`` (seconds, default 1.5) is how often an
        idle worker looks for jobs that became due (retries, schedules); new due jobs
        wake it at once through NOTIFY. Reaction polls every 5 minutes.

        With ``REACTION_WORKERS_ENABLED=false`` nothing is started and None is returned,
        as in Reaction. Raises ConfigurationError for bad arguments and ConnectError or
        SchemaNotMigratedError when the database is not reachable or not migrated.
        """
        if not isinstance(type, str) or not type:
            raise ConfigurationError("type must be a non-empty string (the job name)")
        if not callable(worker):
            raise ConfigurationError("worker must be a function taking the job")
        if inspect.iscoroutinefunction(worker):
            raise ConfigurationError(
                f"worker for {type!r} is an async function; async worker functions are not"
                " supported: pass a plain function"
            )
        if not workers_enabled():
            logger.info(
                "%s=false: no worker started for %r",
                WORKERS_ENABLED_ENV,
                type,
                extra={"job_name": type, "action": "add_worker"},
            )
            return None
        started = JobQueueWorker(
            self._worker_dsn(),
            name=type,
            handler=_handler_for(worker),
            parallel_count=concurrency,
            poll_interval=poll_interval,
        )
        started.start()
        with self._lock:
            self._workers.append(started)
        return started

    @property
    def workers(self) -> list[JobQueueWorker]:
        """The workers started by :meth:`add_worker` and not yet closed (a copy)."""
        with self._lock:
            return list(self._workers)

    def close(self) -> None:
        """Stop every worker this object started: running jobs finish first. Safe to repeat."""
        with self._lock:
            workers = list(self._workers)
            if self._maintenance is not None:
                workers.append(self._maintenance)
            self._workers = []
            self._maintenance = None
        for started in workers:
            started.stop()

    def __enter__(self) -> BackgroundJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -------------------------------------------------------------

    def schedule_job(
        self,
        *,
        type: str,
        data: Any = None,
        retry: int | Mapping[str, Any] | None = None,
        priority: int | str | None = None,
        schedule: str | None = None,
        cancel_repeats: bool = False,
        queue: str | None = None,
    ) -> JobRecord:
        """Save a job of ``type`` and return it (as :func:`pgqueue.get_job` shows it).

        Reaction's defaults: ``data`` ``{}``; ``priority`` ``"normal"`` (0): a name
        (``"low"`` 10, ``"normal"`` 0, ``"medium"`` -5, ``"high"`` -10, ``"critical"``
        -15, any case; medium outranks normal, as in Reaction) or an int, lower first;
        ``retry`` None: one attempt, no retry. ``retry`` is an int n (n retries) or
        ``{"retries": n, "wait": ms, "backoff": "constant" | "exponential", "until":
        datetime}``: ``wait`` defaults to 300000 (5 minutes), exponential waits double
        (wait, 2 x wait, ...), a mapping without ``retries`` retries until ``until`` or
        forever, as in Reaction. ``queue`` (default ``"default"``) is pgqueue's queue.

        ``schedule`` is a later.js-style text (``"every 5 minutes"``, ``"every weekday at
        9:00"``) or a cron expression, in UTC (grammar: :mod:`pgqueue.schedule`; unknown
        words raise InvalidJobError naming them). The job first runs at the next
        occurrence, never at once, and each time it completes, or fails for good, a copy
        (new id) is enqueued at the next occurrence. Reaction reruns only after success
        and reads ``"every day"`` as the 1st of each month; pgqueue runs it daily.

        ``cancel_repeats=True`` first cancels every other pending job of ``type``, whatever
        its data, in the same transaction as the insert (nothing is cancelled if the job is
        invalid). Reaction only does this when a schedule is given; pgqueue does what its
        documentation says, with or without one. Running jobs are not cancelled.

        Raises InvalidJobError for bad input; nothing is written then.
        """
        if not isinstance(cancel_repeats, bool):
            raise InvalidJobError(f"cancel_repeats must be True or False, got {cancel_repeats!r}")
        max_attempts, policy = reaction_retry(retry)
        fields: dict[str, Any] = {
            "name": type,
            "data": data,
            "priority": REACTION_DEFAULT_PRIORITY if priority is None else priority,
            "max_attempts": max_attempts,
            "retry": policy,
            "schedule": schedule,
            "queue": queue,
        }
        job = {key: value for key, value in fields.items() if value is not None}
        with self._connection() as conn, conn.transaction():
            if cancel_repeats:
                cancelled = _cancel_jobs(conn, name=type)
                logger.debug(
                    "cancel_repeats: cancelled %d pending job(s) of %r",
                    cancelled,
                    type,
                    extra={"job_name": type, "action": "cancel"},
                )
            job_id = add_job_to_queue(conn, job)
            record = _get_job(conn, job_id)
        assert record is not None
        return record

    def cancel_jobs(self, *, type: str, data: Any = None) -> int:
        """Cancel the pending jobs of ``type`` whose data contains ``data``; return how many.

        ``data`` (default None: any data) matches by JSON containment: ``{"shop_id": 1}``
        matches ``{"shop_id": 1, "user": 2}``. Reaction compares the whole data for
        equality; containment is what its callers mean. A job a worker is running is
        neither interrupted nor cancelled (Reaction marks it cancelled and its done()
        then fails).
        """
        with self._connection() as conn:
            return _cancel_jobs(conn, name=type, data=data)

    def get_job(self, id: int) -> JobRecord | None:
        """The job with this id (status, attempts, ``result``, ``last_error``), or None if unknown."""
        with self._connection() as conn:
            return _get_job(conn, id)

    def register_cleanup(
        self, rules: Iterable[Mapping[str, Any]], *, every: Mapping[str, Any] | None = None
    ) -> None:
        """Delete finished jobs of each rule's type that finished longer ago than its days.

        ``rules`` is Reaction's list: ``[{"type": "saveImage/local", "purge_after_days":
        7}]`` (``purgeAfterDays`` works too): completed, failed and cancelled jobs of that
        type are deleted that many days after they finished; other types are kept. The
        built-in clean-up job runs every ``every`` (default one hour; Reaction's runs
        "every day", which later.js reads as monthly). Unless workers are disabled, this
        also starts one maintenance worker that runs pgqueue's built-in jobs, since the
        workers of :meth:`add_worker` run only their own type. See
        :func:`pgqueue.register_cleanup`.
        """
        with self._connection() as conn:
            _register_cleanup(conn, rules, every=every)
        if not workers_enabled():
            return
        with self._lock:
            if self._maintenance is not None:
                return
            # A handler mapping makes the worker claim pgqueue's built-in jobs too; the
            # built-ins (recurring and clean-up) are run by pgqueue itself.
            self._maintenance = JobQueueWorker(
                self._worker_dsn(), handler={CLEANUP_JOB_NAME: run_builtin}, poll_interval=5.0
            )
            self._maintenance.start()

    # -- connections ------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection that commits when the block ends (rolls back on an exception)."""
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
        else:
            assert self._dsn is not None
            with connect(self._dsn) as conn:
                yield conn

    def _worker_dsn(self) -> str:
        """The DSN workers connect with: ours, or the pool's conninfo plus its libpq keywords."""
        if self._pool is None:
            assert self._dsn is not None
            return self._dsn
        pool = self._pool
        # psycopg_pool >= 3.3 also accepts callables for these.
        conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
        kwargs = (pool.kwargs() if callable(pool.kwargs) else pool.kwargs) or {}
        params = {key: value for key, value in kwargs.items() if key in _LIBPQ_KEYWORDS}
        return make_conninfo(conninfo, **params)


def _as_text(value: object) -> str:
    """A result or reason as text Postgres can store: a str as is, else JSON, else str()."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            text = str(value)
    # Postgres text holds no NUL and no lone surrogate.
    text = text[:_MAX_TEXT].replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


for _cls in (BackgroundJobs, BackgroundJobsAPI, ReactionJob, ReactionJobAPI):
    _cls.__module__ = "pgqueue"
