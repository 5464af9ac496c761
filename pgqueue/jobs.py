"""Job classes with RedwoodJS's shape (``pgqueue.Job``) and the ``@pgqueue.task`` decorator.

Both are thin layers over :func:`pgqueue.add_job_to_queue` and
:class:`pgqueue.JobQueueWorker`: a job class is a job name, its class
attributes are the enqueue options, and :func:`job_handlers` turns classes
and tasks into the worker's ``{name: handler}`` mapping. The stored data is
``{"args": [...]}``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    TypeAlias,
    TypeVar,
)

import psycopg
from psycopg_pool import ConnectionPool

from ._db import connect
from ._input import enqueue_params
from .errors import ConfigurationError, InvalidJobError
from .queue import add_job_to_queue
from .records import JobRecord
from .retry import REDWOOD_MAX_ATTEMPTS, REDWOOD_RETRY

__all__ = ["Job", "JobNotConfiguredError", "JobTarget"]

logger = logging.getLogger(__name__)

#: Where jobs are enqueued: a Connection (joins the caller's open transaction),
#: a ConnectionPool (commits at once) or a DSN (a short connection per enqueue).
JobTarget: TypeAlias = "psycopg.Connection[Any] | ConnectionPool[Any] | str"

_J = TypeVar("_J", bound="Job")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class JobNotConfiguredError(ConfigurationError):
    """No database to enqueue into: call pgqueue.Job.config(sql=...) once, or pass .set(sql=...).

    pgqueue's counterpart of Redwood's AdapterNotConfiguredError.
    """


class _either(Generic[_J, _P, _R]):
    """A method callable on an instance, or on the class (then on a fresh instance:
    Redwood's static ``performLater`` / ``set`` forms)."""

    def __init__(self, func: Callable[Concatenate[_J, _P], _R]) -> None:
        self.__func__ = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: _J | None, owner: type[_J]) -> Callable[_P, _R]:
        func = self.__func__

        @functools.wraps(func)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            return func(owner() if obj is None else obj, *args, **kwargs)

        return call


class Job:
    """Base class for job classes: subclass it and implement ``perform(self, *args)``.

    Class attributes (Redwood's defaults; a subclass's own never leak to the base):

    - ``name``: the job name stored in the table; default
      ``"<module>:<qualname>"`` of the class (the worker finds the class by
      it through :func:`job_handlers`; define job classes in an importable
      module, not ``__main__``, so both sides agree on it).
    - ``queue`` ``"default"``; ``priority`` 50 (an int, lower runs first, or
      a priority name such as ``"high"``); ``max_attempts`` 24 (the first
      run included); ``retry`` :data:`pgqueue.retry.REDWOOD_RETRY` (1 s x
      attempts^4, no jitter; ``None`` means pgqueue's default policy);
      ``wait`` ``None`` (seconds, or a timedelta, from the database's now);
      ``wait_until`` ``None`` (a timezone-aware datetime); ``sql`` ``None``
      (where to enqueue: see :meth:`config`).

    ``MyJob().perform_later(*args)`` enqueues and returns the job id;
    ``MyJob().set(queue="email", wait=60).perform_later(*args)`` does so
    with options; ``MyJob.perform_later(...)`` and ``MyJob.set(...)`` work on
    the class too (on a fresh instance). Arguments must be JSON-serialisable
    (InvalidJobError at enqueue time otherwise); they are stored as
    ``{"args": [...]}``.

    When a worker runs the job (see :func:`job_handlers`), it makes a new
    instance (so ``__init__`` must take no arguments), sets ``self.conn`` (the connection, inside the job's
    transaction: write through it and your writes commit with the job's
    completion) and ``self.job`` (the :class:`~pgqueue.JobRecord`), then
    runs, in this order::

        before_perform(*args)
        result = perform(*args)            # skipped if before_perform raised
        after_success(result, *args)       # only if both returned
        after_failure(error, *args)        # only if before_perform or perform raised
        after_perform(*args)               # always, last (like finally)

    An error from perform or a hook fails the attempt (rolled back, retried
    per ``max_attempts`` and ``retry``); after_failure and after_perform do
    not swallow it. Hooks run inside the job's transaction, so a rolled-back
    attempt leaves none of their writes. perform's return value is stored
    as the job's ``result`` when it is a str. Outside a worker (perform_now)
    ``self.conn`` and ``self.job`` are None.
    """

    name: ClassVar[str] = "pgqueue.Job"
    queue: str = "default"
    priority: int | str = 50
    max_attempts: int = REDWOOD_MAX_ATTEMPTS
    retry: Mapping[str, Any] | None = MappingProxyType(REDWOOD_RETRY)
    wait: float | timedelta | None = None
    wait_until: datetime | None = None
    sql: JobTarget | None = None

    #: The running job's connection, inside its transaction (None outside a worker).
    conn: psycopg.Connection[Any] | None = None
    #: The running job's record (None outside a worker).
    job: JobRecord | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def config(cls, *, sql: JobTarget | None) -> None:
        """Set where this class and its subclasses enqueue (Redwood's ``RedwoodJob.config``).

        ``pgqueue.Job.config(sql=pool)`` sets the default for every job class
        (and every task, and :func:`pgqueue.enqueue`); ``MyJob.config(sql=...)``
        only for MyJob and its subclasses. ``sql`` is a ConnectionPool, a
        Connection (enqueues join whatever transaction is open on it) or a
        DSN string (a short connection per enqueue, committed at once).
        ``sql=None`` removes this class's own setting (default: none set).
        """
        if sql is None:
            if cls is Job:
                Job.sql = None
            elif "sql" in cls.__dict__:
                delattr(cls, "sql")
            return
        _check_target(sql)
        cls.sql = sql

    @property
    def scheduled_at(self) -> datetime | timedelta | None:
        """When perform_later schedules the job: ``wait`` as a timedelta from the
        database's now, else ``wait_until``, else None (now)."""
        return _when(self.wait, self.wait_until)

    @_either
    def set(
        self,
        *,
        wait: float | timedelta | None = None,
        wait_until: datetime | None = None,
        queue: str | None = None,
        priority: int | str | None = None,
        max_attempts: int | None = None,
        retry: Mapping[str, Any] | None = None,
        sql: JobTarget | None = None,
    ) -> Job:
        """Return a copy with these options; the instance and class are left as they are.

        An option left at None keeps its current value (``retry={}`` means
        pgqueue's default policy). ``wait`` (seconds from the database's now,
        or a timedelta) replaces any ``wait_until`` and vice versa; given
        both, ``wait`` wins (as in Redwood). ``sql`` is where to enqueue,
        e.g. a Connection to enqueue inside your open transaction. Priority 0
        and other falsy values are kept (Redwood falls back to the class
        default); an empty queue name is an InvalidJobError at enqueue.
        """
        clone = copy.copy(self)
        for key, value in (
            ("queue", queue),
            ("priority", priority),
            ("max_attempts", max_attempts),
            ("retry", retry),
        ):
            if value is not None:
                setattr(clone, key, value)
        if sql is not None:
            clone.sql = _check_target(sql)
        if wait_until is not None:
            clone.wait, clone.wait_until = None, wait_until
        if wait is not None:
            clone.wait, clone.wait_until = wait, None
        _when(clone.wait, clone.wait_until)
        return clone

    @_either
    def perform_later(self, *args: Any) -> int:
        """Enqueue the job with these arguments and return its id.

        Raises InvalidJobError (nothing written) when an argument is not
        JSON-serialisable or an option is invalid, and JobNotConfiguredError
        when no ``sql`` target is configured.
        """
        _check_performs(type(self))
        fields = self._enqueue_fields(list(args))
        with _open(self.sql, type(self).__qualname__) as conn:
            job_id = add_job_to_queue(conn, **fields)
        logger.debug(
            "enqueued job %d (%s) in queue %s",
            job_id,
            self.name,
            self.queue,
            extra={
                "job_id": job_id,
                "queue": self.queue,
                "job_name": self.name,
                "action": "enqueue",
            },
        )
        return job_id

    @_either
    def perform_now(self, *args: Any) -> Any:
        """Run the job here and now, hooks included, and return perform's value.

        No database is involved (``self.conn`` and ``self.job`` stay None).
        Errors propagate unchanged (Redwood wraps them in a PerformError).
        """
        _check_performs(type(self))
        return self._run_hooks(args)

    def perform(self, *args: Any) -> Any:
        """The job's work: implement it in your subclass. Its return value is
        stored as the job's result when it is a str."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement perform()")

    def before_perform(self, *args: Any) -> None:
        """Hook: runs before perform; raising fails the attempt (default: nothing)."""

    def after_perform(self, *args: Any) -> None:
        """Hook: runs last, whether perform raised or not (default: nothing)."""

    def after_success(self, result: Any, *args: Any) -> None:
        """Hook: runs after perform returned ``result`` (default: nothing)."""

    def after_failure(self, error: Exception, *args: Any) -> None:
        """Hook: runs after before_perform or perform raised ``error``; the attempt
        still fails (default: nothing)."""

    def _run_hooks(self, args: Sequence[Any]) -> Any:
        """Run perform with its hooks in the documented order; return its value."""
        try:
            self.before_perform(*args)
            result = self.perform(*args)
        except Exception as error:
            self.after_failure(error, *args)
            raise
        else:
            self.after_success(result, *args)
            return result
        finally:
            self.after_perform(*args)

    def _enqueue_fields(self, args: list[Any]) -> dict[str, Any]:
        """The keyword arguments of add_job_to_queue for these arguments, validated
        (InvalidJobError before any connection is opened)."""
        fields = {
            "name": self.name,
            "data": {"args": args},
            "scheduled_at": self.scheduled_at,
            "priority": self.priority,
            "queue": self.queue,
            "max_attempts": self.max_attempts,
            "retry": self.retry,
        }
        enqueue_params(None, {key: value for key, value in fields.items() if value is not None})
        return fields

    def _configured(self, option: str) -> bool:
        """True when ``option`` is set by a subclass, the decorator or set(), not
        inherited from Job's defaults (pgqueue.enqueue uses Gadget's defaults then)."""
        return option in vars(self) or any(
            option in vars(cls) for cls in type(self).__mro__ if cls not in (Job, object)
        )


def _check_performs(cls: type[Job]) -> None:
    if cls.perform is Job.perform:
        raise TypeError(
            f"{cls.__qualname__} does not implement perform(); "
            "subclass pgqueue.Job and define perform(self, *args)"
        )


def _check_target(sql: Any) -> JobTarget:
    if isinstance(sql, (psycopg.Connection, ConnectionPool, str)):
        return sql
    raise ConfigurationError(
        f"sql must be a psycopg Connection, a ConnectionPool or a DSN string, got {type(sql).__name__}"
    )


def _when(
    wait: float | timedelta | None, wait_until: datetime | None
) -> datetime | timedelta | None:
    if wait is not None:
        if isinstance(wait, timedelta):
            delay = wait
        elif (
            isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait)
        ):
            raise InvalidJobError(f"wait must be seconds or a timedelta, got {wait!r}")
        else:
            try:
                delay = timedelta(seconds=wait)
            except OverflowError:
                raise InvalidJobError(f"wait is out of range: {wait!r}") from None
        if delay < timedelta(0):
            raise InvalidJobError(f"wait must not be negative, got {wait!r}")
        return delay
    if wait_until is not None:
        if not isinstance(wait_until, datetime):
            raise InvalidJobError(
                f"wait_until must be a timezone-aware datetime, got {type(wait_until).__name__}"
            )
        if wait_until.tzinfo is None or wait_until.utcoffset() is None:
            raise InvalidJobError(
                "wait_until must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        return wait_until
    return None


@contextlib.contextmanager
def _open(sql: JobTarget | None, what: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one enqueue: the caller's (its transaction), a pool's or a new one
    (both committed when the block ends)."""
    if sql is None:
        raise JobNotConfiguredError(
            f"no database to enqueue {what} into: call pgqueue.Job.config(sql=pool_or_dsn) "
            "once at start-up, or pass .set(sql=conn)"
        )
    if isinstance(sql, psycopg.Connection):
        yield sql
    elif isinstance(sql, ConnectionPool):
        with sql.connection() as conn:
            yield conn
    elif isinstance(sql, str):
        with connect(sql) as conn:
            yield conn
    else:
        _check_target(sql)


for _cls in (Job, JobNotConfiguredError):
    _cls.__module__ = "pgqueue"
