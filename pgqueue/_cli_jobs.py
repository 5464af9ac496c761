"""The sub-commands that report on and change jobs: ``status``, ``jobs``, ``clear``, ``retry``, ``cancel``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from . import _queries as q
from ._cli_options import database, open_connection
from ._cli_output import STATES, format_jobs, format_status, job_as_dict, plural, print_json
from ._db import describe_dsn, translate_errors
from .admin import cancel_job, cancel_jobs, clear_jobs, list_jobs, retry_failed_jobs, retry_job
from .errors import ConfigurationError
from .migrate import check_schema

__all__ = ["cmd_cancel", "cmd_clear", "cmd_jobs", "cmd_retry", "cmd_status"]


# -- status and jobs ----------------------------------------------------------------------


def _status_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    check_schema(conn)
    with translate_errors():
        found = conn.execute(q.STATUS_COUNTS).fetchall()
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for queue, name, state, count in found:
        row = table.setdefault(
            (queue, name), {"queue": queue, "name": name, **dict.fromkeys(STATES, 0)}
        )
        row[state] = row.get(state, 0) + int(count)
    rows = [table[key] for key in sorted(table)]
    for row in rows:
        row["total"] = sum(row[state] for state in STATES)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    """``pgqueue status``: job counts per queue, name and state, as a table or JSON."""
    with database(args) as dsn, open_connection(dsn) as conn:
        rows = _status_rows(conn)
    totals = {key: sum(row[key] for row in rows) for key in (*STATES, "total")}
    if args.json:
        print_json({"rows": rows, "totals": totals})
    elif rows:
        print(format_status(rows, totals))
    else:
        print(f"no jobs in {describe_dsn(dsn)}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``pgqueue jobs``: the newest jobs, filtered by status, queue and name."""
    with database(args) as dsn, open_connection(dsn) as conn:
        check_schema(conn)
        found = list_jobs(
            conn, status=args.status, queue=args.queue, name=args.name, limit=args.limit
        )
    if args.json:
        print_json({"jobs": [job_as_dict(job) for job in found]})
    elif found:
        print(format_jobs(found))
    else:
        print("no jobs found")
    return 0


# -- clear, retry, cancel -------------------------------------------------------------------


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_clear(args: argparse.Namespace) -> int:
    """``pgqueue clear``: delete every job (of --queue) that no worker runs, after asking."""
    with database(args) as dsn, open_connection(dsn) as conn:
        rows = [r for r in _status_rows(conn) if args.queue is None or r["queue"] == args.queue]
        count = sum(row["total"] - row["running"] for row in rows)
        where = "" if args.queue is None else f" of queue {args.queue}"
        if count and not args.yes:
            if not sys.stdin.isatty():
                raise ConfigurationError(
                    f"clear would delete {plural(count, 'job')}{where}; "
                    "there is no terminal to ask on: pass --yes to confirm"
                )
            if not _confirm(f"Delete {plural(count, 'job')}{where} in {describe_dsn(dsn)}?"):
                print("nothing deleted")
                return 1
        deleted = clear_jobs(conn, queue=args.queue) if count else 0
    if args.json:
        print_json({"deleted": deleted})
    else:
        print(f"deleted {plural(deleted, 'job')}{where}")
    return 0


def _report_ids(args: argparse.Namespace, verb: str, done: list[int], why: str) -> int:
    missed = [job_id for job_id in dict.fromkeys(args.ids) if job_id not in done]
    if args.json:
        print_json({"count": len(done), verb: done, f"not_{verb}": missed})
    else:
        print(f"{verb} {len(done)} of {plural(len(done) + len(missed), 'job')}")
        for job_id in missed:
            print(f"pgqueue: job {job_id} was not {verb}: {why}", file=sys.stderr)
    return 1 if missed else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """``pgqueue retry``: make the given jobs, or every failed one, pending again."""
    if bool(args.ids) == bool(args.failed):
        raise ConfigurationError("retry needs job ids or --failed (not both)")
    if args.ids and (args.name or args.queue):
        raise ConfigurationError("--name and --queue go with --failed, not with job ids")
    with database(args) as dsn, open_connection(dsn) as conn:
        check_schema(conn)
        if not args.failed:
            done = [job_id for job_id in dict.fromkeys(args.ids) if retry_job(conn, job_id)]
            return _report_ids(args, "retried", done, "unknown, or neither failed nor cancelled")
        count = retry_failed_jobs(conn, name=args.name, queue=args.queue)
    if args.json:
        print_json({"count": count})
    else:
        print(f"retried {plural(count, 'failed or cancelled job')}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``pgqueue cancel``: cancel the given pending jobs, or those matching --name/--data/--queue."""
    filtered = args.name is not None or args.queue is not None or args.data is not None
    if bool(args.ids) == filtered:
        raise ConfigurationError("cancel needs job ids or --name/--queue/--data (not both)")
    data: Any = None
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise ConfigurationError(f"--data is not valid JSON: {exc}") from None
    with database(args) as dsn, open_connection(dsn) as conn:
        check_schema(conn)
        if not filtered:
            done = [job_id for job_id in dict.fromkeys(args.ids) if cancel_job(conn, job_id)]
            return _report_ids(args, "cancelled", done, "unknown, running or already finished")
        count = cancel_jobs(conn, args.name, data, queue=args.queue)
    if args.json:
        print_json({"count": count})
    else:
        print(f"cancelled {plural(count, 'pending job')}")
    return 0
