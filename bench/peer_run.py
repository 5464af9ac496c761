"""Run the peer scenarios for one peer library, in a process of its own.

``python -m bench.peer_run PEER --dsn DSN --config JSON`` prints one line
``RESULT {...}``: the peer's version, knobs and each step's numbers (a step
that fails records its error and the others still run). Steps: enqueue one
job per transaction, the bulk API, drain at each concurrency (the same
backlog as pgqueue's drain; each step stops at a time cap and reports the rate
so far), and idle enqueue-to-start latency; a config with ``steps`` (a list of step names) runs
only those.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from . import peer_base
from .peer_base import PeerAdapter
from .stats import latency_summary

ADAPTERS = {
    "procrastinate": "bench.peer_procrastinate",
    "pgqueuer": "bench.peer_pgqueuer",
    "chancy": "bench.peer_chancy",
    "oban": "bench.peer_oban",
}

#: Peers that cannot be installed on older Pythons (oban-py declares Requires-Python >= 3.12).
MIN_PYTHON = {"oban": (3, 12)}

WARMUP_JOBS = 5  # as in bench.latency
POLL_EVERY = 0.02
#: The bulk step calls the peer's bulk API with this many jobs at a time, until done or capped.
BULK_CHUNK = 20_000


class Runner:
    """The peer steps over one adapter, with a psycopg connection of its own for counting."""

    def __init__(self, adapter: PeerAdapter, dsn: str, config: dict[str, Any]) -> None:
        self.adapter = adapter
        self.dsn = dsn
        self.config = config
        self.cap = float(config["step_cap"])
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def _sql(self, query: str) -> Any:
        assert self.conn is not None
        cur = await self.conn.execute(query)
        return await cur.fetchone() if cur.description else None

    async def unfinished(self) -> int:
        row = await self._sql(self.adapter.unfinished_sql)
        return int(row[0])

    async def reset(self) -> None:
        await self._sql(self.adapter.reset_sql)
        await self._sql("VACUUM ANALYZE")

    async def enqueue_single(self) -> dict[str, Any]:
        await self.reset()
        target = int(self.config["single"])
        start = time.perf_counter()
        done = 0
        while done < target and time.perf_counter() - start < self.cap:
            await self.adapter.enqueue_one(done)
            done += 1
        elapsed = time.perf_counter() - start
        return {
            "jobs_per_s": done / elapsed,
            "jobs": done,
            "target": target,
            "capped": done < target,
            "elapsed_s": elapsed,
        }

    async def enqueue_bulk(self) -> dict[str, Any]:
        await self.reset()
        target = int(self.config["bulk"])
        chunk = min(target, BULK_CHUNK)
        start = time.perf_counter()
        done = 0
        while done < target and time.perf_counter() - start < self.cap:
            await self.adapter.enqueue_many(min(chunk, target - done))
            done += min(chunk, target - done)
        elapsed = time.perf_counter() - start
        queued = await self.unfinished()
        return {
            "jobs_per_s": done / elapsed,
            "jobs": done,
            "target": target,
            "capped": done < target,
            "calls_of": chunk,
            "queued": queued,
            "elapsed_s": elapsed,
        }

    async def drain(self, concurrency: int) -> dict[str, Any]:
        await self.reset()
        count = int(self.config["drain"])
        await self.adapter.enqueue_many(count)
        await self._sql("VACUUM ANALYZE")
        start = time.perf_counter()
        await self.adapter.start_worker(concurrency, 1.0)
        left = count
        try:
            while time.perf_counter() - start < self.cap:
                left = await self.unfinished()
                if left == 0:
                    break
                await asyncio.sleep(POLL_EVERY)
            elapsed = time.perf_counter() - start
        finally:
            await self.adapter.stop_worker()
        done = count - left
        return {
            "jobs_per_s": done / elapsed,
            "jobs": done,
            "queued": count,
            "capped": left > 0,
            "elapsed_s": elapsed,
            "concurrency": concurrency,
        }

    async def latency(self) -> dict[str, Any]:
        await self.reset()
        count = int(self.config["latency_jobs"])
        spacing = float(self.config["latency_spacing"])
        poll = float(self.config["latency_poll_interval"])
        total = count + WARMUP_JOBS
        committed: dict[int, float] = {}
        started: dict[int, float] = {}
        await self.adapter.start_worker(int(self.config["latency_concurrency"]), poll)
        try:
            await asyncio.sleep(1.0)
            peer_base.STARTED = started
            for i in range(total):
                await self.adapter.enqueue_one(i)
                committed[i] = time.perf_counter()
                await asyncio.sleep(spacing)
            deadline = time.perf_counter() + poll * 2 + 5
            while len(started) < total and time.perf_counter() < deadline:
                await asyncio.sleep(POLL_EVERY)
        finally:
            peer_base.STARTED = None
            await self.adapter.stop_worker()
        delays = [started[i] - committed[i] for i in range(WARMUP_JOBS, total) if i in started]
        return {
            **latency_summary(delays, expected=count),
            "concurrency": self.config["latency_concurrency"],
            "poll_interval_s": poll,
        }

    async def run(self) -> dict[str, Any]:
        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        result: dict[str, Any] = {}
        try:
            await self.adapter.setup(self.dsn)
            steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
                ("enqueue_single", self.enqueue_single),
                ("enqueue_bulk", self.enqueue_bulk),
            ]
            for c in self.config["concurrency"]:
                steps.append((f"drain_{c}", functools.partial(self.drain, int(c))))
            steps.append(("latency", self.latency))
            if self.config.get("steps"):
                steps = [step for step in steps if step[0] in self.config["steps"]]
            for key, step in steps:
                try:
                    result[key] = await step()
                except Exception as exc:
                    result[key] = {"error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc()
                _progress(self.adapter.name, key, result[key])
        finally:
            with contextlib.suppress(Exception):
                await self.adapter.close()
            await self.conn.close()
        return result


def _progress(peer: str, step: str, data: dict[str, Any]) -> None:
    if "error" in data:
        text = f"error: {data['error']}"
    elif "p50_ms" in data:
        text = f"p50 {data['p50_ms']} ms  p95 {data['p95_ms']} ms  p99 {data['p99_ms']} ms"
    else:
        capped = " (time cap)" if data.get("capped") else ""
        text = f"{data['jobs_per_s']:>9.0f} jobs/s  ({data['jobs']} jobs){capped}"
    print(f"PROGRESS   {peer} {step:<15} {text}", flush=True)


def run_peer(peer: str, dsn: str, config: dict[str, Any]) -> dict[str, Any]:
    """Every step for ``peer``; a peer that cannot be imported reports why."""
    needs = MIN_PYTHON.get(peer)
    if needs and sys.version_info < needs:
        return {
            "error": f"{peer} needs Python {'.'.join(map(str, needs))}+, "
            f"this is {platform.python_version()}"
        }
    try:
        module = importlib.import_module(ADAPTERS[peer])
        adapter: PeerAdapter = module.Adapter()
    except ImportError as exc:
        return {"error": f"not installed or not importable: {exc}"}
    try:
        version = importlib.metadata.version(adapter.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    runner = Runner(adapter, dsn, config)
    loop_name = "asyncio"
    if adapter.uses_uvloop:
        try:
            uvloop = importlib.import_module("uvloop")
            steps = uvloop.run(runner.run())
            loop_name = "uvloop"
        except ImportError:
            steps = asyncio.run(runner.run())
    else:
        steps = asyncio.run(runner.run())
    return {
        "version": version,
        "knobs": {**adapter.knobs, "event_loop": loop_name},
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_run")
    parser.add_argument("peer", choices=sorted(ADAPTERS))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--config", required=True, help="JSON: sizes and caps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run_peer(args.peer, args.dsn, json.loads(args.config))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
