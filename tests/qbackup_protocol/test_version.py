"""One version, in qbackup_protocol/__init__.py: the project's metadata and
every part's --version read it there (the packages: tests/packaging)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

from qbackup_protocol import __version__
from testbed.server import REPO


def test_the_version_is_a_release_number() -> None:
    # dpkg and rpm both order it as intended: digits and dots only.
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", __version__)


def test_the_project_metadata_takes_the_protocol_package_s_version() -> None:
    # pyproject.toml declares the version dynamic; setuptools read it here.
    assert importlib.metadata.version("qbackup") == __version__


def test_no_part_writes_a_version_of_its_own() -> None:
    for part in ("dom0", "carrier_vm", "server_shell", "qbackup_extract"):
        assert "__version__ =" not in (REPO / part / "__init__.py").read_text()
    assert '\nversion = "' not in (REPO / "pyproject.toml").read_text()


def test_the_makefile_reads_the_same_version() -> None:
    printed = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO),
                              "print-version"], capture_output=True, text=True, check=True)
    assert printed.stdout == f"{__version__}\n"
