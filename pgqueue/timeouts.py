"""Job timeouts: the accepted values, and the limits Postgres enforces inside a timed job's transaction.

The watchdog that ends a job's transaction when its time is up lives in
:mod:`pgqueue.supervisor`.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Final

from ._show import show
from .errors import InvalidJobError, PgQueueError

__all__ = ["MAX_TIMEOUT", "check_timeout", "server_limit_ms"]

#: The longest timeout, in seconds (about 23 days): Postgres's statement_timeout
#: holds at most 2^31 - 1 milliseconds.
MAX_TIMEOUT: Final = 2_000_000.0

#: Postgres's own limits in a timed job's transaction are the timeout plus this
#: much: they are a backstop for a worker too stuck to run its watchdog (a
#: handler holding the GIL in C code, a stopped process); the watchdog acts first.
SERVER_GRACE: Final = 5.0


def check_timeout(
    value: Any, *, what: str = "timeout", error: type[PgQueueError] = InvalidJobError
) -> float | None:
    """A timeout in seconds (a number or a timedelta), more than 0 and at most MAX_TIMEOUT; None stays None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number of seconds, got {type(value).__name__}")
    # A plain comparison: false for NaN, and no float() overflow for a huge int.
    if not 0 < value <= MAX_TIMEOUT:
        raise error(
            f"{what} must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {show(value)}"
        )
    return float(value)


def server_limit_ms(timeout: float) -> str:
    """The statement and idle-in-transaction timeouts for a job with this timeout, as set_config text."""
    return str(math.ceil((timeout + SERVER_GRACE) * 1000))
