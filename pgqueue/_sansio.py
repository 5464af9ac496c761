"""One implementation of each database call for both flavours: a call is written once, as a
generator of steps (sans-IO), and run by a blocking driver here or an asyncio one (pgqueue.aio).

A steps generator validates its input, then yields each statement to send (:class:`Fetch`,
:class:`Copy`) and is sent back what the statement returned (a row, a list of rows, None); its
return value is the call's result. It does no I/O itself, so the same code decides what to send
and what the answer means for ``psycopg.Connection`` and ``psycopg.AsyncConnection`` alike (what
psycopg gets from generating its sync code from the async one).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, LiteralString, ParamSpec, TypeAlias, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from ._db import SqlTarget, connection, translate_errors

__all__ = ["Copy", "Fetch", "Stepper", "Steps", "blocking", "describe_call", "run_steps"]

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Fetch:
    """Send ``query`` with ``params``; answer its first row (None if none), or every row."""

    query: LiteralString
    params: Sequence[Any] | Mapping[str, Any] | None = None
    all: bool = False

    def run(self, conn: psycopg.Connection[Any]) -> Any:
        cur = conn.execute(self.query, self.params)
        return cur.fetchall() if self.all else cur.fetchone()

    async def arun(self, conn: psycopg.AsyncConnection[Any]) -> Any:
        cur = await conn.execute(self.query, self.params)
        return await (cur.fetchall() if self.all else cur.fetchone())


@dataclass(frozen=True, slots=True)
class Copy:
    """``COPY ... FROM STDIN`` this data (COPY's text format, in chunks); answers None.

    ``may_fail``: making a chunk may raise (jobs checked while the COPY streams). The COPY is
    then abandoned and writes nothing: on its own (autocommit) it is its own transaction, and
    in a transaction it runs in a savepoint, so the caller's transaction is left as it was.
    """

    query: LiteralString
    #: Consumed once, as it is written out.
    chunks: Iterable[str]
    may_fail: bool = False

    def run(self, conn: psycopg.Connection[Any]) -> None:
        guard = conn.transaction() if self._guarded(conn) else contextlib.nullcontext()
        with guard, conn.cursor().copy(self.query) as copy:
            for chunk in self.chunks:
                copy.write(chunk)

    async def arun(self, conn: psycopg.AsyncConnection[Any]) -> None:
        guard = conn.transaction() if self._guarded(conn) else contextlib.nullcontext()
        async with guard, conn.cursor().copy(self.query) as copy:
            for chunk in self.chunks:
                await copy.write(chunk)

    def _guarded(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
        return self.may_fail and conn.info.transaction_status != TransactionStatus.IDLE


Step: TypeAlias = Fetch | Copy
#: What a call is written as: yields steps, is sent their answers, returns the result.
Steps: TypeAlias = Generator[Step, Any, T]


class Stepper:
    """Drives a steps generator: ``step`` is the statement to run next until ``done``,
    then ``value`` is the call's result. Making one runs the validation (no I/O yet)."""

    def __init__(self, steps: Steps[Any]) -> None:
        self._steps = steps
        self.step: Step | None = None
        self.value: Any = None
        self.send(None)

    @property
    def done(self) -> bool:
        return self.step is None

    def send(self, answer: Any) -> bool:
        """Hand the answer of the current step over; True once the call is done."""
        try:
            self.step = self._steps.send(answer)
        except StopIteration as stop:
            self.step, self.value = None, stop.value
        return self.step is None

    def fail(self, exc: BaseException) -> bool:
        """The current step raised ``exc``: raise it in the call (its ``with`` blocks see it; a
        span records it), which lets it out again or goes on; True once the call is done."""
        try:
            self.step = self._steps.throw(exc)
        except StopIteration as stop:
            self.step, self.value = None, stop.value
        return self.step is None


def run_steps(conn: psycopg.Connection[Any], steps: Steps[T] | Stepper) -> T:
    """Run a call on a connection (no transaction of its own); psycopg's errors that mean
    something to pgqueue are raised as pgqueue's, in the call too."""
    stepper = steps if isinstance(steps, Stepper) else Stepper(steps)
    while stepper.step is not None:
        try:
            with translate_errors():
                answer = stepper.step.run(conn)
        except Exception as exc:
            stepper.fail(exc)
        else:
            stepper.send(answer)
    value: T = stepper.value
    return value


def describe_call(call: F, steps: Callable[..., Any], target: str, module: str) -> F:
    """Name and document ``call`` (a driver of ``steps`` taking ``sql`` first) after ``steps``."""
    name = steps.__name__.lstrip("_")
    call.__name__ = call.__qualname__ = name
    call.__doc__ = steps.__doc__
    call.__module__ = module
    signature = inspect.signature(steps)
    sql = inspect.Parameter("sql", inspect.Parameter.POSITIONAL_ONLY, annotation=target)
    return_annotation = signature.return_annotation
    if isinstance(return_annotation, str) and return_annotation.startswith("Steps["):
        return_annotation = return_annotation[len("Steps[") : -1]
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[sql, *signature.parameters.values()], return_annotation=return_annotation
    )
    return call


def blocking(steps: Callable[P, Steps[T]]) -> Callable[Concatenate[SqlTarget, P], T]:
    """The blocking flavour of a call: ``sql`` is a Connection (the statements join the
    caller's open transaction) or a ConnectionPool (a connection is checked out and committed).

    Bad input raises before a connection is touched (but for the jobs that add_jobs_to_queue
    checks while its COPY streams, past its first thousand: see there).
    """

    def call(sql: SqlTarget, /, *args: P.args, **kwargs: P.kwargs) -> T:
        stepper = Stepper(steps(*args, **kwargs))
        if stepper.done:
            value: T = stepper.value
            return value
        with connection(sql) as conn, translate_errors():
            return run_steps(conn, stepper)

    return describe_call(call, steps, "SqlTarget", steps.__module__)
