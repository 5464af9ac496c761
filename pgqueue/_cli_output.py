"""How the CLI prints: aligned text tables and JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from .records import JobRecord

__all__ = [
    "STATES",
    "format_jobs",
    "format_status",
    "format_table",
    "job_as_dict",
    "plural",
    "print_json",
]

#: The states `pgqueue status` reports, in column order.
STATES: Final = ("pending", "scheduled", "running", "completed", "failed", "cancelled")

#: How much of a job's last error `pgqueue jobs` shows.
ERROR_WIDTH: Final = 60


def plural(count: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON (datetimes as ISO-8601)."""
    print(json.dumps(value, indent=2, default=_json_default))


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    footer: Sequence[str] | None = None,
) -> str:
    """Columns padded to their widest cell, two spaces apart; columns in ``right`` right-aligned.

    A rule of dashes goes under the header (and above the footer, if any).
    """
    lines = [header, *rows, *([footer] if footer is not None else [])]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        text = [
            value.rjust(width) if i in right else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [line(header), rule, *(line(row) for row in rows)]
    if footer is not None:
        out += [rule, line(footer)]
    return "\n".join(out)


def format_status(rows: Sequence[Mapping[str, Any]], totals: Mapping[str, int]) -> str:
    """The `pgqueue status` table: one row per queue and name, a TOTAL row under a rule."""
    columns = ["queue", "name", *STATES, "total"]
    cells = [
        [str(row[c]) if c != "name" else (row[c] or "(unnamed)") for c in columns] for row in rows
    ]
    return format_table(
        [c.upper() for c in columns],
        cells,
        right=range(2, len(columns)),
        footer=["TOTAL", "", *(str(totals[c]) for c in columns[2:])],
    )


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone().isoformat(sep=" ", timespec="seconds")


def _first_line(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def format_jobs(jobs: Sequence[JobRecord]) -> str:
    """The `pgqueue jobs` table: id, queue, name, status, attempts/max, scheduled_at, last error."""
    header = ["ID", "QUEUE", "NAME", "STATUS", "ATTEMPTS", "SCHEDULED_AT", "LAST_ERROR"]
    rows = [
        [
            str(job.id),
            job.queue,
            job.name or "(unnamed)",
            str(job.status),
            f"{job.attempts}/{job.max_attempts}",
            _when(job.scheduled_at),
            _first_line(job.last_error),
        ]
        for job in jobs
    ]
    return format_table(header, rows, right={0, 4})


def job_as_dict(job: JobRecord) -> dict[str, Any]:
    """Every field of ``job``, ready for :func:`print_json`."""
    data = dataclasses.asdict(job)
    data["status"] = str(job.status)
    return data
