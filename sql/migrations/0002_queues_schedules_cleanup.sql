-- Why: the seed systems' features on one model. Named queues get a row of
-- settings (a global concurrency limit enforced by pgqueue.dequeue, and a
-- default retry policy); a job can repeat on a schedule (Reaction's
-- scheduleJob: on completion a copy is enqueued at the next occurrence);
-- clean-up rules say how long finished jobs of each name are kept, and an
-- index over finished jobs lets the clean-up job find them cheaply.

CREATE TABLE pgqueue.queues (
    name             text PRIMARY KEY,
    -- At most this many jobs of the queue run at once, across every worker.
    max_concurrency  integer CHECK (max_concurrency IS NULL OR max_concurrency >= 1),
    -- Default retry policy for the queue's jobs; a job's own keys win.
    retry            jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- {"kind": "cron" | "text", "text": ...}: the job repeats on this schedule.
ALTER TABLE pgqueue.jobs ADD COLUMN schedule jsonb;

CREATE TABLE pgqueue.cleanup_rules (
    -- A job name, or '*' for every name without a rule of its own.
    name         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('completed', 'failed', 'cancelled')),
    purge_after  interval NOT NULL CHECK (purge_after >= interval '0'),
    PRIMARY KEY (name, status)
);

CREATE INDEX jobs_finished_idx ON pgqueue.jobs (updated_at)
    WHERE status <> 'pending';
