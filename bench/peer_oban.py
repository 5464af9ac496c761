"""oban (oban-py, Python 3.12+), as its README shows it: Oban(pool=..., queues={...}) embedded, a
@worker class, Oban.enqueue / enqueue_many.

Knobs: the queue's ``limit`` = the concurrency asked for (its docs: queue
name mapped to worker limit), the psycopg pool from ``Oban.create_pool`` with
``max_size`` above the limit, everything else at its defaults (stager 1 s,
producer debounce 5 ms, metrics off, leadership on for the worker). Jobs are
enqueued by a second, client-mode instance (no queues), as an app would.
Open-source oban inserts and acks one job at a time (bulk is Pro).
"""

from __future__ import annotations

from typing import Any

from oban import Oban, worker
from oban.schema import install

from .peer_base import PeerAdapter, job_started

QUEUE = "bench"
POOL_MAX_SIZE = 20


@worker(queue=QUEUE)
class NoopWorker:
    """The no-op job."""

    async def process(self, job: Any) -> None:
        job_started(int(job.args["i"]))


class Adapter(PeerAdapter):
    name = "oban"
    package = "oban"
    unfinished_sql = (
        "SELECT count(*) FROM oban_jobs"
        " WHERE state IN ('available', 'scheduled', 'executing', 'retryable')"
    )
    reset_sql = "TRUNCATE oban_jobs"

    def __init__(self) -> None:
        super().__init__()
        self.pool: Any = None
        self.client: Any = None
        self.server: Any = None

    async def setup(self, dsn: str) -> None:
        self.pool = await Oban.create_pool(dsn, max_size=POOL_MAX_SIZE)
        await install(self.pool)
        self.client = Oban(pool=self.pool, name="bench-client")
        self.knobs.update(
            {
                "pool": f"Oban.create_pool(max_size={POOL_MAX_SIZE})",
                "queues": "{'bench': N} (limit = concurrency)",
                "stager_interval_s": "1.0 (default)",
                "metrics": "off (default)",
                "enqueue_one": "Oban.enqueue(Worker.new(args))",
                "enqueue_many": "Oban.enqueue_many(jobs) (one INSERT per job, one transaction, in open source)",
            }
        )

    async def enqueue_one(self, i: int) -> None:
        await self.client.enqueue(NoopWorker.new({"i": i}))  # type: ignore[attr-defined]

    async def enqueue_many(self, count: int) -> None:
        jobs = [NoopWorker.new({"i": i}) for i in range(count)]  # type: ignore[attr-defined]
        await self.client.enqueue_many(jobs)

    async def start_worker(self, concurrency: int, poll_interval: float) -> None:
        self.server = Oban(pool=self.pool, queues={QUEUE: concurrency}, name="bench-worker")
        await self.server.start()

    async def stop_worker(self) -> None:
        if self.server is None:
            return
        await self.server.stop()
        self.server = None

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
