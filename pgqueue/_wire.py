"""A claim's transaction on a slot's connection, blocking or async, through libpq (psycopg.pq).

psycopg's pipeline mode writes each statement to the socket as it is queued: a
system call and a wake-up of the server process per statement. The hot path of a
claim is two round trips of several statements each (BEGIN, claim, SAVEPOINT;
complete, COMMIT); here each round trip is one write and one sync. On the
2-core machine of bench/ this took a minimal claim-and-complete loop from 365 to
98 µs of Python CPU per job, and from 2.1k to 4.2k jobs/s at 4 threads. While a
slot keeps finding jobs, the next claim goes in the commit's round trip (see
:meth:`ClaimTransaction.commit`): one round trip per job.

Each call is written once, as a generator that sends through libpq and yields what it waits
for (the socket writable, or replies): :class:`ClaimTransaction` blocks on the socket,
:class:`AsyncClaimTransaction` (the asyncio worker's) awaits it on the event loop.

The handler still gets the psycopg connection, inside the claim's transaction:
between :meth:`ClaimTransaction.begin` and its end the transaction counts as a
psycopg transaction block (``conn.transaction()`` nests a savepoint,
``conn.commit()`` raises), as if opened by ``conn.transaction()``.

Prepared statements: psycopg drops every prepared statement of its connection
(``DEALLOCATE ALL``) after a ROLLBACK, DROP or ALTER that a handler sends through
it once psycopg has prepared statements of its own. So statements are prepared
only in :meth:`ClaimTransaction.begin`, whose round trip is retried when one is
missing; the later round trips of a transaction use the prepared ones. When one
of those has vanished meanwhile, the transaction is lost (:class:`StatementDropped`:
its jobs run again) and the connection sends that statement unnamed from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import json.scanner
import select
import time
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar

import psycopg
from psycopg import errors, pq
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader, PyFormat, Transformer
from psycopg.types.json import JsonbLoader

__all__ = [
    "AsyncClaimTransaction",
    "ClaimTransaction",
    "Statement",
    "StatementDropped",
    "Traffic",
    "send_statement",
    "statement_name",
    "wait_socket",
]


@dataclass(eq=False)
class _Names:
    """What is prepared on one connection (a pool's goes from slot to slot)."""

    prepared: set[bytes] = field(default_factory=set)
    #: Vanished inside a transaction (a handler's doing): not prepared there again.
    dropped: set[bytes] = field(default_factory=set)


T = TypeVar("T")

_names: weakref.WeakKeyDictionary[psycopg.BaseConnection[Any], _Names] = weakref.WeakKeyDictionary()

_DUPLICATE = b"42P05"  # duplicate_prepared_statement
_ROLLBACK = b"ROLLBACK"


class Statement(NamedTuple):
    """One statement of a round trip: ``$n`` placeholders, Python values (dumped as text by
    psycopg's adapters: cast each parameter in the SQL), and the name it is prepared as once
    per connection (None: not prepared; see the module docstring for when).
    """

    sql: bytes
    params: Sequence[Any] = ()
    prepared_as: bytes | None = None


class StatementDropped(Exception):
    """A statement prepared on the connection vanished during the transaction (its handler
    made psycopg drop it, or dropped it): the transaction is aborted, still open."""


#: What a round trip waits for, yielded by the steps of :class:`_Claims`: True for the
#: socket to take more bytes, False for the server's replies.
_Steps: TypeAlias = Generator[bool, None, T]


#: Seconds between two commits that leave the server process idle outside a transaction, at
#: least, while a slot keeps finding jobs (the claim then goes in a round trip of its own,
#: not sent ahead with the commit). A Postgres backend hands its table statistics (the rows
#: each job's commit made dead) to the shared statistics only when it waits for a command
#: outside a transaction, at most once a second; a slot that always sent the next BEGIN
#: with its COMMIT never did, autovacuum never saw the jobs table change, and a long drain
#: slowed down as dead rows piled up (PG 15, 200,000 jobs at 4 threads: from 2.1k to 1.25k
#: jobs/s within two minutes; flat at 2.3k/s with a VACUUM every 10 s).
STATS_EVERY: Final = 1.0


class _Claims:
    """The claim transactions of one connection (one at a time), without I/O: each call is a
    generator that sends through libpq, yields what it waits for and returns the results;
    :class:`ClaimTransaction` drives them blocking, :class:`AsyncClaimTransaction` on an
    event loop.

    ``prepare=False`` (behind pgbouncer's transaction pooling) sends every
    statement unnamed.
    """

    def __init__(self, conn: psycopg.BaseConnection[Any], *, prepare: bool) -> None:
        self.conn = conn
        self._prepare = prepare
        names = _names.setdefault(conn, _Names())
        self._prepared = names.prepared
        self._dropped = names.dropped
        self._adapt = Transformer(_adapters(conn))
        #: A claim's transaction is open (begun, not yet ended).
        self.open = False
        #: The claim sent ahead with the last commit (see :meth:`ClaimTransaction.commit`): its
        #: statements and their results; its transaction is open on the server.
        self._ahead: tuple[list[Statement], list[pq.abc.PGresult]] | None = None
        #: When a commit last left the server process idle outside a transaction (see
        #: STATS_EVERY).
        self._idle_at = time.monotonic()

    def _begin(
        self, statements: Sequence[Statement], later: Sequence[Statement]
    ) -> _Steps[list[pq.abc.PGresult]]:
        assert not self.open
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead[0] == list(statements) and self._status() == pq.TransactionStatus.INTRANS:
                self._opened()
                return ahead[1]
            yield from self._end_on_server()  # another claim's: let it go
        failed = 0
        while True:
            try:
                results = yield from self._round_trip([BEGIN, *statements], later=[*later, COMMIT])
            except (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement) as exc:
                # One missing: likely all gone (DEALLOCATE ALL), the ones not sent here too;
                # one there after all: _replies has noted it. Each failed try puts at least
                # one name right.
                if isinstance(exc, errors.InvalidSqlStatementName):
                    self._prepared.clear()
                with contextlib.suppress(psycopg.Error):
                    yield from self._end_on_server()
                failed += 1
                if failed > sum(1 for s in [BEGIN, *statements, *later, COMMIT] if s.prepared_as):
                    raise
                continue
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    yield from self._end_on_server()
                raise
            self._opened()
            return results[1:]

    def _run(self, statements: Sequence[Statement]) -> _Steps[list[pq.abc.PGresult]]:
        assert self.open
        try:
            return (yield from self._round_trip(statements))
        except errors.InvalidSqlStatementName as exc:
            raise self._vanished(statements, exc) from exc

    def _commit(
        self, statements: Sequence[Statement], ahead: Sequence[Statement]
    ) -> _Steps[list[pq.abc.PGresult]]:
        assert self.open
        end = [*statements, COMMIT]
        # After the COMMIT, in the same pipeline segment: skipped if anything before fails.
        then = [BEGIN, *ahead] if ahead else []
        now = time.monotonic()
        if then and now - self._idle_at >= STATS_EVERY:
            then = []  # the next begin sends the claim in a round trip of its own
        if not then:
            self._idle_at = now
        try:
            results = yield from self._round_trip([*end, *then], errors_from=len(end))
        except errors.InvalidSqlStatementName as exc:
            raise self._vanished(end, exc) from exc
        except BaseException:
            if self._status() == pq.TransactionStatus.IDLE:
                self.release()
            raise
        self.release()
        if then:
            if any(r.status == pq.ExecStatus.FATAL_ERROR for r in results[len(end) :]):
                # Committed; the claim ahead failed (a handler dropped its statement, say).
                with contextlib.suppress(psycopg.Error):
                    yield from self._end_on_server()
            else:
                self._ahead = (list(ahead), results[len(end) + 1 :])
        return results[: len(statements)]

    def _vanished(
        self, statements: Sequence[Statement], exc: errors.InvalidSqlStatementName
    ) -> StatementDropped:
        """A statement of this transaction vanished (see the module docstring): these are not
        prepared here again (a handler that has them dropped once may do so every time)."""
        self._dropped.update(s.prepared_as for s in statements if s.prepared_as is not None)
        return StatementDropped(str(exc))

    def _rollback(self) -> _Steps[None]:
        try:
            yield from self._end_on_server()
        finally:
            self.release()

    def _opened(self) -> None:
        self.open = True
        self.conn._num_transactions += 1  # a transaction block: see the module docstring

    def release(self) -> None:
        """The transaction is over (committed, rolled back, or ended by a handler's raw
        COMMIT or ROLLBACK): no longer a transaction block."""
        if self.open:
            self.open = False
            self.conn._num_transactions -= 1

    def rows(self, result: pq.abc.PGresult) -> list[tuple[Any, ...]]:
        """A result's rows, loaded by psycopg's adapters."""
        self._adapt.set_pgresult(result)
        return self._adapt.load_rows(0, result.ntuples, tuple)

    # -- the wire ---------------------------------------------------------------

    def _status(self) -> int:
        return self.conn.pgconn.transaction_status  # a pq.TransactionStatus value

    def _end_on_server(self) -> _Steps[None]:
        if not self.conn.closed and self._status() in (
            pq.TransactionStatus.INTRANS,
            pq.TransactionStatus.INERROR,
        ):
            yield from self._round_trip([Statement(_ROLLBACK)])

    def _named(self, statement: Statement) -> bytes | None:
        """The name ``statement`` may be prepared as on this connection (None: unnamed)."""
        name = statement.prepared_as
        return name if self._prepare and name not in self._dropped else None

    def _round_trip(
        self,
        statements: Sequence[Statement],
        *,
        later: Sequence[Statement] | None = None,
        errors_from: int | None = None,
    ) -> _Steps[list[pq.abc.PGresult]]:
        """Send ``statements`` and one sync, wait for every reply; each statement's result.
        Raises the first error, as psycopg would, once all replies are in; unless it is the
        result of statement ``errors_from`` or a later one: then it is returned as any other.

        ``later`` (None except in begin's round trip, the only one that prepares): statements
        to prepare (not run) after these, if they are not yet. Elsewhere a statement goes by
        its name only if it is prepared already, else unnamed.
        """
        pgconn = self.conn.pgconn
        pgconn.enter_pipeline_mode()
        try:
            # Per command sent, in order: (its statement's name or None, whether a Parse).
            commands: list[tuple[bytes | None, bool]] = []
            for statement in statements:
                name = self._named(statement)
                if later is None and name not in self._prepared:
                    name = None
                values = self._dump(statement.params) if statement.params else None
                if send_statement(pgconn, statement.sql, values, name, self._prepared):
                    commands.append((name, True))
                commands.append((name, False))
            for statement in later or ():
                name = self._named(statement)
                if name is not None and send_prepare(pgconn, statement.sql, name, self._prepared):
                    commands.append((name, True))
            pgconn.pipeline_sync()
            while pgconn.flush():
                yield True
            return (yield from self._replies(pgconn, commands, len(statements), errors_from))
        finally:
            if pgconn.status == pq.ConnStatus.OK and pgconn.pipeline_status:
                try:
                    pgconn.exit_pipeline_mode()
                except psycopg.Error:
                    # Replies left unread (interrupted): nobody can use the connection now.
                    pgconn.finish()

    def _dump(self, params: Sequence[Any]) -> Sequence[Buffer | None]:
        return self._adapt.dump_sequence(params, [PyFormat.TEXT] * len(params))

    def _replies(
        self,
        pgconn: pq.abc.PGconn,
        commands: Sequence[tuple[bytes | None, bool]],
        count: int,
        errors_from: int | None,
    ) -> _Steps[list[pq.abc.PGresult]]:
        """The ``count`` statements' results, up to the sync (see :meth:`_round_trip` for
        ``errors_from``). A Parse that failed (or was skipped after an error) prepared
        nothing, unless the name was there already."""
        results: list[pq.abc.PGresult] = []
        error: pq.abc.PGresult | None = None
        command = 0
        while True:
            while pgconn.is_busy():
                yield False
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                command += 1  # the end of one command's results
                continue
            status = result.status
            if status == pq.ExecStatus.PIPELINE_SYNC:
                break
            if status == pq.ExecStatus.FATAL_ERROR and (
                errors_from is None or len(results) < errors_from
            ):
                error = error or result
            name, parse = commands[command] if command < len(commands) else (None, False)
            if not parse:
                results.append(result)
            elif status != pq.ExecStatus.COMMAND_OK and (
                result.error_field(pq.DiagnosticField.SQLSTATE) != _DUPLICATE
            ):
                self._prepared.discard(name)
        if error is not None:
            raise errors.error_from_result(error, encoding=self.conn.info.encoding)
        if len(results) != count:
            raise psycopg.InterfaceError(f"expected {count} results, got {len(results)}")
        return results


class ClaimTransaction(_Claims):
    """The claim transactions of one blocking connection (one at a time)."""

    conn: psycopg.Connection[Any]

    def __init__(self, conn: psycopg.Connection[Any], *, prepare: bool) -> None:
        super().__init__(conn, prepare=prepare)

    def begin(
        self, statements: Sequence[Statement], *, later: Sequence[Statement] = ()
    ) -> list[pq.abc.PGresult]:
        """BEGIN, then ``statements``, in one round trip; their results. ``later``: statements
        of the transaction's later round trips, prepared here if they are not yet. On an error
        the transaction is rolled back and the error raised (as psycopg would raise it); tried
        again first when a prepared statement was missing, or there after all."""
        return _drive(self.conn.pgconn, self._begin(statements, later))

    def run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """``statements`` in one round trip, inside the open transaction; their results."""
        return _drive(self.conn.pgconn, self._run(statements))

    def commit(
        self, statements: Sequence[Statement], *, ahead: Sequence[Statement] = ()
    ) -> list[pq.abc.PGresult]:
        """``statements``, then COMMIT, in one round trip; their results.

        When a statement fails the error is raised and the transaction stays open
        (aborted: end it with :meth:`rollback`); :class:`StatementDropped` when it was a
        prepared one that vanished. When the COMMIT itself fails, the server has rolled
        everything back: the transaction is over and its error raised.

        ``ahead``: the next claim's statements (those of its :meth:`begin`), sent after the
        COMMIT in the same round trip, which the server runs only if all before went
        through. Their transaction stays open on the server, and the next :meth:`begin`
        with the same statements takes their results instead of sending them (a
        :meth:`begin` with others rolls it back first). Nothing is lost if that never
        comes: the connection's next user finds a transaction to roll back, which releases
        the jobs, claimed but not started (no start recorded, no attempt counted).
        """
        return _drive(self.conn.pgconn, self._commit(statements, ahead))

    def rollback(self) -> None:
        """Roll the transaction back (if the server still has it open) and end it."""
        _drive(self.conn.pgconn, self._rollback())


class AsyncClaimTransaction(_Claims):
    """:class:`ClaimTransaction` on an AsyncConnection: the same calls, awaited."""

    conn: psycopg.AsyncConnection[Any]

    def __init__(self, conn: psycopg.AsyncConnection[Any], *, prepare: bool) -> None:
        super().__init__(conn, prepare=prepare)

    async def begin(
        self, statements: Sequence[Statement], *, later: Sequence[Statement] = ()
    ) -> list[pq.abc.PGresult]:
        """See :meth:`ClaimTransaction.begin`."""
        return await _drive_async(self.conn.pgconn, self._begin(statements, later))

    async def run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """See :meth:`ClaimTransaction.run`."""
        return await _drive_async(self.conn.pgconn, self._run(statements))

    async def commit(
        self, statements: Sequence[Statement], *, ahead: Sequence[Statement] = ()
    ) -> list[pq.abc.PGresult]:
        """See :meth:`ClaimTransaction.commit`."""
        return await _drive_async(self.conn.pgconn, self._commit(statements, ahead))

    async def rollback(self) -> None:
        """See :meth:`ClaimTransaction.rollback`."""
        await _drive_async(self.conn.pgconn, self._rollback())


class Traffic:
    """Whether ``conn`` talked to the server through psycopg inside the ``with`` block.

    Every exchange of a psycopg connection (a cursor's execute, fetch or copy,
    ``transaction()``, ``pipeline()``, ``commit()``, ``notifies()``) runs through
    ``Connection.wait``, which the block wraps on the instance; what goes through
    ``conn.pgconn`` (libpq itself) is not seen. ``tests/integration/test_traffic.py``
    checks each way in, against the installed psycopg.
    """

    __slots__ = ("_before", "_conn", "used")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._before: Any = None
        self.used = False

    def __enter__(self) -> Traffic:
        attributes = vars(self._conn)
        self._before = attributes.get("wait")
        real = self._conn.wait

        def wait(*args: Any, **kwargs: Any) -> Any:
            self.used = True
            return real(*args, **kwargs)

        attributes["wait"] = wait
        return self

    def __exit__(self, *exc: object) -> None:
        attributes = vars(self._conn)
        if self._before is None:
            attributes.pop("wait", None)
        else:
            attributes["wait"] = self._before


def send_statement(
    pgconn: pq.abc.PGconn,
    sql: bytes,
    params: Sequence[Buffer | None] | None,
    name: bytes | None,
    prepared: set[bytes],
) -> bool:
    """Queue one statement in pipeline mode: unnamed when ``name`` is None, else prepared as
    ``name`` first if it is not in ``prepared`` (the names prepared on the connection).
    Whether it was prepared (two commands sent: the Parse, then the statement)."""
    if name is None:
        pgconn.send_query_params(sql, params)
        return False
    parse = send_prepare(pgconn, sql, name, prepared)
    pgconn.send_query_prepared(name, params)
    return parse


def send_prepare(pgconn: pq.abc.PGconn, sql: bytes, name: bytes, prepared: set[bytes]) -> bool:
    """Queue the Parse of ``sql`` as ``name`` unless it is in ``prepared``; whether it was."""
    if name in prepared:
        return False
    pgconn.send_prepare(name, sql)
    prepared.add(name)
    return True


def statement_name(prefix: bytes, sql: bytes) -> bytes:
    """A name to prepare ``sql`` as, after its text: connections may be shared (a pool's, by
    workers of other queues), and what is prepared there stays with them."""
    return prefix + hashlib.blake2b(sql, digest_size=8).hexdigest().encode()


# The transaction's own ends, prepared as the claim and its completion are: sent unnamed, each
# was parsed afresh (10-25 µs of server time per job for the four utility statements of a
# claim). A ROLLBACK stays unnamed: it must work when a handler has had the names dropped.
BEGIN: Final = Statement(b"BEGIN", (), statement_name(b"pgqueue_begin_", b"BEGIN"))
COMMIT: Final = Statement(b"COMMIT", (), statement_name(b"pgqueue_commit_", b"COMMIT"))


# JSON of the claimed rows, in one call to the standard library's scanner (json.loads's own work)
# rather than psycopg's loader, json.loads, decode and raw_decode: run cold after each round trip,
# those frames took about 25 µs per job of a worker's Python time on the 2-core bench machine.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


class _JsonbLoader(Loader):
    """jsonb as json.loads reads it (Postgres writes it canonical: one value, no whitespace
    around it)."""

    def load(self, data: Buffer) -> Any:
        return _scan_json(str(data, "utf-8"), 0)[0]


@dataclass(frozen=True)
class _Context:
    """A connection with adapters of its own (psycopg's AdaptContext)."""

    connection: psycopg.BaseConnection[Any]
    adapters: AdaptersMap


def _adapters(conn: psycopg.BaseConnection[Any]) -> psycopg.abc.AdaptContext:
    """What claimed rows are loaded with: the connection's adapters, with :class:`_JsonbLoader`
    for jsonb unless the connection has a JSON loader other than psycopg's json.loads."""
    jsonb = conn.adapters.types["jsonb"].oid
    loader = conn.adapters.get_loader(jsonb, pq.Format.TEXT)
    if loader is not JsonbLoader or getattr(JsonbLoader, "_loads", None) is not json.loads:
        return conn
    adapters = AdaptersMap(conn.adapters)
    adapters.register_loader(jsonb, _JsonbLoader)
    return _Context(conn, adapters)


def _drive(pgconn: pq.abc.PGconn, steps: _Steps[T]) -> T:
    """Run ``steps`` to its end, blocking on the socket while it waits (the GIL released)."""
    try:
        write = next(steps)
        while True:
            sock = pgconn.socket
            try:
                select.select([] if write else [sock], [sock] if write else [], [])
            except BaseException as exc:  # an interrupt: the steps clean up, then raise it
                write = steps.throw(exc)
            else:
                write = next(steps)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _drive_async(pgconn: pq.abc.PGconn, steps: _Steps[T]) -> T:
    """Run ``steps`` to its end, awaiting the socket on the running event loop."""
    try:
        write = next(steps)
        while True:
            try:
                await wait_socket(pgconn, write=write)
            except BaseException as exc:  # cancelled: the steps clean up, then raise it
                write = steps.throw(exc)
            else:
                write = next(steps)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def wait_socket(pgconn: pq.abc.PGconn, *, write: bool) -> None:
    """Wait on the running event loop until ``pgconn``'s socket takes more bytes (``write``)
    or has some to read."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = pgconn.socket
    (loop.add_writer if write else loop.add_reader)(fd, _set_ready, ready)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
