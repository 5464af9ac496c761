-- Why: jobs that break their workers. A handler that kills its process rolls
-- its own transaction back, attempt count included, so it would run again at
-- once, forever: pgqueue.job_starts records each attempt as it starts, from a
-- second connection outside the job's transaction, and dequeue counts a start
-- that never finished as a crashed attempt. A job may carry its own timeout.
-- And long jobs may opt out of the open transaction (lease mode): such a job
-- is claimed and committed with status 'running' and a lease_until that its
-- worker keeps extending; an expired lease means its worker is gone.

ALTER TABLE pgqueue.jobs ADD COLUMN timeout double precision
    CONSTRAINT jobs_timeout_check CHECK (timeout > 0);

-- Attempts whose worker died (or lost its connection) before recording them.
-- A job that has crashed once runs alone in its worker from then on.
ALTER TABLE pgqueue.jobs ADD COLUMN crashes integer NOT NULL DEFAULT 0
    CONSTRAINT jobs_crashes_check CHECK (crashes >= 0);

ALTER TABLE pgqueue.jobs ADD COLUMN lease_until timestamptz;

-- Scans the table once; every existing row passed the narrower check.
ALTER TABLE pgqueue.jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled'));

-- Lease-mode jobs running now, by expiry: dequeue probes it for expired leases.
CREATE INDEX jobs_lease_idx ON pgqueue.jobs (lease_until) WHERE status = 'running';

-- The latest attempt started of a job, recorded (committed) by its worker on
-- a second connection before the handler runs, outside the job's
-- transaction. When a pending job that nobody holds has a start with a
-- higher attempt number than its attempts, that attempt never finished: its
-- worker died. The transaction that records an outcome deletes the row.
--
-- Unlogged: written for every job, it costs no WAL; a worker that dies does
-- not lose it, and a server crash, which empties it, ends the attempts anyway
-- (they are merely not counted). No foreign key: its check would lock the
-- job's row, which the job's own transaction holds.
CREATE UNLOGGED TABLE pgqueue.job_starts (
    job_id      bigint PRIMARY KEY,
    -- The attempt number that started (the job's attempts + 1 at the time).
    attempt     integer NOT NULL,
    -- Known to have run at the same time as other attempts of its worker
    -- process (a batch, or found so after a crash): if the process dies,
    -- nobody knows whose handler killed it.
    shared      boolean NOT NULL DEFAULT false,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- 'host:pid' of the worker process, for error messages.
    worker      text,
    -- A random id of the worker process (pids are reused).
    process     bigint,
    -- Identifies the claim, so that a worker only drops its own starts.
    token       bigint,
    -- The next run of a job on a cron or text schedule, computed by the worker.
    next_at     timestamptz,
    -- Set when the worker gave up on the attempt after this many seconds.
    timed_out   double precision
);

-- pgqueue.enqueue takes the timeout now; the old signature would stay as an overload.
DROP FUNCTION IF EXISTS pgqueue.enqueue(
    text, text, jsonb, integer, timestamptz, interval, integer, jsonb, jsonb
);
