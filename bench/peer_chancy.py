"""chancy, as its docs show it: a Chancy app, a declared Queue, a @job, Worker.start()/stop().

Knobs: the queue uses the ``Async`` executor (its docs: the one for asyncio
jobs, no process or thread hop), ``concurrency=N``, ``eager_polling=True``
(its docs: poll again as soon as a job completes instead of waiting for the
interval, for queues with work continuously available), ``polling_interval``
as the fallback poll, NOTIFY on (the default), the default plugins and pool size.
``push`` enqueues one job per transaction; ``push_many`` is its bulk API
(transactions of 1,000 jobs, its default).
"""

from __future__ import annotations

import contextlib
from typing import Any

from chancy import Chancy, Queue, Worker, job

from .peer_base import PeerAdapter, job_started

QUEUE = "bench"


@job(queue=QUEUE)  # type: ignore[untyped-decorator]
async def noop(*, i: int) -> None:
    """The no-op job."""
    job_started(i)


class Adapter(PeerAdapter):
    name = "chancy"
    package = "chancy"
    unfinished_sql = (
        "SELECT count(*) FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
    )
    reset_sql = "TRUNCATE chancy_jobs"

    def __init__(self) -> None:
        super().__init__()
        self.app: Any = None
        self.worker: Any = None
        self.stack = contextlib.AsyncExitStack()

    async def setup(self, dsn: str) -> None:
        self.app = await self.stack.enter_async_context(Chancy(dsn))
        await self.app.migrate()
        self.knobs.update(
            {
                "executor": "Chancy.Executor.Async",
                "concurrency": "N (Queue(concurrency=N))",
                "polling_interval_s": "1 (drain) / 5 (latency)",
                "eager_polling": True,
                "notifications": True,
                "plugins": "defaults (Leadership, Pruner, Recovery, Metrics, Workflow)",
                "max_connection_pool_size": 10,
                "enqueue_one": "Chancy.push(job)",
                "enqueue_many": "Chancy.push_many(jobs) (batches of 1000)",
            }
        )

    async def enqueue_one(self, i: int) -> None:
        await self.app.push(noop.job.with_kwargs(i=i))

    async def enqueue_many(self, count: int) -> None:
        jobs = [noop.job.with_kwargs(i=i) for i in range(count)]
        async for _ in self.app.push_many(jobs):
            pass

    async def start_worker(self, concurrency: int, poll_interval: float) -> None:
        await self.app.declare(
            Queue(
                QUEUE,
                concurrency=concurrency,
                executor=Chancy.Executor.Async,
                polling_interval=max(1, round(poll_interval)),
                eager_polling=True,
            ),
            upsert=True,
        )
        self.worker = Worker(self.app, register_signal_handlers=False)
        await self.worker.start()

    async def stop_worker(self) -> None:
        if self.worker is None:
            return
        await self.worker.stop()
        self.worker = None

    async def close(self) -> None:
        await self.stack.aclose()
