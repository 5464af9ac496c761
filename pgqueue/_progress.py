"""The CLI's progress bar: redrawn in place on a terminal, plain lines or nothing elsewhere.

Hand-written rather than a dependency: it is about forty lines, draws only on
stderr, and the CLI needs exactly two behaviours from it (a bar on a terminal;
a line per 10% or silence in a pipe), which tqdm would need configuring into.
"""

from __future__ import annotations

import time
from typing import Final, TextIO

__all__ = ["Progress"]


class Progress:
    """A bar of ``done`` out of ``total`` with a rate, drawn on ``stream``.

    On a terminal it is redrawn in place at most every ``interval`` seconds
    (and always at 100%). Elsewhere it prints a line about every 10% when
    ``plain`` (the demo's log-friendly output), and nothing at all otherwise, so
    pipes and scripts get clean output. ``total`` None (a stream of unknown
    length) draws a count and a rate without a bar. ``position`` lets the bar
    follow something else than the count (bytes read of a file, say).
    """

    WIDTH: Final = 30

    def __init__(
        self,
        total: int | None,
        stream: TextIO,
        *,
        plain: bool = False,
        unit: str = "jobs",
        interval: float = 0.1,
    ) -> None:
        self.total = total if total else None
        self.stream = stream
        self.tty = stream.isatty()
        self.plain = plain and not self.tty
        self.unit = unit
        self.interval = interval
        self.started = time.monotonic()
        self._drawn_at = float("-inf")
        self._next_mark = 10
        self._width = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is drawn at all (a terminal, or ``plain``)."""
        return self.tty or self.plain

    def update(self, done: int, *, position: int | None = None, note: str = "") -> None:
        """Show ``done`` (out of ``total``), the rate since the start, and ``note``."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            percent = -1
            text = f"{done:>9,} {self.unit}  {rate:9,.0f} {self.unit}/s"
        else:
            at = min(self.total, done if position is None else position)
            percent = at * 100 // self.total
            filled = at * self.WIDTH // self.total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            count = (
                f"{done:>{len(str(self.total))}}/{self.total}"
                if position is None
                else f"{done:,} {self.unit}"
            )
            text = f"[{bar}] {count} {percent:3d}%  {rate:7.0f} {self.unit}/s"
        if note:
            text += f"  {note}"
        if self.tty:
            if now - self._drawn_at < self.interval and percent != 100:
                return
            self._drawn_at = now
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + pad)
            self.stream.flush()
        elif percent >= self._next_mark:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._next_mark = (percent // 10 + 1) * 10

    def close(self) -> None:
        """End the line on a terminal (nothing to do elsewhere)."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
