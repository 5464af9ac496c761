"""Short reprs of caller-supplied values for error messages, which must never fail themselves."""

from __future__ import annotations

from typing import Final

#: The longest repr an error message quotes, in characters.
MAX_SHOWN: Final = 80


def show(value: object) -> str:
    """``repr(value)``, at most :data:`MAX_SHOWN` characters, and never an exception.

    repr() itself raises for an int of more than 4300 digits (and may for any object), and a
    16 MB string does not belong in an error message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        sign = "-" if value < 0 else ""
        return f"{sign}an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
