"""A worker's supervisor: start records, the timeout watchdog and lease heartbeats, on connections of its own.

- **Start records.** Before a slot runs the handlers of a claim, it records
  their starts (``_queries.START_JOBS``) on the supervisor's side connection,
  outside the claim's transaction: if a handler kills the process, the start
  survives and the next dequeue counts the crashed attempt. The statement is
  sent, not waited for: the side connection is in libpq pipeline mode, each
  statement followed by a sync (its own transaction), replies read later.
  Once sent, the bytes are the kernel's, and Postgres runs and commits a
  statement it has received even if the client is gone by then, but only
  the first one it has not answered yet: answering it to a dead client
  fails, and the backend exits without reading the statements after it.
  So one statement at most is in flight: a new one waits for the replies of
  those before it (there already, as a rule). One side connection per
  worker, shared by its slots; the starts of slots that claim while it is
  busy gather and go in one statement (fewer transactions per job under load).
- **Quarantine.** After a crash, dequeue cannot blame a job that ran
  alongside others of its process (see sql/functions.sql): such jobs run
  again alone. A job that has crashed before (``crashes > 0``, claimed
  alone) runs in quarantine: its slot waits until the process runs no other
  job in a transaction, and no other claim of the process starts until it
  is done. The claims and the quarantine are per process, across workers.
- **Watchdog.** A slot arms a :class:`Watch` for each job with a timeout. When
  the time is up, the watchdog marks the start as timed out, ends the job's
  transaction by terminating its backend (``pg_terminate_backend``, waiting
  for it), and settles the job: the attempt fails with a "timed out after
  N s" error. Python cannot stop the handler's thread: if it has not come
  back shortly after, its slot is declared orphaned and the worker starts a
  new slot in its place.
- **Heartbeats.** In lease mode, the leases of the jobs running are extended
  every third of the lease, in one statement.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import select
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import pq

from . import _queries as q
from ._wire import send_statement
from .builtins import BUILTIN_NAMES, next_run
from .errors import ConnectError
from .records import JobRecord

__all__ = ["Supervisor", "Watch", "new_token"]

logger = logging.getLogger(__name__)

#: How long the watchdog waits for Postgres to end a backend it terminates (ms).
TERMINATE_WAIT_MS: Final = 5000
#: How long a timed-out handler has to come back before its slot is replaced (seconds).
ORPHAN_GRACE: Final = 1.0
#: The longest the side connection may take to answer (seconds).
SIDE_REPLY_TIMEOUT: Final = 30.0
#: The longest the supervisor sleeps when it has nothing to do (seconds).
_IDLE_TICK: Final = 1.0


#: The side connection's statements sent with every claim, prepared once per connection
#: (unless the worker runs with prepare=False, behind pgbouncer): the name for each.
_PREPARED: Final = {
    q.START_SETTINGS: b"pgqueue_start_settings",
    q.START_JOBS: b"pgqueue_start_jobs",
}


# Claims' tokens: a generator of pgqueue's own (no caller's random.seed() reaches it), seeded
# from the OS and again in each forked child; secrets.randbits cost a system call per claim.
_tokens = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tokens.seed)


def new_token() -> int:
    """A claim's identity in pgqueue.job_starts: a random positive bigint."""
    return _tokens.getrandbits(63)


@dataclass(eq=False)
class Starts:
    """The start records of one claim (its jobs, but pgqueue's own), to send (see
    :func:`to_record`)."""

    jobs: Sequence[JobRecord]
    token: int
    #: Sent (or failed to be: then ``error``), by this claim's slot or another's.
    sent: bool = False
    error: BaseException | None = None


class StartsQueue:
    """Claims' start records waiting for a side connection: while one sender waits for it,
    the others' starts gather, and the next sender sends them all in one statement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[Starts] = []

    def __len__(self) -> int:
        return len(self._queued)

    def put(self, starts: Starts) -> None:
        with self._lock:
            self._queued.append(starts)

    def batch_for(self, starts: Starts) -> list[Starts]:
        """What the sender of ``starts`` sends, once it has the side connection: every start
        queued, ``starts`` among them; none when another sender has sent ``starts`` already
        (OperationalError when that failed). Send them inside :class:`Sending`."""
        if starts.sent:
            if starts.error is not None:
                raise psycopg.OperationalError(
                    f"could not record job starts: {first_line(starts.error)}"
                ) from starts.error
            return []
        with self._lock:
            batch, self._queued = self._queued, []
        return batch


class Sending:
    """Mark ``batch`` sent once the block is over, with the error it raised, if any. (A class:
    contextlib's generator-based kind costs three more Python calls, once per claim.)"""

    def __init__(self, batch: Sequence[Starts]) -> None:
        self._batch = batch

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        for starts in self._batch:
            if exc is not None:
                starts.error = exc
            starts.sent = True


def to_record(jobs: Sequence[JobRecord], token: int) -> Starts | None:
    """The start records of a claim of ``jobs``; None when there is none to send:
    pgqueue.recurring resets its attempts, its own jobs never crash anyway."""
    marked = [job for job in jobs if job.name not in BUILTIN_NAMES]
    return Starts(marked, token) if marked else None


@dataclass
class _Claim:
    ids: list[int]
    leased: bool


class _Process:
    """The claims running in this process (every worker of it) and its quarantine."""

    def __init__(self) -> None:
        #: Held around every change; ``cond`` (on it) waits for the quarantine. Taken as a lock,
        #: not through the condition, whose ``with`` runs Python code, twice per claim.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.claims: dict[int, _Claim] = {}
        self.exclusive: int | None = None
        #: Tells this process's starts from another's: pids are reused.
        self.id = secrets.randbits(63)


_process = _Process()


def _after_fork() -> None:
    global _process  # noqa: PLW0603 (a forked child starts afresh)
    _process = _Process()


os.register_at_fork(after_in_child=_after_fork)


class Watch:
    """One handler running against a deadline (see :meth:`Supervisor.arm`)."""

    def __init__(
        self,
        owner: object,
        job: JobRecord,
        *,
        ids: Sequence[int],
        token: int,
        pid: int,
        timeout: float,
        leased: bool,
    ) -> None:
        self.owner = owner
        self.job = job
        self.ids = list(ids)
        self.token = token
        self.pid = pid
        self.timeout = timeout
        self.leased = leased
        self.deadline = time.monotonic() + timeout
        self.lock = threading.Lock()
        self.fired = False
        self.disarmed = False
        #: Set once the watchdog has ended the attempt (after firing).
        self.settled = threading.Event()
        #: The attempt's outcome once settled (status, scheduled_at, attempts), if known.
        self.outcome: tuple[Any, ...] | None = None
        #: Counted in the worker's stats and metrics (see ClaimRunner.count_timeout).
        self.counted = False
        #: Set when the handler's slot came back (disarm).
        self.returned = threading.Event()


class Supervisor:
    """The side connections and the supervising thread of one worker.

    ``connect`` opens an autocommit connection; ``worker_id`` names the
    worker process in start records; ``on_orphan(owner, watch)`` is called
    when a timed-out handler has not come back; ``lease`` (seconds) is the
    lease that heartbeats extend.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        worker_id: str,
        on_orphan: Callable[[object, Watch], None],
        lease: float | None = None,
        prepare: bool = True,
    ) -> None:
        self._connect = connect
        self.worker_id = worker_id
        self._on_orphan = on_orphan
        self.lease = lease
        # The side connection, and what it owes and has prepared.
        self._side_lock = threading.Lock()
        self._side: psycopg.Connection[Any] | None = None
        self._wire = SideWire(prepare=prepare)
        # Claims whose start records wait for the side connection (see _record_starts).
        self._queued = StartsQueue()
        # Attempts finished since the last start record sent: (job id, claim token). Not under
        # the side lock, which a slot holds while it waits for the side connection's replies.
        self._queue_lock = threading.Lock()
        self._done: list[tuple[int, int]] = []
        # The watches, the leases and the thread.
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._leases: dict[int, int] = {}  # job id -> attempt
        self._beat_conn: psycopg.Connection[Any] | None = None
        self._next_beat = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Start the supervising thread."""
        with self._cond:
            self._stopping = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pgqueue-supervisor", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the side connections (after the slots have stopped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._side_lock:
            with contextlib.suppress(psycopg.Error, ConnectError, OSError):
                if self.has_finished():
                    self._send(q.START_JOBS, self.start_params([]))
                if self._side is not None and not self._side.closed:
                    self._drain(self._side)
            self._close_side()
        _close(self._beat_conn)
        self._beat_conn = None

    # -- claims and their start records -------------------------------------

    def start_claim(self, jobs: Sequence[JobRecord], token: int, *, leased: bool = False) -> None:
        """Register a claim as running in this process and record its starts.

        Waits while a claim of the process is in quarantine; a claim of one
        job that crashed before waits for the quarantine itself (see the
        module docstring). Raises OperationalError when the starts cannot be
        sent; the claim is then not registered. Pair with :meth:`end_claim`.
        """
        process = _process
        with process.lock:
            while process.exclusive is not None:
                process.cond.wait()
            if not leased and len(jobs) == 1 and jobs[0].crashes > 0:
                process.exclusive = token
                while any(not claim.leased for claim in process.claims.values()):
                    process.cond.wait()
            process.claims[token] = _Claim([job.id for job in jobs], leased)
        starts = to_record(jobs, token)
        if starts is None:
            return
        try:
            self._record_starts(starts)
        except BaseException:
            self.end_claim(token)
            raise

    def register_now(self, job: JobRecord, token: int) -> bool:
        """Register a claim of ``job`` as :meth:`start_claim` does, if that needs no wait: no
        quarantine in the process, and a job that has not crashed before. False otherwise
        (nothing registered: call start_claim). The caller then records the start itself (the
        asyncio worker, on a connection of its own) and pairs this with :meth:`end_claim`."""
        if job.crashes > 0:
            return False
        process = _process
        with process.lock:
            if process.exclusive is not None:
                return False
            process.claims[token] = _Claim([job.id], leased=False)
        return True

    def _record_starts(self, starts: Starts) -> None:
        """Send ``starts``, along with those of the other slots' claims queued meanwhile: the
        sender waits for the reply of the statement in flight, if any, then sends every start
        queued by then in one statement (the others find theirs sent). Returns once they are
        sent."""
        self._queued.put(starts)
        with self._side_lock:
            if not starts.sent and self._wire.unread and self._side is not None:
                try:
                    self._drain(self._side)
                except (psycopg.OperationalError, OSError):
                    self._close_side()  # _send connects anew
            batch = self._queued.batch_for(starts)
            if batch:
                with Sending(batch):
                    self._send(q.START_JOBS, self.start_params(batch))

    def has_finished(self) -> bool:
        """Whether finished attempts wait for their start records to go (with the next send)."""
        with self._queue_lock:
            return bool(self._done)

    def start_params(self, batch: Sequence[Starts]) -> list[bytes | None]:
        """q.START_JOBS's parameters for ``batch``; takes the finished attempts along (they are
        the caller's to send now: once per call)."""
        now = datetime.now(UTC)
        with self._queue_lock:
            done, self._done = self._done, []
        rows = [(job, starts) for starts in batch for job in starts.jobs]
        # List comprehensions, not generators: Python runs them inline, without a frame each.
        return [
            _ints([job.id for job, _ in rows]),
            _ints([job.attempts for job, _ in rows]),
            _array([_timestamp(next_run(job, now)) for job, _ in rows]),
            self.worker_id.encode(),
            str(_process.id).encode(),
            _ints([starts.token for _, starts in rows]),
            _ints([job_id for job_id, _ in done]),
            _ints([claim for _, claim in done]),
            _array(["t" if len(starts.jobs) > 1 else "f" for _, starts in rows]),
        ]

    def end_claim(self, token: int, *, finished: Sequence[int] = ()) -> None:
        """The claim's transaction is over (or its lease attempt recorded): it runs no more.
        ``finished``: its jobs whose outcome was recorded (their start records can go)."""
        if finished:
            with self._queue_lock:
                self._done.extend([(job_id, token) for job_id in finished])
        process = _process
        with process.lock:
            process.claims.pop(token, None)
            # Only a quarantine waits on the condition: its claim, for the others to end, and
            # the others, for it to end.
            if process.exclusive is not None:
                if process.exclusive == token:
                    process.exclusive = None
                process.cond.notify_all()

    def forget_starts(self, ids: Sequence[int], token: int) -> None:
        """Forget the starts of a claim given up on purpose (best effort: logged on failure)."""
        if not ids:
            return
        try:
            self._call(q.FORGET_STARTS, [_ints(ids), str(token).encode()])
        except (psycopg.Error, ConnectError, OSError) as exc:
            logger.warning(
                "could not forget the start records of job(s) %s (%s): they will count as a crash",
                ", ".join(map(str, ids)),
                first_line(exc),
            )

    def _call(self, query: bytes, params: Sequence[bytes | None]) -> None:
        """Send a statement on the side connection and wait for it (and those before it)."""
        with self._side_lock:
            self._send(query, params)
            assert self._side is not None
            self._drain(self._side)

    def _send(self, query: bytes, params: Sequence[bytes | None]) -> None:
        """Send a statement and a sync on the side connection (side lock held), once more on
        a new connection if the old one is gone (see SideWire.send)."""
        for retry in (False, True):
            try:
                if self._side is None or self._side.closed or self._side.broken:
                    self._close_side()
                    self._side = self._connect()
                    self._side.pgconn.enter_pipeline_mode()
                pgconn = self._side.pgconn
                _block(pgconn, self._wire.send(pgconn, query, params))
                return
            except (psycopg.OperationalError, ConnectError, OSError) as exc:
                self._close_side()
                if retry:
                    raise psycopg.OperationalError(
                        f"could not record job starts: {first_line(exc)}"
                    ) from exc

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        """Wait for the replies of every statement sent (side lock held)."""
        _block(conn.pgconn, self._wire.drain(conn.pgconn))

    def _close_side(self) -> None:
        _close(self._side)
        self._side = None
        self._wire.reset()

    # -- timeouts -----------------------------------------------------------

    def arm(
        self,
        owner: object,
        job: JobRecord,
        *,
        ids: Sequence[int],
        token: int,
        pid: int,
        timeout: float,
        leased: bool = False,
    ) -> Watch:
        """Watch ``job`` (of the claim ``ids``/``token``, run by backend ``pid``) for ``timeout`` seconds."""
        watch = Watch(owner, job, ids=ids, token=token, pid=pid, timeout=timeout, leased=leased)
        with self._cond:
            self._watches.add(watch)
            self._cond.notify_all()
        return watch

    def disarm(self, watch: Watch) -> bool:
        """The handler came back: stop watching. True if the watchdog had already fired;
        then this returns once it has ended the attempt, and the slot must drop its claim."""
        with watch.lock:
            fired = watch.fired
            watch.disarmed = True
        watch.returned.set()
        with self._cond:
            self._watches.discard(watch)
        if fired:
            watch.settled.wait()
        return fired

    def _fire(self, watch: Watch) -> None:
        job = watch.job
        error = (
            f"JobTimeout: timed out after {watch.timeout:g} s"
            f" (attempt {job.attempts} of {job.max_attempts})"
        )
        extra = {"job_id": job.id, "queue": job.queue, "job_name": job.name, "action": "timeout"}
        row = None
        try:
            # Before the transaction ends: whoever settles the job then knows it timed out.
            self._call(
                q.TIME_OUT_START,
                [
                    str(job.id).encode(),
                    repr(watch.timeout).encode(),
                    _ints(watch.ids),
                    str(watch.token).encode(),
                ],
            )
            with self._connect() as conn:
                conn.execute(q.TERMINATE_BACKEND, (watch.pid, TERMINATE_WAIT_MS))
                if watch.leased:
                    now = datetime.now(UTC)
                    row = conn.execute(
                        q.FAIL_LEASED, (job.id, job.attempts, error, next_run(job, now))
                    ).fetchone()
                else:
                    row = conn.execute(q.SETTLE_JOB, (job.id,)).fetchone()
        except Exception as exc:
            logger.error(
                "job %d (%s) timed out after %g s, but ending its attempt failed: %s",
                job.id,
                job.name,
                watch.timeout,
                first_line(exc),
                extra=extra,
            )
        else:
            logger.warning(
                "job %d (%s) timed out after %g s: its %s was ended%s",
                job.id,
                job.name,
                watch.timeout,
                "connection" if watch.leased else "transaction",
                "" if row is None else f"; it is {row[0]} now (attempt {row[2]})",
                extra=extra,
            )
        finally:
            watch.outcome = row
            self.end_claim(watch.token)
            watch.settled.set()
        if not watch.returned.wait(ORPHAN_GRACE):
            self._on_orphan(watch.owner, watch)

    # -- leases -------------------------------------------------------------

    def hold(self, job: JobRecord) -> None:
        """Keep extending ``job``'s lease until :meth:`release`."""
        with self._cond:
            self._leases[job.id] = job.attempts
            if len(self._leases) == 1:
                self._next_beat = time.monotonic() + self._beat_every()
            self._cond.notify_all()

    def release(self, job: JobRecord) -> None:
        """Stop extending ``job``'s lease."""
        with self._cond:
            self._leases.pop(job.id, None)

    def _beat_every(self) -> float:
        return (self.lease or 30.0) / 3

    def _beat(self, leases: dict[int, int]) -> None:
        ids = list(leases)
        try:
            if self._beat_conn is None or self._beat_conn.closed:
                self._beat_conn = self._connect()
            kept = {
                row[0]
                for row in self._beat_conn.execute(
                    q.EXTEND_LEASES, (ids, [leases[i] for i in ids], self.lease)
                )
            }
        except (psycopg.Error, ConnectError) as exc:
            _close(self._beat_conn)
            self._beat_conn = None
            logger.warning("could not extend the leases of job(s) %s: %s", ids, first_line(exc))
            return
        for job_id in set(ids) - kept:
            with self._cond:
                lost = self._leases.pop(job_id, None) is not None
            if lost:
                logger.warning(
                    "job %d lost its lease (it expired and the job was rescued, or it timed out):"
                    " its handler runs on, but its outcome will not be recorded",
                    job_id,
                    extra={"job_id": job_id, "action": "lease-lost"},
                )

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [w for w in self._watches if w.deadline <= now]
                for watch in due:
                    self._watches.discard(watch)
                beat = dict(self._leases) if self._leases and self._next_beat <= now else None
                if beat is not None:
                    self._next_beat = now + self._beat_every()
                if not due and beat is None:
                    wake = [w.deadline for w in self._watches]
                    if self._leases:
                        wake.append(self._next_beat)
                    self._cond.wait(min([*wake, now + _IDLE_TICK]) - now)
                    continue
            for watch in due:
                with watch.lock:
                    if watch.disarmed:
                        continue
                    watch.fired = True
                threading.Thread(
                    target=self._fire, args=(watch,), name="pgqueue-timeout", daemon=True
                ).start()
            if beat:
                self._beat(beat)


class SideWire:
    """What a side connection owes (statements sent, their syncs not read yet) and has
    prepared, with its sends and reads as steps that yield what they wait for (True: the
    socket writable; False: readable): the blocking Supervisor and the asyncio worker's
    AsyncStarts drive them, each on its own connection."""

    def __init__(self, *, prepare: bool) -> None:
        self.unread = 0
        # By the name they are prepared as; None: nothing is prepared (behind pgbouncer).
        self._prepared: set[bytes] | None = set() if prepare else None

    def reset(self) -> None:
        """The connection is gone: nothing owed, nothing prepared."""
        self.unread = 0
        if self._prepared is not None:
            self._prepared.clear()

    def drain(self, pgconn: pq.abc.PGconn) -> Generator[bool, None, None]:
        """Read the replies of every statement sent."""
        while self.unread:
            self.unread = read_side(pgconn, self.unread)
            if self.unread:
                yield False
                pgconn.consume_input()

    def send(
        self, pgconn: pq.abc.PGconn, query: bytes, params: Sequence[bytes | None]
    ) -> Generator[bool, None, None]:
        """Send ``query`` and a sync, after the replies of the statements sent before: if the
        process dies, Postgres runs a statement it has received only when it owes no earlier
        reply (see the module docstring)."""
        check_side(pgconn)
        yield from self.drain(pgconn)
        send_side(pgconn, query, params, self._prepared)
        while pgconn.flush():
            yield True
        self.unread += 1


def _block(pgconn: pq.abc.PGconn, steps: Generator[bool, None, None]) -> None:
    """Run a SideWire step through, blocking on the socket (see _wait)."""
    for write in steps:
        _wait(pgconn, write=write)


def send_side(
    pgconn: pq.abc.PGconn,
    query: bytes,
    params: Sequence[bytes | None],
    prepared: set[bytes] | None,
) -> None:
    """Queue ``query`` and a sync on a side connection in pipeline mode (its own transaction);
    after START_SETTINGS when it records starts. The statements sent with every claim are
    prepared once per connection, unless ``prepared`` (the names prepared there) is None."""
    settings = [(q.START_SETTINGS, None)] if query == q.START_JOBS else []
    for sql, values in [*settings, (query, params)]:
        name = _PREPARED.get(sql) if prepared is not None else None
        send_statement(pgconn, sql, values, name, set() if prepared is None else prepared)
    pgconn.pipeline_sync()  # no reply is flushed before it


def check_side(pgconn: pq.abc.PGconn) -> None:
    """Read what has arrived on a side connection; raise OperationalError when the server has
    closed it. A backend the server ends (pg_terminate_backend, an idle timeout) sends a FATAL
    error, which libpq takes for a notice when no statement is running, then closes the socket:
    a statement written after that would seem sent. (A backend ended after this check may still
    lose the next one.)"""
    pgconn.consume_input()
    while select.select([pgconn.socket], [], [], 0)[0]:
        pgconn.consume_input()  # at the end of the stream: OperationalError


def read_side(pgconn: pq.abc.PGconn, unread: int) -> int:
    """Process the replies that have arrived on a side connection, of the ``unread`` statements
    sent (syncs not read yet); log the statements that failed. How many are still unread."""
    while unread and not pgconn.is_busy():
        result = pgconn.get_result()
        if result is None:
            continue  # the end of one statement's results
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            unread -= 1
        elif result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode(errors="replace").strip()
            logger.warning("recording job starts failed: %s", message)
    return unread


def _ints(values: Iterable[int]) -> bytes:
    """A Postgres array literal of integers in text format, as a parameter."""
    return ("{" + ",".join(map(str, values)) + "}").encode()


def _array(values: Iterable[str | None]) -> bytes:
    """A Postgres array literal of NULL-able text in text format, as a parameter."""
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        else:
            items.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ("{" + ",".join(items) + "}").encode()


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _wait(pgconn: pq.abc.PGconn, *, write: bool) -> None:
    """Wait until the side connection's socket is ready, or give up after SIDE_REPLY_TIMEOUT."""
    sock = pgconn.socket
    ready = select.select([] if write else [sock], [sock] if write else [], [], SIDE_REPLY_TIMEOUT)
    if not any(ready):
        raise psycopg.OperationalError(
            f"the side connection did not answer in {SIDE_REPLY_TIMEOUT:g} s"
        )


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (its type's name if it has none), for a log line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
