"""``--app``: import the user's handlers, job classes and tasks, and wrap them for the CLI's workers."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import psycopg

from .errors import ConfigurationError
from .jobs import Job
from .records import JobRecord
from .tasks import Task, job_handlers
from .worker import Handler

__all__ = ["AppHandlers", "load_app", "timed_handlers"]

logger = logging.getLogger("pgqueue.cli")

AppHandlers = Handler | Mapping[str, Handler]


def load_app(spec: str) -> AppHandlers:
    """Import ``module:attr`` or ``module`` (the current directory first on sys.path).

    ``attr`` may name a handler(conn, job), a mapping of job name to
    handler, a :class:`pgqueue.Job` subclass, a :func:`pgqueue.task`, or a
    list or tuple of job classes and tasks. A bare ``module`` means every
    job class and task among the module's public names. Anything else is a
    ConfigurationError that says what was found.
    """
    module_name, sep, attr = spec.partition(":")
    if not module_name or (sep and not attr):
        raise ConfigurationError(f"--app must look like module:attribute or module, got {spec!r}")
    module = _import(module_name)
    if not sep:
        found = _jobs_in(module)
        if not found:
            raise ConfigurationError(
                f"--app {spec}: module {module_name!r} defines no pgqueue.Job subclass or task; "
                "name a handler with module:attribute"
            )
        return _job_handlers(spec, found)
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"--app {spec}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    return _as_handlers(spec, target)


def _import(module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        logger.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigurationError(f"cannot import {module_name!r} for --app: {exc}") from exc


def _is_job(value: object) -> bool:
    if isinstance(value, Task):
        return True
    return isinstance(value, type) and issubclass(value, Job) and value is not Job


def _jobs_in(module: ModuleType) -> list[Any]:
    found: dict[int, Any] = {}
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or not _is_job(value):
            continue
        # An intermediate base class without perform() holds shared settings, not a job.
        if isinstance(value, type) and issubclass(value, Job) and value.perform is Job.perform:
            continue
        found.setdefault(id(value), value)
    return list(found.values())


def _job_handlers(spec: str, jobs: list[Any]) -> dict[str, Handler]:
    try:
        return job_handlers(*jobs)
    except TypeError as exc:  # a job class without perform()
        raise ConfigurationError(f"--app {spec}: {exc}") from exc


def _as_handlers(spec: str, target: Any) -> AppHandlers:
    if _is_job(target):
        return _job_handlers(spec, [target])
    if isinstance(target, list | tuple) and target and all(_is_job(x) for x in target):
        return _job_handlers(spec, list(target))
    if isinstance(target, Mapping):
        for job_name, fn in target.items():
            if not isinstance(job_name, str) or not callable(fn):
                raise ConfigurationError(
                    f"--app {spec}: the mapping must be of job name (str) to handler(conn, job); "
                    f"entry {job_name!r} is not"
                )
        return target
    if not callable(target):
        raise ConfigurationError(
            f"--app {spec} is a {type(target).__name__}: expected a handler(conn, job), "
            "a mapping of job name to handler, or pgqueue job classes or tasks"
        )
    return target  # type: ignore[no-any-return]


def _timed(fn: Handler) -> Handler:
    """Wrap a handler to log one INFO line per job it finishes."""

    @functools.wraps(fn)
    def run(conn: psycopg.Connection[Any], job: JobRecord) -> object:
        started = time.perf_counter()
        result = fn(conn, job)
        logger.info(
            "job %d %s done in %.1f ms",
            job.id,
            job.name or "(unnamed)",
            (time.perf_counter() - started) * 1000,
            extra={"job_id": job.id, "queue": job.queue, "job_name": job.name, "action": "done"},
        )
        return result

    return run


def timed_handlers(app: AppHandlers) -> AppHandlers:
    """The handler(s) of ``app``, each logging one INFO line per finished job."""
    if isinstance(app, Mapping):
        return {name: _timed(fn) for name, fn in app.items()}
    return _timed(app)
