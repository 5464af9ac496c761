"""``python -m bench.chaos``: break things for real while workers run, then prove every job ran exactly once.

Starts its own embedded Postgres in a temp dir (or uses --dsn), creates a
database, migrates it and enqueues ``--jobs`` jobs whose handler writes a row
to a table without a unique constraint, in the job's transaction. Then runs
``--workers`` worker processes (``bench.chaos_worker``, ``--threads`` slots
each) and, while they work, at evenly spaced points of progress: SIGKILLs a
random worker process and starts a new one (``--kills``), terminates a random
worker backend with ``pg_terminate_backend`` (``--terminations``), and
restarts the server itself (``--restarts``: ``pg_ctl restart -m fast``, then
``-m immediate``, alternating), timing how long after each restart the next
job completes. With --dsn the server cannot be restarted: the restarts are
skipped, and the run says so.

At the end every job must be completed with exactly one result row (none
pending, lost or duplicated), every worker process must still be running (a
worker exits only when a thread of it died), and after each restart the
workers must have logged their reconnect lines and completed a job again. It
prints one summary line starting ``chaos:`` and exits 0 only if all of that
holds, 1 otherwise; the worker logs are kept (and their directory printed)
when it fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, LiteralString

import psycopg

import pgqueue

from .chaos_server import ChaosServer, embedded_server
from .chaos_worker import JOB_NAME, RESULTS_TABLE_DDL

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

#: application_name of every worker connection is this plus the worker's number.
WORKER_APP_PREFIX: Final = "pgqueue-chaos-worker-"
ADMIN_APP_NAME: Final = "pgqueue-chaos-admin"

#: The log lines that show a worker reconnecting (pgqueue/worker.py).
RECONNECT_MARKERS: Final = ("lost the database connection", "LISTEN connection failed")
#: The log line of a worker that has started (pgqueue/worker.py).
STARTED_MARKER: Final = "worker started:"

#: Events happen between these fractions of the jobs done, evenly spaced.
FIRST_EVENT_AT: Final = 0.05
LAST_EVENT_AT: Final = 0.85
#: At least this long between two events (seconds).
MIN_EVENT_GAP: Final = 0.3
#: The longest a restart may take to recover before the run gives up on it.
RECOVERY_LIMIT: Final = 60.0

# A failed attempt (there should be none) is retried soon, not after minutes.
JOB_TEMPLATE: Final = {
    "name": JOB_NAME,
    "max_attempts": 25,
    "retry": {"backoff": "fixed", "delay": 0.2},
}

COUNT_RESULTS: Final = "SELECT count(*) FROM chaos_results"
WORKER_BACKENDS: Final = (
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND starts_with(application_name, %s) "
    "ORDER BY pid"
)
TERMINATE_BACKEND: Final = "SELECT pg_terminate_backend(%s)"
FIRST_DONE_AFTER_START: Final = (
    "SELECT extract(epoch FROM min(done_at))::float8 FROM chaos_results "
    "WHERE done_at >= pg_postmaster_start_time()"
)
JOBS_NOT_DONE: Final = "SELECT count(*) FROM pgqueue.jobs WHERE name = %s AND status <> 'completed'"
# A job counts as done exactly when it is completed and has a result row.
LOST_JOBS: Final = (
    "SELECT count(*) FROM pgqueue.jobs j WHERE j.name = %s AND NOT ("
    " j.status = 'completed' AND EXISTS (SELECT FROM chaos_results r WHERE r.job_id = j.id))"
)
DUPLICATE_ROWS: Final = "SELECT count(*) - count(DISTINCT job_id) FROM chaos_results"
# Result rows of no completed job: a handler's write that committed without its job.
ORPHAN_ROWS: Final = (
    "SELECT count(*) FROM chaos_results r WHERE NOT EXISTS ("
    " SELECT FROM pgqueue.jobs j WHERE j.id = r.job_id AND j.status = 'completed')"
)
COMPLETED_JOBS: Final = (
    "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE attempts > 1) "
    "FROM pgqueue.jobs WHERE name = %s"
)


# -- results ----------------------------------------------------------------------


@dataclass
class Restart:
    """One server restart: its mode, how long pg_ctl took, and the time until a job completed."""

    mode: str
    pg_ctl_s: float
    recovery_s: float | None = None
    #: Reconnect lines the workers logged between the restart and the recovery.
    reconnect_lines: int = 0


@dataclass
class Outcome:
    """What a chaos run did and found."""

    jobs: int
    workers: int
    threads: int
    batch_size: int = 1
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    orphans: int = 0
    retried: int = 0
    kills: int = 0
    terminations: int = 0
    restarts: list[Restart] = field(default_factory=list)
    worker_exits: list[str] = field(default_factory=list)
    reconnect_lines: int = 0
    runtime_s: float = 0.0
    #: True when --dsn was given and the restarts were skipped.
    restarts_skipped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every job completed exactly once, no worker process gave up, and after each restart
        the workers logged their reconnects and completed a job again."""
        return (
            self.completed == self.jobs
            and self.lost == 0
            and self.duplicated == 0
            and self.orphans == 0
            and not self.worker_exits
            and all(r.recovery_s is not None and r.reconnect_lines for r in self.restarts)
        )

    def summary_line(self) -> str:
        """The one line the run prints at the end."""
        recovery = ", ".join(
            f"{r.mode} {r.recovery_s:.2f} s" if r.recovery_s is not None else f"{r.mode} none"
            for r in self.restarts
        )
        if self.restarts_skipped:
            recovery = "skipped: --dsn"
        parts = [
            f"jobs={self.jobs}",
            f"completed={self.completed}",
            f"workers={self.workers}x{self.threads}",
            f"batch={self.batch_size}",
            f"kills={self.kills}",
            f"terminations={self.terminations}",
            f"restarts={len(self.restarts)}",
            f"lost={self.lost}",
            f"duplicated={self.duplicated}",
            f"recovery=[{recovery}]",
            f"retried={self.retried}",
            f"reconnect_lines={self.reconnect_lines}",
            f"worker_exits={len(self.worker_exits)}",
        ]
        if self.orphans:
            parts.append(f"orphans={self.orphans}")
        parts.append(f"runtime={self.runtime_s:.1f}s")
        parts.append("OK" if self.ok else "FAILED")
        return "chaos: " + " ".join(parts)


# -- the admin connection -----------------------------------------------------------


class Admin:
    """The run's own connection to the chaos database; reconnects across server restarts."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, query: LiteralString, params: Any = None, *, timeout: float = 60.0) -> list[Any]:
        """Run ``query`` and return its rows, reconnecting (for up to ``timeout`` s) if need be."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                return self._conn.execute(query, params).fetchall()
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def scalar(self, query: LiteralString, params: Any = None, *, timeout: float = 60.0) -> Any:
        """The first column of the first row of ``query``."""
        return self.rows(query, params, timeout=timeout)[0][0]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


# -- worker processes -----------------------------------------------------------------


class Workers:
    """The worker processes: start, SIGKILL and replace, notice unplanned exits, stop."""

    def __init__(
        self, server: ChaosServer, dbname: str, threads: int, batch_size: int, log_dir: Path
    ) -> None:
        self._server = server
        self._dbname = dbname
        self._threads = threads
        self._batch_size = batch_size
        self.log_dir = log_dir
        self._serial = 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self) -> str:
        """Start one more worker process and return its name (w1, w2, ...)."""
        self._serial += 1
        name = f"w{self._serial}"
        dsn = self._server.dsn_for(self._dbname, application_name=WORKER_APP_PREFIX + name)
        log: IO[bytes]
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.chaos_worker",
                    "--dsn",
                    dsn,
                    "--threads",
                    str(self._threads),
                    "--batch-size",
                    str(self._batch_size),
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return name

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name`` and wait for it to die."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def reap(self) -> list[tuple[str, int]]:
        """The workers that exited on their own since the last call: (name, exit code)."""
        gone = [
            (name, code) for name, proc in self.procs.items() if (code := proc.poll()) is not None
        ]
        for name, _ in gone:
            del self.procs[name]
        return gone

    def wait_started(self, timeout: float = 30.0) -> None:
        """Wait until every worker has logged that it started (or exited): a SIGTERM sent
        while one is still importing would kill it before its signal handler is set."""
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            path = self.log_dir / f"{name}.log"
            while proc.poll() is None and time.monotonic() < deadline:
                if STARTED_MARKER in path.read_text(encoding="utf-8", errors="replace"):
                    break
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> list[tuple[str, int | None]]:
        """SIGTERM every worker, wait for a graceful stop; returns (name, exit code) of each."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        codes: list[tuple[str, int | None]] = []
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                codes.append((name, proc.wait(timeout=max(0.1, deadline - time.monotonic()))))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
                codes.append((name, None))
        self.procs.clear()
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self.procs.clear()

    def reconnect_lines(self) -> int:
        """How many reconnect lines the workers' logs hold (the killed workers' too)."""
        count = 0
        for path in self.log_dir.glob("*.log"):
            with path.open(encoding="utf-8", errors="replace") as lines:
                count += sum(1 for line in lines if any(m in line for m in RECONNECT_MARKERS))
        return count


# -- the run ------------------------------------------------------------------------


def plan_events(kills: int, terminations: int, restarts: int, rng: random.Random) -> list[str]:
    """The order of events: kills and terminations shuffled, restarts spread evenly among them.

    Restart modes alternate ``fast`` and ``immediate``.
    """
    events = ["kill"] * kills + ["terminate"] * terminations
    rng.shuffle(events)
    modes = ("restart-fast", "restart-immediate")
    for index in range(restarts):
        position = round((index + 1) * (len(events) + restarts) / (restarts + 1)) - 1
        events.insert(min(position, len(events)), modes[index % 2])
    return events


def _triggers(count: int, jobs: int) -> list[int]:
    """The number of results after which each of ``count`` events fires."""
    if count == 1:
        return [round(jobs * (FIRST_EVENT_AT + LAST_EVENT_AT) / 2)]
    step = (LAST_EVENT_AT - FIRST_EVENT_AT) / max(count - 1, 1)
    return [round(jobs * (FIRST_EVENT_AT + step * i)) for i in range(count)]


@dataclass
class Options:
    """The run's settings (see ``--help``)."""

    jobs: int = 20_000
    workers: int = 3
    threads: int = 4
    batch_size: int = 1
    restarts: int = 2
    kills: int = 10
    terminations: int = 20
    seconds: float = 600.0
    dsn: str | None = None
    seed: int | None = None
    keep_logs: bool = False


class _Run:
    def __init__(
        self, opts: Options, server: ChaosServer, dbname: str, log: Callable[[str], None]
    ) -> None:
        self.opts = opts
        self.server = server
        self.dbname = dbname
        self._log = log
        self.started = time.monotonic()
        self.deadline = self.started + opts.seconds
        self.rng = random.Random(opts.seed)
        self.admin = Admin(server.dsn_for(dbname, application_name=ADMIN_APP_NAME))
        self.log_dir = Path(tempfile.mkdtemp(prefix="pgqueue-chaos-logs-"))
        self.workers = Workers(server, dbname, opts.threads, opts.batch_size, self.log_dir)
        self.outcome = Outcome(
            jobs=opts.jobs, workers=opts.workers, threads=opts.threads, batch_size=opts.batch_size
        )

    def log(self, message: str) -> None:
        self._log(f"[{time.monotonic() - self.started:6.1f} s] {message}")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- set-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        with psycopg.connect(self.server.dsn_for(self.dbname), autocommit=True) as conn:
            pgqueue.migrate(conn)
            conn.execute(RESULTS_TABLE_DDL)
            left = self.opts.jobs
            while left:
                chunk = min(left, 5_000)
                with conn.transaction():
                    pgqueue.add_jobs_to_queue(conn, [JOB_TEMPLATE] * chunk)
                left -= chunk
            conn.execute("VACUUM ANALYZE pgqueue.jobs")
        self.log(f"enqueued {self.opts.jobs} jobs")

    # -- events ---------------------------------------------------------------------

    def kill(self) -> bool:
        if not self.workers.procs:
            return False
        victim = self.rng.choice(sorted(self.workers.procs))
        pid = self.workers.procs[victim].pid
        self.workers.kill(victim)
        self.outcome.kills += 1
        replacement = self.workers.spawn()
        self.log(f"SIGKILLed worker {victim} (pid {pid}); started {replacement}")
        return True

    def terminate(self) -> bool:
        pids = [row[0] for row in self.admin.rows(WORKER_BACKENDS, (WORKER_APP_PREFIX,))]
        if not pids:
            return False
        pid = self.rng.choice(pids)
        if not self.admin.scalar(TERMINATE_BACKEND, (pid,)):
            return False
        self.outcome.terminations += 1
        self.log(f"terminated worker backend {pid} (of {len(pids)})")
        return True

    def restart(self, mode: str) -> bool:
        lines_before = self.workers.reconnect_lines()
        self.log(f"restarting the server (pg_ctl restart -m {mode})")
        t0 = time.time()
        pg_ctl_s = self.server.restart(mode)
        self.admin.close()
        restart = Restart(mode=mode, pg_ctl_s=pg_ctl_s)
        self.outcome.restarts.append(restart)
        limit = time.monotonic() + min(RECOVERY_LIMIT, max(self.remaining(), 1.0))
        left = True
        while time.monotonic() < limit:
            left = bool(self.admin.scalar(JOBS_NOT_DONE, (JOB_NAME,)))  # read first
            first = self.admin.scalar(FIRST_DONE_AFTER_START)
            if first is not None:
                restart.recovery_s = max(0.0, float(first) - t0)
                break
            if not left:
                break  # every job completed before the server went down
            time.sleep(0.05)
        reconnects = self.workers.reconnect_lines() - lines_before
        restart.reconnect_lines = reconnects
        if not left:
            self.outcome.notes.append(f"{mode} restart not measured: no job left (more --jobs)")
            self.log("  no job was left to run after the restart: its recovery is not measured")
        elif restart.recovery_s is None:
            self.log(f"  no job completed within {RECOVERY_LIMIT:.0f} s of the restart")
        else:
            self.log(
                f"  back: pg_ctl took {pg_ctl_s:.2f} s, next job completed "
                f"{restart.recovery_s:.2f} s after the restart began; "
                f"{reconnects} reconnect line(s) logged"
            )
        return True

    def perform(self, event: str) -> bool:
        if event == "kill":
            return self.kill()
        if event == "terminate":
            return self.terminate()
        return self.restart(event.removeprefix("restart-"))

    def reap(self) -> None:
        for name, code in self.workers.reap():
            self.outcome.worker_exits.append(f"{name}:{code}")
            replacement = self.workers.spawn()
            self.log(
                f"worker {name} exited on its own (code {code}; see {self.log_dir / name}.log); "
                f"started {replacement}"
            )

    # -- main loop ------------------------------------------------------------------

    def chaos(self) -> None:
        restarts = self.opts.restarts
        if restarts and not self.server.can_restart:
            self.outcome.restarts_skipped = True
            self.outcome.notes.append("server restarts skipped: --dsn given")
            self.log("--dsn given: this run cannot restart the server, so it skips the restarts")
            restarts = 0
        events = plan_events(self.opts.kills, self.opts.terminations, restarts, self.rng)
        triggers = _triggers(len(events), self.opts.jobs) if events else []
        for _ in range(self.opts.workers):
            self.workers.spawn()
        self.log(
            f"started {self.opts.workers} worker processes x {self.opts.threads} threads; "
            f"{len(events)} events planned"
        )
        index, last_event, last_report = 0, 0.0, time.monotonic()
        while self.remaining() > 0:
            self.reap()
            done = int(self.admin.scalar(COUNT_RESULTS))
            now = time.monotonic()
            if now - last_report >= 5:
                self.log(f"{done} of {self.opts.jobs} jobs done")
                last_report = now
            if index < len(events):
                if done >= triggers[index] and now - last_event >= MIN_EVENT_GAP:
                    if self.perform(events[index]):
                        index += 1
                    last_event = time.monotonic()
                    continue
            elif self.admin.scalar(JOBS_NOT_DONE, (JOB_NAME,)) == 0:
                self.log("every job is completed")
                return
            time.sleep(0.1)
        self.outcome.notes.append(f"time limit of {self.opts.seconds:.0f} s reached")
        self.log(f"time limit of {self.opts.seconds:.0f} s reached; {index} events done")

    def finish(self) -> None:
        self.workers.wait_started()
        for name, code in self.workers.stop():
            if code != 0:
                self.outcome.worker_exits.append(f"{name}:{code}")
                self.log(f"worker {name} did not stop cleanly (exit code {code})")
        o = self.outcome
        o.completed, o.retried = self.admin.rows(COMPLETED_JOBS, (JOB_NAME,))[0]
        o.lost = int(self.admin.scalar(LOST_JOBS, (JOB_NAME,)))
        o.duplicated = int(self.admin.scalar(DUPLICATE_ROWS))
        o.orphans = int(self.admin.scalar(ORPHAN_ROWS))
        o.reconnect_lines = self.workers.reconnect_lines()

    def close(self) -> None:
        self.workers.kill_all()
        self.admin.close()
        if self.outcome.ok and not self.opts.keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        else:
            self._log(f"worker logs kept in {self.log_dir}")


@contextlib.contextmanager
def _server(dsn: str | None) -> Iterator[ChaosServer]:
    if dsn:
        yield ChaosServer(dsn)
    else:
        with embedded_server() as server:
            yield server


def run(opts: Options, log: Callable[[str], None] = print) -> Outcome:
    """Run the chaos scenario and return what it found (it prints progress through ``log``)."""
    started = time.monotonic()
    dbname = f"pgqueue_chaos_{os.getpid()}"
    with _server(opts.dsn) as server:
        server.create_database(dbname)
        chaos = _Run(opts, server, dbname, log)
        try:
            chaos.prepare()
            chaos.chaos()
            chaos.finish()
        finally:
            chaos.close()
            with contextlib.suppress(psycopg.Error):
                server.drop_database(dbname)
    chaos.outcome.runtime_s = time.monotonic() - started
    return chaos.outcome


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Kill workers, terminate their backends and restart Postgres while "
        "worker processes run jobs; then check every job completed exactly once.",
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs to run (default 20000)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--threads", type=int, default=4, help="slots per worker (default 4)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="jobs per slot's transaction (default 1); batch mode is fast: raise --jobs so that"
        " the events land while jobs remain",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=2,
        help="server restarts, alternating -m fast and -m immediate (default 2)",
    )
    parser.add_argument("--kills", type=int, default=10, help="worker SIGKILLs (default 10)")
    parser.add_argument(
        "--terminations",
        type=int,
        default=20,
        help="pg_terminate_backend calls on worker backends (default 20)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PGQUEUE_CHAOS_DSN"),
        help="use this server instead of an embedded one (the role needs CREATEDB and the "
        "right to terminate the workers' backends); restarts are then skipped "
        "(env PGQUEUE_CHAOS_DSN)",
    )
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="give up after this long (default 600)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the worker logs also when the run passes"
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "workers", "threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("restarts", "kills", "terminations"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative")
    return Options(
        jobs=args.jobs,
        workers=args.workers,
        threads=args.threads,
        batch_size=args.batch_size,
        restarts=args.restarts,
        kills=args.kills,
        terminations=args.terminations,
        seconds=args.seconds,
        dsn=args.dsn,
        seed=args.seed,
        keep_logs=args.keep_logs,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    outcome = run(opts, lambda message: print(message, flush=True))
    for note in outcome.notes:
        print(f"note: {note}", flush=True)
    print(outcome.summary_line(), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
