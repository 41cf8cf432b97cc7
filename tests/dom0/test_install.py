"""`make dom0` installs a working command and systemd user units."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness.server import REPO


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


def test_every_subcommand_help_has_examples() -> None:
    for command in ("backup", "list", "check", "verify", "restore", "status"):
        result = subprocess.run(
            ["/opt/qbackup-venv/bin/qbackup", command, "--help"],
            capture_output=True, text=True, check=False)
        assert result.returncode == 0
        assert "example" in result.stdout, command
