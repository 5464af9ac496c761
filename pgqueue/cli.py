"""The ``pgqueue`` command: its argument parser, ``migrate``, ``demo`` and ``main``.

One function per sub-command: ``migrate`` and ``demo`` here; ``enqueue`` in
:mod:`pgqueue._cli_enqueue`; ``status``, ``jobs``, ``clear``, ``retry`` and
``cancel`` in :mod:`pgqueue._cli_jobs`; ``dashboard`` in
:mod:`pgqueue._cli_dashboard`; the
job runner (``work``, ``workoff``, ``start``, ``stop``, ``restart``) in
:mod:`pgqueue.runner`.
Every option can also come from a ``PGQUEUE_<NAME>`` environment variable
(``--concurrency`` from ``PGQUEUE_CONCURRENCY``); the command line wins.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import __version__
from ._cli_dashboard import add_dashboard_command
from ._cli_enqueue import add_enqueue_options, cmd_enqueue
from ._cli_jobs import cmd_cancel, cmd_clear, cmd_jobs, cmd_retry, cmd_status
from ._cli_options import (
    add_app,
    add_common,
    add_json,
    configure_logging,
    database,
    open_connection,
    option,
    port_number,
    positive_float,
    positive_int,
)
from ._cli_output import print_json
from ._db import describe_dsn
from ._run_dir import parse_workers
from .demo import run_demo
from .errors import PgQueueError
from .migrate import latest_version, migrate, migrations
from .records import JobStatus
from .runner import DEFAULT_RUN_DIR, cmd_restart, cmd_start, cmd_stop, cmd_work, cmd_workoff
from .worker import MAX_BATCH_SIZE

__all__ = ["build_parser", "main"]


# -- the parser -------------------------------------------------------------------


def _command(
    commands: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, about: str
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(name, help=help, description=about)
    add_common(sub, suppress=True)
    sub.set_defaults(func=func)
    return sub


def _worker_options(sub: argparse.ArgumentParser, *, queues: bool, poll: bool) -> None:
    option(
        sub,
        "-c",
        "--concurrency",
        dest="concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="jobs run at once (per worker process)",
    )
    if queues:
        option(
            sub,
            "--queue",
            dest="queue",
            action="append",
            metavar="QUEUE",
            help="only jobs of this queue; repeat or separate with commas (default: all queues)",
        )
        option(sub, "--name", dest="name", metavar="NAME", help="only jobs of this name")
    if poll:
        option(
            sub,
            "--poll-interval",
            dest="poll_interval",
            type=positive_float,
            default=1.5,
            metavar="SECONDS",
            help="how often an idle worker looks for due jobs without a NOTIFY",
        )
        option(
            sub,
            "--listen-dsn",
            dest="listen_dsn",
            metavar="DSN",
            secret=True,
            help="a direct DSN for the one LISTEN connection, when --dsn goes through "
            "pgbouncer in transaction-pooling mode (default: --dsn)",
        )
        option(
            sub,
            "--no-listen",
            dest="no_listen",
            action="store_true",
            help="no LISTEN connection: idle workers poll every --poll-interval",
        )
    option(
        sub,
        "--no-prepare",
        dest="no_prepare",
        action="store_true",
        help="no server-side prepared statements (for pgbouncer in transaction-pooling mode)",
    )
    option(
        sub,
        "--batch-size",
        dest="batch_size",
        type=_batch_size,
        default=1,
        metavar="N",
        help="batch mode: each slot claims up to N jobs in one transaction, each handler under "
        f"its own savepoint, and commits them together (1 to {MAX_BATCH_SIZE}; 1: one job per "
        "transaction)",
    )
    option(
        sub,
        "--handler-timeout",
        dest="handler_timeout",
        type=positive_float,
        metavar="SECONDS",
        help="fail a handler call that runs longer than this (a job's own timeout wins; "
        "default: none)",
    )
    option(
        sub,
        "--lease",
        dest="lease",
        type=positive_float,
        metavar="SECONDS",
        help="lease mode, for long jobs: run each outside a transaction, leased for this long "
        "and extended while it runs (not with --batch-size)",
    )


def _batch_size(text: str) -> int:
    """argparse type: a batch size, 1 to MAX_BATCH_SIZE."""
    value = positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH_SIZE}, got {value}")
    return value


def _metrics_options(sub: argparse.ArgumentParser) -> None:
    option(
        sub,
        "--metrics-port",
        dest="metrics_port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on this port (needs pgqueue[metrics]): the "
        "worker's own and the job counts of the database (default: no metrics)",
    )
    option(
        sub,
        "--metrics-host",
        dest="metrics_host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address --metrics-port listens on (0.0.0.0: every interface)",
    )


def _runner_options(sub: argparse.ArgumentParser, *, workers: str | None, force: bool) -> None:
    option(
        sub,
        "-n",
        "--workers",
        dest="workers",
        type=parse_workers,
        default=workers,
        metavar="N|QUEUE:N,...",
        help="which workers: N of every queue, or QUEUE:N per queue"
        + ("" if workers else " (default: every worker in the run directory)"),
    )
    option(
        sub,
        "--run-dir",
        dest="run_dir",
        default=str(DEFAULT_RUN_DIR),
        metavar="DIR",
        help="where the pid and log files are",
    )
    option(
        sub,
        "--timeout",
        dest="timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for workers to start or stop",
    )
    if force:
        option(
            sub,
            "--force",
            dest="force",
            action="store_true",
            help="SIGKILL workers still running after --timeout (their jobs are retried later)",
        )
    add_json(sub)


def _add_runner_commands(commands: Any) -> None:
    sub = _command(
        commands,
        "work",
        cmd_work,
        "run a worker attached to this terminal",
        "Run jobs with the handler(s) of --app until Ctrl-C or SIGTERM, "
        "which let running jobs finish first.",
    )
    add_app(sub, used=True)
    _worker_options(sub, queues=True, poll=True)
    _metrics_options(sub)
    sub.add_argument("--pid-file", dest="pid_file", help=argparse.SUPPRESS)

    sub = _command(
        commands,
        "workoff",
        cmd_workoff,
        "run every job due now, then exit with a summary",
        "Run every job that is due now with the handler(s) of --app, then exit 0 and "
        "print how many completed, will be retried, or failed for good. Jobs scheduled "
        "for later (retries waiting for their backoff included) are left alone.",
    )
    add_app(sub, used=True)
    _worker_options(sub, queues=True, poll=False)
    add_json(sub)

    sub = _command(
        commands,
        "start",
        cmd_start,
        "start detached workers with pid and log files",
        "Start detached `pgqueue work` processes: -n 3 for three workers of every queue, "
        "-n default:2,email:1 for two of queue default and one of email. Each gets a pid "
        "file and a log file in the run directory, worker.<queue>.<index>.pid/.log "
        "(<queue> is 'all' for a worker of every queue). Refuses when one of them is "
        "already running. Without a DSN the workers share the embedded PostgreSQL, "
        "which keeps running until the last of them stops.",
    )
    add_app(sub, used=True)
    _worker_options(sub, queues=False, poll=True)
    _runner_options(sub, workers="1", force=False)

    sub = _command(
        commands,
        "stop",
        cmd_stop,
        "stop detached workers gracefully",
        "Send SIGINT to the workers given by -n (default: every worker in the run "
        "directory): each finishes the jobs it is running and exits. Waits up to --timeout "
        "seconds and removes their pid files.",
    )
    add_app(sub, used=False)
    _runner_options(sub, workers=None, force=True)

    sub = _command(
        commands,
        "restart",
        cmd_restart,
        "stop detached workers, then start them again",
        "Stop the workers given by -n (default: every worker in the run directory, or one "
        "worker of every queue if there is none) like `pgqueue stop`, then start them "
        "like `pgqueue start`.",
    )
    add_app(sub, used=True)
    _worker_options(sub, queues=False, poll=True)
    _runner_options(sub, workers=None, force=True)


def _add_admin_commands(commands: Any) -> None:
    sub = _command(
        commands,
        "migrate",
        cmd_migrate,
        "create or upgrade pgqueue's schema",
        "Apply pending migrations (safe to run at once from several processes). Needs a "
        "direct connection, not one through pgbouncer in transaction-pooling mode.",
    )
    add_app(sub, used=False)
    option(
        sub,
        "--roles",
        dest="roles",
        action="store_true",
        help="also create the group roles pgqueue_producer and pgqueue_worker (needs "
        "CREATEROLE) and grant them least privilege (sql/roles.sql); once set up, every "
        "migrate re-applies the grants",
    )
    add_json(sub)

    sub = _command(
        commands,
        "enqueue",
        cmd_enqueue,
        "enqueue one job, or one per line of a JSON-lines file",
        "Enqueue one job described by the options, or with --from one job per line of a "
        "JSON-lines file (or standard input), streamed in chunks of 5000 with COPY inside "
        "one transaction: a bad line (named by its number) enqueues nothing. Prints the "
        "job id, or how many jobs were enqueued and how fast.",
    )
    add_app(sub, used=False)
    add_enqueue_options(sub)

    sub = _command(
        commands,
        "status",
        cmd_status,
        "count jobs per queue, name and state",
        "Count jobs per queue, name and state.",
    )
    add_app(sub, used=False)
    add_json(sub)

    sub = _command(
        commands, "jobs", cmd_jobs, "list jobs, newest first", "List jobs, newest first."
    )
    add_app(sub, used=False)
    option(
        sub,
        "--status",
        dest="status",
        choices=[status.value for status in JobStatus],
        metavar="STATUS",
        help=f"only jobs in this state ({', '.join(JobStatus)})",
    )
    option(sub, "--queue", dest="queue", metavar="QUEUE", help="only jobs of this queue")
    option(sub, "--name", dest="name", metavar="NAME", help="only jobs of this name")
    option(
        sub,
        "--limit",
        dest="limit",
        type=positive_int,
        default=50,
        metavar="N",
        help="show at most N jobs",
    )
    add_json(sub)

    sub = _command(
        commands,
        "clear",
        cmd_clear,
        "delete every job",
        "Delete every job (of --queue), whatever its state, except those a worker is "
        "running. Asks first on a terminal; elsewhere needs --yes.",
    )
    add_app(sub, used=False)
    option(sub, "--queue", dest="queue", metavar="QUEUE", help="only jobs of this queue")
    option(sub, "-y", "--yes", dest="yes", action="store_true", help="do not ask")
    add_json(sub)

    sub = _command(
        commands,
        "retry",
        cmd_retry,
        "make failed or cancelled jobs pending again",
        "Make jobs pending again, due now: the given IDs, or with --failed every failed or "
        "cancelled job (of --name, in --queue). A job that used up its attempts gets one more.",
    )
    add_app(sub, used=False)
    sub.add_argument("ids", nargs="*", type=int, metavar="ID", help="job ids")
    option(
        sub, "--failed", dest="failed", action="store_true", help="every failed or cancelled job"
    )
    option(sub, "--name", dest="name", metavar="NAME", help="with --failed: only of this name")
    option(sub, "--queue", dest="queue", metavar="QUEUE", help="with --failed: only this queue")
    add_json(sub)

    sub = _command(
        commands,
        "cancel",
        cmd_cancel,
        "cancel pending jobs",
        "Cancel pending jobs: the given IDs, or every pending job of --name (and --queue) "
        "whose data contains --data. A job a worker is running is not interrupted.",
    )
    add_app(sub, used=False)
    sub.add_argument("ids", nargs="*", type=int, metavar="ID", help="job ids")
    option(sub, "--name", dest="name", metavar="NAME", help="jobs of this name")
    option(sub, "--queue", dest="queue", metavar="QUEUE", help="jobs of this queue")
    option(
        sub,
        "--data",
        dest="data",
        metavar="JSON",
        help="jobs whose data contains this JSON object, e.g. '{\"shop_id\": 1}'",
    )
    add_json(sub)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pgqueue`` command."""
    parser = argparse.ArgumentParser(
        prog="pgqueue",
        description="A background-job queue that needs nothing but PostgreSQL.",
        epilog="Every option can also be set with the environment variable shown next to it.",
    )
    parser.add_argument("--version", action="version", version=f"pgqueue {__version__}")
    add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_runner_commands(commands)
    _add_admin_commands(commands)
    add_dashboard_command(commands, _command)
    sub = _command(
        commands,
        "demo",
        cmd_demo,
        "enqueue and process a few thousand demo jobs, then summarise",
        "Migrate, enqueue demo jobs (mixed priorities, some failing and retrying, "
        "a few failing for good, one recurring), process them with a progress bar "
        "and print a summary. Uses the queue 'pgqueue-demo' and the table "
        "public.pgqueue_demo_results, both emptied first.",
    )
    option(
        sub,
        "--jobs",
        dest="jobs",
        type=positive_int,
        default=3000,
        metavar="N",
        help="how many demo jobs",
    )
    option(
        sub,
        "-c",
        "--concurrency",
        dest="concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="jobs run at once",
    )
    return parser


# -- migrate and demo -------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """``pgqueue migrate``: apply pending migrations and say which."""
    with database(args) as dsn, open_connection(dsn) as conn:
        if not args.json:
            print(f"migrating {describe_dsn(dsn)}")
        applied = migrate(conn, roles=True if args.roles else None)
    names = {m.version: f"{m.version:04d}_{m.name}" for m in migrations()}
    if args.json:
        print_json(
            {
                "applied": [names[version] for version in applied],
                "version": latest_version(),
                "roles": bool(args.roles),
            }
        )
    elif applied:
        listed = ", ".join(names[version] for version in applied)
        print(f"applied {len(applied)} migration(s): {listed}")
        print(f"schema is now at version {latest_version()}")
    else:
        print(f"schema is up to date (version {latest_version()}); nothing to apply")
    if args.roles and not args.json:
        print("roles pgqueue_producer and pgqueue_worker are set up (NOLOGIN groups)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``pgqueue demo``: enqueue, process and summarise a few thousand demo jobs."""
    with database(args) as dsn:
        return run_demo(dsn, jobs=args.jobs, concurrency=args.concurrency, verbose=args.verbose)


# -- entry point ------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM outside `work`: unwind like Ctrl-C (an embedded server is stopped), exit 143."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the pgqueue command line; returns the exit code.

    A pgqueue error prints ``pgqueue: error: <message>`` and returns 1;
    Ctrl-C returns 130 and SIGTERM 143 (``work`` stops gracefully and returns 0).
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.verbose)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except PgQueueError as exc:
        print(f"pgqueue: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
