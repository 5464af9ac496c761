"""What every peer adapter provides, and the hook their no-op jobs call when they start.

An adapter wraps one peer library's documented API: install its schema,
enqueue one job (its own transaction), enqueue many (its bulk API), start and
stop a worker at a given concurrency, and say which SQL counts its unfinished
jobs. ``bench.peer_run`` drives the same steps over every adapter.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from psycopg.conninfo import conninfo_to_dict

#: Set to a dict by the latency step; the no-op jobs record their start time in it.
STARTED: dict[int, float] | None = None


def job_started(i: int) -> None:
    """Called first thing by every peer's no-op job with its index."""
    if STARTED is not None:
        STARTED[i] = time.perf_counter()


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments for a libpq conninfo string."""
    params = conninfo_to_dict(dsn)
    out: dict[str, Any] = {
        "host": params.get("host"),
        "user": params.get("user"),
        "database": params.get("dbname"),
    }
    if params.get("port"):
        out["port"] = int(str(params["port"]))
    if params.get("password"):
        out["password"] = params["password"]
    return {key: value for key, value in out.items() if value is not None}


class PeerAdapter:
    """Base of the adapters: the steps the runner calls, all async."""

    #: The peer's name, as in the results.
    name: ClassVar[str] = ""
    #: The distribution whose version is recorded.
    package: ClassVar[str] = ""
    #: SQL counting jobs that are not finished yet (queued or running).
    unfinished_sql: ClassVar[str] = ""
    #: SQL emptying the peer's tables between steps.
    reset_sql: ClassVar[str] = ""
    #: Whether the peer's own CLI runs its worker on uvloop.
    uses_uvloop: ClassVar[bool] = False

    def __init__(self) -> None:
        #: The settings used, printed and recorded with the results.
        self.knobs: dict[str, Any] = {}

    async def setup(self, dsn: str) -> None:
        """Connect and install the peer's schema into the (empty) database ``dsn``."""
        raise NotImplementedError

    async def enqueue_one(self, i: int) -> None:
        """Enqueue no-op job ``i`` in a transaction of its own."""
        raise NotImplementedError

    async def enqueue_many(self, count: int) -> None:
        """Enqueue ``count`` no-op jobs through the peer's bulk API."""
        raise NotImplementedError

    async def start_worker(self, concurrency: int, poll_interval: float) -> None:
        """Start a worker running ``concurrency`` jobs at once; return once it runs."""
        raise NotImplementedError

    async def stop_worker(self) -> None:
        """Stop the worker started last."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""
