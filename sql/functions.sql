-- Every pgqueue.* function. Re-applied (CREATE OR REPLACE) after each
-- migrate, so this file always describes the functions of the current code.
--
-- Conventions: parameters p_, locals v_, everything schema-qualified.
--
-- "Running" is not stored: the worker's transaction holds the job's row lock.
-- Row locks are invisible to other sessions, so dequeue also takes a
-- transaction-scoped advisory lock (key 1885827445 = 'pgqu', job id modulo
-- 2^31), which pg_locks shows while the job runs and Postgres drops with the
-- transaction, crash or not.

-- One NOTIFY per statement (not per row), one per queue that got due work.
-- Payload: the queue name. Identical payloads in one transaction are folded
-- into one notification by Postgres.
CREATE OR REPLACE FUNCTION pgqueue.notify_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.scheduled_at <= now()) q;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobs_notify ON pgqueue.jobs;
CREATE TRIGGER jobs_notify
    AFTER INSERT ON pgqueue.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_jobs();


-- Insert one job; NULL arguments take the column defaults. Returns the id.
CREATE OR REPLACE FUNCTION pgqueue.enqueue(
    p_queue text,
    p_name text,
    p_data jsonb,
    p_priority integer,
    p_scheduled_at timestamptz,
    p_delay interval,
    p_max_attempts integer,
    p_retry jsonb
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry)
    VALUES (
        coalesce(p_queue, 'default'),
        coalesce(p_name, ''),
        coalesce(p_data, '{}'),
        coalesce(p_priority, 1),
        coalesce(p_scheduled_at, now() + p_delay, now()),
        coalesce(p_max_attempts, 5),
        p_retry
    )
    RETURNING id;
$$;


-- Insert many jobs in one statement (parallel arrays, one element a job;
-- NULL elements take the defaults). Returns the ids in input order.
CREATE OR REPLACE FUNCTION pgqueue.enqueue_many(
    p_queues text[],
    p_names text[],
    p_data jsonb[],
    p_priorities integer[],
    p_scheduled_at timestamptz[],
    p_delays interval[],
    p_max_attempts integer[],
    p_retries jsonb[]
) RETURNS SETOF bigint
LANGUAGE sql AS $$
    WITH input AS (
        SELECT *
        FROM unnest(p_queues, p_names, p_data, p_priorities, p_scheduled_at,
                    p_delays, p_max_attempts, p_retries)
             WITH ORDINALITY
             AS i(queue, name, data, priority, scheduled_at, delay, max_attempts, retry, ord)
    ), inserted AS (
        INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry)
        SELECT coalesce(queue, 'default'), coalesce(name, ''), coalesce(data, '{}'),
               coalesce(priority, 1), coalesce(scheduled_at, now() + delay, now()),
               coalesce(max_attempts, 5), retry
        FROM input
        ORDER BY ord
        RETURNING id
    )
    SELECT id FROM inserted ORDER BY id;
$$;


-- Claim up to p_limit due jobs for the calling transaction, in run order:
-- priority, then scheduled_at, then id. Jobs locked by another transaction
-- are skipped. The returned attempts counts the attempt about to start.
-- p_queues / p_names NULL means "any".
--
-- The planner settings pin the plan to an ordered scan of a partial index
-- that stops after p_limit rows: with stale statistics (right after a bulk
-- enqueue) it would otherwise sort every pending job on each call.
CREATE OR REPLACE FUNCTION pgqueue.dequeue(
    p_limit integer,
    p_queues text[],
    p_names text[]
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    IF cardinality(p_queues) = 1 THEN
        FOR v_job IN
            SELECT *
            FROM pgqueue.jobs j
            WHERE j.status = 'pending'
              AND j.queue = p_queues[1]
              AND j.scheduled_at <= now()
              AND (p_names IS NULL OR j.name = ANY (p_names))
            ORDER BY j.queue, j.priority, j.scheduled_at, j.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        LOOP
            PERFORM pg_catalog.pg_try_advisory_xact_lock(1885827445, (v_job.id % 2147483648)::integer);
            v_job.attempts := v_job.attempts + 1;
            RETURN NEXT v_job;
        END LOOP;
        RETURN;
    END IF;
    FOR v_job IN
        SELECT *
        FROM pgqueue.jobs j
        WHERE j.status = 'pending'
          AND j.scheduled_at <= now()
          AND (p_queues IS NULL OR j.queue = ANY (p_queues))
          AND (p_names IS NULL OR j.name = ANY (p_names))
        ORDER BY j.priority, j.scheduled_at, j.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM pg_catalog.pg_try_advisory_xact_lock(1885827445, (v_job.id % 2147483648)::integer);
        v_job.attempts := v_job.attempts + 1;
        RETURN NEXT v_job;
    END LOOP;
END;
$$;


-- Interval JSON ({"years", "months", "weeks", "days", "hours", "minutes",
-- "seconds"}, validated by the Python side) to an interval.
CREATE OR REPLACE FUNCTION pgqueue.interval_from_json(p_interval jsonb) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.make_interval(
        years  => coalesce((p_interval ->> 'years')::integer, 0),
        months => coalesce((p_interval ->> 'months')::integer, 0),
        weeks  => coalesce((p_interval ->> 'weeks')::integer, 0),
        days   => coalesce((p_interval ->> 'days')::integer, 0),
        hours  => coalesce((p_interval ->> 'hours')::integer, 0),
        mins   => coalesce((p_interval ->> 'minutes')::integer, 0),
        secs   => coalesce((p_interval ->> 'seconds')::double precision, 0)
    );
$$;


-- The built-in recurring job's work, done when it completes: enqueue the
-- target job (priority one lower than the scheduler's) and move the
-- recurring row itself to its next run: previous scheduled_at + interval,
-- or now() + interval when that is already past (missed runs are skipped).
-- Calendar arithmetic in UTC: 31 Jan + 1 month = end of February.
CREATE OR REPLACE FUNCTION pgqueue.run_recurring(p_job pgqueue.jobs) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_interval interval := pgqueue.interval_from_json(p_job.data -> 'interval');
    v_next timestamptz;
BEGIN
    INSERT INTO pgqueue.jobs (queue, name, data, priority)
    VALUES (p_job.queue, p_job.data ->> 'name', coalesce(p_job.data -> 'data', '{}'),
            p_job.priority + 1);

    v_next := (p_job.scheduled_at AT TIME ZONE 'UTC' + v_interval) AT TIME ZONE 'UTC';
    IF v_next < now() THEN
        v_next := (now() AT TIME ZONE 'UTC' + v_interval) AT TIME ZONE 'UTC';
    END IF;
    UPDATE pgqueue.jobs
    SET scheduled_at = v_next, attempts = 0, last_error = NULL,
        updated_at = now()
    WHERE id = p_job.id;
END;
$$;


-- Mark a job completed; a recurring job instead enqueues its target and
-- reschedules itself. Returns false when the job is not pending (it was
-- cancelled or finished meanwhile), true otherwise.
CREATE OR REPLACE FUNCTION pgqueue.complete(p_id bigint, p_result text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    UPDATE pgqueue.jobs
    SET status = 'completed', attempts = attempts + 1, result = p_result,
        completed_at = now(), updated_at = now()
    WHERE id = p_id AND status = 'pending' AND name <> 'pgqueue.recurring';
    IF FOUND THEN
        RETURN true;
    END IF;
    SELECT * INTO v_job FROM pgqueue.jobs
    WHERE id = p_id AND status = 'pending' AND name = 'pgqueue.recurring';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pgqueue.run_recurring(v_job);
    RETURN true;
END;
$$;


-- Delay before retry number p_attempt (1 = the first retry) under a retry
-- policy; NULL policy or missing keys take the defaults:
--   backoff 'exponential' (or 'fixed', 'linear', 'polynomial'), delay 10 s,
--   factor 2, max_delay 3600 s, jitter 0.1 (the delay is multiplied by a
--   random factor in [1, 1 + jitter)).
--   fixed: delay; linear: delay * n; exponential: delay * factor^(n-1);
--   polynomial: delay * n^factor (Redwood's 1000 ms * attempts^4).
CREATE OR REPLACE FUNCTION pgqueue.retry_delay(p_retry jsonb, p_attempt integer) RETURNS interval
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_delay double precision := coalesce((p_retry ->> 'delay')::double precision, 10);
    v_factor double precision := coalesce((p_retry ->> 'factor')::double precision, 2);
    v_max double precision := coalesce((p_retry ->> 'max_delay')::double precision, 3600);
    v_jitter double precision := coalesce((p_retry ->> 'jitter')::double precision, 0.1);
    v_n integer := greatest(p_attempt, 1);
    v_secs double precision;
BEGIN
    v_secs := CASE coalesce(p_retry ->> 'backoff', 'exponential')
        WHEN 'fixed' THEN v_delay
        WHEN 'linear' THEN v_delay * v_n
        WHEN 'polynomial' THEN v_delay * power(least(v_n, 100000)::double precision, least(v_factor, 16))
        ELSE v_delay * power(v_factor, least(v_n - 1, 64))
    END;
    -- Ten years at most, whatever the policy: keeps the interval in range.
    v_secs := least(v_secs, v_max, 315576000) * (1 + v_jitter * random());
    RETURN pg_catalog.make_interval(secs => v_secs);
END;
$$;


-- Record a failed attempt in the calling transaction: count it, keep the
-- error, and either schedule the next attempt after the policy's delay or,
-- when attempts are used up (or the next run would fall after the policy's
-- "until"), mark the job failed. Returns the updated row.
CREATE OR REPLACE FUNCTION pgqueue.fail(p_id bigint, p_error text) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job pgqueue.jobs;
    v_next timestamptz;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs WHERE id = p_id AND status = 'pending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_next := now() + pgqueue.retry_delay(v_job.retry, v_job.attempts + 1);
    RETURN QUERY
    UPDATE pgqueue.jobs
    SET attempts = attempts + 1,
        last_error = p_error,
        updated_at = now(),
        status = CASE
            WHEN attempts + 1 >= max_attempts THEN 'failed'
            WHEN v_next > (retry ->> 'until')::timestamptz THEN 'failed'
            ELSE 'pending' END,
        scheduled_at = CASE
            WHEN attempts + 1 >= max_attempts THEN scheduled_at
            WHEN v_next > (retry ->> 'until')::timestamptz THEN scheduled_at
            ELSE v_next END
    WHERE id = p_id
    RETURNING *;
END;
$$;


-- Upsert the built-in recurring job for p_name (one pending row per name,
-- also under concurrent calls): a new one runs at once; an existing one
-- keeps its scheduled_at and takes the new priority, interval and data.
CREATE OR REPLACE FUNCTION pgqueue.add_recurring(
    p_queue text,
    p_name text,
    p_priority integer,
    p_interval jsonb,
    p_data jsonb
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority)
    VALUES (coalesce(p_queue, 'default'), 'pgqueue.recurring',
            jsonb_build_object('name', p_name, 'interval', p_interval,
                               'data', coalesce(p_data, '{}')),
            coalesce(p_priority, 1))
    ON CONFLICT ((data ->> 'name')) WHERE name = 'pgqueue.recurring' AND status = 'pending'
    DO UPDATE SET priority = excluded.priority, data = excluded.data,
                  queue = coalesce(p_queue, pgqueue.jobs.queue), updated_at = now()
    RETURNING id;
$$;


-- Lock keys (job id modulo 2^31) of the jobs running right now in this
-- database: see the note at the top of this file.
CREATE OR REPLACE FUNCTION pgqueue.running_keys() RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT l.objid::bigint
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.classid = 1885827445
      AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                        WHERE d.datname = pg_catalog.current_database());
$$;


-- One job with its status; 'running' while a worker holds it. No row: unknown id.
CREATE OR REPLACE FUNCTION pgqueue.get_job(p_id bigint) RETURNS SETOF pgqueue.jobs
LANGUAGE sql STABLE AS $$
    SELECT j.id, j.queue, j.name, j.data, j.priority,
           CASE WHEN j.status = 'pending'
                     AND (j.id % 2147483648) IN (SELECT pgqueue.running_keys())
                THEN 'running' ELSE j.status END,
           j.scheduled_at, j.attempts, j.max_attempts, j.retry, j.last_error, j.result,
           j.created_at, j.updated_at, j.completed_at
    FROM pgqueue.jobs j
    WHERE j.id = p_id;
$$;


-- Unfinished jobs: due and waiting (pending), due and held by a worker
-- (running), and not yet due (scheduled). NULL filters mean "any".
CREATE OR REPLACE FUNCTION pgqueue.queue_size(
    p_queues text[],
    p_names text[],
    OUT pending_count bigint,
    OUT scheduled_count bigint,
    OUT running_count bigint
)
LANGUAGE sql STABLE AS $$
    WITH running AS MATERIALIZED (SELECT pgqueue.running_keys() AS k)
    SELECT count(*) FILTER (WHERE NOT s.running AND s.scheduled_at <= now()),
           count(*) FILTER (WHERE NOT s.running AND s.scheduled_at > now()),
           count(*) FILTER (WHERE s.running)
    FROM (
        SELECT j.scheduled_at, (j.id % 2147483648) IN (SELECT k FROM running) AS running
        FROM pgqueue.jobs j
        WHERE j.status = 'pending'
          AND (p_queues IS NULL OR j.queue = ANY (p_queues))
          AND (p_names IS NULL OR j.name = ANY (p_names))
    ) s;
$$;


-- Mean seconds from scheduled_at to completion over jobs completed in
-- (p_start, p_end]; 0 when there are none.
CREATE OR REPLACE FUNCTION pgqueue.average_time_to_completion(
    p_start timestamptz,
    p_end timestamptz,
    p_queues text[],
    p_names text[]
) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(extract(epoch FROM avg(j.completed_at - j.scheduled_at))::double precision, 0)
    FROM pgqueue.jobs j
    WHERE j.completed_at > p_start AND j.completed_at <= p_end
      AND j.status = 'completed'
      AND (p_queues IS NULL OR j.queue = ANY (p_queues))
      AND (p_names IS NULL OR j.name = ANY (p_names));
$$;


-- Job counts per queue, name and state (pending, scheduled, running,
-- completed, failed, cancelled), for `pgqueue status`.
CREATE OR REPLACE FUNCTION pgqueue.status_counts(
    OUT queue text, OUT name text, OUT state text, OUT count bigint
) RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    WITH running AS MATERIALIZED (SELECT pgqueue.running_keys() AS k)
    SELECT j.queue, j.name,
           CASE
               WHEN j.status <> 'pending' THEN j.status
               WHEN (j.id % 2147483648) IN (SELECT k FROM running) THEN 'running'
               WHEN j.scheduled_at > now() THEN 'scheduled'
               ELSE 'pending'
           END AS state,
           count(*)
    FROM pgqueue.jobs j
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3;
$$;
