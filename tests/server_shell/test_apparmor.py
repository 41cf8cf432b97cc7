"""The AppArmor profile parses, and says only what it should."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness.server import REPO

PROFILE = REPO / "apparmor" / "usr.sbin.qbackup-shell"


def parse(path: Path) -> subprocess.CompletedProcess[bytes]:
    """Compile PATH without loading it (-Q) or caching it (-K)."""
    return subprocess.run(
        ["apparmor_parser", "-Q", "-K", str(path)], capture_output=True, timeout=60, check=False
    )


def rules() -> list[str]:
    """The profile's lines without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in PROFILE.read_text().splitlines())
    return [line for line in lines if line]


def test_profile_compiles() -> None:
    result = parse(PROFILE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        lambda text: text.rsplit("}", 1)[0],  # the profile never closes
        lambda text: text.replace("rwkl,", "rwkl"),  # a rule without its comma
        lambda text: text.replace("@{QBACKUP_STORAGE}=", "@{QBACKUP_STORAGE}"),
    ],
    ids=["no-closing-brace", "missing-comma", "bad-variable"],
)
def test_a_broken_copy_does_not_compile(tmp_path: Path, breakage) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "usr.sbin.qbackup-shell"
    broken.write_text(breakage(PROFILE.read_text()))
    assert parse(broken).returncode != 0


def test_profile_attaches_to_the_installed_shell() -> None:
    assert "profile qbackup-shell /usr/sbin/qbackup-shell {" in rules()


def test_profile_executes_nothing_but_the_interpreter() -> None:
    executing = [rule for rule in rules() if re.search(r"\s[a-z]*[iupcU]x[a-z]*,$", rule)]
    assert executing == ["/usr/bin/python3* rix,"]


def test_profile_opens_no_network_sockets_but_syslog() -> None:
    network = [rule for rule in rules() if rule.startswith(("network", "unix"))]
    assert network == ["network unix dgram,", "unix (create, connect, send) type=dgram,"]


def test_profile_writes_only_under_the_storage_root_and_dev_log() -> None:
    writable = [
        rule
        for rule in rules()
        if not rule.startswith(("deny", "signal", "network", "unix"))
        and re.search(r"\s[rmkl]*w[rmkl]*,$", rule)
    ]
    assert writable == [
        "@{QBACKUP_STORAGE}** rwkl,",
        "/dev/log w,",
        "/run/systemd/journal/dev-log w,",
    ]
    assert "deny @{QBACKUP_STORAGE}.ssh/** wl," in rules()
