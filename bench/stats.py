"""Small numeric helpers: summaries of repeated rates, latency percentiles, RSS reading."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def summarize(samples: Sequence[float], **extra: Any) -> dict[str, Any]:
    """Median and best of repeated jobs/s samples (the median is what ratios use)."""
    values = [float(x) for x in samples]
    return {
        "median": statistics.median(values) if values else None,
        "best": max(values) if values else None,
        "samples": [round(x, 1) for x in values],
        **extra,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(seconds: Sequence[float], *, expected: int) -> dict[str, Any]:
    """p50/p95/p99/max in milliseconds of enqueue-commit to handler-start delays."""
    ms = [x * 1000.0 for x in seconds]
    return {
        "count": len(ms),
        "expected": expected,
        "p50_ms": round(percentile(ms, 50), 3) if ms else None,
        "p95_ms": round(percentile(ms, 95), 3) if ms else None,
        "p99_ms": round(percentile(ms, 99), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
    }


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (VmRSS in /proc), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
