"""dom0/README.md's tables say what the code does: each table lives in the
code (errors.QbackupExit, settings.SETTINGS, errors.CARRIER_STATUS_ERRORS) and
is shown, not restated, in the README; this test holds them together."""

from __future__ import annotations

from pathlib import Path

from dom0 import errors
from dom0.settings import SETTINGS, describe

README = Path(__file__).resolve().parents[2] / "dom0" / "README.md"


def table_under(heading: str) -> list[list[str]]:
    """Return the rows (cells stripped) of the first table after HEADING."""
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def test_exit_code_table_is_the_code() -> None:
    # Code and meaning are the code's; the third column says what to do.
    rows = table_under("## Exit codes")
    assert [row[:2] for row in rows] == [
        [str(int(code)), code.meaning] for code in errors.QbackupExit]
    assert all(len(row) == 3 for row in rows)


def test_every_failure_code_says_what_to_do() -> None:
    # A user who meets a failure exit finds the next step beside it; only
    # success and the two signals need none.
    silent = {str(code) for code in (errors.QbackupExit.OK, errors.QbackupExit.SIGINT,
                                                  errors.QbackupExit.SIGTERM)}
    assert [row[0] for row in table_under("## Exit codes") if not row[2]] == sorted(
        silent, key=int)


def test_job_settings_table_is_the_code() -> None:
    assert table_under("### Job settings") == [
        [f"`{key}`", describe(setting),
         f"`{setting.option}`" if setting.option and setting.option.startswith("-")
         else setting.option or "-"]
        for key, setting in SETTINGS.items()]


def test_carrier_status_table_is_the_code() -> None:
    assert table_under("### How dom0 reads the carrier's exit status") == [
        [str(int(status)), str(error.exit_code), message]
        for status, (error, message) in errors.CARRIER_STATUS_ERRORS.items()]
