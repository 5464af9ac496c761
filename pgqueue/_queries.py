"""Every SQL statement the Python side sends. The work itself is done by the pgqueue.* functions."""

from __future__ import annotations

from typing import Final, LiteralString

# The columns of a job, in JobRecord's field order.
JOB_COLUMNS: Final[LiteralString] = (
    "id, queue, name, data, priority, status, scheduled_at, attempts, max_attempts,"
    " retry, last_error, result, created_at, updated_at, completed_at, schedule, timeout,"
    " crashes, lease_until, trace_context"
)

# pgqueue.enqueue's insert (same parameters, same defaults), as a plain statement: a call of the
# SQL function costs its planning on every call (measured: 20% of an enqueue's time).
ENQUEUE: Final = (
    "INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry,"
    " schedule, timeout, trace_context)"
    " VALUES (coalesce(%s::text, 'default'), coalesce(%s::text, ''), coalesce(%s::jsonb, '{}'),"
    " coalesce(%s::integer, 1), coalesce(%s::timestamptz, now() + %s::interval, now()),"
    " coalesce(%s::integer, 5), %s::jsonb, %s::jsonb, %s::double precision, %s::jsonb)"
    " RETURNING id"
)
# The sequence looked up once: as nextval's argument, pg_get_serial_sequence ran for every id
# (2.7 against 0.45 µs per id).
RESERVE_JOB_IDS: Final = (
    "WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass AS seq)"
    " SELECT now(), array(SELECT nextval(s.seq) FROM s, generate_series(1, %s))"
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
# Clean-up rules and the recurring job that applies them, in one statement: names, statuses and
# seconds as arrays (one row per name and status), then ADD_RECURRING's parameters.
REGISTER_CLEANUP: Final = (
    "WITH rules AS (INSERT INTO pgqueue.cleanup_rules (name, status, purge_after)"  # noqa: S608
    " SELECT r.name, r.status, make_interval(secs => r.seconds)"
    " FROM unnest(%s::text[], %s::text[], %s::double precision[]) AS r(name, status, seconds)"
    " ON CONFLICT (name, status) DO UPDATE SET purge_after = excluded.purge_after) " + ADD_RECURRING
)
LIST_JOBS: Final = (
    "SELECT " + JOB_COLUMNS + " FROM ("  # noqa: S608 (constants)
    " SELECT j.id, j.queue, j.name, j.data, j.priority,"
    " CASE WHEN j.status = 'pending' AND j.id IN"
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
# The claim, as a plain statement (no plpgsql call on the hot path, see sql/functions.sql): the
# due jobs in run order, locked, each with its attempts already counted (JOB_COLUMNS, after a
# first column and before a last one). The first column says when the claim must go through
# pgqueue.dequeue instead, in the same transaction, which then finds these rows again: a lease has
# expired or a queue in reach has a concurrency limit and a pending job (running ones included: a
# job run in its transaction stays pending), then no row is claimed here; or a job's last start
# never finished (a crash to settle), for any job picked: every row carries the same flag. A
# limited queue with no pending job leaves the claim here: no row of it is there to pick (the same
# snapshot), and the other queues' jobs keep the plain claim (README, Performance: the rate it
# keeps for a worker of every queue). The question is an ordered walk of jobs_queue_dequeue_idx
# that stops at the queue's first row (planned so even on the statistics of an empty table:
# test_claim_plans.py). A claim of several reads the start records in one pass, by the picked ids
# (a lookup per job was planned as a sequential scan per job while job_starts was small, and kept:
# 10-20 ms per claim of 50 at 16 threads once the table held the batches in flight); a claim of
# one looks its job up (about 10 µs less). With no job due it returns one row of NULLs after that
# flag. The last column takes the advisory lock that shows the job running. Sent through libpq
# directly (pgqueue._wire): $n placeholders, each cast. Parameters: the queue (one) or the queues
# (several), then the names, when the claim is narrowed to them.
_CLAIM_HEAD: Final = (
    b"WITH gate AS MATERIALIZED ("
    b" SELECT coalesce((SELECT j.lease_until FROM pgqueue.jobs j WHERE j.status = 'running'"
    b" ORDER BY j.lease_until LIMIT 1) < now(), false)"
    b" OR EXISTS (SELECT 1 FROM pgqueue.queues q WHERE q.max_concurrency IS NOT NULL"
)
_CLAIM_PICK: Final = (
    b" AND (SELECT l.id FROM pgqueue.jobs l WHERE l.queue = q.name AND l.status = 'pending'"
    b" ORDER BY l.queue, l.priority, l.scheduled_at, l.id LIMIT 1) IS NOT NULL) AS slow),"
    b" picked AS (SELECT j.* FROM pgqueue.jobs j"
    b" WHERE j.status = 'pending' AND j.scheduled_at <= now() AND NOT (SELECT g.slow FROM gate g)"
)
_CLAIM_LOCK: Final = b" LIMIT %d FOR UPDATE OF j SKIP LOCKED) SELECT g.slow OR "
_CRASHED_ONE: Final = (
    b"EXISTS (SELECT 1 FROM pgqueue.job_starts s WHERE s.job_id = p.id AND s.attempt > p.attempts)"
)
_CRASHED_ANY: Final = (
    b"EXISTS (SELECT 1 FROM pgqueue.job_starts s JOIN picked c ON c.id = s.job_id"
    b" WHERE s.job_id = ANY ((SELECT array_agg(a.id) FROM picked a)::bigint[])"
    b" AND s.attempt > c.attempts)"
)
_CLAIM_TAIL: Final = (
    b", p.id, p.queue, p.name, p.data, p.priority, p.status, p.scheduled_at, p.attempts + 1,"
    b" p.max_attempts, p.retry, p.last_error, p.result, p.created_at, p.updated_at,"
    b" p.completed_at, p.schedule, p.timeout, p.crashes, p.lease_until, p.trace_context,"
    b" pg_catalog.pg_try_advisory_xact_lock(1885827445 + (p.id / 2147483648)::integer,"
    b" (p.id % 2147483648)::integer)"
    b" FROM gate g LEFT JOIN picked p ON true"
)
_RUN_ORDER: Final = b" ORDER BY j.priority, j.scheduled_at, j.id"


def claim_statement(
    limit: int, queues: list[str] | None, names: list[str] | None
) -> tuple[bytes, list[object]]:
    """The claim of up to ``limit`` jobs of ``queues`` and ``names`` (None: any) and its parameters."""
    # The limit is written into the statement: with a parameter there, the planner's generic
    # plan (which guesses a tenth of the table) would never win over a custom one, and every
    # claim would be planned afresh (about 0.3 ms of server time).
    tail = _CLAIM_LOCK % int(limit) + (_CRASHED_ONE if limit == 1 else _CRASHED_ANY) + _CLAIM_TAIL
    params: list[object] = []
    if queues is None:
        gate, where, order = b"", b"", _RUN_ORDER
    elif len(queues) == 1:  # reads jobs_queue_dequeue_idx
        params.append(queues[0])
        gate, where = b" AND q.name = $1::text", b" AND j.queue = $1::text"
        order = b" ORDER BY j.queue, j.priority, j.scheduled_at, j.id"
    else:
        params.append(queues)
        gate, where = b" AND q.name = ANY ($1::text[])", b" AND j.queue = ANY ($1::text[])"
        order = _RUN_ORDER
    if names is not None:
        params.append(names)
        where += b" AND j.name = ANY ($%d::text[])" % len(params)
    return _CLAIM_HEAD + gate + _CLAIM_PICK + where + order + tail, params


DEQUEUE: Final = "SELECT " + JOB_COLUMNS + " FROM pgqueue.dequeue(%s, %s, %s)"  # noqa: S608 (constants)
DEQUEUE_WIRE: Final = (
    b"SELECT "
    + JOB_COLUMNS.encode()
    + b" FROM pgqueue.dequeue($1::integer, $2::text[], $3::text[])"
)
SAVEPOINT: Final = "SAVEPOINT pgqueue_job"
SAVEPOINT_WIRE: Final = SAVEPOINT.encode()
RELEASE_SAVEPOINT: Final = "RELEASE SAVEPOINT pgqueue_job"
RELEASE_SAVEPOINT_WIRE: Final = RELEASE_SAVEPOINT.encode()
# Batch mode: to tell, after a handler ended the transaction with raw SQL, a COMMIT from a ROLLBACK.
CURRENT_XACT_ID_WIRE: Final = b"SELECT pg_current_xact_id_if_assigned()::text"
XACT_STATUS: Final = "SELECT pg_xact_status(%s::xid8)"
ROLLBACK_TO_SAVEPOINT: Final = "ROLLBACK TO SAVEPOINT pgqueue_job"
ROLLBACK_TO_SAVEPOINT_WIRE: Final = ROLLBACK_TO_SAVEPOINT.encode()
COMPLETE: Final = "SELECT pgqueue.complete(%s, %s, %s)"
# The end of a claim's transaction, sent through libpq (pgqueue._wire) unnamed, not prepared: a
# handler may have had psycopg drop every prepared statement of the connection (it does after a
# ROLLBACK, a DROP or an ALTER) and a missing one would abort the transaction. Completing jobs
# that neither recur nor repeat on a schedule (the worker knows from their rows): pgqueue.
# complete_many's work as plain statements, for one job (the usual case, cheap to plan) or
# several; pgqueue.complete_many for the others; pgqueue.fail for failed attempts.
_COMPLETE_SET: Final = (
    b"UPDATE pgqueue.jobs j SET status = 'completed', attempts = j.attempts + 1,"
    b" completed_at = now(), updated_at = now(),"
)
COMPLETE_ONE_WIRE: Final = (
    _COMPLETE_SET + b" result = $2::text WHERE j.id = $1::bigint AND j.status = 'pending'"
)
COMPLETE_PLAIN_WIRE: Final = (
    _COMPLETE_SET + b" result = u.result FROM unnest($1::bigint[], $2::text[]) AS u(id, result)"
    b" WHERE j.id = u.id AND j.status = 'pending'"
)
COMPLETE_MANY_WIRE: Final = (
    b"SELECT pgqueue.complete_many($1::bigint[], $2::text[], $3::timestamptz[])"
)
FAIL_WIRE: Final = b"SELECT status, scheduled_at, attempts FROM pgqueue.fail($1::bigint, $2::text, $3::timestamptz)"
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
# Record that the attempts of claims (each claimed by a worker's transaction, still open) start
# now, in a transaction of their own committed before the handlers run ($1 ids, $2 attempt
# numbers, $3 next runs of jobs on a schedule, $6 their claims' tokens, $9 whether their claim
# has other jobs; $4 worker, $5 process: pgqueue.job_starts says what each means; several
# claims of a worker's slots may go in one statement), and drop the start records of attempts the worker
# has finished since ($7 ids, $8 their claims' tokens: not a newer attempt's), which the job's own
# transaction leaves, to stay short. This may even arrive after the job's outcome, on its other
# connection, and leave a record of a finished attempt, which never counts (its attempt is not
# ahead of the job's). A row of the claim's own (job_id, token): it never waits for the
# transaction holding the job, which may have just deleted the job's earlier start (settled its
# crash) and runs until the handler returns. A plain statement, prepared once per side
# connection, sent after START_SETTINGS in its own transaction (a plpgsql call costs more
# server time than the insert itself).
START_JOBS: Final = (
    b"WITH gone AS (DELETE FROM pgqueue.job_starts s"
    b" USING unnest($7::bigint[], $8::bigint[]) AS d(id, token)"
    b" WHERE s.job_id = ANY ($7::bigint[]) AND s.job_id = d.id AND s.token = d.token)"
    b" INSERT INTO pgqueue.job_starts AS s"
    b" (job_id, attempt, shared, next_at, worker, process, token)"
    b" SELECT u.id, u.attempt, u.shared, u.next_at, $4, $5::bigint, u.token"
    b" FROM unnest($1::bigint[], $2::integer[], $3::timestamptz[], $6::bigint[], $9::boolean[])"
    b" AS u(id, attempt, next_at, token, shared)"
    b" ON CONFLICT (job_id, token) DO UPDATE"
    b" SET attempt = excluded.attempt, shared = excluded.shared, started_at = now(),"
    b" next_at = excluded.next_at, worker = excluded.worker, process = excluded.process,"
    b" token = excluded.token, timed_out = NULL"
)
# For the transaction of START_JOBS: no need to wait for the WAL flush (a start must outlive the
# worker process, not the server, whose crash ends the job's transaction too, not the job's
# fault; and the job's own commit flushes the WAL past it anyway), and generic plans: with a
# custom plan looking cheaper for the small arrays of the moment than the generic plan for any,
# Postgres would plan each call afresh (measured: 0.1 ms of server time per claim). Neither
# sequential scans nor nested loops: job_starts churns a row per claim and, between vacuums,
# spans many pages of dead rows around a few live ones; its statistics then make reading it all
# look cheaper than the index (every start read every page: 42 a start over 20,000 jobs, 260
# after minutes). A plan made while it was empty walked its whole index instead, or compared
# each row with each finished pair (105 ms for a batch of 800). With no JIT, which the cost of a
# disabled plan node could start.
START_SETTINGS: Final = (
    b"SELECT pg_catalog.set_config('synchronous_commit', 'off', true),"
    b" pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true),"
    b" pg_catalog.set_config('enable_seqscan', 'off', true),"
    b" pg_catalog.set_config('enable_nestloop', 'off', true),"
    b" pg_catalog.set_config('jit', 'off', true)"
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
