"""`make venv`: the test venv is editable-installed from one checkout, named
in its stamp; from another checkout it is installed again, so `make test`,
`make demo` and `make bench` run the code of the checkout they are made in
(before, a venv made by a checkout since deleted left every other checkout
with `No module named 'carrier_vm'`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def planned(venv: Path) -> str:
    """Given a venv directory, return what `make venv` would run (make -n)."""
    return subprocess.run(["make", "-n", "venv", f"VENV={venv}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout


def test_a_venv_of_another_checkout_is_installed_again(tmp_path: Path) -> None:
    (tmp_path / ".installed").write_text("/gone/checkout\n")
    assert "pip install -q -e" in planned(tmp_path)


def test_a_venv_of_this_checkout_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / ".installed").write_text(f"{REPO}\n")  # written after pyproject.toml
    assert "pip install" not in planned(tmp_path)
