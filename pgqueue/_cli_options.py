"""The CLI's options and plumbing: ``PGQUEUE_<NAME>`` environment defaults, DSN resolution, logging.

Every option made with :func:`option` reads its default from ``PGQUEUE_<DEST>``
and says so in ``--help``; the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psycopg

from ._db import connect
from ._embedded import DEFAULT_DATA_DIR, embedded_server
from .errors import ConfigurationError

__all__ = [
    "ParserLike",
    "add_app",
    "add_common",
    "add_json",
    "configure_logging",
    "database",
    "env_name",
    "env_value",
    "open_connection",
    "option",
    "port_number",
    "positive_float",
    "positive_int",
    "split_queues",
]

ParserLike = argparse.ArgumentParser | argparse._ArgumentGroup

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def env_name(dest: str) -> str:
    """``PGQUEUE_<DEST>``: the environment variable behind option ``dest``."""
    return "PGQUEUE_" + dest.upper()


def env_value(dest: str) -> str | None:
    """The value of ``PGQUEUE_<DEST>``; None when unset or empty."""
    value = os.environ.get(env_name(dest))
    return value if value else None


def _env_flag(dest: str) -> bool:
    value = (os.environ.get(env_name(dest)) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{env_name(dest)} must be one of 1/0, true/false, yes/no, on/off")


def _env_count(dest: str) -> int:
    value = (os.environ.get(env_name(dest)) or "").strip()
    return int(value) if value.isdigit() else int(_env_flag(dest))


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def option(
    parser: ParserLike,
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
    ``action="append"`` options read the environment after parsing (see
    :func:`split_queues`).
    """
    env = env_name(dest)
    raw: str | None = None
    if kwargs.get("action") == "store_true":
        value: Any = _env_flag(dest) or default
    elif kwargs.get("action") == "count":
        value = _env_count(dest) or default
    elif kwargs.get("action") == "append":
        value = None
    else:
        raw = env_value(dest)
        value = default if raw is None else raw
        convert = kwargs.get("type")
        if raw is not None and convert is not None:
            try:
                value = convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ConfigurationError(f"{env}={raw!r}: {exc}") from None
    text = raw if raw is not None else value  # as typed, not as converted
    shown = "" if secret or value in (None, False, 0) else f" (default: {text})".replace("%", "%%")
    parser.add_argument(
        *flags,
        dest=dest,
        default=argparse.SUPPRESS if suppress else value,
        help=f"{help}{shown} [env: {env}]",
        **kwargs,
    )


def add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--dsn, --data-dir and -v.

    On the main parser with real defaults; on each sub-command again with
    SUPPRESS, so ``pgqueue --dsn X status`` and ``pgqueue status --dsn X`` both work.
    """
    group = parser.add_argument_group("database and output")
    option(
        group,
        "--dsn",
        dest="dsn",
        metavar="DSN",
        help="PostgreSQL connection string; else DATABASE_URL; else an embedded server",
        suppress=suppress,
        secret=True,
    )
    option(
        group,
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        default=str(DEFAULT_DATA_DIR),
        help="data directory of the embedded server, used when no DSN is given",
        suppress=suppress,
    )
    option(
        group,
        "-v",
        "--verbose",
        dest="verbose",
        action="count",
        default=0,
        help="log more: -v debug for pgqueue, -vv for everything",
        suppress=suppress,
    )


def add_app(parser: argparse.ArgumentParser, *, used: bool) -> None:
    """--app MODULE[:ATTR]: required where jobs run, accepted (and unused) everywhere else."""
    if used:
        option(
            parser,
            "--app",
            dest="app",
            metavar="MODULE[:ATTR]",
            required=env_value("app") is None,
            help=(
                "where the job handlers live: handler(conn, job), a mapping of job name "
                "to handler, a Job class, a task or a list of them (MODULE:ATTR), or a "
                "module whose Job classes and tasks are all run (MODULE)"
            ),
        )
    else:
        option(
            parser,
            "--app",
            dest="app",
            metavar="MODULE[:ATTR]",
            help="accepted so that one set of flags works for every command; not used here",
        )


def add_json(parser: argparse.ArgumentParser) -> None:
    """--json: machine-readable output."""
    option(parser, "--json", dest="json", action="store_true", help="print JSON instead of text")


def split_queues(values: list[str] | None) -> list[str] | None:
    """The queues of repeated, comma-separated --queue values (else PGQUEUE_QUEUE); None: all."""
    raw = values if values is not None else [env_value("queue") or ""]
    queues = [part.strip() for value in raw for part in value.split(",") if part.strip()]
    return queues or None


def configure_logging(verbose: int) -> None:
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


def given_dsn(args: argparse.Namespace) -> str | None:
    """--dsn / PGQUEUE_DSN, else DATABASE_URL; None when neither is set."""
    dsn: str | None = args.dsn or os.environ.get("DATABASE_URL")
    return dsn or None


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN to use: --dsn / PGQUEUE_DSN, else DATABASE_URL, else an embedded server."""
    dsn = given_dsn(args)
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


def open_connection(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection (ConnectError when the server cannot be reached)."""
    return connect(dsn, autocommit=True)
