"""OpenTelemetry spans with a real SDK TracerProvider and an in-memory exporter; and without one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgqueue
from pgqueue import _tracing


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A real SDK provider as the global one for this test, its spans kept in memory.

    set_tracer_provider() works once per process, so the global is swapped directly, as
    opentelemetry's own test utilities (reset_trace_globals) do.
    """
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    saved = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = provider
    try:
        yield memory
    finally:
        trace._TRACER_PROVIDER = saved
        provider.shutdown()


@pytest.fixture
def no_provider() -> Iterator[None]:
    saved = trace._TRACER_PROVIDER
    trace._TRACER_PROVIDER = None
    try:
        yield
    finally:
        trace._TRACER_PROVIDER = saved


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_the_run_span_is_a_child_of_the_enqueue_span_of_the_request(
    exporter: InMemorySpanExporter, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("request"):
        job_id = pgqueue.add_job_to_queue(conn, name="hello", queue="mail", data={"x": 1})
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.data == {"x": 1}  # the context is not in the payload
    assert job.trace_context is not None
    assert set(job.trace_context) == {"traceparent"}

    seen: list[Any] = []

    def hello(conn: Any, job: pgqueue.JobRecord) -> None:
        with tracer.start_as_current_span("inside"):
            seen.append(trace.get_current_span().get_span_context())

    pgqueue.JobQueueWorker(dsn, handler={"hello": hello}).work_off()
    spans = exporter.get_finished_spans()
    request, enqueue = by_name(spans, "request"), by_name(spans, "pgqueue.enqueue")
    run, inside = by_name(spans, "pgqueue.run hello"), by_name(spans, "inside")

    assert enqueue.kind == SpanKind.PRODUCER
    assert run.kind == SpanKind.CONSUMER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.context.span_id
    assert run.parent is not None
    assert run.parent.span_id == enqueue.context.span_id
    assert inside.parent is not None
    assert inside.parent.span_id == run.context.span_id
    trace_ids = {s.context.trace_id for s in (request, enqueue, run, inside)}
    assert trace_ids == {request.context.trace_id}
    assert f"{enqueue.context.span_id:016x}" in job.trace_context["traceparent"]
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "pgqueue",
        "messaging.operation.type": "send",
        "messaging.destination.name": "mail",
        "pgqueue.job.name": "hello",
        "pgqueue.job.id": job_id,
        "messaging.message.id": str(job_id),
    }
    attributes = run.attributes or {}
    assert (attributes["pgqueue.job.id"], attributes["pgqueue.job.attempt"]) == (job_id, 1)
    assert attributes["messaging.destination.name"] == "mail"
    assert run.status.status_code == StatusCode.OK


def _fail(conn: Any, job: pgqueue.JobRecord) -> None:
    raise ValueError("no such user")


def test_a_failing_run_records_the_exception_and_each_attempt_has_its_span(
    exporter: InMemorySpanExporter, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = pgqueue.add_job_to_queue(
        conn, name="fail", max_attempts=2, retry={"backoff": "fixed", "delay": 0, "jitter": 0}
    )
    pgqueue.JobQueueWorker(dsn, handler={"fail": _fail}).work_off()
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.status == "failed"
    spans = exporter.get_finished_spans()
    enqueue = by_name(spans, "pgqueue.enqueue")
    runs = [s for s in spans if s.name == "pgqueue.run fail"]
    assert [(s.attributes or {})["pgqueue.job.attempt"] for s in runs] == [1, 2]
    for run in runs:
        assert run.parent is not None
        assert run.parent.span_id == enqueue.context.span_id
        assert run.status.status_code == StatusCode.ERROR
        assert run.status.description == "ValueError: no such user"
        (event,) = run.events
        assert event.name == "exception"
        assert (event.attributes or {})["exception.type"] == "ValueError"


def test_a_bulk_enqueue_is_one_span_and_every_job_carries_it(
    exporter: InMemorySpanExporter, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "a"}, {"name": "b"}, {"name": "a"}])
    (enqueue,) = exporter.get_finished_spans()
    assert (enqueue.attributes or {})["messaging.batch.message_count"] == 3
    assert list((enqueue.attributes or {})["pgqueue.job.ids"]) == ids
    assert "pgqueue.job.name" not in (enqueue.attributes or {})  # two names
    for job_id in ids:
        job = pgqueue.get_job(conn, job_id)
        assert job is not None
        assert job.trace_context is not None
        assert f"{enqueue.context.span_id:016x}" in job.trace_context["traceparent"]
    pgqueue.JobQueueWorker(dsn, handler=lambda conn, job: None).work_off()
    runs = [s for s in exporter.get_finished_spans() if s.name.startswith("pgqueue.run ")]
    assert len(runs) == 3
    assert all(r.parent is not None and r.parent.span_id == enqueue.context.span_id for r in runs)


def test_an_enqueue_that_fails_records_the_error(
    exporter: InMemorySpanExporter, empty_dsn: str
) -> None:
    with (
        psycopg.connect(empty_dsn, autocommit=True) as unmigrated,
        pytest.raises(pgqueue.SchemaNotMigratedError),
    ):
        pgqueue.add_job_to_queue(unmigrated, name="x")
    (span,) = exporter.get_finished_spans()
    assert span.name == "pgqueue.enqueue"
    assert span.status.status_code == StatusCode.ERROR
    assert (span.events[0].attributes or {})["exception.type"] == "pgqueue.SchemaNotMigratedError"
    assert trace.get_current_span() is trace.INVALID_SPAN  # the context was restored


def test_without_a_provider_nothing_is_stored_and_jobs_run(
    no_provider: None, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    job_id = pgqueue.add_job_to_queue(conn, name="n")
    (bulk_id,) = pgqueue.add_jobs_to_queue(conn, [{"name": "n"}])
    for i in (job_id, bulk_id):
        job = pgqueue.get_job(conn, i)
        assert job is not None
        assert job.trace_context is None
        assert _tracing.run_span(job) is None
    stats = pgqueue.JobQueueWorker(dsn, handler=lambda conn, job: None).work_off()
    assert stats.as_dict()["completed"] == 2


def test_without_the_optional_packages_everything_still_works(dsn: str) -> None:
    """opentelemetry and prometheus_client made unimportable in a fresh interpreter."""
    script = f"""
import sys
sys.modules["opentelemetry"] = None
sys.modules["prometheus_client"] = None
import psycopg, pgqueue
with psycopg.connect({dsn!r}, autocommit=True) as conn:
    job_id = pgqueue.add_job_to_queue(conn, name="n")
    pgqueue.add_jobs_to_queue(conn, [{{"name": "n"}}])
    assert pgqueue.get_job(conn, job_id).trace_context is None
stats = pgqueue.JobQueueWorker({dsn!r}, handler=lambda conn, job: None).work_off()
assert stats.as_dict()["completed"] == 2, stats
try:
    pgqueue.JobQueueWorker({dsn!r}, handler=lambda conn, job: None, metrics=True)
except pgqueue.ConfigurationError as exc:
    assert "pgqueue[metrics]" in str(exc)
else:
    raise AssertionError("metrics=True without prometheus-client")
try:
    import pgqueue.metrics
except ImportError as exc:
    assert "pgqueue[metrics]" in str(exc)
else:
    raise AssertionError("pgqueue.metrics without prometheus-client")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
