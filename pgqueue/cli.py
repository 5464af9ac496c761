"""The ``pgqueue`` command: ``migrate``, ``work``, ``status`` and ``demo``, one function each.

Every option can also come from a ``PGQUEUE_<NAME>`` environment variable
(``--concurrency`` from ``PGQUEUE_CONCURRENCY``); the command line wins.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final

import psycopg

from . import __version__
from . import _queries as q
from ._db import connect, describe_dsn, translate_errors
from ._embedded import DEFAULT_DATA_DIR, embedded_server
from .demo import run_demo
from .errors import ConfigurationError, PgQueueError
from .migrate import check_schema, latest_version, migrate, migrations
from .records import JobRecord
from .worker import Handler, JobQueueWorker

__all__ = ["build_parser", "main"]

logger = logging.getLogger("pgqueue.cli")

#: The states `pgqueue status` reports, in column order.
STATES: Final = ("pending", "scheduled", "running", "completed", "failed", "cancelled")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


# -- options and environment variables ---------------------------------------


def _env(dest: str) -> str:
    return "PGQUEUE_" + dest.upper()


def _env_value(dest: str) -> str | None:
    value = os.environ.get(_env(dest))
    return value if value else None


def _env_flag(dest: str) -> bool:
    value = (os.environ.get(_env(dest)) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{_env(dest)} must be one of 1/0, true/false, yes/no, on/off")


def _env_count(dest: str) -> int:
    value = (os.environ.get(_env(dest)) or "").strip()
    return int(value) if value.isdigit() else int(_env_flag(dest))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    dest: str,
    help: str,
    default: Any = None,
    suppress: bool = False,
    secret: bool = False,
    **kwargs: Any,
) -> None:
    """An option whose default comes from PGQUEUE_<DEST> when set, which --help says.

    ``--help`` shows the default unless ``secret`` (a DSN may hold a password).
    A bad environment value is a ConfigurationError naming the variable.
    """
    env = _env(dest)
    if kwargs.get("action") == "store_true":
        value: Any = _env_flag(dest) or default
    elif kwargs.get("action") == "count":
        value = _env_count(dest) or default
    elif kwargs.get("action") == "append":
        value = None  # read from the environment after parsing (see _queues)
    else:
        raw = _env_value(dest)
        value = default if raw is None else raw
        convert = kwargs.get("type")
        if raw is not None and convert is not None:
            try:
                value = convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ConfigurationError(f"{env}={raw!r}: {exc}") from None
    shown = "" if secret or value in (None, False, 0) else f" (default: {value})".replace("%", "%%")
    parser.add_argument(
        *flags,
        dest=dest,
        default=argparse.SUPPRESS if suppress else value,
        help=f"{help}{shown} [env: {env}]",
        **kwargs,
    )


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the main parser with real defaults; on each sub-command again with
    # SUPPRESS, so `pgqueue --dsn X status` and `pgqueue status --dsn X` both work.
    group = parser.add_argument_group("database and output")
    _option(
        group,
        "--dsn",
        dest="dsn",
        metavar="DSN",
        help="PostgreSQL connection string; else DATABASE_URL; else an embedded server",
        suppress=suppress,
        secret=True,
    )
    _option(
        group,
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=str(DEFAULT_DATA_DIR),
        help="data directory of the embedded server, used when no DSN is given",
        suppress=suppress,
    )
    _option(
        group,
        "-v",
        "--verbose",
        dest="verbose",
        action="count",
        default=0,
        help="log more: -v debug for pgqueue, -vv for everything",
        suppress=suppress,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pgqueue`` command."""
    parser = argparse.ArgumentParser(
        prog="pgqueue",
        description="A background-job queue that needs nothing but PostgreSQL.",
        epilog="Every option can also be set with the environment variable shown next to it.",
    )
    parser.add_argument("--version", action="version", version=f"pgqueue {__version__}")
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub = commands.add_parser(
        "migrate",
        help="create or upgrade pgqueue's schema",
        description="Apply pending migrations (safe to run at once from several processes).",
    )
    _add_common(sub, suppress=True)
    sub.set_defaults(func=cmd_migrate)

    sub = commands.add_parser(
        "work",
        help="run a worker attached to this terminal",
        description=(
            "Run jobs with the handler(s) of --app until Ctrl-C or SIGTERM, "
            "which let running jobs finish first."
        ),
    )
    _add_common(sub, suppress=True)
    _option(
        sub,
        "--app",
        dest="app",
        metavar="MODULE:ATTR",
        required=_env_value("app") is None,
        help="handler(conn, job), or a mapping of job name to handler, e.g. myapp.jobs:handlers",
    )
    _option(
        sub,
        "-c",
        "--concurrency",
        dest="concurrency",
        type=_positive_int,
        default=1,
        metavar="N",
        help="jobs run at once",
    )
    _option(
        sub,
        "--queue",
        dest="queue",
        action="append",
        metavar="QUEUE",
        help="only jobs of this queue; repeat or separate with commas (default: all queues)",
    )
    _option(sub, "--name", dest="name", metavar="NAME", help="only jobs of this name")
    _option(
        sub,
        "--poll-interval",
        dest="poll_interval",
        type=_positive_float,
        default=1.5,
        metavar="SECONDS",
        help="how often an idle worker looks for due jobs without a NOTIFY",
    )
    sub.set_defaults(func=cmd_work)

    sub = commands.add_parser(
        "status",
        help="count jobs per queue, name and state",
        description="Count jobs per queue, name and state.",
    )
    _add_common(sub, suppress=True)
    _option(sub, "--json", dest="json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(func=cmd_status)

    sub = commands.add_parser(
        "demo",
        help="enqueue and process a few thousand demo jobs, then summarise",
        description=(
            "Migrate, enqueue demo jobs (mixed priorities, some failing and retrying, "
            "a few failing for good, one recurring), process them with a progress bar "
            "and print a summary. Uses the queue 'pgqueue-demo' and the table "
            "public.pgqueue_demo_results, both emptied first."
        ),
    )
    _add_common(sub, suppress=True)
    _option(
        sub,
        "--jobs",
        dest="jobs",
        type=_positive_int,
        default=3000,
        metavar="N",
        help="how many demo jobs",
    )
    _option(
        sub,
        "-c",
        "--concurrency",
        dest="concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="jobs run at once",
    )
    sub.set_defaults(func=cmd_demo)
    return parser


# -- shared plumbing ----------------------------------------------------------


def _configure_logging(verbose: int) -> None:
    """Log to stderr: pgqueue at INFO (DEBUG with -v), everything else at WARNING (DEBUG with -vv)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)-7s %(message)s"
        if verbose:
            fmt = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("pgqueue").setLevel(logging.DEBUG if verbose else logging.INFO)


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN to use: --dsn / PGQUEUE_DSN, else DATABASE_URL, else an embedded server."""
    dsn = args.dsn or os.environ.get("DATABASE_URL")
    if dsn:
        yield dsn
        return
    data_dir = Path(args.data_dir).expanduser().resolve()
    print(
        f"pgqueue: no --dsn, PGQUEUE_DSN or DATABASE_URL given: "
        f"using the embedded PostgreSQL with data directory {data_dir}",
        file=sys.stderr,
        flush=True,
    )
    with embedded_server(data_dir) as embedded_dsn:
        yield embedded_dsn


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return connect(dsn, autocommit=True)


# -- migrate ------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """``pgqueue migrate``: apply pending migrations and say which."""
    with _database(args) as dsn, _connect(dsn) as conn:
        print(f"migrating {describe_dsn(dsn)}")
        applied = migrate(conn)
    names = {m.version: f"{m.version:04d}_{m.name}" for m in migrations()}
    if applied:
        listed = ", ".join(names[version] for version in applied)
        print(f"applied {len(applied)} migration(s): {listed}")
        print(f"schema is now at version {latest_version()}")
    else:
        print(f"schema is up to date (version {latest_version()}); nothing to apply")
    return 0


# -- work -----------------------------------------------------------------------


def _load_app(spec: str) -> Handler | Mapping[str, Handler]:
    """Import ``module:attr`` (the current directory first on sys.path) and check what it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--app must look like module:attribute, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        logger.debug("importing %s failed", module_name, exc_info=True)
        raise ConfigurationError(f"cannot import {module_name!r} for --app: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"--app {spec}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if isinstance(target, Mapping):
        for job_name, fn in target.items():
            if not isinstance(job_name, str) or not callable(fn):
                raise ConfigurationError(
                    f"--app {spec}: the mapping must be of job name (str) to handler(conn, job); "
                    f"entry {job_name!r} is not"
                )
        return target
    if not callable(target):
        raise ConfigurationError(
            f"--app {spec} is a {type(target).__name__}: expected a handler(conn, job) "
            "or a mapping of job name to handler"
        )
    return target  # type: ignore[no-any-return]


def _timed(fn: Handler) -> Handler:
    """Wrap a handler to log one INFO line per job it finishes."""

    @functools.wraps(fn)
    def run(conn: psycopg.Connection[Any], job: JobRecord) -> object:
        started = time.perf_counter()
        result = fn(conn, job)
        logger.info(
            "job %d %s done in %.1f ms",
            job.id,
            job.name or "(unnamed)",
            (time.perf_counter() - started) * 1000,
            extra={"job_id": job.id, "queue": job.queue, "job_name": job.name, "action": "done"},
        )
        return result

    return run


def _queues(values: list[str] | None) -> list[str] | None:
    raw = values if values is not None else [_env_value("queue") or ""]
    queues = [part.strip() for value in raw for part in value.split(",") if part.strip()]
    return queues or None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``; a second one quits at once (Ctrl-C: exit 130)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info(
            "%s: stopping, letting running jobs finish (again to quit at once)",
            signal.Signals(signum).name,
        )
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_work(args: argparse.Namespace) -> int:
    """``pgqueue work``: run a worker until SIGINT or SIGTERM, then stop gracefully."""
    app = _load_app(args.app)
    handler: Handler | Mapping[str, Handler] = (
        {name: _timed(fn) for name, fn in app.items()} if isinstance(app, Mapping) else _timed(app)
    )
    queues = _queues(args.queue)
    with _database(args) as dsn:
        worker = JobQueueWorker(
            dsn,
            args.name,
            handler=handler,
            poll_interval=args.poll_interval,
            parallel_count=args.concurrency,
            queues=queues,
        )
        names = [args.name] if args.name else (sorted(app) if isinstance(app, Mapping) else None)
        logger.info(
            "pgqueue %s worker on %s: concurrency %d, queues %s, names %s, app %s",
            __version__,
            describe_dsn(dsn),
            args.concurrency,
            ", ".join(queues) if queues else "all",
            ", ".join(names) if names else "all",
            args.app,
        )
        stop = threading.Event()
        with _stop_on_signals(stop):
            worker.start()
            try:
                logger.info("waiting for jobs; Ctrl-C or SIGTERM stops after running jobs finish")
                while not stop.wait(1.0):
                    pass
            finally:
                worker.stop()
        logger.info("worker stopped cleanly")
    return 0


# -- status -------------------------------------------------------------------


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


def _format_table(rows: list[dict[str, Any]], totals: dict[str, int]) -> str:
    columns = ["queue", "name", *STATES, "total"]
    cells = [
        [str(row[c]) if c != "name" else (row[c] or "(unnamed)") for c in columns] for row in rows
    ]
    cells.append(["TOTAL", "", *(str(totals[c]) for c in columns[2:])])
    header = [c.upper() for c in columns]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        text = [
            value.ljust(width) if i < 2 else value.rjust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(c) for c in cells[:-1]), rule, line(cells[-1])])


def cmd_status(args: argparse.Namespace) -> int:
    """``pgqueue status``: job counts per queue, name and state, as a table or JSON."""
    with _database(args) as dsn, _connect(dsn) as conn:
        rows = _status_rows(conn)
    totals = {key: sum(row[key] for row in rows) for key in (*STATES, "total")}
    if args.json:
        print(json.dumps({"rows": rows, "totals": totals}, indent=2))
    elif rows:
        print(_format_table(rows, totals))
    else:
        print(f"no jobs in {describe_dsn(dsn)}")
    return 0


# -- demo -----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``pgqueue demo``: enqueue, process and summarise a few thousand demo jobs."""
    with _database(args) as dsn:
        return run_demo(dsn, jobs=args.jobs, concurrency=args.concurrency, verbose=args.verbose)


# -- entry point ----------------------------------------------------------------


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
        _configure_logging(args.verbose)
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
