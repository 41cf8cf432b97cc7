"""The layout is the architecture: each part runs on its own machine, so no
part imports another; what two parts share is in qbackup_protocol/, which
imports only the standard library; the two outside boundaries each have one
module (qubesadmin: dom0/qubes.py, the adapter the simulator replaces; SSH:
carrier_vm/ssh.py; AES: qbackup_extract/scrypt_file.py). qbackup_extract (the
standalone restore tool) is a part of its own: it runs on a borrowed machine
with none of the others installed.

Threat: a part that imports another works in the tests (one checkout holds
all three) and fails on the machine where the other is not installed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("dom0", "carrier_vm", "server_shell", "qbackup_protocol", "qbackup_extract")


def imported(module: Path) -> set[str]:
    """Given a Python file, return the top-level names of what it imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules_of(part: str) -> list[Path]:
    return sorted((REPO / part).glob("*.py"))


@pytest.mark.parametrize("part", PARTS)
def test_no_part_imports_another(part: str) -> None:
    others = set(PARTS) - {part, "qbackup_protocol"}
    for module in modules_of(part):
        assert not imported(module) & others, module


def test_the_protocol_imports_only_the_standard_library() -> None:
    for module in modules_of("qbackup_protocol"):
        outside = imported(module) - set(sys.stdlib_module_names) - {"qbackup_protocol"}
        assert not outside, (module, outside)


@pytest.mark.parametrize(("library", "only"), [
    ("qubesadmin", REPO / "dom0" / "qubes.py"),
    ("asyncssh", REPO / "carrier_vm" / "ssh.py"),
    ("cryptography", REPO / "qbackup_extract" / "scrypt_file.py"),
])
def test_each_outside_boundary_has_one_module(library: str, only: Path) -> None:
    importers = [module for part in PARTS for module in modules_of(part)
                 if library in imported(module)]
    assert importers == [only]


def test_the_extract_tool_needs_only_the_standard_library_protocol_and_aes() -> None:
    # What `make extract` and the `extract` extra install: nothing else may be needed.
    allowed = set(sys.stdlib_module_names) | {"qbackup_protocol", "qbackup_extract", "cryptography"}
    for module in modules_of("qbackup_extract"):
        assert imported(module) <= allowed, (module, imported(module) - allowed)


def test_the_parser_sees_imports_of_every_form(tmp_path: Path) -> None:
    # The checks above are only as good as `imported`.
    module = tmp_path / "m.py"
    module.write_text("import a.b\nfrom c.d import e\nfrom . import f\n"
                      "def g():\n    import h\n")
    assert imported(module) == {"a", "c", "h"}
