"""Named priorities on pgqueue's one integer scale (lower runs first)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from ._show import show
from .errors import InvalidJobError

__all__ = ["PRIORITY_NAMES", "to_priority"]

#: Case-insensitive names accepted wherever a priority is: Reaction's five
#: (yes, "medium" outranks "normal" there) and Gadget's LOW / DEFAULT / HIGH.
#: Compas's default priority is 1 and Redwood's 50 on the same scale.
PRIORITY_NAMES: Final = MappingProxyType(
    {
        "critical": -15,
        "high": -10,
        "medium": -5,
        "normal": 0,
        "default": 0,
        "low": 10,
    }
)


def to_priority(value: Any) -> int:
    """An integer priority, or a name from :data:`PRIORITY_NAMES` turned into one."""
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value.strip().lower()]
        except KeyError:
            names = ", ".join(PRIORITY_NAMES)
            raise InvalidJobError(
                f"unknown priority name {show(value)}; use an integer or one of {names}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(
            f"priority must be an integer or a priority name, got {type(value).__name__} {show(value)}"
        )
    if not -(2**31) <= value <= 2**31 - 1:
        raise InvalidJobError(
            f"priority must be between {-(2**31)} and {2**31 - 1}, got {show(value)}"
        )
    return value
