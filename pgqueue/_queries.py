"""Every SQL statement the Python side sends. The work itself is done by the pgqueue.* functions."""

from __future__ import annotations

from typing import Final, LiteralString

# The columns of a job, in JobRecord's field order.
JOB_COLUMNS: Final[LiteralString] = (
    "id, queue, name, data, priority, status, scheduled_at, attempts, max_attempts,"
    " retry, last_error, result, created_at, updated_at, completed_at, schedule, timeout,"
    " crashes, lease_until, trace_context"
)

ENQUEUE: Final = (
    "SELECT pgqueue.enqueue(%s, %s, %s::jsonb, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s::jsonb)"
)
RESERVE_JOB_IDS: Final = (
    "SELECT now(), array(SELECT nextval(pg_get_serial_sequence('pgqueue.jobs', 'id'))"
    " FROM generate_series(1, %s))"
)
COPY_JOBS: Final = (
    "COPY pgqueue.jobs (id, queue, name, data, priority, scheduled_at, max_attempts, retry,"
    " schedule, timeout, trace_context) FROM STDIN"
)
ADD_RECURRING: Final = (
    "SELECT pgqueue.add_recurring(%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s)"
)
GET_JOB: Final = "SELECT " + JOB_COLUMNS + " FROM pgqueue.get_job(%s)"  # noqa: S608 (constants)
QUEUE_SIZE: Final = (
    "SELECT pending_count, scheduled_count, running_count FROM pgqueue.queue_size(%s, %s)"
)
AVERAGE_TIME_TO_COMPLETION: Final = "SELECT pgqueue.average_time_to_completion(%s, %s, %s, %s)"
STATUS_COUNTS: Final = "SELECT queue, name, state, count FROM pgqueue.status_counts()"
# The metrics scrape (pgqueue.metrics): unfinished jobs, and jobs finished in the last %s seconds.
COUNT_JOBS: Final = "SELECT queue, name, state, count FROM pgqueue.count_jobs(%s)"

# Administration.
CANCEL_JOBS: Final = "SELECT pgqueue.cancel_jobs(%s, %s::jsonb, %s)"
CANCEL_JOB: Final = "SELECT pgqueue.cancel_job(%s)"
RETRY_JOBS: Final = "SELECT pgqueue.retry_jobs(%s, %s, %s)"
CLEAR_JOBS: Final = "SELECT pgqueue.clear_jobs(%s)"
CONFIGURE_QUEUE: Final = "SELECT pgqueue.configure_queue(%s, %s, %s::jsonb)"
SET_CLEANUP_RULE: Final = (
    "INSERT INTO pgqueue.cleanup_rules (name, status, purge_after)"
    " VALUES (%s, %s, make_interval(secs => %s))"
    " ON CONFLICT (name, status) DO UPDATE SET purge_after = excluded.purge_after"
)
LIST_JOBS: Final = (
    "SELECT " + JOB_COLUMNS + " FROM ("  # noqa: S608 (constants)
    " SELECT j.id, j.queue, j.name, j.data, j.priority,"
    " CASE WHEN j.status = 'pending' AND (j.id %% 2147483648) IN"
    " (SELECT pgqueue.running_keys()) THEN 'running' ELSE j.status END AS status,"
    " j.scheduled_at, j.attempts, j.max_attempts, j.retry, j.last_error, j.result,"
    " j.created_at, j.updated_at, j.completed_at, j.schedule, j.timeout, j.crashes,"
    " j.lease_until, j.trace_context"
    " FROM pgqueue.jobs j"
    " WHERE (%(queue)s::text IS NULL OR j.queue = %(queue)s)"
    " AND (%(name)s::text IS NULL OR j.name = %(name)s)) s"
    " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
    " ORDER BY id DESC LIMIT %(limit)s"
)

RUN_JOB_NOW: Final = "SELECT pgqueue.run_job_now(%s)"

# The dashboard (pgqueue.dashboard); its counts are STATUS_COUNTS.
# Jobs finished per minute over the last %(minutes)s minutes, oldest first, one row per minute
# (zeros included). Completed and failed rows are stamped with updated_at when they finish
# (jobs_finished_idx); failed counts jobs that failed for good, not attempts that will retry.
THROUGHPUT: Final = (
    "WITH minutes AS ("
    " SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => %(minutes)s::integer - 1),"
    " date_trunc('minute', now()), interval '1 minute') AS minute),"
    " done AS ("
    " SELECT date_trunc('minute', j.updated_at) AS minute,"
    " count(*) FILTER (WHERE j.status = 'completed') AS completed,"
    " count(*) FILTER (WHERE j.status = 'failed') AS failed"
    " FROM pgqueue.jobs j"
    " WHERE j.status IN ('completed', 'failed')"
    " AND j.updated_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s::integer - 1)"
    " GROUP BY 1)"
    " SELECT m.minute, coalesce(d.completed, 0), coalesce(d.failed, 0)"
    " FROM minutes m LEFT JOIN done d USING (minute)"
    " ORDER BY m.minute"
)
# What repeats, by next run: built-in recurring rows (the target job's name, its interval or
# schedule) and pending jobs with a schedule of their own.
SCHEDULES: Final = (
    "SELECT j.id, j.queue,"
    " CASE WHEN j.name = 'pgqueue.recurring' THEN j.data ->> 'name' ELSE j.name END,"
    " CASE WHEN j.name = 'pgqueue.recurring' THEN coalesce(j.data -> 'schedule', j.data -> 'interval')"
    " ELSE j.schedule END,"
    " j.scheduled_at"
    " FROM pgqueue.jobs j"
    " WHERE j.status = 'pending' AND (j.name = 'pgqueue.recurring' OR j.schedule IS NOT NULL)"
    " ORDER BY j.scheduled_at, j.id"
    " LIMIT %(limit)s"
)

# The worker's transaction, in the order it sends them.
BEGIN: Final = "BEGIN"
DEQUEUE: Final = "SELECT " + JOB_COLUMNS + " FROM pgqueue.dequeue(%s, %s, %s)"  # noqa: S608 (constants)
SAVEPOINT: Final = "SAVEPOINT pgqueue_job"
# Batch mode: to tell, after a handler ended the transaction with raw SQL, a COMMIT from a ROLLBACK.
CURRENT_XACT_ID: Final = "SELECT pg_current_xact_id_if_assigned()::text"
XACT_STATUS: Final = "SELECT pg_xact_status(%s::xid8)"
# Two statements, one round trip (simple query protocol: no parameters).
RELEASE_AND_SAVEPOINT: Final = "RELEASE SAVEPOINT pgqueue_job; SAVEPOINT pgqueue_job"
ROLLBACK_TO_SAVEPOINT: Final = "ROLLBACK TO SAVEPOINT pgqueue_job"
COMPLETE: Final = "SELECT pgqueue.complete(%s, %s, %s)"
COMPLETE_MANY: Final = "SELECT pgqueue.complete_many(%s::bigint[], %s::text[], %s::timestamptz[])"
FAIL: Final = "SELECT status, scheduled_at, attempts FROM pgqueue.fail(%s, %s, %s)"
CLEANUP: Final = "SELECT pgqueue.cleanup()"
# Per job with a timeout, in its transaction: Postgres's own limits (a backstop for a worker
# too stuck to run its watchdog) and the backend to end when the watchdog fires.
SET_TIMEOUTS: Final = (
    "SELECT set_config('statement_timeout', %s, true),"
    " set_config('idle_in_transaction_session_timeout', %s, true), pg_backend_pid()"
)
# Back to the session's own limits, for a job without a timeout later in the batch (no
# parameters: two statements in one round trip).
RESET_TIMEOUTS: Final = "RESET statement_timeout; RESET idle_in_transaction_session_timeout"

# Crashed attempts: on the worker's side connection, outside the jobs' transaction, sent
# through libpq directly (pgqueue.supervisor), hence the $n placeholders; all text parameters.
START_JOBS: Final = (
    b"SELECT pgqueue.start_jobs($1::bigint[], $2::integer[], $3::timestamptz[], $4, $5::bigint,"
    b" $6::bigint, $7::bigint[], $8::bigint[])"
)
FORGET_STARTS: Final = b"SELECT pgqueue.forget_starts($1::bigint[], $2::bigint)"
# The watchdog: mark the start, end the transaction (waiting up to the given ms), settle.
TIME_OUT_START: Final = (
    b"SELECT pgqueue.time_out_start($1::bigint, $2::double precision, $3::bigint[], $4::bigint)"
)
TERMINATE_BACKEND: Final = "SELECT pg_terminate_backend(%s, %s)"
SETTLE_JOB: Final = "SELECT status, scheduled_at, attempts FROM pgqueue.settle_job(%s)"

# Lease mode.
LEASE_JOBS: Final = (
    "SELECT " + JOB_COLUMNS + " FROM pgqueue.lease_jobs(%s::bigint[], %s)"  # noqa: S608 (constants)
)
EXTEND_LEASES: Final = "SELECT pgqueue.extend_leases(%s::bigint[], %s::integer[], %s)"
COMPLETE_LEASED: Final = "SELECT pgqueue.complete_leased(%s, %s, %s, %s)"
FAIL_LEASED: Final = (
    "SELECT status, scheduled_at, attempts FROM pgqueue.fail_leased(%s, %s, %s, %s)"
)
COMMIT: Final = "COMMIT"
ROLLBACK: Final = "ROLLBACK"
LISTEN: Final = "LISTEN pgqueue_jobs"
NOTIFY_CHANNEL: Final = "pgqueue_jobs"

# Migrations.
MIGRATE_LOCK: Final = "SELECT pg_advisory_lock(1885827446)"
MIGRATE_UNLOCK: Final = "SELECT pg_advisory_unlock(1885827446)"
CREATE_SCHEMA: Final = "CREATE SCHEMA IF NOT EXISTS pgqueue"
CREATE_MIGRATIONS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS pgqueue.migrations ("
    " version integer PRIMARY KEY,"
    " name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)
APPLIED_VERSIONS: Final = "SELECT version FROM pgqueue.migrations ORDER BY version"
RECORD_MIGRATION: Final = "INSERT INTO pgqueue.migrations (version, name) VALUES (%s, %s)"
MIGRATIONS_TABLE_EXISTS: Final = "SELECT to_regclass('pgqueue.migrations') IS NOT NULL"
