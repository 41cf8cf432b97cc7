"""Ages in `qbackup status`: `--max-age` and `--max-drill-age` take units
(90s, 36h, 7d; a bare number means hours, as it always did, and as in
`qbackup-server status`), the job file's `drill_max_age` too; ages are shown
with their unit, and a stale line says why. No server needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dom0.cli import main
from dom0.drill import Drill, append_drill, drills_path
from dom0.errors import QbackupExit

HOUR = 3600


pytestmark = pytest.mark.usefixtures("quiet_state")


def succeeded(tmp_path: Path, hours_ago: float) -> None:
    end = time.time() - hours_ago * HOUR
    (tmp_path / "history.jsonl").write_text(json.dumps({
        "job": "daily", "carrier": "c", "name": "laptop-20261120T000000Z", "size": 10,
        "sha256": "a" * 64, "start": end - 60, "end": end, "outcome": "ok"}) + "\n")


@pytest.mark.parametrize("limit", ["36h", "36", "2160m", "1.5d", "129600s"])
def test_a_stale_backup_says_how_old_it_is_and_what_the_limit_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str) -> None:
    succeeded(tmp_path, 40)
    assert main(["-o", "status", "--max-age", limit]) == QbackupExit.STALE
    assert "no recent enough backup for: daily: newest backup 40.0h old > 36h (exit 7)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["2d", "41", "41h"])
def test_a_backup_younger_than_the_limit_is_fine(tmp_path: Path, limit: str) -> None:
    succeeded(tmp_path, 40)
    assert main(["-o", "status", "--max-age", limit]) == 0


def test_status_shows_ages_with_their_unit(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    succeeded(tmp_path, 40)
    assert main(["status"]) == 0
    assert "(40.0h ago)" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--max-age", "--max-drill-age"])
def test_an_age_without_a_known_unit_is_a_usage_error(
        option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", option, "36x"]) == QbackupExit.USAGE
    assert f"argument {option}: not an age: use a number and a unit, s, m, h or d (36h, 7d;" \
           " a bare number means hours)" in capsys.readouterr().err


@pytest.mark.parametrize(("setting", "option"), [
    ("    drill_max_age: 1d\n", []), ("    drill_max_age: 24\n", []),
    ("", ["--max-drill-age", "1d"]), ("", ["--max-drill-age", "24"]),
])
def test_a_stale_drill_says_how_old_it_is_and_what_the_limit_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str,
        option: list[str]) -> None:
    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  daily:\n    carrier: c\n    prefix: laptop\n"
                    "    passphrase_vm: v\n" + setting)
    succeeded(tmp_path, 1)
    now = time.time()
    append_drill(drills_path(tmp_path / "history.jsonl"),
                 Drill("daily", ["laptop-20261120T000000Z"], now - 41 * HOUR, now - 40 * HOUR,
                       "ok"))
    assert main(["-o", "status", "--config", str(path), *option]) == QbackupExit.STALE
    err = capsys.readouterr().err
    assert "no recent enough drill for: daily: last drill 40.0h old > 24h (exit 7)" in err


def test_a_job_file_age_without_a_known_unit_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  daily:\n    carrier: c\n    prefix: laptop\n"
                    "    passphrase_vm: v\n    drill_max_age: 3w\n")
    assert main(["-o", "config", "check", "--config", str(path)]) == QbackupExit.USAGE
    assert f"{path}:6: jobs.daily.drill_max_age: not an age: use a number and a unit" \
        in capsys.readouterr().err
