"""What metrics and tracing cost: drains and enqueues with them off and on, plus the hooks alone.

    python -m bench.observability [--dsn DSN] [--jobs 5000] [--rounds 3]

Without --dsn it starts a throw-away embedded PostgreSQL. Rounds alternate the variants (off,
on, off, on, ...) so that a noisy, shared machine slows each about equally; the median of the
rounds is reported. Needs the dev extra (prometheus-client, opentelemetry-sdk).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

import pgqueue
from pgqueue import _tracing
from pgqueue.metrics import worker_instruments
from pgqueue.records import JobRecord, JobStatus

from .loading import NOOP, bulk_enqueue, noop
from .server import embedded_server, given_server


class _Discard(SpanExporter):
    """An exporter that drops every span: the cost of making spans, not of shipping them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextlib.contextmanager
def _provider(on: bool) -> Iterator[None]:
    """A real SDK tracer provider as the global one (on), or none at all (off)."""
    saved = trace._TRACER_PROVIDER
    provider = None
    if on:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    trace._TRACER_PROVIDER = provider
    try:
        yield
    finally:
        trace._TRACER_PROVIDER = saved
        if provider is not None:
            provider.shutdown()


def _drain(dsn: str, jobs: int, threads: int, metrics: bool, tracing: bool) -> float:
    bulk_enqueue(dsn, jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
    worker = pgqueue.JobQueueWorker(
        dsn,
        handler=noop,
        parallel_count=threads,
        metrics=CollectorRegistry() if metrics else False,
    )
    with _provider(tracing):
        start = time.perf_counter()
        stats = worker.work_off()
        elapsed = time.perf_counter() - start
    assert stats.completed == jobs, stats
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.jobs")
    return elapsed / jobs * 1e6


def _enqueue(dsn: str, jobs: int, tracing: bool) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn, _provider(tracing):
        start = time.perf_counter()
        for i in range(jobs):
            pgqueue.add_job_to_queue(conn, name=NOOP, data={"i": i})
        elapsed = time.perf_counter() - start
        conn.execute("TRUNCATE pgqueue.jobs")
    return elapsed / jobs * 1e6


def _rounds(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median µs per job of each variant, the variants alternating within each round."""
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def _hooks() -> dict[str, float]:
    """µs per call of the hooks themselves, no database: the part that is pgqueue's own code."""
    now = datetime.now(UTC)
    job = JobRecord(1, "default", NOOP, {}, 1, JobStatus.PENDING, now, 1, 5, None, None, None, now, now, None)  # fmt: skip
    instruments = worker_instruments(CollectorRegistry())

    def metrics_per_job() -> None:
        instruments.job_started(job)
        instruments.job_ended(job, 0.001)
        instruments.job_done(job)

    number = 200_000
    out = {"metrics hooks per job": timeit.timeit(metrics_per_job, number=number) / number * 1e6}
    with _provider(False):
        out["tracing off: enqueue_span() + run_span()"] = (
            timeit.timeit(
                lambda: (_tracing.enqueue_span(()), _tracing.run_span(job)),
                number=number,
            )
            / number
            * 1e6
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a server whose user may CREATE DATABASE (default: embedded)")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for name, us in _hooks().items():
        print(f"{name}: {us:.2f} µs")
    server_cm: Any = given_server(args.dsn) if args.dsn else embedded_server()
    with server_cm as server, server.database("observability") as dsn:
        n, threads = args.jobs, args.threads
        drains = _rounds(
            {
                "off": lambda: _drain(dsn, n, threads, metrics=False, tracing=False),
                "metrics": lambda: _drain(dsn, n, threads, metrics=True, tracing=False),
                "tracing": lambda: _drain(dsn, n, threads, metrics=False, tracing=True),
            },
            args.rounds,
        )
        enqueues = _rounds(
            {
                "off": lambda: _enqueue(dsn, n, tracing=False),
                "tracing": lambda: _enqueue(dsn, n, tracing=True),
            },
            args.rounds,
        )
    print(f"drain of {n} no-op jobs, {threads} threads, median of {args.rounds} rounds:")
    for name, us in drains.items():
        print(f"  {name:8} {us:7.1f} µs/job  ({(us / drains['off'] - 1) * 100:+.1f} %)")
    print(f"{n} single enqueues (autocommit), median of {args.rounds} rounds:")
    for name, us in enqueues.items():
        print(f"  {name:8} {us:7.1f} µs/job  ({(us / enqueues['off'] - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
