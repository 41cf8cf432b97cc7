"""`make dom0` installs a working command and systemd user units."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.server import REPO


def test_make_dom0_installs_launcher_modules_and_units(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(REPO), "dom0", f"DESTDIR={tmp_path}"], check=True)
    launcher = tmp_path / "usr/bin/qbackup"
    assert launcher.stat().st_mode & 0o111
    assert 'sys.path.insert(0, "/usr/lib/qbackup")' in launcher.read_text()
    assert (tmp_path / "usr/lib/qbackup/dom0/cli.py").exists()
    # The installed modules run on the system Python (what dom0 has), from the
    # installed tree only.
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c",
         f"import sys; sys.path.insert(0, '{tmp_path}/usr/lib/qbackup');"
         "from dom0.cli import main; sys.exit(main(['--help']))"],
        capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "exit codes:" in result.stdout and "75" in result.stdout
    units = tmp_path / "usr/lib/systemd/user"
    service = (units / "qbackup@.service").read_text()
    timer = (units / "qbackup@.timer").read_text()
    assert "ExecStart=/usr/bin/qbackup backup --job %i" in service
    assert "Persistent=true" in timer and "WantedBy=timers.target" in timer


def test_every_subcommand_help_has_examples_and_the_exit_codes() -> None:
    from dom0.arguments import SUBCOMMANDS
    from dom0.errors import QbackupExit

    for command in SUBCOMMANDS:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "qbackup"), command, "--help"],
            capture_output=True, text=True, check=False)
        assert result.returncode == 0
        assert "example" in result.stdout, command
        codes = result.stdout.split("exit codes:\n", 1)[1]
        for code in QbackupExit:
            assert f"{int(code):>5}  {code.meaning}\n" in codes, (command, code)


def unit_seconds(value: str) -> float:
    """Given a systemd time span like '12h', '90min', '120', return seconds."""
    units = {"h": 3600, "min": 60, "s": 1, "": 1}
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units[value[len(number):]]


@pytest.mark.parametrize("unit", ["qbackup@.service", "qbackup-drill@.service"])
def test_the_backup_and_drill_units_have_a_finite_start_timeout_that_fits_a_long_backup(
        unit: str) -> None:
    settings = dict(line.split("=", 1) for line in
                    (REPO / "dom0/systemd" / unit).read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    start = settings["TimeoutStartSec"]
    assert start != "infinity"
    # Long enough for 300 GiB at 10 MB/s; the stop timeout leaves qbackup's
    # cancel (at most 30 s) time before SIGKILL.
    assert unit_seconds(start) >= 300 * 2**30 / 10e6
    assert unit_seconds(settings["TimeoutStopSec"]) >= 60
    assert settings["KillMode"] == "mixed"
