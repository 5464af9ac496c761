"""A task backend for Django's Tasks framework (``django.tasks``, or the ``django-tasks`` backport).

Settings: ``TASKS = {"default": {"BACKEND": "pgqueue.django.PgQueueBackend"}}``. A task is
enqueued as a pgqueue job named :data:`JOB_NAME` through Django's own connection, so it joins
the request's transaction; ``pgqueue work --app pgqueue.django:handlers`` runs it. Its return
value (as JSON) is kept in the job's ``result`` column, its error in ``last_error``; nothing
else is stored. See "Django" in the README.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import threading
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from . import _queries as q
from . import _tracing
from ._db import translated_error
from ._input import enqueue_params
from .errors import ConfigurationError, JobFailed
from .records import JobRecord, JobStatus
from .worker import Handler

try:  # Django >= 6 ships the framework.
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django 4.2 to 5.2: the django-tasks backport.
    try:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:
        raise ImportError(
            "pgqueue.django needs Django >= 6 (django.tasks) or, on older Django, the "
            "django-tasks package: pip install 'pgqueue[django]'"
        ) from exc

import django
from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string

__all__ = ["JOB_NAME", "PgQueueBackend", "TaskCancelled", "django_handlers", "run_task"]

logger = logging.getLogger(__name__)

#: The pgqueue job name of every Django task; the task's dotted path is in the job's data.
JOB_NAME: Final = "django.task"

#: Attempts per task unless ``OPTIONS["max_attempts"]`` says otherwise: Django's own backends
#: run a task once, and a failed task is FAILED.
DEFAULT_MAX_ATTEMPTS: Final = 1


class TaskCancelled(Exception):
    """The task's job was cancelled (``pgqueue cancel``) before it ran: its result is FAILED."""


class PgQueueBackend(BaseTaskBackend):  # type: ignore[misc]
    """Django task backend that enqueues pgqueue jobs in Django's current transaction.

    ``OPTIONS``: ``database`` (default ``"default"``), the ``DATABASES`` alias to enqueue and
    read results through (PostgreSQL, migrated with ``pgqueue migrate``); ``max_attempts``
    (default 1) attempts per task, retried with pgqueue's default backoff. ``QUEUES`` (the
    framework's; default ``["default"]``) lists the allowed ``queue_name`` values, which become
    pgqueue queues. A task's priority (-100..100, higher first) is stored as pgqueue priority
    ``-priority`` (lower first).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        self.database: str = options.pop("database", DEFAULT_DB_ALIAS)
        self.max_attempts: int = options.pop("max_attempts", DEFAULT_MAX_ATTEMPTS)
        if options:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(sorted(options))}; "
                "pgqueue.django.PgQueueBackend takes database and max_attempts"
            )
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: max_attempts must be an integer")
        if self.max_attempts < 1:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: max_attempts must be at least 1")

    def _db(self) -> Any:
        """Django's connection (wrapper) for ``database``; PostgreSQL only."""
        try:
            wrapper = connections[self.database]
        except Exception as exc:  # ConnectionDoesNotExist
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: database {self.database!r} is not in DATABASES"
            ) from exc
        if wrapper.vendor != "postgresql":
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: database {self.database!r} is {wrapper.vendor}; "
                "pgqueue needs PostgreSQL"
            )
        return wrapper

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Insert the task's job through Django's connection: inside ``transaction.atomic()``
        it commits or rolls back with the block; outside one (autocommit) at once."""
        self.validate_task(task)
        args = normalize_json(args)
        kwargs = normalize_json(kwargs)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):  # USE_TZ = False
            run_after = timezone.make_aware(run_after)
        params = enqueue_params(
            None,
            {
                "name": JOB_NAME,
                "data": {
                    "task": task.module_path,
                    "args": args,
                    "kwargs": kwargs,
                    "backend": self.alias,
                    "run_after": None if run_after is None else run_after.isoformat(),
                },
                "queue": task.queue_name,
                "priority": -task.priority,
                "scheduled_at": run_after,
                "max_attempts": self.max_attempts,
            },
        )
        span = _tracing.enqueue_span((params,))  # None unless a tracer provider is set
        with (
            contextlib.nullcontext() if span is None else span,
            _pgqueue_errors(),
            self._db().cursor() as cursor,
        ):
            cursor.execute(q.ENQUEUE, (*params, None if span is None else span.carrier))
            job_id = cursor.fetchone()[0]
            if span is not None:
                span.set_ids([int(job_id)])
        result = TaskResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The task's result, read from its job; TaskResultDoesNotExist for an unknown id."""
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        if not -(2**63) <= job_id < 2**63:
            raise TaskResultDoesNotExist(result_id)
        with _pgqueue_errors(), self._db().cursor() as cursor:
            cursor.execute(q.GET_JOB, (job_id,))
            row = cursor.fetchone()
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        job = JobRecord.from_row(tuple(row))
        if job.name != JOB_NAME:
            raise TaskResultDoesNotExist(result_id)
        return _task_result(job)

    def check(self, **kwargs: Any) -> list[Any]:
        """Django system check: the database is configured and is PostgreSQL."""
        try:
            self._db()
        except ImproperlyConfigured as exc:
            return [checks.Error(str(exc), id="pgqueue.E001")]
        return []


# -- reading results -----------------------------------------------------------------------

#: The second line of the error text run_task stores for a failed attempt.
_ATTEMPT_LINE: Final = re.compile(r"^django task attempt (\d+) started (\S+) on (.*)$")
_DOTTED: Final = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def _loads(value: Any) -> Any:
    """A jsonb value: Django's connection hands it over as text."""
    return json.loads(value) if isinstance(value, str) else value


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _task_result(job: JobRecord) -> Any:
    data = _loads(job.data)
    task = import_string(data["task"])
    run_after = _time(data.get("run_after"))
    task = dataclasses.replace(
        task,
        priority=-job.priority,
        queue_name=job.queue,
        backend=data["backend"],
        run_after=run_after,
    )
    attempts = job.attempts + (1 if job.status == JobStatus.RUNNING else 0)
    worker_ids = ["unknown"] * attempts
    started_at = finished_at = None
    errors = []
    value = None
    if job.status == JobStatus.COMPLETED and job.result is not None:
        stored = json.loads(job.result)
        value = stored["return_value"]
        started_at = _time(stored["started_at"])
        if "finished_at" in stored:  # stored from 2026-12-07 on
            finished_at = _time(stored["finished_at"])
        if worker_ids:
            worker_ids[-1] = stored["worker"]
    if job.last_error is not None and job.status != JobStatus.COMPLETED:
        error, when, worker = _parse_error(job.last_error)
        errors.append(error)
        started_at = when
        if worker is not None and worker_ids:
            worker_ids[-1 if job.status != JobStatus.RUNNING else -2] = worker
    elif job.status == JobStatus.CANCELLED:
        errors.append(
            TaskError(
                exception_class_path=f"{__name__}.TaskCancelled",
                traceback="the job was cancelled before it ran",
            )
        )
    status = _STATUS[job.status]
    if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) and finished_at is None:
        # The database's times are its transaction's start, before the task ran: never
        # earlier than the attempt's start, then.
        finished_at = job.completed_at or job.updated_at
        if started_at is not None and finished_at is not None:
            finished_at = max(finished_at, started_at)
    if job.status == JobStatus.RUNNING:
        started_at = None  # the running attempt's start is not stored
    result = TaskResult(
        task=task,
        id=str(job.id),
        status=status,
        enqueued_at=job.created_at,
        started_at=started_at,
        finished_at=finished_at,
        last_attempted_at=started_at,
        args=data["args"],
        kwargs=data["kwargs"],
        backend=data["backend"],
        errors=errors,
        worker_ids=worker_ids,
    )
    object.__setattr__(result, "_return_value", value)
    return result


_STATUS: Final = {
    JobStatus.PENDING: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.COMPLETED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


def _parse_error(text: str) -> tuple[Any, datetime | None, str | None]:
    """(TaskError, attempt start, worker) from a job's last_error.

    run_task writes ``"<exception path>: <message>"``, a line saying when and where the
    attempt started, a blank line and the traceback. Other errors come from pgqueue itself
    (``JobTimeout: ...``, ``WorkerCrashed: ...``): their name maps to a builtin exception.
    """
    head, _, rest = text.partition("\n")
    name = head.partition(":")[0].strip()
    attempt_line, _, trace = rest.partition("\n\n")
    match = _ATTEMPT_LINE.match(attempt_line)
    if match is not None and _DOTTED.match(name):
        error = TaskError(exception_class_path=name, traceback=trace)
        return error, datetime.fromisoformat(match.group(2)), match.group(3)
    if name in ("JobTimeout", "LeaseExpired"):
        path = "builtins.TimeoutError"
    elif isinstance(getattr(builtins, name, None), type) and issubclass(
        getattr(builtins, name), BaseException
    ):
        path = f"builtins.{name}"
    else:
        path = "builtins.RuntimeError"
    return TaskError(exception_class_path=path, traceback=text), None, None


# -- running tasks: the worker's side ------------------------------------------------------

_setup_lock = threading.Lock()


def _setup_django() -> None:
    """django.setup() once per process (settings from DJANGO_SETTINGS_MODULE)."""
    if apps.ready:
        return
    with _setup_lock:
        if apps.ready:
            return
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ConfigurationError(
                "pgqueue.django: set DJANGO_SETTINGS_MODULE (and run from the project's "
                "directory, or put it on PYTHONPATH) so the worker can load Django"
            )
        try:
            django.setup()
        except (ImportError, ImproperlyConfigured) as exc:
            raise ConfigurationError(f"pgqueue.django: django.setup() failed: {exc}") from exc


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _pgqueue_errors() -> Iterator[None]:
    """Django's database errors as pgqueue raises the psycopg errors they wrap: a missing
    schema is a SchemaNotMigratedError that says to migrate, and so on."""
    try:
        yield
    except Exception as exc:
        translated = None if exc.__cause__ is None else translated_error(exc.__cause__)
        if translated is None:
            raise
        raise translated from exc


def run_task(conn: psycopg.Connection[Any], job: JobRecord) -> str:
    """The worker's handler for :data:`JOB_NAME` jobs: run the Django task, return its result.

    Sets Django up on first use. The task runs with its stored args and kwargs (and a
    TaskContext first when it ``takes_context``) on Django's own connections, not in the
    job's transaction; only the result (JSON text, in the job's ``result``) or the error
    commits with the job. A failed task raises :class:`pgqueue.JobFailed` whose message
    says the exception's dotted path, when and where the attempt started, and the traceback.
    """
    _setup_django()
    data = job.data
    task = import_string(data["task"])
    started_at = datetime.now(UTC)
    worker = _worker_id()
    backend = task.get_backend()
    result = TaskResult(
        task=task,
        id=str(job.id),
        status=TaskResultStatus.RUNNING,
        enqueued_at=job.created_at,
        started_at=started_at,
        finished_at=None,
        last_attempted_at=started_at,
        args=data["args"],
        kwargs=data["kwargs"],
        backend=data["backend"],
        errors=[],
        worker_ids=["unknown"] * (job.attempts - 1) + [worker],
    )
    task_started.send(type(backend), task_result=result)
    close_old_connections()
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = task.call(*result.args, **result.kwargs)
        finished_at = datetime.now(UTC)
        stored = json.dumps(
            {
                "return_value": normalize_json(value),
                "started_at": started_at.isoformat(),
                "finished_at": finished_at.isoformat(),
                "worker": worker,
            },
            allow_nan=False,
        )
    except Exception as exc:
        path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        trace = "".join(traceback.format_exception(exc))
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        object.__setattr__(result, "finished_at", datetime.now(UTC))
        result.errors.append(TaskError(exception_class_path=path, traceback=trace))
        task_finished.send(type(backend), task_result=result)
        try:
            message = str(exc).splitlines()[0] if str(exc) else ""
        except Exception:
            message = "<str() failed>"
        raise JobFailed(
            f"{path}: {message}\n"
            f"django task attempt {job.attempts} started {started_at.isoformat()} on {worker}"
            f"\n\n{trace}"
        ) from exc
    finally:
        close_old_connections()
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", finished_at)
    object.__setattr__(result, "_return_value", json.loads(stored)["return_value"])
    task_finished.send(type(backend), task_result=result)
    return stored


def django_handlers() -> dict[str, Handler]:
    """``{JOB_NAME: run_task}``, after django.setup(): merge it into your own handlers.

    Raises ConfigurationError when Django cannot be set up (DJANGO_SETTINGS_MODULE unset or
    wrong), so a worker fails at start rather than failing every task.
    """
    _setup_django()
    return {JOB_NAME: run_task}


def __getattr__(name: str) -> dict[str, Handler]:
    # `pgqueue work --app pgqueue.django:handlers`: Django is set up when the worker loads it.
    if name == "handlers":
        return django_handlers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
