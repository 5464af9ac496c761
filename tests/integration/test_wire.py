"""The claim transaction's prepared statements (pgqueue._wire) stay true to the server's.

What a connection has prepared can change behind the worker's back: psycopg sends
``DEALLOCATE ALL`` after a ROLLBACK, DROP or ALTER once it has prepared statements
of its own, other code may use a pool's connection between claims, and a session
may outlive the client that prepared on it (a pooler in session mode). The
first round trip of a transaction finds out and tries again; a statement that
vanishes later in a transaction loses that transaction, and is not prepared on
that connection again.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.types.json
import pytest

from pgqueue import _wire
from pgqueue._wire import ClaimTransaction, Statement, StatementDropped

CLAIM = Statement(b"SELECT 1", (), b"pgqueue_test_claim")
LATER = Statement(b"SELECT $1::integer + 1", (), b"pgqueue_test_later")


def later(value: int) -> Statement:
    return Statement(LATER.sql, (value,), LATER.prepared_as)


def on_server(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgqueue_test%'", prepare=False
    ).fetchall()
    return {row[0] for row in rows}


def one_transaction(tx: ClaimTransaction, value: int) -> int:
    tx.begin([CLAIM], later=[LATER])
    (result,) = tx.commit([later(value)])
    return int(tx.rows(result)[0][0])


@pytest.fixture
def tx(conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> ClaimTransaction:
    conn.autocommit = True
    monkeypatch.setattr(_wire, "STATS_EVERY", 3600.0)  # claims ahead go, however slow the machine
    return ClaimTransaction(conn, prepare=True)


def test_the_first_round_trip_prepares_what_the_transaction_needs_later(conn, tx):
    tx.begin([CLAIM], later=[LATER])
    assert on_server(conn) == {"pgqueue_test_claim", "pgqueue_test_later"}
    (result,) = tx.commit([later(41)])
    assert tx.rows(result) == [(42,)]
    assert one_transaction(tx, 1) == 2  # and uses them from then on


def test_statements_gone_between_transactions_are_prepared_again(conn, tx):
    assert one_transaction(tx, 1) == 2
    conn.execute("DEALLOCATE ALL")
    assert one_transaction(tx, 2) == 3
    assert on_server(conn) == {"pgqueue_test_claim", "pgqueue_test_later"}


def test_one_statement_gone_between_transactions_is_prepared_again(conn, tx):
    assert one_transaction(tx, 1) == 2
    conn.execute("DEALLOCATE pgqueue_test_claim")  # the other one stays
    assert one_transaction(tx, 2) == 3
    assert on_server(conn) == {"pgqueue_test_claim", "pgqueue_test_later"}


def test_statements_prepared_by_an_earlier_client_of_the_session_are_used(conn, tx):
    assert one_transaction(tx, 1) == 2
    _wire._names[conn].prepared.clear()  # what a new client of a pooled session knows
    assert one_transaction(tx, 2) == 3


def test_a_statement_gone_inside_a_transaction_loses_it_and_goes_unnamed(conn, tx):
    conn.execute("CREATE TEMPORARY TABLE written (n integer)")
    tx.begin([CLAIM], later=[LATER])
    conn.execute("INSERT INTO written VALUES (1)")
    conn.execute("DEALLOCATE pgqueue_test_later")  # as a handler's psycopg would
    with pytest.raises(StatementDropped):
        tx.commit([later(1)])
    assert tx.open  # aborted: the caller rolls it back
    tx.rollback()
    assert conn.execute("SELECT count(*) FROM written").fetchone() == (0,)
    assert one_transaction(tx, 5) == 6
    assert on_server(conn) == {"pgqueue_test_claim"}  # not prepared there again


def test_nothing_is_prepared_when_preparing_is_off(conn):
    conn.autocommit = True
    tx = ClaimTransaction(conn, prepare=False)
    assert one_transaction(tx, 1) == 2
    assert on_server(conn) == set()


# -- the next claim sent ahead with a commit -----------------------------------------------

XID = Statement(b"SELECT pg_current_xact_id()::text", (), b"pgqueue_test_xid")


def in_transaction(conn: psycopg.Connection[Any]) -> str:
    return str(psycopg.pq.TransactionStatus(conn.pgconn.transaction_status).name)


def test_a_claim_sent_ahead_with_a_commit_is_taken_by_the_next_begin(conn, tx, round_trips):
    tx.begin([CLAIM], later=[LATER])
    (result,) = tx.commit([later(1)], ahead=[XID])
    assert tx.rows(result) == [(2,)]
    assert not tx.open
    assert in_transaction(conn) == "INTRANS"  # the claim ahead's, on the server
    (xid,) = tx.begin([XID], later=[LATER])
    assert tx.open
    # Its results are those of the transaction now open, and nothing more was sent for them.
    assert tx.rows(xid)[0][0] == conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    assert round_trips == [2, 4]  # BEGIN + claim; LATER + COMMIT + BEGIN + XID
    tx.commit([])
    assert in_transaction(conn) == "IDLE"


def test_a_commit_a_second_after_the_last_pause_sends_no_claim_ahead(
    conn, tx, round_trips, monkeypatch
):
    monkeypatch.setattr(_wire, "STATS_EVERY", 0.0)  # every commit is due for its pause
    tx.begin([CLAIM], later=[LATER])
    (result,) = tx.commit([later(1)], ahead=[XID])
    assert tx.rows(result) == [(2,)]
    # The server waits outside a transaction (where it hands its statistics over).
    assert in_transaction(conn) == "IDLE"
    (xid,) = tx.begin([XID], later=[LATER])
    assert tx.rows(xid)[0][0] == conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    assert round_trips == [2, 2, 2]  # BEGIN + claim; LATER + COMMIT; BEGIN + XID
    tx.commit([])


def test_a_begin_with_other_statements_rolls_the_claim_ahead_back(conn, tx, round_trips):
    conn.execute("CREATE TEMPORARY TABLE written (n integer)")
    tx.begin([CLAIM], later=[LATER])
    tx.commit([], ahead=[Statement(b"INSERT INTO written VALUES (1)")])
    assert one_transaction(tx, 1) == 2
    assert conn.execute("SELECT count(*) FROM written").fetchone() == (0,)
    assert round_trips == [2, 3, 1, 2, 2]  # ...; the ROLLBACK; BEGIN + CLAIM; LATER + COMMIT


def test_a_claim_ahead_that_fails_leaves_the_commit_done(conn, tx, round_trips):
    conn.execute("CREATE TEMPORARY TABLE written (n integer)")
    tx.begin([CLAIM], later=[LATER])
    conn.execute("INSERT INTO written VALUES (1)")
    (result,) = tx.commit([later(1)], ahead=[Statement(b"SELECT 1/0")])
    assert tx.rows(result) == [(2,)]
    assert in_transaction(conn) == "IDLE"  # the failed claim's transaction rolled back
    assert conn.execute("SELECT count(*) FROM written").fetchone() == (1,)
    with pytest.raises(psycopg.errors.DivisionByZero):  # sent again: not taken from before
        tx.begin([Statement(b"SELECT 1/0")])
    assert round_trips == [2, 4, 1, 2, 1]  # ...; the ROLLBACK; BEGIN + 1/0; its ROLLBACK


def test_a_claim_ahead_does_not_run_after_a_failed_commit(conn, tx):
    conn.execute("CREATE TEMPORARY TABLE written (n integer)")
    tx.begin([CLAIM], later=[LATER])
    with pytest.raises(psycopg.errors.DivisionByZero):
        tx.commit([Statement(b"SELECT 1/0")], ahead=[Statement(b"INSERT INTO written VALUES (1)")])
    assert tx.open  # aborted, as without a claim ahead
    tx.rollback()
    assert in_transaction(conn) == "IDLE"
    assert conn.execute("SELECT count(*) FROM written").fetchone() == (0,)
    assert one_transaction(tx, 1) == 2


JSONB = [
    '{"a": [1, 2.5, "\\u00e9\\n\\"x\\"", null, true, {"b": {}}]}',
    '"a string"',
    "null",
    "[]",
    "12345678901234567890",
    "-1.5e-7",
    '{"nested": {"deep": [[[]]]}, "emoji": "\\ud83d\\ude00"}',
]


def test_claimed_rows_load_jsonb_as_psycopg_does(conn):
    # The claim's rows read jsonb with the JSON scanner directly (less Python per job): the
    # same values as psycopg's own loader gives, SQL NULL and JSON null alike.
    sql = "SELECT " + ", ".join("%s::jsonb" for _ in JSONB) + ", NULL::jsonb"
    expected = conn.execute(sql, JSONB, prepare=False).fetchone()
    assert _wire._adapters(conn) is not conn  # the scanner's path is the one under test
    tx = ClaimTransaction(conn, prepare=True)
    result = conn.pgconn.exec_params(
        (
            "SELECT " + ", ".join(f"${i + 1}::jsonb" for i in range(len(JSONB))) + ", NULL::jsonb"
        ).encode(),
        [value.encode() for value in JSONB],
    )
    assert tx.rows(result) == [expected]
    assert expected[-2]["emoji"] == "\U0001f600"


def test_a_connection_with_a_json_loader_of_its_own_keeps_it(conn):
    psycopg.types.json.set_json_loads(lambda data: ("mine", data), conn)
    assert _wire._adapters(conn) is conn
    tx = ClaimTransaction(conn, prepare=True)
    result = conn.pgconn.exec_params(b"SELECT '[1]'::jsonb", None)
    assert tx.rows(result) == [(("mine", b"[1]"),)]
