-- Every pgqueue.* function. Re-applied (CREATE OR REPLACE) after each
-- migrate, so this file always describes the functions of the current code.
--
-- Conventions: parameters p_, locals v_, everything schema-qualified.
-- Every function is SECURITY INVOKER (the default: it runs with the
-- caller's rights) and pins SET search_path = pg_catalog, pgqueue, pg_temp,
-- so that an unqualified name in a body (cardinality, now, an operator)
-- cannot resolve to a look-alike in a schema on the caller's search_path.
-- tests/integration/test_roles.py checks both for every function.
--
-- "Running" is not stored for a job run in its transaction (the default): the
-- worker's transaction holds the job's row lock. Row locks are invisible to
-- other sessions, so dequeue also takes a transaction-scoped advisory lock
-- (keys 1885827445 = 'pgqu' plus the job id's quotient by 2^31, and its
-- remainder: one lock per job id, the first key 'pgqu' for every id below
-- 2^31; running_keys reads ids below 2^47), which pg_locks shows while the
-- job runs and Postgres drops with the transaction, crash or not. A job run
-- in lease mode is stored as 'running' with a lease_until.
--
-- Crashed attempts: before a handler runs, its worker records the start (the
-- attempt number) in pgqueue.job_starts on a second connection, committed
-- outside the job's transaction, in a row of the claim's own (job_id, token):
-- it must not wait for the job's transaction, which may have settled (and
-- deleted) an earlier start of the job. A pending job that nobody holds and whose
-- start is ahead of its attempts crashed its worker (or lost it). If that
-- worker process ran no other attempt at the time (none of its other starts
-- is unfinished, and the claim was of one job), the job is to blame: dequeue
-- counts the attempt and applies the retry policy (pgqueue.settle_crashed)
-- instead of running it. Otherwise nobody knows whose handler killed it:
-- none is blamed, and each runs next alone. A job that has crashed once
-- (crashes > 0) is always claimed alone, and its worker runs nothing else in
-- a transaction meanwhile, so a crash of it is always its own.

-- One NOTIFY per statement (not per row), one per queue that got due work.
-- Payload: the queue name. Identical payloads in one transaction are folded
-- into one notification by Postgres.
CREATE OR REPLACE FUNCTION pgqueue.notify_jobs() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
-- For SQL callers: Python's enqueue sends the same insert as a plain
-- statement (pgqueue._queries.ENQUEUE), which is not planned on every call.
CREATE OR REPLACE FUNCTION pgqueue.enqueue(
    p_queue text,
    p_name text,
    p_data jsonb,
    p_priority integer,
    p_scheduled_at timestamptz,
    p_delay interval,
    p_max_attempts integer,
    p_retry jsonb,
    p_schedule jsonb,
    p_timeout double precision,
    p_trace_context jsonb
) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry, schedule,
                              timeout, trace_context)
    VALUES (
        coalesce(p_queue, 'default'),
        coalesce(p_name, ''),
        coalesce(p_data, '{}'),
        coalesce(p_priority, 1),
        coalesce(p_scheduled_at, now() + p_delay, now()),
        coalesce(p_max_attempts, 5),
        p_retry,
        p_schedule,
        p_timeout,
        p_trace_context
    )
    RETURNING id;
$$;


-- Claim up to p_limit due jobs for the calling transaction, in run order:
-- priority, then scheduled_at, then id. Jobs locked by another transaction
-- are skipped. The returned attempts counts the attempt about to start.
-- p_queues / p_names NULL means "any".
--
-- The worker's usual claim is a plain statement doing the common case
-- (pgqueue._queries.claim_statement: no lease expired, no limited queue in
-- reach with a pending job, nothing crashed), which costs about half the
-- server time of this call; it comes here, in the same transaction, for the
-- rest.
--
-- On the way, settles what crashed (see the top of this file): expired
-- leases (pgqueue.rescue_leases), and jobs whose last attempt never finished
-- (pgqueue.settle_crashed, or crashes + 1 when nobody knows whose fault it
-- was). A job settled as failed or for a retry later is not returned, and
-- the search goes on for the rest. A job with crashes > 0 is claimed alone:
-- first in a claim, it ends the claim; later in one, it is left for the next
-- (locked, unrun, until this transaction ends).
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
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
    v_seen bigint[] := '{}';  -- returned or set aside
    v_count integer := 0;     -- returned
    v_again boolean := true;
    v_cur refcursor;
    v_expired boolean;
    v_limited boolean;
BEGIN
    -- One statement for two questions. Has a lease expired? The first one to
    -- expire is read off jobs_lease_idx (the ORDER BY keeps the planner on it,
    -- whatever the statistics say: no sort allowed here). Does a queue in
    -- reach have a global concurrency limit (the slower, slot-taking path)?
    SELECT (SELECT j.lease_until FROM pgqueue.jobs j
            WHERE j.status = 'running' ORDER BY j.lease_until LIMIT 1) < now(),
           EXISTS (SELECT 1 FROM pgqueue.queues q
                   WHERE q.max_concurrency IS NOT NULL
                     AND (p_queues IS NULL OR q.name = ANY (p_queues)))
    INTO v_expired, v_limited;
    IF v_expired THEN
        PERFORM pgqueue.rescue_leases();
    END IF;
    IF v_limited THEN
        RETURN QUERY SELECT * FROM pgqueue.dequeue_limited(p_limit, p_queues, p_names);
        RETURN;
    END IF;
    -- Another round only when a job was settled or set aside instead of claimed.
    WHILE v_again AND v_count < p_limit LOOP
        v_again := false;
        IF cardinality(p_queues) = 1 THEN
            OPEN v_cur FOR
                SELECT *
                FROM pgqueue.jobs j
                WHERE j.status = 'pending'
                  AND j.queue = p_queues[1]
                  AND j.scheduled_at <= now()
                  AND (p_names IS NULL OR j.name = ANY (p_names))
                  AND j.id <> ALL (v_seen)
                ORDER BY j.queue, j.priority, j.scheduled_at, j.id
                LIMIT p_limit - v_count
                FOR UPDATE SKIP LOCKED;
        ELSE
            OPEN v_cur FOR
                SELECT *
                FROM pgqueue.jobs j
                WHERE j.status = 'pending'
                  AND j.scheduled_at <= now()
                  AND (p_queues IS NULL OR j.queue = ANY (p_queues))
                  AND (p_names IS NULL OR j.name = ANY (p_names))
                  AND j.id <> ALL (v_seen)
                ORDER BY j.priority, j.scheduled_at, j.id
                LIMIT p_limit - v_count
                FOR UPDATE SKIP LOCKED;
        END IF;
        LOOP
            FETCH v_cur INTO v_job;
            EXIT WHEN NOT FOUND;
            v_seen := v_seen || v_job.id;
            IF EXISTS (SELECT 1 FROM pgqueue.job_starts s
                       WHERE s.job_id = v_job.id AND s.attempt > v_job.attempts) THEN
                v_job := pgqueue.settle_crashed(v_job);
                IF v_job.status <> 'pending' OR v_job.scheduled_at > now() THEN
                    v_again := true;
                    CONTINUE;
                END IF;
            END IF;
            IF v_job.crashes > 0 THEN
                IF v_count > 0 THEN
                    v_again := true;
                    CONTINUE;
                END IF;
                v_count := p_limit;  -- claimed alone
            ELSE
                v_count := v_count + 1;
            END IF;
            PERFORM pg_catalog.pg_try_advisory_xact_lock(1885827445 + (v_job.id / 2147483648)::integer,
                                                 (v_job.id % 2147483648)::integer);
            v_job.attempts := v_job.attempts + 1;
            RETURN NEXT v_job;
        END LOOP;
        CLOSE v_cur;
    END LOOP;
END;
$$;


-- Recording starts is a plain statement the worker sends (pgqueue._queries.START_JOBS):
-- a plpgsql call costs more server time than the insert itself.
DROP FUNCTION IF EXISTS pgqueue.start_jobs(
    bigint[], integer[], timestamptz[], text, bigint, bigint, bigint[], bigint[]
);


-- Forget the starts of a worker's claim (p_token) that it gave up itself, on
-- purpose, before its transaction ended: those attempts were not the jobs'
-- fault and are not counted. Returns how many were forgotten.
CREATE OR REPLACE FUNCTION pgqueue.forget_starts(p_ids bigint[], p_token bigint) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH forgotten AS (
        DELETE FROM pgqueue.job_starts s
        WHERE s.job_id = ANY (p_ids) AND s.token = p_token
        RETURNING 1
    )
    SELECT count(*) FROM forgotten;
$$;


-- The worker's watchdog gave up on job p_id after p_timeout seconds and is
-- about to end its transaction: the start is marked as timed out (whoever
-- settles it says so and blames it) and the other jobs of the claim are
-- forgotten.
CREATE OR REPLACE FUNCTION pgqueue.time_out_start(
    p_id bigint,
    p_timeout double precision,
    p_ids bigint[],
    p_token bigint
) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    UPDATE pgqueue.job_starts SET timed_out = p_timeout WHERE job_id = p_id AND token = p_token;
    DELETE FROM pgqueue.job_starts s
    WHERE s.job_id = ANY (p_ids) AND s.job_id <> p_id AND s.token = p_token;
$$;


-- A pending job, locked by the caller and held by no worker, whose start is
-- ahead of its attempts: that attempt never finished. Alone in its worker
-- (or timed out): count the attempt with an error that says what happened,
-- and fail the job for good or schedule it after its retry delay
-- (pgqueue.fail_attempt). Shared with other attempts of its worker process
-- that never finished either (marked shared now, for when they are
-- settled): count a crash but not an attempt, and leave the job due. Either
-- way crashes + 1 (not for a timeout). Returns the job as it is now.
--
-- A job has a start per claim (job_id, token). The newest one ahead is the
-- last attempt, which decides; an older one ahead is a crash settled in a
-- transaction that died with the process of the newer attempt (a crash of
-- its own, counted too). All the starts ahead are settled at once.
CREATE OR REPLACE FUNCTION pgqueue.settle_crashed(p_job pgqueue.jobs) RETURNS pgqueue.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_start pgqueue.job_starts;
    v_job pgqueue.jobs;
    v_error text;
    v_starts pgqueue.job_starts[];
    v_older integer;  -- older starts ahead: crashes whose settlement was rolled back
BEGIN
    WITH settled AS (
        DELETE FROM pgqueue.job_starts s
        WHERE s.job_id = p_job.id AND s.attempt > p_job.attempts
        RETURNING *
    )
    SELECT array_agg(s ORDER BY s.attempt DESC, s.started_at DESC) INTO v_starts FROM settled s;
    IF v_starts IS NULL THEN
        RETURN p_job;
    END IF;
    v_start := v_starts[1];
    v_older := cardinality(v_starts) - 1;
    IF v_start.timed_out IS NULL AND v_start.process IS NOT NULL THEN
        WITH others AS (
            UPDATE pgqueue.job_starts s SET shared = true
            FROM pgqueue.jobs j
            WHERE s.process = v_start.process AND s.job_id <> p_job.id AND j.id = s.job_id
              AND ((j.status = 'pending' AND s.attempt > j.attempts)
                   OR (j.status = 'running' AND s.attempt = j.attempts))
            RETURNING 1
        )
        SELECT v_start.shared OR count(*) > 0 INTO v_start.shared FROM others;
    END IF;
    IF v_start.shared AND v_start.timed_out IS NULL THEN
        UPDATE pgqueue.jobs SET crashes = crashes + 1 + v_older, updated_at = now()
        WHERE id = p_job.id
        RETURNING * INTO v_job;
        RETURN v_job;
    END IF;
    IF v_start.timed_out IS NOT NULL THEN
        v_error := format(
            'JobTimeout: timed out after %s s (attempt %s of %s; worker %s ended its transaction)',
            v_start.timed_out, v_start.attempt, p_job.max_attempts, coalesce(v_start.worker, '?'));
    ELSE
        v_error := format(
            'WorkerCrashed: the worker running this job died (crashed attempt %s of %s): it was'
            ' started by worker %s at %s, alone, and never finished. Its handler may have killed'
            ' the process (os._exit, a segfault, out of memory), or the worker was killed or lost'
            ' its database connection.',
            v_start.attempt, p_job.max_attempts, coalesce(v_start.worker, '?'), v_start.started_at);
        v_older := v_older + 1;
    END IF;
    IF v_older > 0 THEN
        UPDATE pgqueue.jobs SET crashes = crashes + v_older WHERE id = p_job.id;
        p_job.crashes := p_job.crashes + v_older;
    END IF;
    SELECT * INTO v_job
    FROM pgqueue.fail_attempt(p_job, v_start.attempt, v_error, v_start.next_at);
    RETURN v_job;
END;
$$;


-- Settle job p_id now if its last start never finished and nobody holds it
-- (the watchdog, right after ending the transaction of a job that timed
-- out). Returns the job as it is then, or nothing.
CREATE OR REPLACE FUNCTION pgqueue.settle_job(p_id bigint) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs j
    WHERE j.id = p_id AND j.status = 'pending'
    FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        RETURN NEXT pgqueue.settle_crashed(v_job);
    END IF;
END;
$$;


-- Lease mode: running jobs whose lease ran out lost their worker (it died or
-- stopped sending heartbeats). Each attempt was counted when it was claimed:
-- fail it for good or schedule it after its retry delay; crashes + 1 (not
-- for a timeout). Returns how many were rescued.
CREATE OR REPLACE FUNCTION pgqueue.rescue_leases() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
    v_start pgqueue.job_starts;
    v_count bigint := 0;
BEGIN
    FOR v_job IN
        SELECT * FROM pgqueue.jobs j
        WHERE j.status = 'running' AND j.lease_until < now()
        ORDER BY j.lease_until
        LIMIT 100
        FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO v_start FROM pgqueue.job_starts s WHERE s.job_id = v_job.id
        ORDER BY s.attempt DESC, s.started_at DESC LIMIT 1;
        IF v_start.timed_out IS NULL THEN
            v_job.crashes := v_job.crashes + 1;
            UPDATE pgqueue.jobs SET crashes = v_job.crashes WHERE id = v_job.id;
        END IF;
        PERFORM pgqueue.fail_attempt(
            v_job, v_job.attempts,
            CASE WHEN v_start.timed_out IS NOT NULL THEN
                format('JobTimeout: timed out after %s s (attempt %s of %s)',
                       v_start.timed_out, v_job.attempts, v_job.max_attempts)
            ELSE
                format('LeaseExpired: the lease ran out at %s (attempt %s of %s): the worker'
                       ' running this job (%s, since %s) died or stopped sending heartbeats.',
                       v_job.lease_until, v_job.attempts, v_job.max_attempts,
                       coalesce(v_start.worker, '?'), coalesce(v_start.started_at, v_job.updated_at))
            END,
            v_start.next_at);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;


-- Lease mode: mark jobs the calling transaction has just claimed (dequeue) as
-- running, count the attempt, and lease them for p_lease seconds; the caller
-- commits at once and runs the handlers outside any transaction. Returns the
-- jobs' rows.
CREATE OR REPLACE FUNCTION pgqueue.lease_jobs(p_ids bigint[], p_lease double precision)
RETURNS SETOF pgqueue.jobs
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    UPDATE pgqueue.jobs j
    SET status = 'running', attempts = j.attempts + 1,
        lease_until = now() + pg_catalog.make_interval(secs => p_lease), updated_at = now()
    WHERE j.id = ANY (p_ids) AND j.status = 'pending'
    RETURNING j.*;
$$;


-- Lease mode: extend the leases of running jobs (id and attempt: the lease
-- of an attempt that was rescued meanwhile is not extended). Returns the ids
-- whose lease was extended.
CREATE OR REPLACE FUNCTION pgqueue.extend_leases(
    p_ids bigint[],
    p_attempts integer[],
    p_lease double precision
) RETURNS SETOF bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    UPDATE pgqueue.jobs j
    SET lease_until = now() + pg_catalog.make_interval(secs => p_lease)
    FROM unnest(p_ids, p_attempts) AS u(id, attempts)
    WHERE j.id = u.id AND j.attempts = u.attempts AND j.status = 'running'
    RETURNING j.id;
$$;


-- Lease mode: complete attempt p_attempt of job p_id, as pgqueue.complete
-- does. False when that attempt no longer holds the job (its lease expired
-- and it was rescued, or it was timed out).
CREATE OR REPLACE FUNCTION pgqueue.complete_leased(
    p_id bigint,
    p_attempt integer,
    p_result text,
    p_next_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
BEGIN
    -- Back to what pgqueue.complete expects (it counts the attempt itself).
    UPDATE pgqueue.jobs
    SET status = 'pending', attempts = attempts - 1, lease_until = NULL
    WHERE id = p_id AND status = 'running' AND attempts = p_attempt;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN pgqueue.complete(p_id, p_result, p_next_at);
END;
$$;


-- Lease mode: record that attempt p_attempt of job p_id failed, as
-- pgqueue.fail does. Nothing when that attempt no longer holds the job.
CREATE OR REPLACE FUNCTION pgqueue.fail_leased(
    p_id bigint,
    p_attempt integer,
    p_error text,
    p_next_at timestamptz DEFAULT NULL
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs
    WHERE id = p_id AND status = 'running' AND attempts = p_attempt
    FOR UPDATE;
    IF FOUND THEN
        RETURN QUERY SELECT * FROM pgqueue.fail_attempt(v_job, v_job.attempts, p_error, p_next_at);
    END IF;
END;
$$;


-- Interval JSON ({"years", "months", "weeks", "days", "hours", "minutes",
-- "seconds"}, validated by the Python side) to an interval.
CREATE OR REPLACE FUNCTION pgqueue.interval_from_json(p_interval jsonb) RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
-- cancelled or finished meanwhile), true otherwise. The attempt's start
-- record goes in the same transaction.
CREATE OR REPLACE FUNCTION pgqueue.complete(
    p_id bigint,
    p_result text DEFAULT NULL,
    p_next_at timestamptz DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    DELETE FROM pgqueue.job_starts WHERE job_id = p_id;
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
-- pgqueue.complete. Returns how many were still pending. The start records
-- stay: the worker drops them later, off this transaction's path
-- (pgqueue.start_jobs), and a finished attempt's start never counts.
CREATE OR REPLACE FUNCTION pgqueue.complete_many(
    p_ids bigint[],
    p_results text[],
    p_next_at timestamptz[]
) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs WHERE id = p_id AND status = 'pending' FOR UPDATE;
    IF FOUND THEN
        RETURN QUERY SELECT * FROM pgqueue.fail_attempt(v_job, v_job.attempts + 1, p_error, p_next_at);
    END IF;
END;
$$;


-- pgqueue.fail's work on a job the caller has locked (pending, or running in
-- lease mode), whose attempts count becomes p_attempts: schedule the next
-- attempt or fail it for good, and drop its start record. Returns the row.
CREATE OR REPLACE FUNCTION pgqueue.fail_attempt(
    p_job pgqueue.jobs,
    p_attempts integer,
    p_error text,
    p_next_at timestamptz
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
    v_policy jsonb;
    v_next timestamptz;
    v_final boolean;
    v_cancel boolean := false;
BEGIN
    SELECT coalesce((SELECT q.retry FROM pgqueue.queues q WHERE q.name = p_job.queue), '{}')
           || coalesce(p_job.retry, '{}')
    INTO v_policy;
    v_next := now() + pgqueue.retry_delay(v_policy, p_attempts);
    v_final := p_attempts >= p_job.max_attempts
        OR v_next > (v_policy ->> 'until')::timestamptz
        OR v_next > p_job.created_at
                    + pg_catalog.make_interval(secs => (v_policy ->> 'max_duration')::double precision);
    v_final := coalesce(v_final, false);
    -- Cancelled while this attempt ran (see cancel_jobs): not retried.
    IF NOT v_final AND p_job.schedule IS NOT NULL THEN
        DELETE FROM pgqueue.cancel_requests r WHERE r.job_id = p_job.id;
        v_cancel := FOUND;
    END IF;
    DELETE FROM pgqueue.job_starts WHERE job_id = p_job.id;
    UPDATE pgqueue.jobs
    SET attempts = p_attempts,
        last_error = p_error,
        updated_at = now(),
        lease_until = NULL,
        status = CASE WHEN v_final THEN 'failed' WHEN v_cancel THEN 'cancelled' ELSE 'pending' END,
        scheduled_at = CASE WHEN v_final OR v_cancel THEN scheduled_at ELSE v_next END
    WHERE id = p_job.id
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
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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


-- The ids of the jobs running right now in this database, from their lock
-- keys: see the note at the top of this file.
CREATE OR REPLACE FUNCTION pgqueue.running_keys() RETURNS SETOF bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    SELECT (l.classid::bigint - 1885827445) * 2147483648 + l.objid::bigint
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.classid::bigint BETWEEN 1885827445 AND 1885827445 + 65535  -- ids below 2^47
      AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                        WHERE d.datname = pg_catalog.current_database());
$$;


-- One job with its status; 'running' while a worker holds it (in its
-- transaction, or stored in lease mode). No row: unknown id.
CREATE OR REPLACE FUNCTION pgqueue.get_job(p_id bigint) RETURNS SETOF pgqueue.jobs
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    SELECT j.id, j.queue, j.name, j.data, j.priority,
           CASE WHEN j.status = 'pending'
                     AND j.id IN (SELECT pgqueue.running_keys())
                THEN 'running' ELSE j.status END,
           j.scheduled_at, j.attempts, j.max_attempts, j.retry, j.last_error, j.result,
           j.created_at, j.updated_at, j.completed_at, j.schedule, j.timeout, j.crashes,
           j.lease_until, j.trace_context
    FROM pgqueue.jobs j
    WHERE j.id = p_id;
$$;


-- Unfinished jobs: due and waiting (pending), held by a worker (running: in
-- its transaction, or stored in lease mode), and not yet due (scheduled).
-- NULL filters mean "any".
CREATE OR REPLACE FUNCTION pgqueue.queue_size(
    p_queues text[],
    p_names text[],
    OUT pending_count bigint,
    OUT scheduled_count bigint,
    OUT running_count bigint
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (SELECT pgqueue.running_keys() AS k)
    SELECT count(*) FILTER (WHERE NOT s.running AND s.scheduled_at <= now()),
           count(*) FILTER (WHERE NOT s.running AND s.scheduled_at > now()),
           count(*) FILTER (WHERE s.running)
    FROM (
        SELECT j.scheduled_at,
               j.status = 'running' OR j.id IN (SELECT k FROM running) AS running
        FROM pgqueue.jobs j
        WHERE j.status IN ('pending', 'running')
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
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (SELECT pgqueue.running_keys() AS k)
    SELECT j.queue, j.name,
           CASE
               WHEN j.status <> 'pending' THEN j.status
               WHEN j.id IN (SELECT k FROM running) THEN 'running'
               WHEN j.scheduled_at > now() THEN 'scheduled'
               ELSE 'pending'
           END AS state,
           count(*)
    FROM pgqueue.jobs j
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3;
$$;


-- Job counts per queue, name and state for a metrics scrape (pgqueue.metrics):
-- one statement whose cost does not grow with the finished history.
-- Unfinished jobs are all counted: pending rows (split into pending: due;
-- scheduled: not yet due; running: held by a worker's transaction) off the
-- partial index over pending rows, and lease-mode running rows off
-- jobs_lease_idx. Finished jobs (completed, failed, cancelled) only when they
-- finished (updated_at) less than p_window seconds ago, off jobs_finished_idx:
-- counting every finished row would read the whole history on each scrape.
-- p_window NULL or 0: no finished jobs. The planner settings keep it on those
-- indexes whatever the statistics say (see pgqueue.dequeue).
CREATE OR REPLACE FUNCTION pgqueue.count_jobs(
    p_window double precision,
    OUT queue text, OUT name text, OUT state text, OUT count bigint
) RETURNS SETOF record
LANGUAGE sql STABLE
SET enable_seqscan = off
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (SELECT pgqueue.running_keys() AS k)
    SELECT j.queue, j.name,
           CASE
               WHEN j.id IN (SELECT k FROM running) THEN 'running'
               WHEN j.scheduled_at > now() THEN 'scheduled'
               ELSE 'pending'
           END,
           count(*)
    FROM pgqueue.jobs j
    WHERE j.status = 'pending'
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT j.queue, j.name, 'running', count(*)
    FROM pgqueue.jobs j
    WHERE j.status = 'running'
    GROUP BY 1, 2
    UNION ALL
    SELECT j.queue, j.name, j.status, count(*)
    FROM pgqueue.jobs j
    WHERE j.status IN ('completed', 'failed', 'cancelled')
      AND j.updated_at > now() - pg_catalog.make_interval(secs => p_window)
      AND p_window > 0
    GROUP BY 1, 2, 3;
$$;


-- Take one of a queue's p_max concurrency slots for the calling transaction
-- (transaction-scoped advisory locks, so a crash frees them), trying slots
-- p_from .. p_max - 1; returns the slot taken, or NULL when all are held.
CREATE OR REPLACE FUNCTION pgqueue.take_slot(p_queue text, p_max integer, p_from integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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


-- Whether a queue runs more jobs than p_max right now: the slots held (any
-- slot: a limit lowered meanwhile leaves some held past it) plus its jobs
-- running in lease mode, which hold no slot. Locks are read first, and the
-- jobs in a statement of their own, on a snapshot taken after: a claim
-- commits before it lets its slot go, so a job moving from one to the other
-- is seen at least once (one statement's snapshot, taken before the locks
-- are read, could miss it in both).
CREATE OR REPLACE FUNCTION pgqueue.queue_over(p_queue text, p_max integer) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_held bigint;
    v_running bigint;
BEGIN
    SELECT count(*) INTO v_held
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.classid = pg_catalog.hashtext('pgqueue.queue:' || p_queue)::oid
      AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                        WHERE d.datname = pg_catalog.current_database());
    SELECT count(*) INTO v_running
    FROM (SELECT 1 FROM pgqueue.jobs r
          WHERE r.status = 'running' AND r.queue = p_queue
          ORDER BY r.lease_until) r;  -- on jobs_lease_idx
    RETURN v_held + v_running > p_max;
END;
$$;


-- pgqueue.dequeue for when some queue in reach has max_concurrency: claim
-- one job at a time and, for a limited queue, a free slot with it. Each job
-- is found, and its queue's slot checked, in a subtransaction that is then
-- always rolled back, and taken again in the transaction itself: a row lock
-- held by a subtransaction would make the job's outcome, written later by
-- the transaction, a MultiXact (one per job: index entries no scan can mark
-- dead, see the worker). A job whose queue is full is let go that way and
-- the queue is skipped from then on; so is a queue whose slot or job another
-- claim took in between (a slot taken again but left without its job is
-- used for the queue's next job, or held, unused, until the transaction
-- ends). Lease-mode jobs hold no slot while they run (their claim
-- committed), and a limit lowered leaves slots held past it: the slots held
-- right now plus the running lease-mode jobs must stay within the limit
-- (pgqueue.queue_over), checked once the slot is taken again (checked before
-- that, two claims could both pass while the slot was free between). Crashed
-- jobs are settled, and jobs that crashed before are claimed alone, as in
-- pgqueue.dequeue (one met after others were claimed is left for a later
-- claim).
--
-- A claim found full may have been refused by another's check, which held
-- the slot for an instant and may itself end with no job for it: both would
-- end empty with jobs due, and no slot would look again before its next
-- poll. So a slot taken again and found over the limit is let go at once (a
-- subtransaction of its own), with a NOTIFY for its queue if there is room
-- without it now (a lease-mode job it counted has ended); one taken again and
-- left unused (its job taken, settled or set aside meanwhile, and no later
-- job of its queue using it) is held to the end, with a NOTIFY. Nothing is
-- sent while the queue stays full: idle slots would wake each other for as
-- long as its jobs run.
CREATE OR REPLACE FUNCTION pgqueue.dequeue_limited(
    p_limit integer,
    p_queues text[],
    p_names text[]
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
    v_pick bigint;
    v_full text[] := '{}';
    v_ids bigint[] := '{}';
    v_next_slot jsonb := '{}';
    v_max integer;
    v_slot integer;
    v_aside bigint[] := '{}';
    v_spare text[] := '{}';  -- queues whose slot was taken again and is left unused
    v_over text[] := '{}';   -- queues found over their limit with a slot taken again
BEGIN
    <<claiming>>
    WHILE cardinality(v_ids) < p_limit LOOP
        v_pick := NULL;
        v_slot := NULL;
        BEGIN
            SELECT * INTO v_job
            FROM pgqueue.jobs j
            WHERE j.status = 'pending'
              AND j.scheduled_at <= now()
              AND (p_queues IS NULL OR j.queue = ANY (p_queues))
              AND (p_names IS NULL OR j.name = ANY (p_names))
              AND j.queue <> ALL (v_full)
              AND j.id <> ALL (v_ids)
              AND j.id <> ALL (v_aside)
            ORDER BY j.priority, j.scheduled_at, j.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                EXIT claiming;
            END IF;
            IF cardinality(v_ids) > 0 AND (v_job.crashes > 0 OR EXISTS (
                SELECT 1 FROM pgqueue.job_starts s
                WHERE s.job_id = v_job.id AND s.attempt > v_job.attempts)) THEN
                v_aside := v_aside || v_job.id;
                RAISE EXCEPTION 'let go' USING ERRCODE = 'PGQ02';
            END IF;
            SELECT q.max_concurrency INTO v_max FROM pgqueue.queues q WHERE q.name = v_job.queue;
            IF v_max IS NOT NULL THEN
                -- A slot this transaction holds already is taken again (advisory locks nest).
                v_slot := pgqueue.take_slot(v_job.queue, v_max,
                                            coalesce((v_next_slot ->> v_job.queue)::integer, 0));
                IF v_slot IS NULL THEN
                    RAISE EXCEPTION 'queue % is full', v_job.queue USING ERRCODE = 'PGQ01';
                END IF;
            END IF;
            v_pick := v_job.id;
            RAISE EXCEPTION 'let go' USING ERRCODE = 'PGQ02';  -- to take it again below
        EXCEPTION
            WHEN SQLSTATE 'PGQ01' THEN
                v_full := v_full || v_job.queue;
            WHEN SQLSTATE 'PGQ02' THEN
                NULL;
        END;
        CONTINUE WHEN v_pick IS NULL;
        IF v_slot IS NOT NULL THEN
            BEGIN
                IF pgqueue.take_slot(v_job.queue, v_slot + 1, v_slot) IS NULL THEN
                    v_full := v_full || v_job.queue;  -- another claim took the slot meanwhile
                    v_pick := NULL;
                ELSIF pgqueue.queue_over(v_job.queue, v_max) THEN
                    RAISE EXCEPTION 'queue % is over its limit', v_job.queue USING ERRCODE = 'PGQ03';
                END IF;
            EXCEPTION WHEN SQLSTATE 'PGQ03' THEN  -- the slot is let go at once
                v_full := v_full || v_job.queue;
                v_over := v_over || v_job.queue;
                v_pick := NULL;
            END;
            CONTINUE WHEN v_pick IS NULL;
            v_spare := v_spare || v_job.queue;  -- until a job uses it
        END IF;
        SELECT * INTO v_job FROM pgqueue.jobs j
        WHERE j.id = v_pick AND j.status = 'pending' AND j.scheduled_at <= now()
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            CONTINUE;  -- another claim took it meanwhile: its slot goes to the queue's next job
        END IF;
        IF EXISTS (SELECT 1 FROM pgqueue.job_starts s
                   WHERE s.job_id = v_job.id AND s.attempt > v_job.attempts) THEN
            v_job := pgqueue.settle_crashed(v_job);
            IF v_job.status <> 'pending' OR v_job.scheduled_at > now() THEN
                CONTINUE;
            END IF;
        END IF;
        IF v_job.crashes > 0 AND cardinality(v_ids) > 0 THEN
            v_aside := v_aside || v_job.id;  -- crashed meanwhile: held, not run, till the end
            CONTINUE;
        END IF;
        IF v_slot IS NOT NULL THEN
            v_next_slot := v_next_slot || jsonb_build_object(v_job.queue, v_slot + 1);
            v_spare := array_remove(v_spare, v_job.queue);
        END IF;
        PERFORM pg_catalog.pg_try_advisory_xact_lock(1885827445 + (v_job.id / 2147483648)::integer,
                                                 (v_job.id % 2147483648)::integer);
        v_ids := v_ids || v_job.id;
        v_job.attempts := v_job.attempts + 1;
        RETURN NEXT v_job;
        EXIT claiming WHEN v_job.crashes > 0;  -- claimed alone
    END LOOP;
    IF cardinality(v_spare) > 0 OR cardinality(v_over) > 0 THEN  -- rare: no query otherwise
        PERFORM pg_catalog.pg_notify('pgqueue_jobs', q.name)
        FROM pgqueue.queues q
        WHERE q.name = ANY (v_spare)
           OR (q.name = ANY (v_over)
               AND NOT coalesce(pgqueue.queue_over(q.name, q.max_concurrency - 1), false));
    END IF;
END;
$$;


-- Enqueue the next run of a job with a schedule: a copy at p_next_at; none
-- (NULL) when the job was cancelled while it ran (its request is consumed).
CREATE OR REPLACE FUNCTION pgqueue.repeat_job(p_job pgqueue.jobs, p_next_at timestamptz)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH asked AS (
        DELETE FROM pgqueue.cancel_requests r WHERE r.job_id = p_job.id RETURNING 1
    )
    INSERT INTO pgqueue.jobs (queue, name, data, priority, scheduled_at, max_attempts, retry,
                              schedule, timeout)
    SELECT p_job.queue, p_job.name, p_job.data, p_job.priority, p_next_at, p_job.max_attempts,
           p_job.retry, p_job.schedule, p_job.timeout
    WHERE NOT EXISTS (SELECT 1 FROM asked)
    RETURNING id;
$$;


-- Cancel pending jobs, optionally only of a name, a queue, and whose data
-- contains p_data (jsonb containment). Running jobs are skipped, not
-- interrupted; a running one with a schedule gets a cancel request (see
-- repeat_job and fail_attempt), so that its chain ends with this run. Returns
-- how many were cancelled.
--
-- Running means holding the job's advisory lock (running_keys), not merely a
-- row lock: dequeue_limited locks a row for an instant while it checks the
-- queue's slots, and SKIP LOCKED would skip that pending job. Other row locks
-- are waited for, in id order (no deadlock between two of these calls).
CREATE OR REPLACE FUNCTION pgqueue.cancel_jobs(p_name text, p_data jsonb, p_queue text)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (
        SELECT pgqueue.running_keys() AS k
    ), picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.status = 'pending'
          AND (p_name IS NULL OR j.name = p_name)
          AND (p_queue IS NULL OR j.queue = p_queue)
          AND (p_data IS NULL OR j.data @> p_data)
          AND j.id NOT IN (SELECT k FROM running)
        ORDER BY j.id
        FOR UPDATE OF j
    ), cancelled AS (
        UPDATE pgqueue.jobs j SET status = 'cancelled', updated_at = now()
        FROM picked WHERE j.id = picked.id
        RETURNING 1
    ), asked AS (
        INSERT INTO pgqueue.cancel_requests (job_id)
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.schedule IS NOT NULL
          AND (j.status = 'running'
               OR (j.status = 'pending' AND j.id IN (SELECT k FROM running)))
          AND (p_name IS NULL OR j.name = p_name)
          AND (p_queue IS NULL OR j.queue = p_queue)
          AND (p_data IS NULL OR j.data @> p_data)
        ON CONFLICT (job_id) DO NOTHING
    )
    SELECT count(*) FROM cancelled;
$$;


-- Cancel one pending job; false when it is unknown, running or finished
-- (running as in cancel_jobs, which a running one with a schedule gets a
-- cancel request from too).
CREATE OR REPLACE FUNCTION pgqueue.cancel_job(p_id bigint) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (
        SELECT pgqueue.running_keys() AS k
    ), picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.id = p_id AND j.status = 'pending'
          AND j.id NOT IN (SELECT k FROM running)
        FOR UPDATE OF j
    ), cancelled AS (
        UPDATE pgqueue.jobs j SET status = 'cancelled', updated_at = now()
        FROM picked WHERE j.id = picked.id
        RETURNING 1
    ), asked AS (
        INSERT INTO pgqueue.cancel_requests (job_id)
        SELECT j.id FROM pgqueue.jobs j
        WHERE j.id = p_id AND j.schedule IS NOT NULL
          AND (j.status = 'running'
               OR (j.status = 'pending' AND j.id IN (SELECT k FROM running)))
        ON CONFLICT (job_id) DO NOTHING
    )
    SELECT count(*) = 1 FROM cancelled;
$$;


-- Make failed or cancelled jobs pending again, due now, with one more
-- attempt allowed if they had used them all up. A recurring row comes back
-- only when its target has no pending one (at most one per target, the
-- newest): the unique index allows one. A start record left from before
-- (a job cancelled after its worker crashed) is dropped: the job starts
-- afresh. Returns how many.
CREATE OR REPLACE FUNCTION pgqueue.retry_jobs(p_ids bigint[], p_name text, p_queue text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
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
        RETURNING j.id, j.queue
    ), forgotten AS (
        DELETE FROM pgqueue.job_starts s USING retried r WHERE s.job_id = r.id
    )
    SELECT array_agg(queue) INTO v_queues FROM retried;
    PERFORM pg_catalog.pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT unnest(v_queues) AS queue) q;
    RETURN coalesce(cardinality(v_queues), 0);
END;
$$;


-- Run a pending job now instead of at its scheduled_at (the dashboard's "run
-- now"). A recurring row (pgqueue.recurring) is left where it is and its
-- target job is enqueued now, as pgqueue.run_recurring does, so the
-- schedule keeps its rhythm; any other pending job that no worker holds
-- (running as in cancel_jobs) becomes due now. Returns the id of the job
-- that will run (the target job's for a recurring row), NULL when p_id is
-- unknown, running or not pending.
CREATE OR REPLACE FUNCTION pgqueue.run_job_now(p_id bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
DECLARE
    v_job pgqueue.jobs;
    v_id bigint;
BEGIN
    SELECT * INTO v_job FROM pgqueue.jobs j
    WHERE j.id = p_id AND j.status = 'pending'
      AND j.id NOT IN (SELECT pgqueue.running_keys())
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_job.name = 'pgqueue.recurring' THEN
        -- The insert trigger sends the NOTIFY.
        INSERT INTO pgqueue.jobs (queue, name, data, priority)
        VALUES (v_job.queue, v_job.data ->> 'name', coalesce(v_job.data -> 'data', '{}'),
                v_job.priority + 1)
        RETURNING id INTO v_id;
        RETURN v_id;
    END IF;
    IF v_job.scheduled_at > now() THEN
        UPDATE pgqueue.jobs SET scheduled_at = now(), updated_at = now() WHERE id = p_id;
        PERFORM pg_catalog.pg_notify('pgqueue_jobs', v_job.queue);
    END IF;
    RETURN p_id;
END;
$$;

-- Delete finished jobs older than their clean-up rule (by name and status,
-- falling back to the '*' rule of that status; no rule: kept), and start
-- records of jobs that are no longer pending or running (a job cancelled or
-- deleted after its worker crashed). Returns how many jobs were deleted.
CREATE OR REPLACE FUNCTION pgqueue.cleanup() RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH stale_starts AS (
        DELETE FROM pgqueue.job_starts s
        WHERE NOT EXISTS (SELECT 1 FROM pgqueue.jobs j
                          WHERE j.id = s.job_id AND j.status IN ('pending', 'running'))
    ), deleted AS (
        DELETE FROM pgqueue.jobs j
        WHERE j.status IN ('completed', 'failed', 'cancelled')  -- on jobs_finished_idx
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
-- cancel_jobs, or stored as running in lease mode). Returns how many.
CREATE OR REPLACE FUNCTION pgqueue.clear_jobs(p_queue text) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    WITH running AS MATERIALIZED (
        SELECT pgqueue.running_keys() AS k
    ), picked AS (
        SELECT j.id FROM pgqueue.jobs j
        WHERE (p_queue IS NULL OR j.queue = p_queue)
          AND j.status <> 'running'
          AND NOT (j.status = 'pending' AND j.id IN (SELECT k FROM running))
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
LANGUAGE sql
SET search_path = pg_catalog, pgqueue, pg_temp
AS $$
    INSERT INTO pgqueue.queues (name, max_concurrency, retry)
    VALUES (p_name, p_max_concurrency, p_retry)
    ON CONFLICT (name) DO UPDATE
    SET max_concurrency = excluded.max_concurrency, retry = excluded.retry, updated_at = now();
$$;
