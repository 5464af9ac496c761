"""Waking idle worker slots: NOTIFY-driven, debounced, with no lost wake-ups."""

from __future__ import annotations

import threading

__all__ = ["Waker"]


class Waker:
    """Wakes idle slots: one per notification, and a busy slot wakes one more (so a
    burst fans out as far as it has jobs, no further). A wake-up that finds no slot
    waiting is kept (up to one per slot), so none is lost between a slot's empty
    dequeue and its wait."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._tokens = 0
        self._waiting = 0
        self._cap = slots

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not self._tokens:
                self._waiting += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._waiting -= 1
            if self._tokens:
                self._tokens -= 1

    def notify(self) -> None:
        with self._cond:
            self._tokens = min(self._tokens + 1, self._cap)
            self._cond.notify()

    def nudge(self) -> None:
        if not self._waiting:  # read without the lock (a busy worker nudges after every job)
            return
        with self._cond:
            if self._waiting:
                self._tokens = min(self._tokens + 1, self._cap)
                self._cond.notify()

    def wake_all(self) -> None:
        with self._cond:
            self._tokens = self._cap
            self._cond.notify_all()
