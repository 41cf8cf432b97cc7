"""Progress: a bar with rate and time left on a terminal, one journal line per 10%."""

from __future__ import annotations

import io
import logging

import pytest

from dom0.progress import ProgressReporter, show_duration

MIB = 1024 * 1024


class Clock:
    """A clock the test moves by hand (the reporter's only source of time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_every_ten_percent_once_and_draws_a_bar(
        caplog: pytest.LogCaptureFixture) -> None:
    terminal = io.StringIO()
    progress = ProgressReporter("b-20261122T235959Z", terminal, clock=Clock())
    with caplog.at_level(logging.INFO, logger="dom0.progress"):
        for percent in (1, 9.9, 10, 15, 37, 37, 100):
            progress(percent)
        progress.finish()
    steps = [record.getMessage() for record in caplog.records]
    assert steps == [f"progress b-20261122T235959Z: {n}%" for n in range(10, 101, 10)]
    assert terminal.getvalue().endswith("\r[" + "#" * 30 + "] 100.0%  " + " " * 28 + "\n")


def test_bar_shows_rate_and_time_left_from_the_estimate() -> None:
    clock = Clock()
    terminal = io.StringIO()
    progress = ProgressReporter("b", terminal, estimate=1000 * MIB, clock=clock)
    clock.now += 50  # 25% of 1000 MiB in 50 s: 5 MiB/s, 150 s to go
    progress(25)
    assert progress.rate_and_eta() == "5.0 MiB/s, 2m30s left"
    assert terminal.getvalue().rstrip().endswith("25.0%  5.0 MiB/s, 2m30s left")


def test_without_an_estimate_only_the_time_left_is_shown() -> None:
    clock = Clock()
    progress = ProgressReporter("b", None, clock=clock)
    assert progress.rate_and_eta() == ""  # nothing known yet
    clock.now += 7200
    progress(50)
    assert progress.rate_and_eta() == "2h00m left"


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59.9, "59s"), (61, "1m01s"),
                                                (3599, "59m59s"), (3660, "1h01m"), (-5, "0s")])
def test_durations_read_like_a_clock(seconds: float, shown: str) -> None:
    assert show_duration(seconds) == shown


def test_progress_clamps_hostile_values(caplog: pytest.LogCaptureFixture) -> None:
    progress = ProgressReporter("b", None)
    with caplog.at_level(logging.INFO, logger="dom0.progress"):
        progress(-5)
        progress(1e9)
    assert progress.percent == 100.0 and len(caplog.records) == 10
