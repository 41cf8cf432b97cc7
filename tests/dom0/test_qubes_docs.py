"""docs/QUBES.md holds each fact about Qubes with its source and the tests
that hold qbackup to it: every test it names exists, every section names at
least one, and every section the code cites exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "QUBES.md"
# `test_x.py::test_name`, `::test_name` (the file named last), `test_x.py`
# (every test in it), `tests/e2e/test_y.py` (a path from the repository).
TEST_SPAN = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?`")


def sections() -> dict[str, str]:
    """Return each `## ` section of QUBES.md by its heading."""
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def named_tests(text: str) -> list[tuple[Path, str]]:
    """Return (file, test) for every test TEXT names; test is "" for a whole file."""
    found: list[tuple[Path, str]] = []
    last_file = Path()
    for match in TEST_SPAN.finditer(text):
        file, test = match.group(1), match.group(2)
        if not file and not test:
            continue
        if file:
            last_file = REPO / file if "/" in file else REPO / "tests" / "dom0" / file
        found.append((last_file, test or ""))
    return found


def test_every_test_the_qubes_doc_names_exists() -> None:
    tests = named_tests(DOC.read_text())
    assert len(tests) > 40
    for file, test in tests:
        assert file.is_file(), file
        if test:
            assert f"def {test}(" in file.read_text(), f"{file.name}::{test}"


def test_the_test_span_pattern_reads_each_form() -> None:
    # The check above is only as good as the pattern that finds the names.
    text = ("`test_a.py::test_one`, `::test_two`, `test_b.py`, "
            "`tests/e2e/test_c.py`, `not_a_test.py`, `vm.kill()`")
    assert [(file.relative_to(REPO).as_posix(), test) for file, test in named_tests(text)] == [
        ("tests/dom0/test_a.py", "test_one"), ("tests/dom0/test_a.py", "test_two"),
        ("tests/dom0/test_b.py", ""), ("tests/e2e/test_c.py", "")]


def test_every_section_names_the_tests_that_hold_it() -> None:
    untested = [heading for heading, text in sections().items() if not named_tests(text)]
    assert not untested, untested


def test_qubes_doc_sections_the_code_cites_exist() -> None:
    headings = set(sections())
    cited: set[str] = set()
    for path in [*(REPO / "dom0").glob("*.py"), *(REPO / "testbed" / "qubes_sim").glob("*.py")]:
        text = " ".join(path.read_text().split())  # citations may wrap lines
        for group in re.findall(r'docs/QUBES\.md,? \(?((?:"[^"]+"(?:, )?)+)', text):
            cited |= set(re.findall(r'"([^"]+)"', group))
    assert cited and cited <= headings, cited - headings
