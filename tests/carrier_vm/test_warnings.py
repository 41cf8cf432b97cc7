"""Third-party deprecation warnings never reach output: cryptography warns
about algorithms asyncssh merely registers (DSA, Blowfish, CAST5, ...), and
such text on the carrier's stderr would land in what dom0 shows, or clutter
`make bench`'s report. Run with every warning shown (-W default), nothing may
be printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.carrier_vm.conftest import REPO

# The venv's newest asyncssh and cryptography, and Debian 12's (2.10.1, 38).
PYTHONS = {"venv": sys.executable, "debian": "/usr/bin/python3"}


def run_silently(python: str, code: str) -> subprocess.CompletedProcess[bytes]:
    """Run CODE under PYTHON with every warning shown; return the result."""
    return subprocess.run(
        [python, "-W", "default", "-c", code],
        capture_output=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("python", sorted(PYTHONS))
def test_the_carriers_imports_print_no_warning(python: str) -> None:
    # Every module the carrier loads, asyncssh through carrier_vm/ssh.py.
    code = "import carrier_vm.cli, carrier_vm.ssh, carrier_vm.upload, carrier_vm.download"
    result = run_silently(PYTHONS[python], code)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"" and result.stdout == b""


def test_the_benchs_version_line_prints_no_warning() -> None:
    result = run_silently(sys.executable, "from bench.run import versions; print(versions())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"asyncssh ")
    assert result.stderr == b""
