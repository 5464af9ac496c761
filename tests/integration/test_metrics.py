"""Prometheus metrics, scraped for real: HTTP GET, parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_parse,
)
from prometheus_client.parser import text_string_to_metric_families

import pgqueue
import pgqueue.metrics
from pgqueue import _queries as q

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode("utf-8")


def depth(samples: Samples) -> dict[tuple[str, str, str], float]:
    """pgqueue_jobs as (queue, name, status) -> count."""
    return {
        (labels["queue"], labels["name"], labels["status"]): value
        for (name, pairs), value in samples.items()
        if name == "pgqueue_jobs"
        for labels in [dict(pairs)]
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def states(queue: str, name: str, **counts: int) -> dict[tuple[str, str, str], float]:
    """All six statuses of one (queue, name), zero unless given."""
    return {
        (queue, name, state): float(counts.get(state, 0)) for state in pgqueue.metrics.JOB_STATES
    }


@pytest.fixture
def http_server() -> Iterator[Callable[..., int]]:
    servers: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> int:
        server, _thread = pgqueue.metrics.start_http_server(*args, **kwargs)
        servers.append(server)
        port: int = server.server_port
        return port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _boom(conn: Any, job: Any) -> None:
    raise ValueError("boom")


def test_a_scrape_counts_jobs_exactly_and_the_worker_counts_its_attempts(
    dsn: str, conn: psycopg.Connection[Any], http_server: Callable[..., int]
) -> None:
    add = pgqueue.add_job_to_queue
    for _ in range(4):
        add(conn, name="ok", queue="mail")
    for _ in range(2):
        add(conn, name="boom", queue="mail", max_attempts=1)  # fails for good
    add(conn, name="again", queue="mail", max_attempts=3)  # fails, retried in ~10 s: scheduled
    for _ in range(2):
        add(conn, name="ok", queue="later", scheduled_at=timedelta(hours=1))
    held = add(conn, name="resize", queue="img")
    add(conn, name="resize", queue="img")
    cancelled = add(conn, name="resize", queue="img")
    assert pgqueue.cancel_job(conn, cancelled)
    add(conn, name="other", queue="img")

    registry = CollectorRegistry()
    worker = pgqueue.JobQueueWorker(
        dsn,
        handler={"ok": lambda conn, job: None, "boom": _boom, "again": _boom},
        queues=["mail"],
        parallel_count=2,
        metrics=registry,
    )
    assert worker.work_off().as_dict() == {"completed": 4, "retried": 1, "failed": 2}

    port = http_server(dsn, 0, registry=registry)
    with psycopg.connect(dsn) as holder:  # a worker's transaction holding one job: running
        (row,) = holder.execute(q.DEQUEUE, (1, ["img"], ["resize"])).fetchall()
        assert row[0] == held
        samples = parse(scrape(port))
    after = parse(scrape(port))

    assert depth(samples) == {
        **states("img", "other", pending=1),
        **states("img", "resize", pending=1, running=1, cancelled=1),
        **states("later", "ok", scheduled=2),
        **states("mail", "again", scheduled=1),
        **states("mail", "boom", failed=2),
        **states("mail", "ok", completed=4),
    }
    assert depth(after)[("img", "resize", "pending")] == 2  # the transaction has ended
    assert depth(after)[("img", "resize", "running")] == 0
    assert value(samples, "pgqueue_up") == 1

    for name, processed, failed in (("ok", 4, 0), ("boom", 2, 2), ("again", 1, 1)):
        labels = {"queue": "mail", "name": name}
        assert value(samples, "pgqueue_jobs_processed_total", **labels) == processed
        assert value(samples, "pgqueue_jobs_failed_total", **labels) == failed
        assert value(samples, "pgqueue_job_duration_seconds_count", **labels) == processed
        assert value(samples, "pgqueue_job_latency_seconds_count", **labels) == processed
        inf = {**labels, "le": "+Inf"}
        assert value(samples, "pgqueue_job_duration_seconds_bucket", **inf) == processed
        # Due now and run at once: each waited less than 10 s (the worker's clock).
        assert (
            value(samples, "pgqueue_job_latency_seconds_bucket", **labels, le="10.0") == processed
        )
    assert value(samples, "pgqueue_worker_slots_busy") == 0
    assert value(samples, "pgqueue_worker_slots") == 0  # work_off has returned


def test_finished_jobs_count_only_within_the_window(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    pgqueue.add_job_to_queue(conn, name="old", queue="q")
    recent = pgqueue.add_job_to_queue(conn, name="old", queue="q")
    old = pgqueue.add_job_to_queue(conn, name="old", queue="q")
    pgqueue.JobQueueWorker(dsn, handler=lambda conn, job: None).work_off()
    conn.execute(
        "UPDATE pgqueue.jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (old,)
    )
    conn.execute(
        "UPDATE pgqueue.jobs SET updated_at = now() - interval '4 minutes' WHERE id = %s",
        (recent,),
    )
    pgqueue.add_job_to_queue(conn, name="old", queue="q")

    def counted(**kwargs: Any) -> dict[tuple[str, str, str], float]:
        return depth(parse(pgqueue.metrics.render(dsn, registry=None, **kwargs).decode()))

    assert counted() == states("q", "old", pending=1, completed=2)  # 300 s by default
    assert counted(finished_window=7200) == states("q", "old", pending=1, completed=3)
    assert counted(finished_window=0) == states("q", "old", pending=1)
    assert counted(finished_window=None) == states("q", "old", pending=1)


def test_render_takes_a_pool_or_a_connection(dsn: str, conn: psycopg.Connection[Any]) -> None:
    from psycopg_pool import ConnectionPool

    pgqueue.add_job_to_queue(conn, name="n", queue="q")
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        from_pool = depth(parse(pgqueue.metrics.render(pool, registry=None).decode()))
    from_conn = depth(parse(pgqueue.metrics.render(conn, registry=None).decode()))
    assert from_pool == from_conn == states("q", "n", pending=1)


def test_a_connection_not_in_autocommit_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        with pytest.raises(pgqueue.ConfigurationError, match="autocommit"):
            pgqueue.metrics.render(conn, registry=None)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_an_unreachable_database_is_pgqueue_up_0_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = pgqueue.metrics.render(
        "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=2", registry=None
    ).decode()
    samples = parse(text)
    assert value(samples, "pgqueue_up") == 0
    assert depth(samples) == {}
    assert "could not count jobs" in caplog.text


def test_the_asgi_app_serves_text_and_openmetrics(dsn: str, conn: psycopg.Connection[Any]) -> None:
    pgqueue.add_job_to_queue(conn, name="n", queue="q")
    app = pgqueue.metrics.make_asgi_app(dsn, registry=None)

    async def get(accept: bytes) -> tuple[dict[str, Any], bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"accept", accept)]}
        await app(scope, receive, send)
        start, body = sent
        return start, body["body"]

    start, body = asyncio.run(get(b"*/*"))
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/plain; version=0.0.4")
    # What render()'s callers are told to send: the same.
    assert dict(start["headers"])[b"content-type"] == pgqueue.metrics.CONTENT_TYPE.encode()
    assert depth(parse(body.decode()))[("q", "n", "pending")] == 1

    start, body = asyncio.run(get(b"application/openmetrics-text; version=1.0.0"))
    assert dict(start["headers"])[b"content-type"].startswith(b"application/openmetrics-text")
    families = {f.name: f for f in openmetrics_parse(body.decode())}  # fails without "# EOF"
    (sample,) = [s for s in families["pgqueue_jobs"].samples if s.labels["status"] == "pending"]
    assert (sample.labels, sample.value) == ({"queue": "q", "name": "n", "status": "pending"}, 1)


def test_the_asgi_app_is_a_route_at_metrics_without_a_redirect(dsn: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    app = Starlette(routes=[Route("/metrics", pgqueue.metrics.make_asgi_app(dsn, registry=None))])
    with TestClient(app) as client:
        got = client.get("/metrics", follow_redirects=False)
    assert got.status_code == 200
    assert "pgqueue_up 1.0" in got.text


def test_worker_metrics_are_off_by_default_and_checked(dsn: str) -> None:
    assert pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None)._metrics is None
    with pytest.raises(pgqueue.ConfigurationError, match="CollectorRegistry"):
        pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, metrics="yes")  # type: ignore[arg-type]
    registry = CollectorRegistry()
    first = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, metrics=registry)
    second = pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, metrics=registry)
    assert first._metrics is second._metrics  # one set of instruments per registry


APP = """
def ok(conn, job):
    pass


def boom(conn, job):
    raise RuntimeError("boom")


handlers = {"ok": ok, "boom": boom}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_pgqueue_work_metrics_port_serves_a_scrape(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    (tmp_path / "metrics_app.py").write_text(APP, encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    env["PGQUEUE_METRICS_PORT"] = str(port)  # the environment works like the flag
    err = tmp_path / "err.txt"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgqueue",
                "work",
                "--app",
                "metrics_app:handlers",
                "--dsn",
                dsn,
                "--concurrency",
                "2",
                "--metrics-host",
                "127.0.0.1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        _wait_until(lambda: "waiting for jobs" in err.read_text(), "the worker to start")
        assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in err.read_text()
        pgqueue.add_jobs_to_queue(
            conn,
            [{"name": "ok", "queue": "web"}] * 7
            + [{"name": "boom", "queue": "web", "max_attempts": 1}] * 3,
        )

        def drained() -> Samples | None:
            samples = parse(scrape(port))
            done = samples.get(("pgqueue_jobs_processed_total", (("name", "ok"), ("queue", "web"))))
            failed = samples.get(
                ("pgqueue_jobs_processed_total", (("name", "boom"), ("queue", "web")))
            )
            return samples if (done, failed) == (7, 3) else None

        samples = _wait_until(drained, "the jobs to be processed")
        assert value(samples, "pgqueue_jobs_failed_total", queue="web", name="boom") == 3
        assert value(samples, "pgqueue_jobs_failed_total", queue="web", name="ok") == 0
        assert value(samples, "pgqueue_job_duration_seconds_count", queue="web", name="ok") == 7
        assert value(samples, "pgqueue_worker_slots") == 2
        assert depth(samples) == {
            **states("web", "boom", failed=3),
            **states("web", "ok", completed=7),
        }
        assert value(samples, "pgqueue_up") == 1
        assert ("process_cpu_seconds_total", ()) in samples  # the default registry's own
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, err.read_text()


def test_pgqueue_work_metrics_port_in_use_is_a_clear_error(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "metrics_app.py").write_text(APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pgqueue",
                "work",
                "--app",
                "metrics_app:handlers",
                "--dsn",
                dsn,
                "--metrics-port",
                str(port),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
