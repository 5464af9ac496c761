-- Why: cancel_jobs and cancel_job skip a running job (its worker holds it and
-- is not interrupted), so a repeating job that was running when cancelled
-- enqueued its next copy when it finished, and the chain went on. A cancel now
-- leaves a request here for each running job with a schedule that it matches:
-- that run's completion or final failure makes no next copy, and a failed
-- attempt is not retried (the job ends cancelled). The run consumes the
-- request. No foreign key: its check would wait for the running job's row lock.

CREATE TABLE pgqueue.cancel_requests (
    job_id bigint PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
