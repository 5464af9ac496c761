"""pgqueue._wire.Traffic sees every way a handler can talk to the server through psycopg.

A batch reuses a savepoint across handlers that sent nothing, so a way in that
Traffic missed would let a later job's ROLLBACK TO SAVEPOINT undo an earlier
job's committed-as-completed writes. These tests run against the installed
psycopg: an upgrade that routes a call around ``Connection.wait`` fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgqueue._wire import Traffic

Use = Callable[[psycopg.Connection[Any]], object]


def _server_side_cursor(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(), conn.cursor(name="pgqueue_test_cursor") as cur:
        cur.execute("SELECT generate_series(1, 3)")
        cur.fetchall()


def _copy_in(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor() as cur, cur.copy("COPY traffic (n) FROM STDIN") as copy:
        copy.write_row((1,))


def _copy_out(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor() as cur, cur.copy("COPY (SELECT 1) TO STDOUT") as copy:
        list(copy.rows())


def _pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        conn.execute("INSERT INTO traffic (n) VALUES (1)")


def _executemany(conn: psycopg.Connection[Any]) -> None:
    conn.cursor().executemany("INSERT INTO traffic (n) VALUES (%s)", [(1,), (2,)])


def _stream(conn: psycopg.Connection[Any]) -> None:
    list(conn.cursor().stream("SELECT generate_series(1, 3)"))


def _notifies(conn: psycopg.Connection[Any]) -> None:
    list(conn.notifies(timeout=0.01, stop_after=1))


WAYS_IN: dict[str, Use] = {
    "conn.execute": lambda conn: conn.execute("SELECT 1"),
    "cursor.execute": lambda conn: conn.cursor().execute("SELECT 1"),
    "executemany": _executemany,
    "stream": _stream,
    "server-side cursor": _server_side_cursor,
    "copy in": _copy_in,
    "copy out": _copy_out,
    "pipeline": _pipeline,
    "transaction": lambda conn: conn.transaction().__enter__(),
    "commit": lambda conn: conn.commit(),
    "rollback": lambda conn: conn.rollback(),
    "notifies": _notifies,
}


@pytest.fixture
def plain(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TEMPORARY TABLE traffic (n integer)")
        conn.commit()
        yield conn


@pytest.mark.parametrize("way", WAYS_IN, ids=list(WAYS_IN))
def test_every_way_in_through_psycopg_counts(plain: psycopg.Connection[Any], way: str) -> None:
    traffic = Traffic(plain)
    with traffic:
        WAYS_IN[way](plain)
    assert traffic.used
    assert "wait" not in vars(plain), "the connection is left as it was"


def test_python_alone_and_results_already_fetched_do_not_count(
    plain: psycopg.Connection[Any],
) -> None:
    cur = plain.execute("SELECT generate_series(1, 3)")
    traffic = Traffic(plain)
    with traffic:
        assert sum(row[0] for row in cur.fetchall()) == 6
        assert plain.info.transaction_status.name == "INTRANS"
    assert not traffic.used


def test_traffic_blocks_nest_and_restore_what_was_there(plain: psycopg.Connection[Any]) -> None:
    outer, inner = Traffic(plain), Traffic(plain)
    with outer:
        with inner:
            plain.execute("SELECT 1")
        assert "wait" in vars(plain)
    assert (outer.used, inner.used) == (True, True)
    assert "wait" not in vars(plain)
    after = Traffic(plain)
    with after:
        pass
    assert not after.used
