"""The table of assumptions about Qubes in dom0/README.md names tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Assumptions about Qubes"


def named_tests() -> list[tuple[str, str]]:
    """Return (file, test) for every test the assumptions table names."""
    text = (REPO / "dom0" / "README.md").read_text()
    table = text[text.index(SECTION):].split("\n## ", 1)[0]
    found: list[tuple[str, str]] = []
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith("| Assumption"):
            continue
        last_file = ""
        for span in re.findall(r"`([^`]+)`", row.split("|")[3]):
            file, _, test = span.partition("::")
            last_file = file or last_file
            if test:
                found.append((last_file, test))
    return found


def test_every_test_the_qubes_table_names_exists() -> None:
    tests = named_tests()
    assert len(tests) > 20
    for file, test in tests:
        source = (REPO / "tests" / "dom0" / file).read_text()
        assert f"def {test}(" in source, f"{file}::{test}"


def test_qubes_doc_sections_the_code_cites_exist() -> None:
    headings = {line[3:] for line in (REPO / "docs" / "QUBES.md").read_text().splitlines()
                if line.startswith("## ")}
    cited: set[str] = set()
    for path in [*(REPO / "dom0").glob("*.py"), *(REPO / "testbed" / "qubes_sim").glob("*.py")]:
        text = " ".join(path.read_text().split())  # citations may wrap lines
        for group in re.findall(r'docs/QUBES\.md,? \(?((?:"[^"]+"(?:, )?)+)', text):
            cited |= set(re.findall(r'"([^"]+)"', group))
    assert cited and cited <= headings, cited - headings
