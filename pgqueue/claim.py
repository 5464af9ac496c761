"""One claim of a worker slot: dequeue jobs in a transaction, run their handlers, record the outcomes.

A mixin of :class:`pgqueue.JobQueueWorker`, apart so that each module holds one
job: the worker (pgqueue.worker) owns the threads, the connections and the
life cycle; this module what a slot does with one transaction. Lease mode's
claims are in pgqueue.lease.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias, TypeGuard, TypeVar

import psycopg
from psycopg import pq
from psycopg.pq import TransactionStatus

from . import _queries as q
from . import _tracing
from . import lease as _lease
from ._input import stored_result
from ._wire import ClaimTransaction, Statement, StatementDropped, Traffic, statement_name
from .builtins import BUILTIN_NAMES, RECURRING_JOB_NAME, next_run, run_builtin
from .errors import JobFailed
from .records import JobRecord, WorkerStats
from .supervisor import Supervisor, Watch, new_token
from .timeouts import server_limit_ms

if TYPE_CHECKING:
    from .metrics import WorkerInstruments

__all__ = ["ClaimRunner", "Handler"]

# The worker's own logger: these are its log lines, under the name they always had.
logger = logging.getLogger("pgqueue.worker")

#: A handler: called with the connection (inside the job's transaction) and the job.
Handler: TypeAlias = Callable[[psycopg.Connection[Any], JobRecord], object]


_MAX_ERROR_LENGTH: Final = 16_000

# The job's savepoint, as both workers send it: prepared, as BEGIN and COMMIT are (pgqueue._wire).
# Its rollback stays unnamed: it must work after a failing handler had the names dropped.
SAVEPOINT: Final = Statement(
    q.SAVEPOINT_WIRE, (), statement_name(b"pgqueue_savepoint_", q.SAVEPOINT_WIRE)
)
RELEASE: Final = Statement(
    q.RELEASE_SAVEPOINT_WIRE, (), statement_name(b"pgqueue_release_", q.RELEASE_SAVEPOINT_WIRE)
)
ROLLBACK_TO: Final = Statement(q.ROLLBACK_TO_SAVEPOINT_WIRE)
# Batch mode: the transaction's id, taken with the claim (see q.CURRENT_XACT_ID_WIRE).
CURRENT_XACT_ID: Final = Statement(q.CURRENT_XACT_ID_WIRE)

# The completion of one plain job (the usual outcome), prepared in the claim's first round
# trip: sent unnamed, it was parsed and planned afresh for each job (0.14 ms of server CPU).
COMPLETE_ONE: Final = Statement(
    q.COMPLETE_ONE_WIRE, (), statement_name(b"pgqueue_complete_", q.COMPLETE_ONE_WIRE)
)


@dataclass(eq=False)
class _Slot:
    """One slot: a thread that claims and runs jobs on one connection at a time."""

    index: int
    #: Its own connections rather than the pool's: a slot started in place of an orphan.
    dedicated: bool = False
    #: Its handler outlived its timeout and a new slot took its place: it ends when the handler returns.
    orphaned: bool = False
    thread: threading.Thread = field(default_factory=threading.Thread)
    #: The claim transactions of its current connection.
    claims: ClaimTransaction | None = None


class _Abandoned(Exception):
    """The watchdog ended the slot's claim (a timeout): drop the connection and go on."""


class ClaimRunner:
    """What a slot does with one claim (mixed into JobQueueWorker, which sets these)."""

    batch_size: int
    queues: list[str] | None
    timeout: float | None
    lease: float | None
    stats: WorkerStats
    _names: list[str] | None
    prepare: bool
    #: The claim statement for the worker's batch size, queues and names (q.claim_statement).
    _claim: Statement
    _handler: Handler | Mapping[str, Handler]
    _supervisor: Supervisor
    #: Set when the worker stops: a slot then sends no claim ahead of its next.
    _stopping: threading.Event
    #: Prometheus instruments (pgqueue.metrics) when the worker was made with metrics=...; else None.
    _metrics: WorkerInstruments | None

    def _connection(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of the worker's own (JobQueueWorker's)."""
        raise NotImplementedError

    def _process_batch(self, conn: psycopg.Connection[Any], slot: _Slot) -> bool:
        """Claim up to ``batch_size`` jobs in one transaction and run them; False when none was due.

        The transaction is a psycopg transaction block while the handlers run
        (pgqueue._wire), so a handler's ``conn.commit()`` / ``conn.rollback()``
        raises instead of ending it (which would commit half a job and free its
        lock while it runs). Round trips: BEGIN, the claim and the first
        SAVEPOINT in one; the start records on the side connection, sent
        without waiting; one more (RELEASE + SAVEPOINT) before each further job
        of a batch whose predecessor talked to the server (a handler that did
        not leaves the savepoint where the next job starts), and one before
        each job with a timeout (Postgres's own limits); then RELEASE, the
        completions, the failures and COMMIT in one, with the slot's next claim
        (BEGIN, claim, SAVEPOINT) after them: the next call takes its results.
        """
        if slot.claims is None or slot.claims.conn is not conn:
            slot.claims = ClaimTransaction(conn, prepare=self.prepare)
        tx = slot.claims
        jobs: list[JobRecord] = []
        done: list[tuple[JobRecord, str | None]] = []
        failed: list[tuple[JobRecord, str]] = []
        xid: str | None = None
        token = new_token()
        recorded = leased = False
        finished: list[int] = []  # jobs whose outcome is committed
        limits: str | None = None  # Postgres's limits set in this transaction (ms), if any
        pid = 0
        fails: list[pq.abc.PGresult] = []
        try:
            claim = self._claim
            xid_step = [CURRENT_XACT_ID] if self.batch_size > 1 else []
            claiming = [claim, *xid_step, SAVEPOINT]
            results = tx.begin(claiming, later=[COMPLETE_ONE, RELEASE])
            rows = tx.rows(results[0])
            jobs = [JobRecord.from_row(row[1:-1]) for row in rows if row[1] is not None]
            if rows[0][0] or (len(jobs) > 1 and any(job.crashes for job in jobs)):
                # The rare cases (see q.claim_statement): pgqueue.dequeue claims instead, before
                # the first job's savepoint (a failing handler must not undo what it settled).
                results = tx.run(
                    dequeue_instead(self.batch_size, self.queues, self._names, xid_step)
                )
                jobs = [JobRecord.from_row(row) for row in tx.rows(results[1])]
            if xid_step:
                xid = tx.rows(results[-2])[0][0]  # claiming a job assigned it (row locks)
            if not jobs:
                tx.commit([])
                return False
            if self.lease is not None and jobs[0].name not in BUILTIN_NAMES:
                leased = True
                _lease.claim_and_run(self, conn, tx, jobs[0], slot)
                return True
            # Sent before any handler runs: if one kills the process, the next
            # dequeue finds the start unfinished and counts the crash.
            self._supervisor.start_claim(jobs, token)
            recorded = True
            ids = [job.id for job in jobs]
            # Nothing sent since the savepoint was taken or rolled back to: it still marks
            # where the next job starts, which then needs no round trip for one of its own.
            clean = True
            for job in jobs:
                if not clean:
                    tx.run([RELEASE, SAVEPOINT])
                timeout = self._timeout_of(job)
                before = limits
                if timeout is not None and limits != server_limit_ms(timeout):
                    limits = server_limit_ms(timeout)
                    row = conn.execute(q.SET_TIMEOUTS, (limits, limits)).fetchone()
                    pid = row[2] if row else 0
                elif timeout is None and limits is not None:
                    conn.execute(q.RESET_TIMEOUTS)
                    limits = None
                watch = None
                if timeout is not None:
                    watch = self._supervisor.arm(
                        slot, job, ids=ids, token=token, pid=pid, timeout=timeout
                    )
                # Only a job that another follows needs to know (the default mode: never).
                traffic = Traffic(conn) if job is not jobs[-1] else None
                try:
                    if traffic is None:
                        error, result = self._run_handler(conn, job)
                    else:
                        with traffic:
                            error, result = self._run_handler(conn, job)
                finally:
                    if watch is not None and self._supervisor.disarm(watch):
                        self._abandon(conn, watch)
                clean = limits == before and not (traffic is not None and traffic.used)
                if error is None:
                    done.append((job, result))
                elif conn.info.transaction_status == TransactionStatus.IDLE:
                    # The handler ended the transaction itself with raw SQL. A
                    # COMMIT committed the jobs before it: complete them apart.
                    # A ROLLBACK undid their writes: leave them to run again.
                    # Failures are recorded either way; the rest of the batch
                    # is free again, and its starts were not crashes.
                    tx.release()
                    if done and not self._committed(conn, xid):
                        done = []
                    self._finish_apart(conn, done, [*failed, (job, error)])
                    finished = [j.id for j, _ in done] + [j.id for j, _ in failed] + [job.id]
                    self._supervisor.forget_starts([i for i in ids if i not in finished], token)
                    return True
                else:
                    # Not through psycopg, which would drop every prepared statement after it.
                    tx.run([ROLLBACK_TO])
                    limits = before
                    clean = True
                    failed.append((job, error))
            # Released first: an UPDATE in the savepoint of a row that the transaction itself
            # locked makes Postgres record both lockers in a MultiXact, one per job, which no
            # index scan can mark dead (every later claim walks them until a vacuum).
            # The next claim goes along, unless the slot is about to end (ClaimTransaction.commit).
            ahead = [] if self._stopping.is_set() or slot.orphaned else claiming
            results = tx.commit([RELEASE, *outcomes(done, failed)], ahead=ahead)
            fails = results[len(results) - len(failed) :] if failed else []
            finished = ids
        except _Abandoned:
            tx.release()
            raise
        except BaseException as exc:
            if tx.open:
                dropped = isinstance(exc, StatementDropped)
                if recorded and (dropped or gives_up_itself(exc)):
                    self._supervisor.forget_starts([job.id for job in jobs], token)
                tx.rollback()
                if dropped:
                    # Not the jobs' fault: they run again, their attempts not counted.
                    log_dropped(jobs)
                    return True
            elif jobs and not leased and commit_failed(exc):
                # The commit itself failed (a deferred constraint, say): the
                # server rolled everything back. Count every attempt on its own.
                self._rollback_if_open(conn)
                self._finish_apart(conn, [], [(job, _describe(exc)) for job in jobs])
                return True
            raise
        finally:
            if recorded:
                self._supervisor.end_claim(token, finished=finished)
        for job, _ in done:
            self._log_done(job)
        for (job, error), fail in zip(failed, fails, strict=True):
            rows = tx.rows(fail)
            self._log_failure(job, error, rows[0] if rows else None)
        return True

    def _finish_apart(
        self,
        conn: psycopg.Connection[Any],
        done: list[tuple[JobRecord, str | None]],
        failed: list[tuple[JobRecord, str]],
    ) -> None:
        """Record completions and failed attempts in a transaction of their own."""
        now = datetime.now(UTC)
        with conn.transaction():
            for job, result in done:
                conn.execute(q.COMPLETE, (job.id, result, next_run(job, now)))
            rows = [
                conn.execute(q.FAIL, (job.id, error, next_run(job, now))).fetchone()
                for job, error in failed
            ]
        for job, _ in done:
            self._log_done(job)
        for (job, error), row in zip(failed, rows, strict=True):
            self._log_failure(job, error, row)

    def _log_done(self, job: JobRecord) -> None:
        if self._metrics is not None:
            self._metrics.job_done(job)
        log_done(self.stats, job)

    def _timeout_of(self, job: JobRecord) -> float | None:
        """The job's own timeout, else the worker's."""
        return job.timeout if job.timeout is not None else self.timeout

    def _abandon(self, conn: psycopg.Connection[Any], watch: Watch) -> NoReturn:
        """The watchdog has ended the watched attempt: count it, drop the slot's connection
        and claim."""
        self.count_timeout(watch)
        with contextlib.suppress(Exception):
            conn.close()
        raise _Abandoned(f"job {watch.job.id} timed out")

    def count_timeout(self, watch: Watch) -> None:
        """Count the attempt the watchdog ended in the worker's stats and metrics, once (the
        watchdog logged it): when its handler comes back, or is given up for an orphan."""
        with watch.lock:
            if watch.counted:
                return
            watch.counted = True
        if self._metrics is not None:
            self._metrics.job_failed(watch.job)
        count_failure(self.stats, watch.job, watch.outcome)

    def _call_handler(
        self, conn: psycopg.Connection[Any], job: JobRecord
    ) -> tuple[str | None, object]:
        """Call the job's handler: (None, its return value), or (error text, None) if it raised.

        Anything it raises fails the attempt, SystemExit and KeyboardInterrupt
        too (``sys.exit()`` in a handler): in a slot's thread they could only
        end the thread, leaving its job to count as a crash and the worker a
        slot short. Inside a ``pgqueue.run <name>`` span when OpenTelemetry
        tracing is on, and measured when the worker has metrics on.
        """
        handler = run_builtin if job.name in BUILTIN_NAMES else user_handler(self._handler, job)
        metrics = self._metrics
        if metrics is not None:
            metrics.job_started(job)
        span = _tracing.run_span(job)  # None unless a tracer provider is set
        started = time.monotonic()
        try:
            if span is None:
                try:
                    return None, handler(conn, job)
                except BaseException as exc:
                    return handler_error(
                        exc, self._timeout_of(job), time.monotonic() - started
                    ), None
            with span:
                try:
                    value = handler(conn, job)
                except BaseException as exc:
                    span.record(exc)
                    error = handler_error(exc, self._timeout_of(job), time.monotonic() - started)
                    span.finish(error)
                    return error, None
                span.finish(None)
                return None, value
        finally:
            if metrics is not None:
                metrics.job_ended(job, time.monotonic() - started)

    def _run_handler(
        self, conn: psycopg.Connection[Any], job: JobRecord
    ) -> tuple[str | None, str | None]:
        """Run the job's handler in its transaction: (None, result) on success, (error text, None) on failure."""
        error, value = self._call_handler(conn, job)
        if conn.closed:
            logger.error(
                "job %d (%s): its handler closed the job's connection, which ended the job's "
                "transaction; the attempt counts as a crash when the job is claimed again",
                job.id,
                job.name,
            )
        if error is not None:
            return error, None
        error = transaction_error(conn.pgconn.transaction_status)
        if error is not None:
            return error, None
        return stored_result(value)

    @staticmethod
    def _committed(conn: psycopg.Connection[Any], xid: str | None) -> bool:
        """Whether the batch's transaction ``xid`` (already ended) committed."""
        if xid is None:
            return False
        state = conn.execute(q.XACT_STATUS, (xid,)).fetchone()
        return state is not None and state[0] == "committed"

    @staticmethod
    def _rollback_if_open(conn: psycopg.Connection[Any]) -> None:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute(q.ROLLBACK)

    def _log_failure(self, job: JobRecord, error: str, row: tuple[Any, ...] | None) -> None:
        if self._metrics is not None:
            self._metrics.job_failed(job)
        log_failure(self.stats, job, error, row)


# -- what an attempt's outcome means: shared with the asyncio worker (pgqueue.aio) ------------

H = TypeVar("H")


def user_handler(handler: H | Mapping[str, H], job: JobRecord) -> H:
    """The worker's handler for ``job`` (not a built-in job): the one, or the one for its name."""
    if isinstance(handler, Mapping):
        return handler[job.name]
    return handler


def is_plain(job: JobRecord) -> bool:
    """Whether completing ``job`` is only marking it completed (q.COMPLETE_ONE_WIRE or
    q.COMPLETE_PLAIN_WIRE): it neither
    recurs (the built-in recurring job) nor repeats on a schedule of its own."""
    return job.schedule is None and job.name != RECURRING_JOB_NAME


def dequeue_instead(
    limit: int, queues: list[str] | None, names: list[str] | None, then: Sequence[Statement] = ()
) -> list[Statement]:
    """The round trip that claims through pgqueue.dequeue instead, after the plain claim said
    so (see q.claim_statement): out of the first savepoint, the claim (its result second),
    ``then``, and the savepoint again, before the first job's (a failing handler must not undo
    what dequeue settled)."""
    dequeue = Statement(q.DEQUEUE_WIRE, (limit, queues, names))
    return [RELEASE, dequeue, *then, SAVEPOINT]


def outcomes(
    done: list[tuple[JobRecord, str | None]], failed: list[tuple[JobRecord, str]]
) -> list[Statement]:
    """The statements that record a claim's outcomes: completions, then one per failure."""
    now = datetime.now(UTC)
    plain = [(job, result) for job, result in done if is_plain(job)]
    others = [(job, result) for job, result in done if not is_plain(job)]
    statements = []
    if len(plain) == 1:
        ((job, result),) = plain
        statements.append(Statement(COMPLETE_ONE.sql, (job.id, result), COMPLETE_ONE.prepared_as))
    elif plain:
        statements.append(
            Statement(
                q.COMPLETE_PLAIN_WIRE,
                ([job.id for job, _ in plain], [result for _, result in plain]),
            )
        )
    if others:
        ids = [job.id for job, _ in others]
        results = [result for _, result in others]
        next_at = [next_run(job, now) for job, _ in others]
        statements.append(Statement(q.COMPLETE_MANY_WIRE, (ids, results, next_at)))
    statements += [
        Statement(q.FAIL_WIRE, (job.id, error, next_run(job, now))) for job, error in failed
    ]
    return statements


def log_dropped(jobs: Sequence[JobRecord]) -> None:
    """Log that ``jobs`` run again: their claim's transaction was lost to StatementDropped."""
    logger.warning(
        "jobs %s run again: a handler dropped pgqueue's prepared statements in"
        " their transaction (psycopg does after a ROLLBACK, DROP or ALTER sent"
        " through a connection with statements it prepared); this connection"
        " completes jobs unprepared from now on",
        ", ".join(str(job.id) for job in jobs),
    )


def gives_up_itself(exc: BaseException) -> bool:
    """Whether a claim that ends with ``exc`` is given up by the worker itself (a bug of ours, a
    server error; its starts are forgotten: not crashes of the jobs), rather than by a lost
    connection (a crash as any other) or an interrupt."""
    return isinstance(exc, Exception) and not isinstance(exc, psycopg.OperationalError)


def commit_failed(exc: BaseException) -> TypeGuard[psycopg.Error]:
    """Whether ``exc``, raised once the claim's transaction was no longer open, is its commit
    failing (a deferred constraint, say): the server rolled everything back, and each attempt
    is counted on its own."""
    return isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.OperationalError)


def handler_error(exc: BaseException, timeout: float | None, elapsed: float) -> str:
    """The error text kept on the job when its handler raised ``exc`` after ``elapsed`` seconds
    (``timeout``: the attempt's limit, if any)."""
    if isinstance(exc, JobFailed):
        return _storable(str(exc)) or "job failed"
    if isinstance(exc, psycopg.ProgrammingError):
        if "forbidden within a Transaction" not in str(exc):
            return _describe(exc)
        return (
            "RuntimeError: the handler tried to end the job's transaction (conn.commit() or "
            "conn.rollback()); the worker commits it when the handler returns "
            "and rolls it back when the handler raises\n\n" + _describe(exc)
        )
    if timeout is not None and elapsed >= timeout:
        # Postgres's own limit (the backstop) ended a statement first.
        return _storable(f"JobTimeout: timed out after {timeout:g} s\n\n{_describe(exc)}")
    return _describe(exc)


def transaction_error(status: int) -> str | None:
    """The error of an attempt whose handler returned leaving its transaction in ``status``;
    None when the transaction is still open and sound."""
    if status == TransactionStatus.IDLE:
        return (
            "RuntimeError: the handler committed or rolled back the job's transaction; "
            "handlers must leave it open (use conn.transaction() for savepoints). A COMMIT "
            "kept the writes made before it: a retry makes them again"
        )
    if status == TransactionStatus.INERROR:
        return (
            "RuntimeError: a statement in the handler failed and the error was caught, "
            "leaving the job's transaction aborted"
        )
    return None


def log_done(stats: WorkerStats, job: JobRecord) -> None:
    """Count and log a completed job."""
    if job.name not in BUILTIN_NAMES:  # pgqueue's own jobs are not counted
        stats.add("completed")
    if logger.isEnabledFor(logging.DEBUG):  # the extra dict costs a little, per job
        logger.debug("job %d (%s) completed", job.id, job.name, extra=_extra(job, "complete"))


def count_failure(stats: WorkerStats, job: JobRecord, row: tuple[Any, ...] | None) -> None:
    """Count a failed attempt in ``stats`` (``row``: its outcome, status first): failed for
    good, or to be retried. pgqueue's own jobs are not counted."""
    if job.name not in BUILTIN_NAMES:
        stats.add("failed" if row is not None and row[0] == "failed" else "retried")


def log_failure(
    stats: WorkerStats, job: JobRecord, error: str, row: tuple[Any, ...] | None
) -> None:
    """Count and log a failed attempt; ``row`` is pgqueue.fail's answer."""
    count_failure(stats, job, row)
    if row is None:
        logger.warning("job %d (%s) failed but is no longer pending", job.id, job.name)
    elif row[0] == "failed":
        logger.error(
            "job %d (%s) failed for good after %d attempt(s): %s",
            job.id,
            job.name,
            row[2],
            error.splitlines()[0],
            extra=_extra(job, "fail"),
        )
    else:
        logger.warning(
            "job %d (%s) failed (attempt %d), retrying at %s: %s",
            job.id,
            job.name,
            row[2],
            row[1].isoformat(),
            error.splitlines()[0],
            extra=_extra(job, "retry"),
        )


def _describe(exc: BaseException) -> str:
    """The error text kept on the job: 'Type: message', then the traceback."""
    try:
        head = f"{type(exc).__qualname__}: {exc}"
    except Exception:
        head = f"{type(exc).__qualname__}: <str() failed>"
    trace = "".join(traceback.format_exception(exc))
    return _storable(f"{head}\n\n{trace}")


def _storable(text: str) -> str:
    """Error text Postgres can store: at most 16,000 characters, NUL and lone surrogates
    escaped (or the failure could not be recorded and the job would be retried at once, forever)."""
    text = text[:_MAX_ERROR_LENGTH]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _extra(job: JobRecord, action: str) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue, "job_name": job.name, "action": action}
