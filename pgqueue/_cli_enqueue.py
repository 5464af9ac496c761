"""``pgqueue enqueue``: one job from options, or many from a JSON-lines file (``--from``).

A bulk enqueue streams the file in chunks of :data:`CHUNK` lines, each
validated and then written with one COPY, so a file of millions of lines never
sits in memory. All chunks share one transaction: a bad line (its number is
in the error), a lost connection or Ctrl-C rolls everything back, and workers
see the jobs only once the whole file is in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

from ._cli_options import add_json, database, open_connection, option, positive_float, positive_int
from ._cli_output import print_json
from ._input import EnqueueParams, enqueue_params
from ._progress import Progress
from .errors import ConfigurationError, InvalidJobError
from .migrate import check_schema
from .queue import add_job_to_queue, copy_jobs

__all__ = ["CHUNK", "add_enqueue_options", "cmd_enqueue", "read_jobs"]

#: Lines validated and written per COPY by ``--from``.
CHUNK: Final = 5000


def add_enqueue_options(sub: argparse.ArgumentParser) -> None:
    """The options of ``pgqueue enqueue``."""
    option(sub, "--name", dest="name", metavar="NAME", help="the job's name (default: '')")
    option(
        sub,
        "--data",
        dest="data",
        metavar="JSON",
        help="the job's data, a JSON value, e.g. '{\"user_id\": 1}' (default: {})",
    )
    option(sub, "--queue", dest="queue", metavar="QUEUE", help="the job's queue (default: default)")
    option(
        sub,
        "--priority",
        dest="priority",
        metavar="N|NAME",
        help="an integer (lower runs first; default 1) or a name: critical, high, medium, "
        "normal, default, low",
    )
    when = sub.add_mutually_exclusive_group()
    option(
        when,
        "--at",
        dest="at",
        metavar="TIME",
        help="run at this ISO-8601 time with a time zone, e.g. 2030-01-01T09:00:00Z (default: now)",
    )
    option(
        when,
        "--delay",
        dest="delay",
        type=positive_float,
        metavar="SECONDS",
        help="run this many seconds from now",
    )
    option(
        sub,
        "--max-attempts",
        dest="max_attempts",
        type=positive_int,
        metavar="N",
        help="attempts before the job fails for good (default: 5)",
    )
    option(
        sub,
        "--schedule",
        dest="schedule",
        metavar="CRON|TEXT",
        help="make it a repeating job: a cron expression or a text schedule",
    )
    option(
        sub,
        "--job-timeout",
        dest="job_timeout",
        type=positive_float,
        metavar="SECONDS",
        help="bound each attempt (default: the worker's timeout)",
    )
    option(
        sub,
        "--from",
        dest="from_file",
        metavar="FILE",
        help="enqueue one job per line of this JSON-lines file ('-': standard input); each "
        "line is an object with keys name, data, queue, priority, scheduled_at, "
        "max_attempts, retry, schedule, timeout, and the options above fill in missing keys. "
        "All or nothing: one transaction",
    )
    add_json(sub)


# -- reading jobs ---------------------------------------------------------------------------


def _scheduled_at(value: Any) -> Any:
    """A JSON line's scheduled_at: an ISO-8601 string with a time zone (or seconds from now)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidJobError(
                f"scheduled_at {value!r} is not an ISO-8601 date and time"
            ) from None
        if parsed.tzinfo is None:
            raise InvalidJobError(
                f"scheduled_at {value!r} has no time zone; add one (e.g. Z or +02:00)"
            )
        return parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def _job(line: str, defaults: Mapping[str, Any]) -> EnqueueParams:
    try:
        job = json.loads(line)
    except ValueError as exc:
        raise InvalidJobError(f"not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise InvalidJobError(f"expected a JSON object, got {type(job).__name__}")
    if job.get("scheduled_at") is not None:
        job["scheduled_at"] = _scheduled_at(job["scheduled_at"])
    return enqueue_params({**defaults, **job}, {})


def read_jobs(
    source: IO[bytes], defaults: Mapping[str, Any]
) -> Iterator[tuple[int, int, EnqueueParams]]:
    """(line number, bytes read so far, validated job) for each non-blank line of ``source``.

    A line that is not UTF-8, not a JSON object or not a valid job raises
    InvalidJobError naming its line number.
    """
    offset = 0
    for number, raw in enumerate(source, start=1):
        offset += len(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJobError(f"line {number}: not UTF-8 ({exc.reason})") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            job = _job(line, defaults)
        except InvalidJobError as exc:
            raise InvalidJobError(f"line {number}: {exc}") from None
        yield number, offset, job


# -- the command --------------------------------------------------------------------------


def _option_job(args: argparse.Namespace) -> dict[str, Any]:
    """The job keys given as options (for --from: the defaults of every line)."""
    job: dict[str, Any] = {}
    if args.name is not None:
        job["name"] = args.name
    if args.data is not None:
        try:
            job["data"] = json.loads(args.data)
        except ValueError as exc:
            raise ConfigurationError(f"--data is not valid JSON: {exc}") from None
    if args.queue is not None:
        job["queue"] = args.queue
    if args.priority is not None:
        text = args.priority.strip()
        job["priority"] = int(text) if text.lstrip("+-").isdigit() else text
    if args.at is not None:
        job["scheduled_at"] = _at(args.at)
    if args.delay is not None:
        job["scheduled_at"] = timedelta(seconds=args.delay)
    if args.max_attempts is not None:
        job["max_attempts"] = args.max_attempts
    if args.schedule is not None:
        job["schedule"] = args.schedule
    if args.job_timeout is not None:
        job["timeout"] = args.job_timeout
    return job


def _at(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"--at {text!r} is not an ISO-8601 date and time") from None
    if when.tzinfo is None:
        raise ConfigurationError(f"--at {text!r} has no time zone; add one (e.g. Z or +02:00)")
    return when


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``pgqueue enqueue``: one job from the options, or every line of ``--from``."""
    job = _option_job(args)
    if args.from_file is not None:
        return _enqueue_file(args, job)
    enqueue_params(job, {})  # bad input is refused before connecting
    with database(args) as dsn, open_connection(dsn) as conn:
        check_schema(conn)
        job_id = add_job_to_queue(conn, job)
    if args.json:
        print_json({"id": job_id})
    else:
        print(f"enqueued job {job_id}")
    return 0


def _enqueue_file(args: argparse.Namespace, defaults: Mapping[str, Any]) -> int:
    path = args.from_file
    with ExitStack() as stack:
        if path == "-":
            source: IO[bytes] = sys.stdin.buffer
            size = None
        else:
            try:
                source = stack.enter_context(Path(path).open("rb"))
                size = Path(path).stat().st_size
            except OSError as exc:
                raise ConfigurationError(f"--from {path}: {exc.strerror}") from None
        dsn = stack.enter_context(database(args))
        conn = stack.enter_context(open_connection(dsn))
        check_schema(conn)
        progress = Progress(size, sys.stderr, unit="jobs")
        started = time.monotonic()
        count = 0
        try:
            with conn.transaction():  # all or nothing
                chunk: list[EnqueueParams] = []
                offset = 0
                for _number, offset, job in read_jobs(source, defaults):
                    chunk.append(job)
                    if len(chunk) >= CHUNK:
                        count += len(copy_jobs(conn, chunk))
                        chunk = []
                        progress.update(count, position=offset if size else None)
                count += len(copy_jobs(conn, chunk))
                progress.update(count, position=size)
        except InvalidJobError as exc:
            raise InvalidJobError(f"{exc}; nothing was enqueued (all or nothing)") from None
        finally:
            progress.close()
        elapsed = time.monotonic() - started
    rate = count / elapsed if elapsed > 0 else 0.0
    source_name = "standard input" if path == "-" else path
    if args.json:
        print_json(
            {
                "enqueued": count,
                "source": source_name,
                "elapsed_seconds": round(elapsed, 3),
                "jobs_per_second": round(rate),
            }
        )
    else:
        print(f"enqueued {count:,} jobs from {source_name} in {elapsed:.2f} s ({rate:,.0f} jobs/s)")
    return 0
