"""dom0/README.md's tables say what the code does: each table lives in the
code (errors.EXIT_CODES, config.SETTINGS, errors.CARRIER_STATUS_ERRORS) and
is shown, not restated, in the README; this test holds them together."""

from __future__ import annotations

from pathlib import Path

from dom0 import config, errors

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
    assert table_under("## Exit codes") == [
        [str(code), meaning] for code, meaning in errors.EXIT_CODES.items()]


def test_job_settings_table_is_the_code() -> None:
    assert table_under("### Job settings") == [
        [f"`{key}`", setting.meaning,
         f"`{setting.option}`" if setting.option and setting.option.startswith("-")
         else setting.option or "-"]
        for key, setting in config.SETTINGS.items()]


def test_carrier_status_table_is_the_code() -> None:
    assert table_under("### How dom0 reads the carrier's exit status") == [
        [str(int(status)), str(error.exit_code), message]
        for status, (error, message) in errors.CARRIER_STATUS_ERRORS.items()]


def test_every_exit_code_is_reachable_from_an_error_class() -> None:
    # Each documented failure code is some error's code (or a signal's).
    codes = {cls.exit_code for cls in _subclasses(errors.QbackupError)
             if isinstance(cls.__dict__.get("exit_code"), int)}
    assert set(errors.EXIT_CODES) - codes == {errors.EXIT_OK, errors.EXIT_SIGINT,
                                              errors.EXIT_SIGTERM}


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found | {cls}
