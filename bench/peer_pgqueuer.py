"""pgqueuer, as its README and benchmark docs show it: asyncpg, PgQueuer + an entrypoint, Queries.enqueue.

Knobs: the asyncpg driver (its docs measure it ~1.7x psycopg), no
per-entrypoint ``concurrency_limit`` (0, unlimited), ``batch_size`` = the
concurrency asked for, ``max_concurrent_tasks`` unset, the worker on uvloop
(as ``pgq run`` does when uvloop is installed), ``dequeue_timeout`` as the
poll fallback, the default ``durable`` tables plus the recommended autovacuum
settings (``pgq autovac``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from .peer_base import PeerAdapter, asyncpg_params, job_started


class Adapter(PeerAdapter):
    name = "pgqueuer"
    package = "pgqueuer"
    unfinished_sql = "SELECT count(*) FROM pgqueuer"
    reset_sql = "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics RESTART IDENTITY"
    uses_uvloop = True

    def __init__(self) -> None:
        super().__init__()
        self.params: dict[str, Any] = {}
        self.producer: Any = None
        self.queries: Any = None
        self.worker_conn: Any = None
        self.pgq: Any = None
        self.worker: asyncio.Task[None] | None = None

    async def setup(self, dsn: str) -> None:
        self.params = asyncpg_params(dsn)
        self.producer = await asyncpg.connect(**self.params)
        self.queries = Queries(AsyncpgDriver(self.producer))
        await self.queries.install()
        await self.queries.optimize_autovacuum()
        self.knobs.update(
            {
                "driver": "AsyncpgDriver (one asyncpg connection per worker)",
                "batch_size": "N (= concurrency)",
                "max_concurrent_tasks": None,
                "entrypoint_concurrency_limit": 0,
                "dequeue_timeout_s": "1 (drain) / 5 (latency)",
                "durability": "durable (default)",
                "autovacuum": "Queries.optimize_autovacuum() (pgq autovac)",
                "enqueue_one": "Queries.enqueue('noop', payload)",
                "enqueue_many": "Queries.enqueue([names], [payloads], [priorities])",
            }
        )

    async def enqueue_one(self, i: int) -> None:
        await self.queries.enqueue("noop", str(i).encode())

    async def enqueue_many(self, count: int) -> None:
        await self.queries.enqueue(
            ["noop"] * count, [str(i).encode() for i in range(count)], [0] * count
        )

    async def start_worker(self, concurrency: int, poll_interval: float) -> None:
        self.worker_conn = await asyncpg.connect(**self.params)
        self.pgq = PgQueuer(AsyncpgDriver(self.worker_conn))

        @self.pgq.entrypoint("noop")  # type: ignore[untyped-decorator]
        async def noop(job: Job) -> None:
            job_started(int(job.payload or b"0"))

        self.worker = asyncio.create_task(
            self.pgq.run(
                dequeue_timeout=timedelta(seconds=poll_interval),
                batch_size=concurrency,
            )
        )
        await asyncio.sleep(0)

    async def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.pgq.shutdown.set()
        try:
            await asyncio.wait_for(self.worker, timeout=30)
        except TimeoutError:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.worker = None
        await self.worker_conn.close()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.close()
