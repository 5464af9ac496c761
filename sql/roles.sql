-- Two group roles for least privilege: optional, applied by
-- `pgqueue migrate --roles` (pgqueue.migrate(conn, roles=True)) after
-- functions.sql, in the same transaction, and re-applied by every later
-- migrate of a database where they were set up, so the grants follow the
-- schema. Idempotent: each run revokes what the two roles hold on pgqueue's
-- objects and grants exactly what is below, so grant your own extras to your
-- login roles, not to these.
--
--   pgqueue_producer  enqueue (one job, or many through COPY) and read jobs
--                     (get_job, list_jobs, queue sizes, status counts, the
--                     metrics scrape's counts); no
--                     dequeue, complete, fail, cancel, retry, update, delete,
--                     schedules, queue settings or DDL.
--   pgqueue_worker    what a JobQueueWorker does: dequeue, complete, fail,
--                     the built-in recurring and clean-up jobs, and enqueue
--                     (handlers may enqueue follow-up jobs); LISTEN and the
--                     advisory locks need no grant.
--
-- Both are NOLOGIN: make your login roles members
-- (CREATE ROLE app_web LOGIN IN ROLE pgqueue_producer). Creating them needs
-- CREATEROLE; roles are per server, grants per database.
--
-- The functions are SECURITY INVOKER (Postgres's default; none is SECURITY
-- DEFINER): they run with the caller's rights, so the table and column
-- grants below are what allows or refuses. EXECUTE on functions stays
-- granted to PUBLIC (Postgres's default); the grants below name every
-- function each role calls, so both keep working if you revoke that.
-- Operations not granted to either (cancel, retry, run now, clear, configure_queue,
-- register_cleanup, add_recurring_job_to_queue, migrate) are for the owner
-- of the schema or another administrative role.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgqueue_producer') THEN
        CREATE ROLE pgqueue_producer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created at the same moment by a migrate of another database
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgqueue_worker') THEN
        CREATE ROLE pgqueue_worker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- Start from nothing on pgqueue's objects, so a grant dropped from this file
-- is dropped from the database too.
REVOKE ALL ON SCHEMA pgqueue FROM pgqueue_producer, pgqueue_worker;
REVOKE ALL ON ALL TABLES IN SCHEMA pgqueue FROM pgqueue_producer, pgqueue_worker;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgqueue FROM pgqueue_producer, pgqueue_worker;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgqueue FROM pgqueue_producer, pgqueue_worker;

GRANT USAGE ON SCHEMA pgqueue TO pgqueue_producer, pgqueue_worker;
-- The schema version check (workers and the CLI run it first).
GRANT SELECT ON pgqueue.migrations TO pgqueue_producer, pgqueue_worker;

-- Producer. Reads every job (RETURNING id needs SELECT too): jobs are not
-- separated per producer. Inserts only the columns an enqueue writes, so a
-- new job is always pending with no attempts. The bulk path reserves ids
-- with nextval() and writes them with COPY, hence INSERT on id and USAGE on
-- the id sequence (USAGE allows nextval, not setval). The NOTIFY trigger
-- needs no grant.
GRANT SELECT ON pgqueue.jobs TO pgqueue_producer;
GRANT INSERT (id, queue, name, data, priority, scheduled_at, max_attempts, retry, schedule,
              timeout, trace_context)
    ON pgqueue.jobs TO pgqueue_producer;
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO pgqueue_producer',
                              pg_catalog.pg_get_serial_sequence('pgqueue.jobs', 'id'));
END
$$;

-- Worker. Claiming takes a row lock (FOR UPDATE needs UPDATE); completing,
-- failing and leases update only the outcome columns; a recurring or
-- repeating job inserts its next run (the id comes from the identity
-- default, which needs no sequence grant); the built-in clean-up job deletes
-- finished jobs past their rule. job_starts is the worker's own bookkeeping
-- of attempts in flight; a run consumes the cancel request of its job. Queue settings (concurrency limits, retry policies)
-- and clean-up rules are read, never written.
GRANT SELECT, DELETE ON pgqueue.jobs TO pgqueue_worker;
GRANT INSERT (queue, name, data, priority, scheduled_at, max_attempts, retry, schedule, timeout,
              trace_context)
    ON pgqueue.jobs TO pgqueue_worker;
GRANT UPDATE (status, attempts, result, last_error, scheduled_at, completed_at, updated_at,
              lease_until, crashes)
    ON pgqueue.jobs TO pgqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.job_starts TO pgqueue_worker;
GRANT SELECT, DELETE ON pgqueue.cancel_requests TO pgqueue_worker;
GRANT SELECT ON pgqueue.queues, pgqueue.cleanup_rules TO pgqueue_worker;

-- The functions each role calls, by name (every overload). Granted to
-- neither (administration, for the schema's owner): add_recurring,
-- cancel_job, cancel_jobs, clear_jobs, configure_queue, retry_jobs, run_job_now; and
-- notify_jobs is the NOTIFY trigger's function, which needs no grant.
DO $$
DECLARE
    v_grant record;
BEGIN
    FOR v_grant IN
        SELECT p.oid::regprocedure AS fn, g.role
        FROM pg_catalog.pg_proc p
        JOIN (VALUES
            -- enqueue, and read jobs, queue sizes and counts
            ('pgqueue_producer', ARRAY['enqueue', 'get_job', 'running_keys', 'queue_size',
                                       'average_time_to_completion', 'status_counts',
                                       'count_jobs']),
            -- the same (handlers may enqueue), and run jobs
            ('pgqueue_worker', ARRAY['enqueue', 'get_job', 'running_keys', 'queue_size',
                                     'average_time_to_completion', 'status_counts',
                                     'count_jobs', 'dequeue', 'dequeue_limited', 'take_slot', 'queue_over',
                                     'complete', 'complete_many', 'fail', 'fail_attempt',
                                     'retry_delay', 'run_recurring', 'repeat_job',
                                     'interval_from_json', 'cleanup',
                                     'start_jobs', 'forget_starts', 'time_out_start',
                                     'settle_crashed', 'settle_job', 'rescue_leases',
                                     'lease_jobs', 'extend_leases', 'complete_leased',
                                     'fail_leased'])
        ) AS g(role, names) ON p.proname = ANY (g.names)
        WHERE p.pronamespace = 'pgqueue'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', v_grant.fn, v_grant.role);
    END LOOP;
END
$$;
