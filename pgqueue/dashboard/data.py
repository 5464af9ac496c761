"""What the dashboard shows, read from the database: counts, throughput, failed and upcoming jobs,
schedules; and the bar chart's geometry. No web framework here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from .. import _queries as q
from .._db import translate_errors
from ..admin import list_jobs
from ..records import JobRecord

__all__ = [
    "STATES",
    "Bar",
    "Chart",
    "CountRow",
    "Minute",
    "ScheduleRow",
    "Snapshot",
    "describe_every",
    "make_chart",
    "read_snapshot",
]

#: The columns of the counts table, in order (``running``: a worker holds the job now).
STATES: Final = ("pending", "scheduled", "running", "failed", "completed", "cancelled")

#: How many failed and upcoming jobs the page lists, newest first.
LIST_LIMIT: Final = 50
#: The chart's span, in minutes.
CHART_MINUTES: Final = 60


@dataclass
class CountRow:
    """Job counts of one queue and job name, one per state in :data:`STATES`."""

    queue: str
    name: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))

    @property
    def total(self) -> int:
        """All jobs of this queue and name."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class Minute:
    """Jobs that finished in one minute: completed, and failed for good."""

    start: datetime
    completed: int
    failed: int


@dataclass(frozen=True)
class ScheduleRow:
    """Something that repeats: ``id`` is the pending job that runs next (at ``next_run_at``)."""

    id: int
    queue: str
    name: str
    every: str
    next_run_at: datetime


@dataclass(frozen=True)
class Bar:
    """One minute of the chart: a completed bar with a failed bar stacked on it (SVG units)."""

    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    """The throughput chart: bars, the scale, and the hour's totals."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    completed: int
    failed: int


@dataclass(frozen=True)
class Snapshot:
    """Everything the live part of the page shows, read at ``now``."""

    now: datetime
    rows: list[CountRow]
    totals: dict[str, int]
    chart: Chart
    failed: list[JobRecord]
    upcoming: list[JobRecord]
    schedules: list[ScheduleRow]

    @property
    def failed_names(self) -> list[tuple[str, str, int]]:
        """(queue, name, failed count) of every queue and name with failed jobs."""
        return [(r.queue, r.name, r.counts["failed"]) for r in self.rows if r.counts["failed"]]


def read_counts(conn: psycopg.Connection[Any]) -> list[CountRow]:
    """Counts per queue, name and state, in one grouped query (pgqueue.status_counts)."""
    with translate_errors():
        found = conn.execute(q.STATUS_COUNTS).fetchall()
    table: dict[tuple[str, str], CountRow] = {}
    for queue, name, state, count in found:
        row = table.setdefault((queue, name), CountRow(queue, name))
        row.counts[state] = row.counts.get(state, 0) + int(count)
    return [table[key] for key in sorted(table)]


def read_throughput(conn: psycopg.Connection[Any], minutes: int = CHART_MINUTES) -> list[Minute]:
    """Jobs finished per minute over the last ``minutes`` minutes (default 60), oldest first."""
    with translate_errors():
        found = conn.execute(q.THROUGHPUT, {"minutes": minutes}).fetchall()
    return [Minute(start, int(completed), int(failed)) for start, completed, failed in found]


def describe_every(spec: Any) -> str:
    """A schedule as text: ``every 1 hour``, ``cron */5 * * * *`` or the text schedule itself."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        return "?"
    if "kind" in spec and "text" in spec:
        return f"cron {spec['text']}" if spec["kind"] == "cron" else str(spec["text"])
    parts = []
    for unit in ("years", "months", "weeks", "days", "hours", "minutes", "seconds"):
        value = spec.get(unit)
        if value:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{shown} {unit[:-1] if value == 1 else unit}")
    return "every " + (", ".join(parts) if parts else "0 seconds")


def read_schedules(conn: psycopg.Connection[Any], limit: int = 200) -> list[ScheduleRow]:
    """Recurring jobs and jobs with a schedule, by next run (at most ``limit``, default 200)."""
    with translate_errors():
        found = conn.execute(q.SCHEDULES, {"limit": limit}).fetchall()
    return [
        ScheduleRow(int(job_id), queue, name or "", describe_every(spec), next_at)
        for job_id, queue, name, spec, next_at in found
    ]


def make_chart(minutes: list[Minute], *, width: int = 720, height: int = 140) -> Chart:
    """Lay out one stacked bar per minute (completed below, failed on top) in a
    ``width`` x ``height`` SVG (defaults 720 x 140), scaled to the busiest minute."""
    peak = max((m.completed + m.failed for m in minutes), default=0)
    scale = height / peak if peak else 0.0
    slot = width / max(len(minutes), 1)
    bars = []
    for index, minute in enumerate(minutes):
        done_h = minute.completed * scale
        failed_h = minute.failed * scale
        label = minute.start.astimezone(UTC).strftime("%H:%M")
        bars.append(
            Bar(
                x=round(index * slot + 1, 2),
                width=round(max(slot - 2, 1), 2),
                completed_y=round(height - done_h, 2),
                completed_height=round(done_h, 2),
                failed_y=round(height - done_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                title=f"{label} UTC: {minute.completed} completed, {minute.failed} failed",
            )
        )
    return Chart(
        width=width,
        height=height,
        bars=bars,
        peak=peak,
        completed=sum(m.completed for m in minutes),
        failed=sum(m.failed for m in minutes),
    )


def read_snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """Read everything the live part of the page shows, on one connection."""
    rows = read_counts(conn)
    totals = {state: sum(row.counts[state] for row in rows) for state in STATES}
    return Snapshot(
        now=datetime.now(UTC),
        rows=rows,
        totals=totals,
        chart=make_chart(read_throughput(conn)),
        failed=list_jobs(conn, status="failed", limit=LIST_LIMIT),
        upcoming=list_jobs(conn, status="pending", limit=LIST_LIMIT),
        schedules=read_schedules(conn),
    )
