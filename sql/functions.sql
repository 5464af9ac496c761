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
    p_retry jsonb,
    p_schedule jsonb
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry, schedule)
    VALUES (
        coalesce(p_queue, 'default'),
        coalesce(p_name, ''),
        coalesce(p_data, '{}'),
        coalesce(p_priority, 1),
        coalesce(p_scheduled_at, now() + p_delay, now()),
        coalesce(p_max_attempts, 5),
        p_retry,
        p_schedule
    )
    RETURNING id;
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
    -- Queues with a global concurrency limit take the slower, slot-taking path.
    IF EXISTS (SELECT 1 FROM pgqueue.queues q
               WHERE q.max_concurrency IS NOT NULL
                 AND (p_queues IS NULL OR q.name = ANY (p_queues))) THEN
        RETURN QUERY SELECT * FROM pgqueue.dequeue_limited(p_limit, p_queues, p_names);
        RETURN;
    END IF;
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
-- recurring row itself to its next run. With an interval: previous
-- scheduled_at + interval, or now() + interval when that is already past
-- (missed runs are skipped), in UTC calendar arithmetic (31 Jan + 1 month =
-- end of February). With a cron or text schedule: p_next_at, computed by
-- the worker.
CREATE OR REPLACE FUNCTION pgqueue.run_recurring(p_job pgqueue.jobs, p_next_at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_interval interval;
    v_next timestamptz := p_next_at;
BEGIN
    INSERT INTO pgqueue.jobs (queue, name, data, priority)
    VALUES (p_job.queue, p_job.data ->> 'name', coalesce(p_job.data -> 'data', '{}'),
            p_job.priority + 1);

    IF v_next IS NULL THEN
        v_interval := pgqueue.interval_from_json(p_job.data -> 'interval');
        v_next := (p_job.scheduled_at AT TIME ZONE 'UTC' + v_interval) AT TIME ZONE 'UTC';
        IF v_next < now() THEN
            v_next := (now() AT TIME ZONE 'UTC' + v_interval) AT TIME ZONE 'UTC';
        END IF;
    END IF;
    UPDATE pgqueue.jobs
    SET scheduled_at = v_next, attempts = 0, last_error = NULL, updated_at = now()
    WHERE id = p_job.id;
END;
$$;


-- Mark a job completed; a recurring job instead enqueues its target and
-- reschedules itself, and a job with a schedule is enqueued again at
-- p_next_at (a new job). Returns false when the job is not pending (it was
-- cancelled or finished meanwhile), true otherwise.
CREATE OR REPLACE FUNCTION pgqueue.complete(
    p_id bigint,
    p_result text DEFAULT NULL,
    p_next_at timestamptz DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    UPDATE pgqueue.jobs
    SET status = 'completed', attempts = attempts + 1, result = p_result,
        completed_at = now(), updated_at = now()
    WHERE id = p_id AND status = 'pending' AND name <> 'pgqueue.recurring'
    RETURNING * INTO v_job;
    IF FOUND THEN
        IF v_job.schedule IS NOT NULL AND p_next_at IS NOT NULL THEN
            PERFORM pgqueue.repeat_job(v_job, p_next_at);
        END IF;
        RETURN true;
    END IF;
    SELECT * INTO v_job FROM pgqueue.jobs
    WHERE id = p_id AND status = 'pending' AND name = 'pgqueue.recurring';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pgqueue.run_recurring(v_job, p_next_at);
    RETURN true;
END;
$$;


-- Complete the jobs of one transaction (batch mode, and single jobs too):
-- plain jobs in one UPDATE, recurring and repeating ones one by one through
-- pgqueue.complete. Returns how many were still pending.
CREATE OR REPLACE FUNCTION pgqueue.complete_many(
    p_ids bigint[],
    p_results text[],
    p_next_at timestamptz[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_plain bigint[];
    v_count integer;
BEGIN
    WITH done AS (
        UPDATE pgqueue.jobs j
        SET status = 'completed', attempts = j.attempts + 1, result = u.result,
            completed_at = now(), updated_at = now()
        FROM unnest(p_ids, p_results) AS u(id, result)
        WHERE j.id = u.id AND j.status = 'pending'
          AND j.name <> 'pgqueue.recurring' AND j.schedule IS NULL
        RETURNING j.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_plain FROM done;
    v_count := cardinality(v_plain);
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        IF NOT p_ids[i] = ANY (v_plain) AND pgqueue.complete(p_ids[i], p_results[i], p_next_at[i]) THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
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
-- error, and either schedule the next attempt after the retry policy's
-- delay (the job's own keys over its queue's) or, when attempts are used
-- up or the next run would fall after the policy's "until" or
-- "max_duration" seconds from creation, mark the job failed. A job with a
-- schedule that fails for good is still enqueued again at p_next_at.
-- Returns the updated row.
CREATE OR REPLACE FUNCTION pgqueue.fail(
    p_id bigint,
    p_error text,
    p_next_at timestamptz DEFAULT NULL
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job pgqueue.jobs;
    v_policy jsonb;
    v_next timestamptz;
    v_final boolean;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs WHERE id = p_id AND status = 'pending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT coalesce((SELECT q.retry FROM pgqueue.queues q WHERE q.name = v_job.queue), '{}')
           || coalesce(v_job.retry, '{}')
    INTO v_policy;
    v_next := now() + pgqueue.retry_delay(v_policy, v_job.attempts + 1);
    v_final := v_job.attempts + 1 >= v_job.max_attempts
        OR v_next > (v_policy ->> 'until')::timestamptz
        OR v_next > v_job.created_at
                    + pg_catalog.make_interval(secs => (v_policy ->> 'max_duration')::double precision);
    v_final := coalesce(v_final, false);
    UPDATE pgqueue.jobs
    SET attempts = attempts + 1,
        last_error = p_error,
        updated_at = now(),
        status = CASE WHEN v_final THEN 'failed' ELSE 'pending' END,
        scheduled_at = CASE WHEN v_final THEN scheduled_at ELSE v_next END
    WHERE id = p_id
    RETURNING * INTO v_job;
    IF v_final AND v_job.schedule IS NOT NULL AND p_next_at IS NOT NULL THEN
        PERFORM pgqueue.repeat_job(v_job, p_next_at);
    END IF;
    RETURN NEXT v_job;
END;
$$;


-- Upsert the built-in recurring job for p_name (one pending row per name,
-- also under concurrent calls): a new one first runs at p_first_at (now when
-- NULL); an existing one keeps its scheduled_at and takes the new priority,
-- interval or schedule, data and (when given) queue.
CREATE OR REPLACE FUNCTION pgqueue.add_recurring(
    p_queue text,
    p_name text,
    p_priority integer,
    p_interval jsonb,
    p_data jsonb,
    p_schedule jsonb DEFAULT NULL,
    p_first_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at)
    VALUES (coalesce(p_queue, 'default'), 'pgqueue.recurring',
            jsonb_strip_nulls(jsonb_build_object(
                'name', p_name, 'interval', p_interval, 'schedule', p_schedule))
            || jsonb_build_object('data', coalesce(p_data, '{}')),
            coalesce(p_priority, 1), coalesce(p_first_at, now()))
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
           j.created_at, j.updated_at, j.completed_at, j.schedule
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


-- Take one of a queue's p_max concurrency slots for the calling transaction
-- (transaction-scoped advisory locks, so a crash frees them), trying slots
-- p_from .. p_max - 1; returns the slot taken, or NULL when all are held.
CREATE OR REPLACE FUNCTION pgqueue.take_slot(p_queue text, p_max integer, p_from integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_key integer := pg_catalog.hashtext('pgqueue.queue:' || p_queue);
BEGIN
    FOR v_slot IN p_from .. p_max - 1 LOOP
        IF pg_catalog.pg_try_advisory_xact_lock(v_key, v_slot) THEN
            RETURN v_slot;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;


-- pgqueue.dequeue for when some queue in reach has max_concurrency: claim
-- one job at a time and, for a limited queue, a free slot with it. A job
-- whose queue is full is let go again (its row lock was taken in a
-- subtransaction that is rolled back) and the queue is skipped from then on.
CREATE OR REPLACE FUNCTION pgqueue.dequeue_limited(
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
    v_full text[] := '{}';
    v_ids bigint[] := '{}';
    v_next_slot jsonb := '{}';
    v_max integer;
    v_slot integer;
BEGIN
    WHILE cardinality(v_ids) < p_limit LOOP
        BEGIN
            SELECT * INTO v_job
            FROM pgqueue.jobs j
            WHERE j.status = 'pending'
              AND j.scheduled_at <= now()
              AND (p_queues IS NULL OR j.queue = ANY (p_queues))
              AND (p_names IS NULL OR j.name = ANY (p_names))
              AND j.queue <> ALL (v_full)
              AND j.id <> ALL (v_ids)
            ORDER BY j.priority, j.scheduled_at, j.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            SELECT q.max_concurrency INTO v_max FROM pgqueue.queues q WHERE q.name = v_job.queue;
            IF v_max IS NOT NULL THEN
                v_slot := pgqueue.take_slot(v_job.queue, v_max,
                                            coalesce((v_next_slot ->> v_job.queue)::integer, 0));
                IF v_slot IS NULL THEN
                    RAISE EXCEPTION 'queue % is full', v_job.queue USING ERRCODE = 'PGQ01';
                END IF;
                v_next_slot := v_next_slot || jsonb_build_object(v_job.queue, v_slot + 1);
            END IF;
            PERFORM pg_catalog.pg_try_advisory_xact_lock(1885827445, (v_job.id % 2147483648)::integer);
            v_ids := v_ids || v_job.id;
            v_job.attempts := v_job.attempts + 1;
            RETURN NEXT v_job;
        EXCEPTION WHEN SQLSTATE 'PGQ01' THEN
            v_full := v_full || v_job.queue;
        END;
    END LOOP;
END;
$$;


-- Enqueue the next run of a job with a schedule: a copy at p_next_at.
CREATE OR REPLACE FUNCTION pgqueue.repeat_job(p_job pgqueue.jobs, p_next_at timestamptz)
RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry,
                              schedule)
    VALUES (p_job.queue, p_job.name, p_job.data, p_job.priority, p_next_at, p_job.max_attempts,
            p_job.retry, p_job.schedule)
    RETURNING id;
$$;


-- Cancel pending jobs, optionally only of a name, a queue, and whose data
-- contains p_data (jsonb containment). Running jobs are skipped, not
-- interrupted. Returns how many were cancelled.
--
-- Running means holding the job's advisory lock (running_keys), not merely a
-- row lock: dequeue_limited locks a row for an instant while it checks the
-- queue's slots, and SKIP LOCKED would skip that pending job. Other row locks
-- are waited for, in id order (no deadlock between two of these calls).
CREATE OR REPLACE FUNCTION pgqueue.cancel_jobs(p_name text, p_data jsonb, p_queue text)
RETURNS bigint
LANGUAGE sql AS $$
    WITH running AS MATERIALIZED (
        SELECT pgqueue.running_keys() AS k
    ), picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.status = 'pending'
          AND (p_name IS NULL OR j.name = p_name)
          AND (p_queue IS NULL OR j.queue = p_queue)
          AND (p_data IS NULL OR j.data @> p_data)
          AND (j.id % 2147483648) NOT IN (SELECT k FROM running)
        ORDER BY j.id
        FOR UPDATE OF j
    ), cancelled AS (
        UPDATE pgqueue.jobs j SET status = 'cancelled', updated_at = now()
        FROM picked WHERE j.id = picked.id
        RETURNING 1
    )
    SELECT count(*) FROM cancelled;
$$;


-- Cancel one pending job; false when it is unknown, running or finished
-- (running as in cancel_jobs).
CREATE OR REPLACE FUNCTION pgqueue.cancel_job(p_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.id = p_id AND j.status = 'pending'
          AND (j.id % 2147483648) NOT IN (SELECT pgqueue.running_keys())
        FOR UPDATE OF j
    ), cancelled AS (
        UPDATE pgqueue.jobs j SET status = 'cancelled', updated_at = now()
        FROM picked WHERE j.id = picked.id
        RETURNING 1
    )
    SELECT count(*) = 1 FROM cancelled;
$$;


-- Make failed or cancelled jobs pending again, due now, with one more
-- attempt allowed if they had used them all up. A recurring row comes back
-- only when its target has no pending one (at most one per target, the
-- newest): the unique index allows one. Returns how many.
CREATE OR REPLACE FUNCTION pgqueue.retry_jobs(p_ids bigint[], p_name text, p_queue text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_queues text[];
BEGIN
    WITH candidates AS (
        SELECT j.id, j.name, j.data ->> 'name' AS target
        FROM pgqueue.jobs j
        WHERE j.status IN ('failed', 'cancelled')
          AND (p_ids IS NULL OR j.id = ANY (p_ids))
          AND (p_name IS NULL OR j.name = p_name)
          AND (p_queue IS NULL OR j.queue = p_queue)
    ), picked AS (
        SELECT c.id FROM candidates c
        WHERE c.name <> 'pgqueue.recurring'
           OR (c.id = (SELECT max(c2.id) FROM candidates c2
                       WHERE c2.name = 'pgqueue.recurring' AND c2.target = c.target)
               AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs p
                               WHERE p.name = 'pgqueue.recurring' AND p.status = 'pending'
                                 AND p.data ->> 'name' = c.target))
    ), retried AS (
        -- A repeating job that failed for good has already enqueued its next
        -- run (see pgqueue.fail): run again, it is a one-off, or the chain forks.
        UPDATE pgqueue.jobs j
        SET status = 'pending', scheduled_at = now(), completed_at = NULL, updated_at = now(),
            max_attempts = greatest(j.max_attempts, j.attempts + 1),
            schedule = CASE
                WHEN j.status = 'failed' AND EXISTS (
                    SELECT 1 FROM pgqueue.jobs n
                    WHERE n.status = 'pending' AND n.id > j.id AND n.name = j.name
                      AND n.queue = j.queue AND n.schedule = j.schedule AND n.data = j.data)
                THEN NULL ELSE j.schedule END
        FROM picked
        WHERE j.id = picked.id AND j.status IN ('failed', 'cancelled')
        RETURNING j.queue
    )
    SELECT array_agg(queue) INTO v_queues FROM retried;
    PERFORM pg_catalog.pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT unnest(v_queues) AS queue) q;
    RETURN coalesce(cardinality(v_queues), 0);
END;
$$;


-- Delete finished jobs older than their clean-up rule (by name and status,
-- falling back to the '*' rule of that status; no rule: kept). Returns how
-- many were deleted.
CREATE OR REPLACE FUNCTION pgqueue.cleanup() RETURNS bigint
LANGUAGE sql AS $$
    WITH deleted AS (
        DELETE FROM pgqueue.jobs j
        WHERE j.status <> 'pending'
          AND j.updated_at < now() - (SELECT min(r.purge_after) FROM pgqueue.cleanup_rules r)
          AND j.updated_at < now() - coalesce(
              (SELECT r.purge_after FROM pgqueue.cleanup_rules r
               WHERE r.name = j.name AND r.status = j.status),
              (SELECT r.purge_after FROM pgqueue.cleanup_rules r
               WHERE r.name = '*' AND r.status = j.status))
        RETURNING 1
    )
    SELECT count(*) FROM deleted;
$$;


-- Delete every job that no worker is running right now (running as in
-- cancel_jobs). Returns how many.
CREATE OR REPLACE FUNCTION pgqueue.clear_jobs(p_queue text) RETURNS bigint
LANGUAGE sql AS $$
    WITH running AS MATERIALIZED (
        SELECT pgqueue.running_keys() AS k
    ), picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE (p_queue IS NULL OR j.queue = p_queue)
          AND NOT (j.status = 'pending' AND (j.id % 2147483648) IN (SELECT k FROM running))
        ORDER BY j.id
        FOR UPDATE OF j
    ), deleted AS (
        DELETE FROM pgqueue.jobs j USING picked WHERE j.id = picked.id RETURNING 1
    )
    SELECT count(*) FROM deleted;
$$;


-- Create or change a queue's settings.
CREATE OR REPLACE FUNCTION pgqueue.configure_queue(
    p_name text,
    p_max_concurrency integer,
    p_retry jsonb
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.queues (name, max_concurrency, retry)
    VALUES (p_name, p_max_concurrency, p_retry)
    ON CONFLICT (name) DO UPDATE
    SET max_concurrency = excluded.max_concurrency, retry = excluded.retry, updated_at = now();
$$;
