-- Why: tracing (OpenTelemetry). A job enqueued inside a traced request
-- carries the W3C trace context of its enqueue span (a "traceparent" and
-- maybe a "tracestate" and "baggage", as the propagator writes them), so the
-- span of each run of the job joins the request's trace. A column of its own,
-- not a key in data: handlers see their payload as it was given.

ALTER TABLE pgqueue.jobs ADD COLUMN trace_context jsonb;

-- pgqueue.enqueue takes the trace context now; the old signature would stay as an overload.
DROP FUNCTION IF EXISTS pgqueue.enqueue(
    text, text, jsonb, integer, timestamptz, interval, integer, jsonb, jsonb, double precision
);
