"""The ``@pgqueue.task`` decorator, and :func:`job_handlers`, which turns job classes and tasks
into a worker's ``{name: handler}`` mapping."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

import psycopg

from .errors import ConfigurationError
from .jobs import Job, JobTarget, _check_performs
from .records import JobRecord
from .worker import Handler

__all__ = ["Task", "job_handlers", "task"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Task(Generic[_P, _R]):
    """A function made into a job by :func:`task`; calling it still calls the function.

    ``.perform_later(*args)`` enqueues (returns the job id),
    ``.set(...)`` returns a configured copy (same options as
    :meth:`Job.set`), ``.perform_now(*args)`` runs the function here,
    ``.name`` is the job name. The options (``queue``, ``priority``,
    ``max_attempts``, ``retry``, ``wait``, ``wait_until``, ``sql``) read
    like a Job's. A worker runs it through :func:`job_handlers`.
    """

    __name__: str
    __qualname__: str

    def __init__(self, fn: Callable[_P, _R], job: Job) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._job = job

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pgqueue.Task {self.name!r}>"

    @property
    def job_class(self) -> type[Job]:
        """The Job subclass behind the task (what job_handlers registers)."""
        return type(self._job)

    @property
    def name(self) -> str:
        """The job name; default ``"<module>:<qualname>"`` of the function."""
        return self._job.name

    @property
    def queue(self) -> str:
        """The queue (default ``"default"``)."""
        return self._job.queue

    @property
    def priority(self) -> int | str:
        """The priority (default 50)."""
        return self._job.priority

    @property
    def max_attempts(self) -> int:
        """Attempts in all (default 24)."""
        return self._job.max_attempts

    @property
    def retry(self) -> Mapping[str, Any] | None:
        """The retry policy (default Redwood's, 1 s x attempts^4)."""
        return self._job.retry

    @property
    def scheduled_at(self) -> datetime | timedelta | None:
        """When perform_later schedules the job (see :attr:`Job.scheduled_at`)."""
        return self._job.scheduled_at

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
    ) -> Task[_P, _R]:
        """Return a copy of the task with these options (see :meth:`Job.set`)."""
        job = self._job.set(
            wait=wait,
            wait_until=wait_until,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            retry=retry,
            sql=sql,
        )
        return Task(self.fn, job)

    def perform_later(self, *args: Any) -> int:
        """Enqueue a call with these (JSON-serialisable) arguments; return the job id."""
        return int(self._job.perform_later(*args))

    def perform_now(self, *args: Any) -> Any:
        """Call the function here and now (``conn`` / ``job`` parameters get None)."""
        return self._job.perform_now(*args)


@overload
def task(fn: Callable[_P, _R], /) -> Task[_P, _R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | str | None = None,
    max_attempts: int | None = None,
    retry: Mapping[str, Any] | None = None,
    wait: float | timedelta | None = None,
) -> Callable[[Callable[_P, _R]], Task[_P, _R]]: ...


def task(
    fn: Callable[_P, _R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | str | None = None,
    max_attempts: int | None = None,
    retry: Mapping[str, Any] | None = None,
    wait: float | timedelta | None = None,
) -> Task[_P, _R] | Callable[[Callable[_P, _R]], Task[_P, _R]]:
    """Make a function a job: ``@pgqueue.task`` or ``@pgqueue.task(queue="email", ...)``.

    Options left at None take Job's defaults: ``name``
    ``"<module>:<qualname>"`` of the function, ``queue`` ``"default"``,
    ``priority`` 50, ``max_attempts`` 24, ``retry`` Redwood's policy
    (``retry={}`` means pgqueue's default policy), ``wait`` none. Where to
    enqueue comes from ``pgqueue.Job.config(sql=...)`` or ``.set(sql=...)``.

    A worker calls the function with the stored arguments; if it declares a
    keyword-only parameter ``conn`` it also gets the job's connection (inside
    the job's transaction), and a keyword-only ``job`` gets the JobRecord.
    """
    options = {
        key: value
        for key, value in {
            "name": name,
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "retry": retry,
            "wait": wait,
        }.items()
        if value is not None
    }

    def decorate(func: Callable[_P, _R]) -> Task[_P, _R]:
        if not callable(func):
            raise TypeError(f"@pgqueue.task decorates a function, got {type(func).__name__}")
        return Task(func, _function_job(func, options)())

    return decorate if fn is None else decorate(fn)


def job_handlers(*jobs: type[Job] | Task[..., Any]) -> dict[str, Handler]:
    """The ``{name: handler}`` mapping that runs these job classes and tasks.

    Use it as ``JobQueueWorker(dsn, handler=pgqueue.job_handlers(A, b))`` or
    as the attribute named by ``pgqueue work --app module:attr``. Each
    handler makes a new instance, sets ``conn`` and ``job`` on it and runs
    perform with its hooks on the stored arguments. Data that is not an
    ``{"args": [...]}`` object (a job enqueued by name with other data) is
    passed as the single argument. Raises ConfigurationError for something
    that is not a Job subclass or task, or for two with the same name.
    """
    if not jobs:
        raise ConfigurationError("job_handlers() needs at least one job class or task")
    handlers: dict[str, Handler] = {}
    for item in jobs:
        cls = item.job_class if isinstance(item, Task) else item
        if not (isinstance(cls, type) and issubclass(cls, Job)):
            raise ConfigurationError(f"job_handlers() takes Job subclasses and tasks, got {item!r}")
        _check_performs(cls)
        if cls.name in handlers:
            raise ConfigurationError(f"two job classes or tasks are named {cls.name!r}")
        handlers[cls.name] = _handler(cls)
    return handlers


# -- internals ----------------------------------------------------------------

_ENVELOPE_KEYS: Final = frozenset({"args"})


def _handler(cls: type[Job]) -> Handler:
    def handle(conn: psycopg.Connection[Any], job: JobRecord) -> object:
        instance = cls()
        instance.conn = conn
        instance.job = job
        return instance._run_hooks(_job_args(job.data))

    handle.__name__ = handle.__qualname__ = cls.__qualname__
    handle.__module__ = cls.__module__
    handle.__doc__ = f"Run job {cls.name!r} ({cls.__qualname__}.perform with its hooks)."
    return handle


def _job_args(data: Any) -> list[Any]:
    if isinstance(data, dict) and data.keys() == _ENVELOPE_KEYS and isinstance(data["args"], list):
        return data["args"]
    return [data]


def _function_job(fn: Callable[..., Any], options: Mapping[str, Any]) -> type[Job]:
    """A Job subclass whose perform calls ``fn``; the given options are its class attributes."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        parameters = MappingProxyType({})
    wants = [
        key
        for key in ("conn", "job")
        if key in parameters and parameters[key].kind is inspect.Parameter.KEYWORD_ONLY
    ]

    def perform(self: Job, *args: Any) -> Any:
        return fn(*args, **{key: getattr(self, key) for key in wants})

    module = getattr(fn, "__module__", None) or __name__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    namespace = {
        "perform": perform,
        "__module__": module,
        "__qualname__": qualname,
        "__doc__": fn.__doc__,
        **options,
    }
    return type(qualname.rpartition(".")[2], (Job,), namespace)


Task.__module__ = "pgqueue"
