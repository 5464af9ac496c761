-- Why: a start record must be committed before its handler runs, and a
-- job's crash settled in the transaction that then claims it again (its
-- start row deleted there, uncommitted) blocked the new start record
-- (same primary key) until that transaction ended: the handler ran with no
-- start committed, and if it killed its process, the settlement was rolled
-- back and the start landed late, racing with the next dequeue. A start
-- record is now one claim's (job_id, token): a new one never waits on the
-- rows of an earlier claim. Rows without a token (none are written) get 0.

UPDATE pgqueue.job_starts SET token = 0 WHERE token IS NULL;
ALTER TABLE pgqueue.job_starts DROP CONSTRAINT job_starts_pkey;
ALTER TABLE pgqueue.job_starts ALTER COLUMN token SET NOT NULL;
ALTER TABLE pgqueue.job_starts ADD PRIMARY KEY (job_id, token);
