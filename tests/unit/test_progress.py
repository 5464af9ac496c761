"""The CLI's progress bar: redrawn on a terminal, plain lines or silence elsewhere."""

from __future__ import annotations

import io

from pgqueue._progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(10, out)
    assert not bar.enabled
    for done in range(11):
        bar.update(done)
    bar.close()
    assert out.getvalue() == ""


def test_plain_prints_a_line_per_ten_percent_once() -> None:
    out = io.StringIO()
    bar = Progress(200, out, plain=True)
    for done in [*range(0, 201, 7), 200, 200]:
        bar.update(done, note="0 failed")
    bar.close()
    lines = out.getvalue().splitlines()
    percents = [int(line.split("%")[0].split()[-1]) for line in lines]
    assert percents == sorted(set(percents))
    assert len(lines) == 10
    assert lines[-1].startswith("[" + "#" * Progress.WIDTH + "] 200/200 100%")
    assert lines[-1].endswith("jobs/s  0 failed")


def test_terminal_redraws_in_place_and_ends_the_line() -> None:
    out = Terminal()
    bar = Progress(4, out, interval=0)
    for done in range(5):
        bar.update(done)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 5
    assert "\r[" + "." * Progress.WIDTH + "] 0/4   0%" in text
    assert "\r[" + "#" * Progress.WIDTH + "] 4/4 100%" in text
    assert text.endswith("\n")
    assert "\n" not in text[:-1]


def test_terminal_throttles_but_always_draws_the_end() -> None:
    out = Terminal()
    bar = Progress(1000, out, interval=3600)
    for done in range(1001):
        bar.update(done)
    assert out.getvalue().count("\r") == 2  # the first draw and 100%


def test_position_and_unknown_total() -> None:
    out = Terminal()
    bar = Progress(1000, out, interval=0)
    bar.update(12_345, position=500)
    assert "] 12,345 jobs  50%" in out.getvalue()
    unknown = Terminal()
    Progress(None, unknown, interval=0).update(12_345)
    assert "12,345 jobs" in unknown.getvalue()
    assert "[" not in unknown.getvalue()
