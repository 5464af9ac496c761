"""Prometheus metrics: job counts read from the database at each scrape, and the worker's instruments.

Needs the ``metrics`` extra (``pip install 'pgqueue[metrics]'``: prometheus-client). Two halves:

- :class:`QueueDepthCollector` counts jobs by queue, name and status with one statement
  (``pgqueue.count_jobs``) each time it is scraped; :func:`render`, :func:`make_asgi_app`,
  :func:`make_wsgi_app` and :func:`start_http_server` serve it together with the process's
  default registry (the worker instruments below, when a worker runs in the process).
- ``JobQueueWorker(..., metrics=True)`` (or ``pgqueue work --metrics-port``) counts processed and
  failed attempts, times handlers and the wait from due to start, and keeps a gauge of busy slots
  (:class:`WorkerInstruments`), in prometheus-client's default registry unless given another.

Every metric is listed in the README's "Metrics and tracing" section.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, NamedTuple

import psycopg
from psycopg_pool import ConnectionPool

from . import _queries as q
from ._db import connect, connection
from .errors import ConfigurationError
from .records import JobRecord

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from prometheus_client import make_wsgi_app as _make_wsgi_app
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pgqueue.metrics needs prometheus-client: pip install 'pgqueue[metrics]'"
    ) from exc

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_FINISHED_WINDOW",
    "JOB_STATES",
    "QueueDepthCollector",
    "WorkerInstruments",
    "make_asgi_app",
    "make_registry",
    "make_wsgi_app",
    "render",
    "start_http_server",
    "worker_instruments",
]

logger = logging.getLogger(__name__)

#: The content type of :func:`render`'s output (Prometheus text format 0.0.4), which the servers
#: here send too. (prometheus-client's CONTENT_TYPE_LATEST names version 1.0.0 from 0.22 on.)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds: completed, failed and cancelled jobs are counted when they finished this recently.
DEFAULT_FINISHED_WINDOW: Final = 300.0
#: The values of the ``status`` label of ``pgqueue_jobs``, in order.
JOB_STATES: Final = ("pending", "scheduled", "running", "completed", "failed", "cancelled")
#: Histogram buckets (seconds) for handler durations and waits: 5 ms to an hour.
BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

MetricsTarget = str | psycopg.Connection[Any] | ConnectionPool[Any]


# -- the scrape: job counts from the database ------------------------------------------------


class QueueDepthCollector(Collector):
    """A prometheus-client collector of job counts, read with one statement at each scrape.

    ``sql`` is a DSN (a connection is opened for each scrape and closed), a
    ConnectionPool (one is borrowed) or an autocommit Connection (used as is;
    psycopg serialises concurrent scrapes on it). Yields ``pgqueue_jobs``
    (gauge; labels queue, name, status), ``pgqueue_up`` (1 when the counts
    were read, 0 when the database could not be asked: the error is logged)
    and ``pgqueue_jobs_query_seconds``.

    Pending, scheduled and running jobs are all counted; completed, failed and
    cancelled ones only if they finished less than ``finished_window``
    seconds ago (default 300; None or 0: not counted), because counting the
    whole history would read every finished row on each scrape. Every
    status of a (queue, name) pair that has any job counted is reported,
    zeros included.
    """

    def __init__(
        self, sql: MetricsTarget, *, finished_window: float | None = DEFAULT_FINISHED_WINDOW
    ) -> None:
        if not isinstance(sql, str | psycopg.Connection | ConnectionPool):
            raise ConfigurationError(
                "sql must be a DSN, a psycopg Connection or a ConnectionPool, "
                f"got {type(sql).__name__}"
            )
        if isinstance(sql, psycopg.Connection) and not sql.autocommit:
            raise ConfigurationError(
                "a Connection for metrics must be in autocommit mode (autocommit=True): "
                "each scrape would leave it idle in a transaction"
            )
        if finished_window is not None and (
            isinstance(finished_window, bool)
            or not isinstance(finished_window, int | float)
            or not 0 <= finished_window < float("inf")
        ):
            raise ConfigurationError("finished_window must be a number of seconds, at least 0")
        self._sql = sql
        self._window = None if not finished_window else float(finished_window)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (so registering does not query)."""
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        window = f"{self._window:g}" if self._window else "0"
        return (
            GaugeMetricFamily(
                "pgqueue_jobs",
                "Jobs by queue, name and status: pending (due, waiting for a worker), scheduled "
                "(not due yet) and running, all of them; completed, failed and cancelled, those "
                f"that finished in the last {window} seconds",
                labels=["queue", "name", "status"],
            ),
            GaugeMetricFamily(
                "pgqueue_up", "1 if the last scrape read the job counts from the database, else 0"
            ),
            GaugeMetricFamily(
                "pgqueue_jobs_query_seconds", "Seconds the last scrape's job-count query took"
            ),
        )

    def collect(self) -> Iterable[Metric]:
        """Run the count query and yield the families."""
        jobs, up, seconds = self._families()
        started = time.perf_counter()
        try:
            rows = self._query()
        except Exception as exc:
            logger.warning("metrics: could not count jobs: %s", str(exc).strip().splitlines()[0])
            up.add_metric([], 0)
            return [up]
        by_pair: dict[tuple[str, str], dict[str, int]] = {}
        for queue, name, state, count in rows:
            by_pair.setdefault((queue, name), dict.fromkeys(JOB_STATES, 0))[state] += count
        for (queue, name), counts in sorted(by_pair.items()):
            for state, count in counts.items():
                jobs.add_metric([queue, name, state], count)
        up.add_metric([], 1)
        seconds.add_metric([], time.perf_counter() - started)
        return [jobs, up, seconds]

    def _query(self) -> list[tuple[Any, ...]]:
        if isinstance(self._sql, str):
            with connect(self._sql, autocommit=True) as conn:
                return conn.execute(q.COUNT_JOBS, (self._window,)).fetchall()
        with connection(self._sql) as conn:
            return conn.execute(q.COUNT_JOBS, (self._window,)).fetchall()


class _Forward(Collector):
    """Everything another registry holds (the default one: worker instruments, process metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> Iterable[Metric]:
        return []  # not known in advance; no duplicate check against them

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def make_registry(
    sql: MetricsTarget,
    *,
    finished_window: float | None = DEFAULT_FINISHED_WINDOW,
    registry: CollectorRegistry | None = REGISTRY,
) -> CollectorRegistry:
    """A registry of a :class:`QueueDepthCollector` on ``sql`` plus everything in ``registry``.

    ``registry`` defaults to prometheus-client's default one (the worker
    instruments of workers in this process, process and Python metrics);
    None: the job counts alone.
    """
    combined = CollectorRegistry(auto_describe=False)
    combined.register(QueueDepthCollector(sql, finished_window=finished_window))
    if registry is not None:
        combined.register(_Forward(registry))
    return combined


def render(
    sql: MetricsTarget,
    *,
    finished_window: float | None = DEFAULT_FINISHED_WINDOW,
    registry: CollectorRegistry | None = REGISTRY,
) -> bytes:
    """One scrape as Prometheus text (send it with ``Content-Type: CONTENT_TYPE``).

    Runs the count query on ``sql`` now; see :func:`make_registry` for the arguments.
    Blocking: from async code, run it in a thread (:func:`make_asgi_app` does).
    """
    return generate_latest(make_registry(sql, finished_window=finished_window, registry=registry))


AsgiApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def make_asgi_app(
    sql: MetricsTarget,
    *,
    finished_window: float | None = DEFAULT_FINISHED_WINDOW,
    registry: CollectorRegistry | None = REGISTRY,
) -> AsgiApp:
    """An ASGI app that answers every HTTP request with a scrape.

    Serve it at ``/metrics`` with Starlette's ``Route("/metrics", app)``: it is
    an object, not a function, so Starlette takes it for an ASGI app (a
    ``Mount`` would answer ``/metrics`` with a redirect to ``/metrics/``). The
    query runs in the event loop's default thread pool, not in the loop.
    Prometheus text by default, OpenMetrics when the scraper asks for it
    (``Accept``). Needs an asyncio event loop (Starlette, uvicorn).
    """
    return _ScrapeApp(make_registry(sql, finished_window=finished_window, registry=registry))


class _ScrapeApp:
    """The ASGI app of :func:`make_asgi_app`."""

    def __init__(self, target: CollectorRegistry) -> None:
        self._target = target

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":  # served on its own (uvicorn): nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        accept = ""
        for key, value in scope.get("headers", ()):
            if key.lower() == b"accept":
                accept = value.decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, self._target)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": body})


def make_wsgi_app(
    sql: MetricsTarget,
    *,
    finished_window: float | None = DEFAULT_FINISHED_WINDOW,
    registry: CollectorRegistry | None = REGISTRY,
) -> Callable[..., Any]:
    """A WSGI app serving a scrape (prometheus-client's, on :func:`make_registry`)."""
    return _make_wsgi_app(make_registry(sql, finished_window=finished_window, registry=registry))


def start_http_server(
    sql: MetricsTarget,
    port: int,
    addr: str = "127.0.0.1",
    *,
    finished_window: float | None = DEFAULT_FINISHED_WINDOW,
    registry: CollectorRegistry | None = REGISTRY,
) -> tuple[Any, threading.Thread]:
    """Serve scrapes over HTTP on ``addr:port`` from a daemon thread (``pgqueue work --metrics-port``).

    Returns prometheus-client's ``(server, thread)``: ``server.server_port``
    is the port (useful with port 0), ``server.shutdown()`` then
    ``server.server_close()`` stops it. Default address: 127.0.0.1 (this
    host only).
    """
    server, thread = _start_http_server(
        port,
        addr,
        registry=make_registry(sql, finished_window=finished_window, registry=registry),
    )
    return server, thread


# -- the worker's instruments -----------------------------------------------------------------


class _Children(NamedTuple):
    processed: Any
    failed: Any
    duration: Any
    latency: Any


class WorkerInstruments:
    """The worker-side metrics of one registry; get them with :func:`worker_instruments`.

    Shared by every worker of the process that uses the registry: the
    counters add up, the slot gauges are sums. Per job the worker calls
    :meth:`job_started` and :meth:`job_ended` around the handler and
    :meth:`job_done` or :meth:`job_failed` once the outcome is recorded.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["queue", "name"]
        self.processed = Counter(
            "pgqueue_jobs_processed",
            "Attempts whose outcome a worker of this process recorded (completed or failed)",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            "pgqueue_jobs_failed",
            "Attempts that failed (to be retried, or failed for good), recorded by a worker of"
            " this process",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "pgqueue_job_duration_seconds",
            "Seconds a handler ran, per attempt, whatever its outcome",
            labels,
            buckets=BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "pgqueue_job_latency_seconds",
            "Seconds from when an attempt was due (the job's scheduled_at: its enqueue time unless"
            " delayed, or the end of its retry backoff) to the start of its handler",
            labels,
            buckets=BUCKETS,
            registry=registry,
        )
        self.busy = Gauge(
            "pgqueue_worker_slots_busy",
            "Worker slots of this process running a handler now",
            registry=registry,
        )
        self.slots = Gauge(
            "pgqueue_worker_slots",
            "Worker slots of the started workers of this process",
            registry=registry,
        )
        self._children: dict[tuple[str, str], _Children] = {}

    def _of(self, job: JobRecord) -> _Children:
        key = (job.queue, job.name)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = _Children(
                self.processed.labels(*key),
                self.failed.labels(*key),
                self.duration.labels(*key),
                self.latency.labels(*key),
            )
        return children

    def job_started(self, job: JobRecord) -> None:
        """A handler starts: observe the wait since the job was due (the worker's clock)."""
        wait = time.time() - job.scheduled_at.timestamp()
        self._of(job).latency.observe(wait if wait > 0 else 0.0)
        self.busy.inc()

    def job_ended(self, job: JobRecord, seconds: float) -> None:
        """A handler returned or raised after ``seconds``."""
        self._of(job).duration.observe(seconds)
        self.busy.dec()

    def job_done(self, job: JobRecord) -> None:
        """The attempt's completion was recorded."""
        self._of(job).processed.inc()

    def job_failed(self, job: JobRecord) -> None:
        """The attempt's failure was recorded."""
        children = self._of(job)
        children.processed.inc()
        children.failed.inc()


_instruments: weakref.WeakKeyDictionary[CollectorRegistry, WorkerInstruments] = (
    weakref.WeakKeyDictionary()
)
_instruments_lock = threading.Lock()


def worker_instruments(registry: CollectorRegistry | None = None) -> WorkerInstruments:
    """The worker instruments registered in ``registry`` (default: prometheus-client's default
    registry), made on first use: a registry holds one set, shared by the process's workers."""
    target = REGISTRY if registry is None else registry
    with _instruments_lock:
        instruments = _instruments.get(target)
        if instruments is None:
            instruments = _instruments[target] = WorkerInstruments(target)
        return instruments
