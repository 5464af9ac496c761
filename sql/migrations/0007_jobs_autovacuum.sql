-- Why: every claim walks the index entries of the jobs finished since the
-- table's last vacuum (a completion leaves its pending row version dead, and
-- nothing but vacuum takes its entries out of the dequeue indexes), so a long
-- drain slows down between vacuums. Autovacuum's defaults wait for a fifth of
-- the table to be dead (with a million finished rows kept as history, 200,000
-- dead rows) and throttle the vacuum itself. Measured on PG 15, 200,000 jobs
-- drained at 4 threads with autovacuum_naptime = 10s, two interleaved runs of
-- each: with the defaults autovacuum ran every other round and the rate went
-- up and down between 2.2k and 2.4k jobs/s (2,273 and 2,343 overall); with
-- these, every round, flat (2,400 and 2,438).
-- autovacuum_naptime (how often autovacuum looks at a database at all, 1 min
-- by default) is the server's: see the README's Performance section.

ALTER TABLE pgqueue.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
