"""docs/QUBES.md holds each fact about Qubes with its source and the tests
that hold qbackup to it: every test it names exists, every section names at
least one, and every section the code cites exists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "QUBES.md"
# `test_x.py::test_name`, `::test_name` (the file named last), `test_x.py`
# (every test in it), `tests/e2e/test_y.py` (a path from the repository).
TEST_SPAN = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?`")


@dataclass(frozen=True)
class NamedTest:
    """A test the doc names: its file as written, and the test ("" for the
    whole file)."""

    file: str
    test: str


def sections() -> dict[str, str]:
    """Return each `## ` section of QUBES.md by its heading."""
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def named_tests(text: str) -> list[NamedTest]:
    """Return every test TEXT names."""
    found: list[NamedTest] = []
    last_file = ""
    for match in TEST_SPAN.finditer(text):
        file = match.group(1)
        test = match.group(2)
        if not file and not test:
            continue
        if file:
            last_file = file
        found.append(NamedTest(last_file, test or ""))
    return found


def find_test_file(name: str, root: Path = REPO) -> Path:
    """Given a test file's NAME (`test_x.py`, found wherever it lives under
    ROOT/tests) or its path from ROOT, return its path; raise LookupError if
    no file or more than one has that name."""
    if "/" in name:
        found = [root / name] if (root / name).is_file() else []
    else:
        found = sorted((root / "tests").rglob(name))
    if len(found) != 1:
        raise LookupError(f"{name}: {len(found)} files under tests/ (give its path if several)")
    return found[0]


def test_every_test_the_qubes_doc_names_exists() -> None:
    tests = named_tests(DOC.read_text())
    assert len(tests) > 40
    for named in tests:
        file = find_test_file(named.file)
        if named.test:
            assert f"def {named.test}(" in file.read_text(), f"{named.file}::{named.test}"


def test_the_test_span_pattern_reads_each_form() -> None:
    # The check above is only as good as the pattern that finds the names.
    text = ("`test_a.py::test_one`, `::test_two`, `test_b.py`, "
            "`tests/e2e/test_c.py`, `not_a_test.py`, `vm.kill()`")
    assert named_tests(text) == [
        NamedTest("test_a.py", "test_one"), NamedTest("test_a.py", "test_two"),
        NamedTest("test_b.py", ""), NamedTest("tests/e2e/test_c.py", "")]


def test_a_test_file_is_found_wherever_it_lives_and_only_if_one(tmp_path: Path) -> None:
    # The check above is only as strict as the lookup: a missing file and a
    # name two directories share must fail it, not resolve to a guess.
    for path in ("tests/a/test_x.py", "tests/b/test_x.py", "tests/b/test_y.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert find_test_file("test_y.py", tmp_path) == tmp_path / "tests/b/test_y.py"
    assert find_test_file("tests/a/test_x.py", tmp_path) == tmp_path / "tests/a/test_x.py"
    for name in ("test_x.py", "test_z.py", "tests/a/test_y.py"):
        with pytest.raises(LookupError):
            find_test_file(name, tmp_path)


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
