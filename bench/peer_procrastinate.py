"""procrastinate, as its docs show it: an App on a PsycopgConnector, an async task, run_worker_async.

Knobs (from the App.run_worker_async docstring): ``concurrency=N`` (async
jobs in parallel), ``listen_notify=True`` (the default; new jobs wake the
worker), ``fetch_job_polling_interval`` (the fallback poll), ``delete_jobs``
left at its default ``never``. The pool's ``max_size`` is set above the
concurrency (the docs: each worker opens up to max_size connections; one more
is the listener), so no job slot waits for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import procrastinate

from .peer_base import PeerAdapter, job_started

POOL_MAX_SIZE = 20


async def noop(i: int) -> None:
    """The no-op job."""
    job_started(i)


class Adapter(PeerAdapter):
    name = "procrastinate"
    package = "procrastinate"
    unfinished_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    reset_sql = "TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE"

    def __init__(self) -> None:
        super().__init__()
        self.app: Any = None
        self.task: Any = None
        self.worker: asyncio.Task[None] | None = None

    async def setup(self, dsn: str) -> None:
        connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=POOL_MAX_SIZE)
        self.app = procrastinate.App(connector=connector)
        self.task = self.app.task(name="noop", queue="default")(noop)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        self.knobs.update(
            {
                "connector": "PsycopgConnector (psycopg 3 async pool)",
                "pool_max_size": POOL_MAX_SIZE,
                "concurrency": "N (run_worker_async(concurrency=N))",
                "listen_notify": True,
                "fetch_job_polling_interval_s": "1 (drain) / 5 (latency)",
                "delete_jobs": "never (default)",
                "enqueue_one": "task.defer_async(i=...)",
                "enqueue_many": "task.batch_defer_async(*kwargs)",
            }
        )

    async def enqueue_one(self, i: int) -> None:
        await self.task.defer_async(i=i)

    async def enqueue_many(self, count: int) -> None:
        await self.task.batch_defer_async(*({"i": i} for i in range(count)))

    async def start_worker(self, concurrency: int, poll_interval: float) -> None:
        self.worker = asyncio.create_task(
            self.app.run_worker_async(
                concurrency=concurrency,
                wait=True,
                listen_notify=True,
                fetch_job_polling_interval=poll_interval,
                install_signal_handlers=False,
            )
        )
        await asyncio.sleep(0)

    async def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.worker
        self.worker = None

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close_async()
