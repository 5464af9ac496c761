"""The ``pgqueue`` command (placeholder until the CLI lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the pgqueue command line; returns the exit code."""
    return 0
