"""Optional OpenTelemetry spans: ``pgqueue.enqueue``, and ``pgqueue.run <name>`` for each run.

Only ``opentelemetry-api`` is used (the ``otel`` extra), and only once the application has set a
tracer provider (``opentelemetry.trace.set_tracer_provider``). Until then, or without the package,
:func:`enqueue_span` and :func:`run_span` return None after one ``isinstance`` check: no span, no
context switch, nothing stored in the job. The enqueue span's W3C trace context (whatever the
global propagator writes: ``traceparent``, ``tracestate``, ``baggage``) is stored in the job's
``trace_context`` column, and each run's span is its child, so the run joins the trace of the
request that enqueued the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from ._input import EnqueueParams
from .records import JobRecord

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )

    _AVAILABLE = True
except ImportError:  # the otel extra is not installed
    _AVAILABLE = False

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["EnqueueSpan", "RunSpan", "enqueue_span", "run_span"]

_SCOPE: Final = "pgqueue"
_SYSTEM: Final = "pgqueue"


class _Cache:
    """The tracer of the provider last seen (set_tracer_provider sets it once per process, but
    tests may swap it): asking the provider for a tracer on every job costs more than the check."""

    provider: TracerProvider | None = None
    tracer: Tracer | None = None


_MISSING: Final = object()
#: Named a provider class for get_tracer_provider() to load (read at import, like the API does).
_PROVIDER_FROM_ENV: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_OFF: Final[tuple[type, ...]] = (ProxyTracerProvider, NoOpTracerProvider) if _AVAILABLE else ()


def _current_tracer() -> Tracer | None:
    """The pgqueue tracer of the configured provider; None when tracing is off.

    Called for every enqueue and every run, so the no-provider case is kept to a
    module-attribute read: ``get_tracer_provider()`` also looks the environment up
    on each call (about 2 µs). Should that private global go away, the public call
    is used.
    """
    if not _AVAILABLE:
        return None
    provider: Any = getattr(_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is None and not _PROVIDER_FROM_ENV:
        return None  # nothing set
    if provider is None or provider is _MISSING:
        provider = _trace.get_tracer_provider()
    if isinstance(provider, _OFF):
        return None
    if provider is not _Cache.provider:
        try:
            scope_version: str | None = version("pgqueue")
        except PackageNotFoundError:  # run from a source tree
            scope_version = None
        _Cache.tracer = provider.get_tracer(_SCOPE, scope_version)
        _Cache.provider = provider
    return _Cache.tracer


class _SpanScope:
    """A span made current until the block ends; the block's exception is recorded on it."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token = _context.attach(_trace.set_span_in_context(span))

    def __enter__(self) -> _SpanScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.record(exc)
        finally:
            _context.detach(self._token)
            self._span.end()

    def record(self, exc: BaseException) -> None:
        """Record ``exc`` on the span and mark it failed."""
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class EnqueueSpan(_SpanScope):
    """The ``pgqueue.enqueue`` span of one enqueue call; ``carrier`` is what the jobs store."""

    __slots__ = ("carrier",)

    def __init__(self, tracer: Tracer, jobs: Sequence[EnqueueParams]) -> None:
        names = {job.name or "" for job in jobs}
        queues = {job.queue or "default" for job in jobs}
        count = len(jobs)
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "send",
        }
        if len(queues) == 1:
            attributes["messaging.destination.name"] = next(iter(queues))
        if len(names) == 1:
            attributes["pgqueue.job.name"] = next(iter(names))
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        super().__init__(
            tracer.start_span("pgqueue.enqueue", kind=SpanKind.PRODUCER, attributes=attributes)
        )
        carrier: dict[str, str] = {}
        _propagate.inject(carrier)
        #: The trace context as JSON for the trace_context column; None if the propagator wrote nothing.
        self.carrier: str | None = json.dumps(carrier) if carrier else None

    def set_ids(self, ids: list[int]) -> None:
        """Name the jobs written."""
        if len(ids) == 1:
            self._span.set_attribute("pgqueue.job.id", ids[0])
            self._span.set_attribute("messaging.message.id", str(ids[0]))
        else:
            self._span.set_attribute("pgqueue.job.ids", ids)


class RunSpan(_SpanScope):
    """The ``pgqueue.run <name>`` span of one attempt: a child of the enqueue span, when the job
    carries one, current while the handler runs (the handler's own spans nest under it)."""

    __slots__ = ()

    def __init__(self, tracer: Tracer, job: JobRecord) -> None:
        parent = _propagate.extract(job.trace_context) if job.trace_context else None
        super().__init__(
            tracer.start_span(
                f"pgqueue.run {job.name}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": _SYSTEM,
                    "messaging.operation.type": "process",
                    "messaging.destination.name": job.queue,
                    "messaging.message.id": str(job.id),
                    "pgqueue.job.id": job.id,
                    "pgqueue.job.name": job.name,
                    "pgqueue.job.attempt": job.attempts,
                },
            )
        )

    def finish(self, error: str | None) -> None:
        """Set the outcome: OK, or ERROR with the first line of the stored error."""
        if error is None:
            self._span.set_status(Status(StatusCode.OK))
        else:
            self._span.set_attribute("pgqueue.job.error", error.splitlines()[0] if error else "")
            self._span.set_status(Status(StatusCode.ERROR, error.splitlines()[0] if error else ""))


def tracing() -> bool:
    """Whether an OpenTelemetry tracer provider is set (spans are made)."""
    return _current_tracer() is not None


def enqueue_span(jobs: Sequence[EnqueueParams]) -> EnqueueSpan | None:
    """Start the span of one enqueue call of ``jobs``; None when tracing is off."""
    tracer = _current_tracer()
    return None if tracer is None else EnqueueSpan(tracer, jobs)


def run_span(job: JobRecord) -> RunSpan | None:
    """Start the span of one run of ``job``; None when tracing is off."""
    tracer = _current_tracer()
    return None if tracer is None else RunSpan(tracer, job)
