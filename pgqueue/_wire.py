"""A claim's transaction on a slot's connection, begun and ended through libpq directly (psycopg.pq).

psycopg's pipeline mode writes each statement to the socket as it is queued: a
system call and a wake-up of the server process per statement. The hot path of a
claim is two round trips of several statements each (BEGIN, claim, SAVEPOINT;
complete, COMMIT); here each round trip is one write and one sync. On the
2-core machine of bench/ this took a minimal claim-and-complete loop from 365 to
98 µs of Python CPU per job, and from 2.1k to 4.2k jobs/s at 4 threads.

The handler still gets the psycopg connection, inside the claim's transaction:
between :meth:`ClaimTransaction.begin` and its end the transaction counts as a
psycopg transaction block (``conn.transaction()`` nests a savepoint,
``conn.commit()`` raises), as if opened by ``conn.transaction()``.
"""

from __future__ import annotations

import contextlib
import select
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import errors, pq
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat, Transformer

__all__ = ["ClaimTransaction", "Statement", "send_statement"]

# The names prepared on each connection.
_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)

_BEGIN = b"BEGIN"
_COMMIT = b"COMMIT"
_ROLLBACK = b"ROLLBACK"


class Statement(NamedTuple):
    """One statement of a round trip: ``$n`` placeholders, Python values (dumped as text by
    psycopg's adapters: cast each parameter in the SQL), and the name it is prepared as once
    per connection (None: not prepared).

    Only the statements of :meth:`ClaimTransaction.begin` may be prepared: psycopg drops every
    prepared statement of its connection after a ROLLBACK, DROP or ALTER a handler sends
    through it, and a missing one aborts the transaction (``begin`` prepares again and retries).
    """

    sql: bytes
    params: Sequence[Any] = ()
    prepared_as: bytes | None = None


class ClaimTransaction:
    """The claim transactions of one connection (one at a time).

    ``prepare=False`` (behind pgbouncer's transaction pooling) sends every
    statement unnamed.
    """

    def __init__(self, conn: psycopg.Connection[Any], *, prepare: bool) -> None:
        self.conn = conn
        self._prepare = prepare
        # What is prepared belongs to the connection (a pool's goes from slot to slot).
        self._prepared = _prepared.setdefault(conn, set())
        self._adapt = Transformer(conn)
        #: A claim's transaction is open (begun, not yet ended).
        self.open = False

    def begin(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """BEGIN, then ``statements``, in one round trip; their results. On an error the
        transaction is rolled back and the error raised (as psycopg would raise it)."""
        assert not self.open
        for retry in (False, True):
            try:
                results = self._round_trip([Statement(_BEGIN), *statements])
            except (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement) as exc:
                # Our prepared statements are gone (see Statement), or there after all.
                names = {s.prepared_as for s in statements if s.prepared_as is not None}
                if isinstance(exc, errors.InvalidSqlStatementName):
                    self._prepared.difference_update(names)
                else:
                    self._prepared.update(names)
                with contextlib.suppress(psycopg.Error):
                    self._end_on_server()
                if retry:
                    raise
                continue
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    self._end_on_server()
                raise
            self.open = True
            self.conn._num_transactions += 1  # a transaction block: see the module docstring
            return results[1:]
        raise AssertionError("unreachable")

    def run(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """``statements`` in one round trip, inside the open transaction; their results."""
        assert self.open
        return self._round_trip(statements)

    def commit(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """``statements``, then COMMIT, in one round trip; their results.

        When a statement fails the error is raised and the transaction stays open
        (aborted: end it with :meth:`rollback`). When the COMMIT itself fails, the
        server has rolled everything back: the transaction is over and its error raised.
        """
        assert self.open
        try:
            results = self._round_trip([*statements, Statement(_COMMIT)])
        except BaseException:
            if self._status() == pq.TransactionStatus.IDLE:
                self.release()
            raise
        self.release()
        return results[:-1]

    def rollback(self) -> None:
        """Roll the transaction back (if the server still has it open) and end it."""
        try:
            self._end_on_server()
        finally:
            self.release()

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

    def _status(self) -> pq.TransactionStatus:
        return pq.TransactionStatus(self.conn.pgconn.transaction_status)

    def _end_on_server(self) -> None:
        if not self.conn.closed and self._status() in (
            pq.TransactionStatus.INTRANS,
            pq.TransactionStatus.INERROR,
        ):
            self._round_trip([Statement(_ROLLBACK)])

    def _round_trip(self, statements: Sequence[Statement]) -> list[pq.abc.PGresult]:
        """Send ``statements`` and one sync, wait for every reply; each statement's result.
        Raises the first error, as psycopg would, once all replies are in."""
        pgconn = self.conn.pgconn
        pgconn.enter_pipeline_mode()
        try:
            for statement in statements:
                self._send(pgconn, statement)
            pgconn.pipeline_sync()
            while pgconn.flush():
                _wait(pgconn, write=True)
            return self._replies(pgconn, len(statements))
        finally:
            if pgconn.status == pq.ConnStatus.OK and pgconn.pipeline_status:
                try:
                    pgconn.exit_pipeline_mode()
                except psycopg.Error:
                    # Replies left unread (interrupted): nobody can use the connection now.
                    self.conn.close()

    def _send(self, pgconn: pq.abc.PGconn, statement: Statement) -> None:
        params = (
            self._adapt.dump_sequence(statement.params, [PyFormat.TEXT] * len(statement.params))
            if statement.params
            else None
        )
        name = statement.prepared_as if self._prepare else None
        send_statement(pgconn, statement.sql, params, name, self._prepared)

    def _replies(self, pgconn: pq.abc.PGconn, count: int) -> list[pq.abc.PGresult]:
        results: list[pq.abc.PGresult] = []
        error: pq.abc.PGresult | None = None
        while True:
            while pgconn.is_busy():
                _wait(pgconn, write=False)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one statement's results
            status = result.status
            if status == pq.ExecStatus.PIPELINE_SYNC:
                break
            if status == pq.ExecStatus.COMMAND_OK and _is_prepare(result):
                continue
            if status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = result
            results.append(result)
        if error is not None:
            raise errors.error_from_result(error, encoding=self.conn.info.encoding)
        if len(results) != count:
            raise psycopg.InterfaceError(f"expected {count} results, got {len(results)}")
        return results


def send_statement(
    pgconn: pq.abc.PGconn,
    sql: bytes,
    params: Sequence[Buffer | None] | None,
    name: bytes | None,
    prepared: set[bytes],
) -> None:
    """Queue one statement in pipeline mode: unnamed when ``name`` is None, else prepared as
    ``name`` first if it is not in ``prepared`` (the names prepared on the connection)."""
    if name is None:
        pgconn.send_query_params(sql, params)
        return
    if name not in prepared:
        pgconn.send_prepare(name, sql)
        prepared.add(name)
    pgconn.send_query_prepared(name, params)


def _is_prepare(result: pq.abc.PGresult) -> bool:
    # A Parse's reply carries no command tag; every statement we send has one.
    return not result.command_status


def _wait(pgconn: pq.abc.PGconn, *, write: bool) -> None:
    """Wait for the socket (the GIL released meanwhile)."""
    sock = pgconn.socket
    select.select([] if write else [sock], [sock] if write else [], [])
