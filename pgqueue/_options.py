"""The options both workers take (pgqueue.JobQueueWorker, pgqueue.aio.AsyncJobQueueWorker), checked once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._input import check_text
from .builtins import BUILTIN_NAMES
from .errors import ConfigurationError

__all__ = ["WorkerOptions"]


class WorkerOptions:
    """The checked options common to both workers: ``handler`` (a callable or a mapping of job
    name to callable), ``name``, ``queues``, ``poll_interval``, ``parallel_count``, ``listen``,
    ``listen_dsn`` and ``prepare``; raises ConfigurationError for bad ones."""

    def __init__(
        self,
        *,
        handler: Any,
        name: str | None,
        queues: Sequence[str] | None,
        poll_interval: float,
        parallel_count: int,
        listen: bool,
        listen_dsn: str | None,
        prepare: bool,
    ) -> None:
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
        if not isinstance(listen, bool) or not isinstance(prepare, bool):
            raise ConfigurationError("listen and prepare must be True or False")
        if listen_dsn is not None and (not isinstance(listen_dsn, str) or not listen_dsn.strip()):
            raise ConfigurationError("listen_dsn must be a DSN string")
        if listen_dsn is not None and not listen:
            raise ConfigurationError("listen_dsn is for LISTEN, which listen=False turns off")
        if name is not None:
            check_text("name", name)
            if isinstance(handler, Mapping) and name not in handler:
                raise ConfigurationError(
                    f"the worker runs only jobs named {name!r}, but the handler mapping has no entry for it"
                )
        if isinstance(queues, str):
            queues = [queues]
        self.name = name
        self.queues = None if queues is None else [check_text("queue", x) for x in queues]
        self.poll_interval = float(poll_interval)
        self.parallel_count = parallel_count
        self.listen = listen
        self.listen_dsn = listen_dsn
        self.prepare = prepare
        #: The job names the worker claims: None for all.
        self.names: list[str] | None
        if name is not None:
            self.names = [name]
        elif isinstance(handler, Mapping):
            self.names = [*handler, *BUILTIN_NAMES]
        else:
            self.names = None
