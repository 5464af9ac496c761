"""The asyncio worker's start records, sent from the event loop on a side connection of its own.

What pgqueue.supervisor does for the blocking worker's slots (see its docstring), awaited: a
claim's start is sent before its handler runs, in its own transaction, and at most one
statement is in flight (a new one waits for the replies of those before it: Postgres runs a
statement it has received after its client died only if it owes no earlier reply); the starts
of slots that claim meanwhile gather and go in one statement. A claim that must wait for the
quarantine (a job that crashed before, or another's quarantine running) goes through the
supervisor instead, from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import psycopg

from .. import _queries as q
from .._wire import wait_socket
from ..errors import ConnectError
from ..records import JobRecord
from ..supervisor import (
    SIDE_REPLY_TIMEOUT,
    Sending,
    SideWire,
    Starts,
    StartsQueue,
    Supervisor,
    first_line,
    to_record,
)

__all__ = ["AsyncStarts"]


class AsyncStarts:
    """Registers claims with ``supervisor`` and records their starts on a connection opened
    by ``connect`` (autocommit); ``prepare`` as the worker's."""

    def __init__(
        self,
        supervisor: Supervisor,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        *,
        prepare: bool,
    ) -> None:
        self._supervisor = supervisor
        self._connect = connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wire = SideWire(prepare=prepare)
        self._lock = asyncio.Lock()
        self._queued = StartsQueue()

    async def start_claim(
        self, job: JobRecord, token: int, blocking: Callable[[], Awaitable[None]]
    ) -> None:
        """Register a claim of ``job`` and record its start, as Supervisor.start_claim does;
        ``blocking``: that call, off the event loop, for a claim that may have to wait for the
        quarantine. Pair with Supervisor.end_claim."""
        if not self._supervisor.register_now(job, token):
            await blocking()
            return
        starts = to_record([job], token)
        if starts is None:
            return
        try:
            await self._record(starts)
        except BaseException:
            self._supervisor.end_claim(token)
            raise

    async def close(self) -> None:
        """Drop the start records of the attempts finished since the last send, wait for the
        replies (a while at most), then close. The supervisor's stop() does the same for what
        is left (its side connection opened for it only then)."""
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(psycopg.Error, OSError):
                    if self._supervisor.has_finished():
                        await self._send(self._supervisor.start_params([]))
                    if self._conn is not None:
                        await self._drain(self._conn)
            await self._close_conn()

    async def _record(self, starts: Starts) -> None:
        """Send ``starts`` and those queued meanwhile, in one statement, after the reply of the
        statement in flight (see Supervisor._record_starts); returns once sent."""
        self._queued.put(starts)
        async with self._lock:
            if not starts.sent and self._wire.unread and self._conn is not None:
                try:
                    await self._drain(self._conn)
                except (psycopg.OperationalError, OSError):
                    await self._close_conn()  # _send connects anew
            batch = self._queued.batch_for(starts)
            if batch:
                with Sending(batch):
                    await self._send(self._supervisor.start_params(batch))

    async def _send(self, params: list[bytes | None]) -> None:
        """Send the starts and a sync (lock held), once more on a new connection if the old
        one is gone (see SideWire.send)."""
        for retry in (False, True):
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    await self._close_conn()
                    conn = self._conn = await self._connect()
                    conn.pgconn.enter_pipeline_mode()
                await _through(conn.pgconn, self._wire.send(conn.pgconn, q.START_JOBS, params))
                return
            except (psycopg.OperationalError, ConnectError, OSError) as exc:
                await self._close_conn()
                if retry:
                    raise psycopg.OperationalError(
                        f"could not record job starts: {first_line(exc)}"
                    ) from exc

    async def _drain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wait for the replies of every statement sent (lock held)."""
        await _through(conn.pgconn, self._wire.drain(conn.pgconn))

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self._wire.reset()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def _through(pgconn: Any, steps: Generator[bool, None, None]) -> None:
    """Run a SideWire step through on the event loop (see _ready)."""
    for write in steps:
        await _ready(pgconn, write=write)


async def _ready(pgconn: Any, *, write: bool) -> None:
    """Wait for the side connection's socket, or give up after SIDE_REPLY_TIMEOUT."""
    try:
        async with asyncio.timeout(SIDE_REPLY_TIMEOUT):
            await wait_socket(pgconn, write=write)
    except TimeoutError:
        raise psycopg.OperationalError(
            f"the side connection did not answer in {SIDE_REPLY_TIMEOUT:g} s"
        ) from None
