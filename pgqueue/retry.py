"""Retry policies: validation and normalisation only. The delay itself is computed in SQL (pgqueue.retry_delay)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from ._show import show
from .errors import InvalidJobError

__all__ = [
    "BACKOFF_KINDS",
    "DEFAULT_MAX_ATTEMPTS",
    "GADGET_DEFAULT_RETRIES",
    "REDWOOD_MAX_ATTEMPTS",
    "REDWOOD_RETRY",
    "gadget_retry",
    "normalize_retry",
    "reaction_retry",
]

#: Attempts a job gets unless told otherwise (the first run included).
DEFAULT_MAX_ATTEMPTS: Final = 5

#: Backoff kinds pgqueue.retry_delay understands.
BACKOFF_KINDS: Final = ("fixed", "linear", "exponential", "polynomial")

#: Ten years, in seconds: the longest delay or duration a policy may name.
FOREVER_SECONDS: Final = 315_576_000.0

_INT4_MAX: Final = 2**31 - 1

_NUMBER_KEYS: Final = {
    "delay": (0.0, 315576000.0),
    "max_duration": (0.0, 315576000.0),
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
    default 0.1), ``max_duration`` (seconds after the job was created after
    which it is not retried) and ``until`` (a timezone-aware datetime after
    which it is not retried). Raises InvalidJobError naming the bad key.
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
                    f"retry backoff must be one of {', '.join(BACKOFF_KINDS)}; got {show(value)}"
                )
            out[key] = value
        elif key in _NUMBER_KEYS:
            low, high = _NUMBER_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidJobError(f"retry {key} must be a number, got {show(value)}")
            # A plain comparison: also false for NaN, and math.isfinite() overflows on a huge int.
            if not low <= value <= high:
                raise InvalidJobError(
                    f"retry {key} must be between {low:g} and {high:g}, got {show(value)}"
                )
            out[key] = value
        elif key == "until":
            out[key] = _until(value).isoformat()
        else:
            raise InvalidJobError(
                f"unknown retry key {show(key)}; expected backoff, delay, factor, max_delay, jitter,"
                " max_duration, until"
            )
    return out or None


def _until(value: Any) -> datetime:
    if isinstance(value, str):  # a stored policy holds it as ISO-8601 text
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidJobError(f"retry until is not an ISO-8601 time: {show(value)}") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidJobError("retry until must be a timezone-aware datetime")
    return value


def _seconds(what: str, milliseconds: float) -> float:
    """Milliseconds as seconds; InvalidJobError for an int too large for a float."""
    try:
        return milliseconds / 1000
    except OverflowError:
        raise InvalidJobError(f"{what} is too large: {show(milliseconds)} ms") from None


#: Redwood's defaults: 24 attempts, ``1000 ms * attempts^4`` between them.
REDWOOD_MAX_ATTEMPTS: Final = 24
REDWOOD_RETRY: Final = {
    "backoff": "polynomial",
    "delay": 1,
    "factor": 4,
    "max_delay": FOREVER_SECONDS,
    "jitter": 0,
}

#: Gadget's default retry count (the first run is extra).
GADGET_DEFAULT_RETRIES: Final = 6
_GADGET_MAX_DURATION: Final = 7 * 24 * 3600


def reaction_retry(spec: int | Mapping[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """Reaction's ``retry`` option as ``(max_attempts, policy)``.

    ``None``: no retry (one attempt). An int ``n`` or ``{"retries": n}``: n
    retries. A mapping without ``retries`` retries forever (as Reaction
    does). ``wait`` is milliseconds (default 300000, five minutes);
    ``backoff`` is ``"constant"`` (default) or ``"exponential"`` (wait,
    2 x wait, 4 x wait, ...); ``until`` a timezone-aware datetime. No jitter.
    """
    if spec is None:
        return 1, None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"retries": spec}
    if not isinstance(spec, Mapping):
        raise InvalidJobError(f"retry must be a mapping or an int, got {type(spec).__name__}")
    unknown = set(spec) - {"retries", "wait", "backoff", "until"}
    if unknown:
        raise InvalidJobError(
            f"unknown retry key {sorted(map(show, unknown))[0]}; Reaction's are retries, wait, backoff, until"
        )
    retries = spec.get("retries", _INT4_MAX - 1)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidJobError(f"retry retries must be a whole number >= 0, got {show(retries)}")
    backoff = spec.get("backoff", "constant")
    if backoff not in ("constant", "exponential"):
        raise InvalidJobError(
            f"retry backoff must be 'constant' or 'exponential', got {show(backoff)}"
        )
    wait = spec.get("wait", 300_000)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)):
        raise InvalidJobError(f"retry wait must be milliseconds, got {show(wait)}")
    policy: dict[str, Any] = {
        "backoff": "fixed" if backoff == "constant" else "exponential",
        "delay": _seconds("retry wait", wait),
        "factor": 2,
        "max_delay": FOREVER_SECONDS,
        "jitter": 0,
    }
    if "until" in spec:
        policy["until"] = spec["until"]
    return min(retries + 1, _INT4_MAX), normalize_retry(policy)


_GADGET_KEYS: Final = {
    "retry_count": "retry_count",
    "retryCount": "retry_count",
    "initial_interval": "initial_interval",
    "initialInterval": "initial_interval",
    "backoff_factor": "backoff_factor",
    "backoffFactor": "backoff_factor",
    "max_interval": "max_interval",
    "maxInterval": "max_interval",
    "randomize_interval": "randomize_interval",
    "randomizeInterval": "randomize_interval",
}


def gadget_retry(spec: int | Mapping[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """Gadget's ``retries`` option as ``(max_attempts, policy)``.

    ``None``: 6 retries. An int ``n``: n retries (0 = none). A mapping with
    ``retry_count`` (default 6), ``initial_interval`` (ms, default 1000),
    ``backoff_factor`` (default 2), ``max_interval`` (ms, default unbounded)
    and ``randomize_interval`` (default False: when true each delay is
    multiplied by a random factor in [1, 2)); camelCase spellings work too.
    Retrying always stops 7 days after the job was created.
    """
    if spec is None:
        spec = {}
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"retry_count": spec}
    if not isinstance(spec, Mapping):
        raise InvalidJobError(f"retries must be a mapping or an int, got {type(spec).__name__}")
    options: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in _GADGET_KEYS:
            raise InvalidJobError(
                f"unknown retries key {show(key)}; Gadget's are retry_count, initial_interval,"
                " backoff_factor, max_interval, randomize_interval"
            )
        options[_GADGET_KEYS[key]] = value
    count = options.get("retry_count", GADGET_DEFAULT_RETRIES)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidJobError(f"retries retry_count must be a whole number >= 0, got {show(count)}")
    randomize = options.get("randomize_interval", False)
    if not isinstance(randomize, bool):
        raise InvalidJobError(
            f"retries randomize_interval must be true or false, got {show(randomize)}"
        )
    milliseconds = {}
    for key, default in (("initial_interval", 1000), ("max_interval", FOREVER_SECONDS * 1000)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidJobError(f"retries {key} must be milliseconds, got {show(value)}")
        milliseconds[key] = value
    policy = {
        "backoff": "exponential",
        "delay": _seconds("retries initial_interval", milliseconds["initial_interval"]),
        "factor": options.get("backoff_factor", 2),
        # Unbounded is allowed: clamped before dividing (a huge int overflows a float).
        "max_delay": _seconds(
            "retries max_interval", min(milliseconds["max_interval"], FOREVER_SECONDS * 1000)
        ),
        "jitter": 1 if randomize else 0,
        "max_duration": _GADGET_MAX_DURATION,
    }
    return min(count + 1, _INT4_MAX), normalize_retry(policy)
