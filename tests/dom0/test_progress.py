"""Progress: a bar on a terminal, one journal line per 10%."""

from __future__ import annotations

import io
import logging

import pytest

from dom0.progress import ProgressReporter


def test_progress_logs_every_ten_percent_once_and_draws_a_bar(
        caplog: pytest.LogCaptureFixture) -> None:
    terminal = io.StringIO()
    progress = ProgressReporter("b-20261122T235959Z", terminal)
    with caplog.at_level(logging.INFO, logger="dom0.progress"):
        for percent in (1, 9.9, 10, 15, 37, 37, 100, "bogus-but-float-like" and 100):
            progress(percent)
        progress.finish()
    steps = [record.getMessage() for record in caplog.records]
    assert steps == [f"progress b-20261122T235959Z: {n}%" for n in range(10, 101, 10)]
    assert terminal.getvalue().endswith("[" + "#" * 40 + "] 100.0%\n")


def test_progress_clamps_hostile_values(caplog: pytest.LogCaptureFixture) -> None:
    progress = ProgressReporter("b", None)
    with caplog.at_level(logging.INFO, logger="dom0.progress"):
        progress(-5)
        progress(1e9)
    assert progress.percent == 100.0 and len(caplog.records) == 10
