"""Schedules for recurring jobs: Compas-style intervals. (Cron and text schedules come later.)"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

from .errors import InvalidJobError

__all__ = ["INTERVAL_KEYS", "normalize_interval"]

#: The keys an interval may have; at least one must be positive.
INTERVAL_KEYS: Final = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")

_MAX_UNIT: Final = 1_000_000


def normalize_interval(interval: Mapping[str, Any] | timedelta) -> dict[str, int | float]:
    """Check an interval and return it as stored.

    A mapping of :data:`INTERVAL_KEYS` to non-negative whole numbers
    (``seconds`` may be fractional), at least one of them positive; or a
    positive ``timedelta``. Months and years are calendar months and years:
    31 January + 1 month is the end of February. Raises InvalidJobError that
    names the bad key.
    """
    if isinstance(interval, timedelta):
        if interval <= timedelta(0):
            raise InvalidJobError(f"interval must be positive, got {interval}")
        return {"days": interval.days, "seconds": interval.seconds + interval.microseconds / 1e6}
    if not isinstance(interval, Mapping):
        raise InvalidJobError(
            f"interval must be a mapping like {{'hours': 1}} or a timedelta, got {type(interval).__name__}"
        )
    out: dict[str, int | float] = {}
    for key, given in interval.items():
        value = given
        if key not in INTERVAL_KEYS:
            raise InvalidJobError(
                f"unknown interval key {key!r}; expected some of {', '.join(INTERVAL_KEYS)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidJobError(f"interval {key} must be a number, got {value!r}")
        if isinstance(value, float) and key != "seconds":
            if not value.is_integer():
                raise InvalidJobError(f"interval {key} must be a whole number, got {value!r}")
            value = int(value)
        if not math.isfinite(value) or value < 0:
            raise InvalidJobError(f"interval {key} must not be negative, got {value!r}")
        if value > _MAX_UNIT:
            raise InvalidJobError(f"interval {key} must be at most {_MAX_UNIT}, got {value!r}")
        out[key] = value
    if not any(out.values()):
        raise InvalidJobError("interval must have at least one positive key, e.g. {'hours': 1}")
    return out
