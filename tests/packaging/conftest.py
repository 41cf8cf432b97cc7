"""The packages `make packages` builds, built once per test session (per
xdist worker) into a temporary directory, and what the install targets put
into a DESTDIR, to compare them with."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from qbackup_protocol import __version__
from testbed.server import REPO

TARGETS = {"server": ("server-files", "server-aa"), "carrier": ("templatevm",), "dom0": ("dom0",)}


@dataclass(frozen=True)
class Dist:
    """Where one `make packages` put its packages, and their names."""

    path: Path
    version: str

    @property
    def server_deb(self) -> Path:
        return self.path / f"qbackup-server_{self.version}_all.deb"

    @property
    def carrier_deb(self) -> Path:
        return self.path / f"qbackup-carrier_{self.version}_all.deb"

    @property
    def dom0_rpm(self) -> Path:
        return self.path / f"qbackup-dom0-{self.version}.noarch.rpm"

    @property
    def carrier_rpm(self) -> Path:
        return self.path / f"qbackup-carrier-{self.version}.noarch.rpm"


def make_packages(source: Path, dist: Path, *settings: str) -> Dist:
    """Run `make packages` in SOURCE into DIST; fail the test (with make's
    stderr) unless it succeeded. Return where the packages are."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(source), "packages", f"DIST={dist}",
         f"PACKAGE_STAGE={dist}.stage", *settings],
        capture_output=True, text=True, check=False, env={**os.environ, "DESTDIR": ""})
    assert result.returncode == 0, result.stderr
    version = (source / "qbackup_protocol/__init__.py").read_text().split('__version__ = "')[1]
    return Dist(dist, version.split('"')[0])


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The packages of this checkout, built once."""
    built = make_packages(REPO, tmp_path_factory.mktemp("dist") / "dist")
    assert built.version == __version__
    return built


def installed_tree(part: str, destdir: Path) -> set[str]:
    """Given a part (server, carrier, dom0), install it with its make targets
    into DESTDIR; return every path installed, relative, with the man pages
    named as the packages compress them."""
    for target in TARGETS[part]:
        subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), target,
                        f"DESTDIR={destdir}"], check=True, capture_output=True,
                       env={**os.environ, "DESTDIR": ""})
    return {str(p.relative_to(destdir)) + (".gz" if "man/man" in str(p) and p.is_file() else "")
            for p in destdir.rglob("*")}
