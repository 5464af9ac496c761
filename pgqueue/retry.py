"""Retry policies: validation and normalisation only. The delay itself is computed in SQL (pgqueue.retry_delay)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from .errors import InvalidJobError

__all__ = ["BACKOFF_KINDS", "DEFAULT_MAX_ATTEMPTS", "normalize_retry"]

#: Attempts a job gets unless told otherwise (the first run included).
DEFAULT_MAX_ATTEMPTS: Final = 5

#: Backoff kinds pgqueue.retry_delay understands.
BACKOFF_KINDS: Final = ("fixed", "linear", "exponential", "polynomial")

_NUMBER_KEYS: Final = {
    "delay": (0.0, 315576000.0),
    "factor": (0.0, 16.0),
    "max_delay": (0.0, 315576000.0),
    "jitter": (0.0, 10.0),
}


def normalize_retry(policy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check a retry policy and return it as stored (``None`` = the default policy).

    Keys, all optional: ``backoff`` (one of :data:`BACKOFF_KINDS`, default
    ``"exponential"``), ``delay`` (seconds before the first retry, default 10),
    ``factor`` (default 2), ``max_delay`` (seconds, default 3600), ``jitter``
    (the delay is multiplied by a random factor in ``[1, 1 + jitter)``,
    default 0.1) and ``until`` (a timezone-aware datetime after which the job
    is not retried). Raises InvalidJobError naming the bad key.
    """
    if policy is None:
        return None
    if not isinstance(policy, Mapping):
        raise InvalidJobError(f"retry must be a mapping, got {type(policy).__name__}")
    out: dict[str, Any] = {}
    for key, value in policy.items():
        if key == "backoff":
            if value not in BACKOFF_KINDS:
                raise InvalidJobError(
                    f"retry backoff must be one of {', '.join(BACKOFF_KINDS)}; got {value!r}"
                )
            out[key] = value
        elif key in _NUMBER_KEYS:
            low, high = _NUMBER_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidJobError(f"retry {key} must be a number, got {value!r}")
            if not math.isfinite(value) or not low <= value <= high:
                raise InvalidJobError(
                    f"retry {key} must be between {low:g} and {high:g}, got {value!r}"
                )
            out[key] = value
        elif key == "until":
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidJobError("retry until must be a timezone-aware datetime")
            out[key] = value.isoformat()
        else:
            raise InvalidJobError(
                f"unknown retry key {key!r}; expected backoff, delay, factor, max_delay, jitter, until"
            )
    return out or None
