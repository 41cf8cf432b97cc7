"""The documentation says what the repository holds and what the code does.

Pure checks (no root, no sshd): the repository stands alone (no file points to
documents it does not ship), every relative link in a shipped *.md reaches a
file and heading that exist, the docs stay within their word limits and keep
dates and issue numbers out of reference text, the README starts with
`make test` and `make demo`, and every `make TARGET`, `qbackup` and
`qbackup-server` command and option, and systemd unit the README names exists. (The exit-code tables
have their own tests next to their code: tests/dom0/test_docs.py,
tests/carrier_vm/test_docs.py, tests/server_shell/test_docs.py.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from dom0.arguments import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
THIS_FILE = Path(__file__).resolve()

# Documents a reader of this repository does not have (they lived next to it
# while it was written). Naming them, or the directory, is a dangling pointer.
FOREIGN = re.compile(r"\.\./shared|QUBES-INTERFACES\.md|STYLE\.md")
# PERFORMANCE.md is fine only as the project's own docs/PERFORMANCE.md.
PERFORMANCE = re.compile(r"PERFORMANCE\.md")
OWN_PERFORMANCE = re.compile(r"docs/PERFORMANCE\.md|\]\(PERFORMANCE\.md")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def tracked_files() -> list[Path]:
    """Return every file git tracks in the repository (this test excluded)."""
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True,
                             capture_output=True).stdout.decode()
    files = [REPO / name for name in listing.split("\0") if name]
    return [path for path in files if path.is_file() and path.resolve() != THIS_FILE]


DOCS = sorted(path for path in tracked_files() if path.suffix == ".md")
PERFORMANCE_DOC = REPO / "docs" / "PERFORMANCE.md"
# The docs' word limits, counted as `wc -w` counts.
README_MAX_WORDS = 3_000
DOCS_MAX_WORDS = 12_000
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
TRACKER = re.compile(r"\b(?:issue|bug|ticket)\s*#?\d+\b|(?:^|[\s(])#\d+\b(?!-)", re.I)


def prose_lines(path: Path) -> list[str]:
    """Return PATH's lines outside fenced code blocks (code may show link syntax)."""
    lines = []
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def code_texts(path: Path) -> list[str]:
    """Return the lines of PATH's fenced code blocks and its inline code spans."""
    texts = []
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            texts.append(line)
        else:
            texts += re.findall(r"`([^`]+)`", line)
    return texts


def slug(heading: str) -> str:
    """Given a Markdown heading's text, return the anchor GitHub gives it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return the #anchors of PATH's headings (repeated ones numbered, as GitHub does)."""
    found: set[str] = set()
    for line in prose_lines(path):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = anchor = slug(heading.group(1))
            number = 0
            while anchor in found:
                number += 1
                anchor = f"{base}-{number}"
            found.add(anchor)
    return found


def test_no_file_points_to_documents_the_repository_lacks() -> None:
    offending = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary: nothing a reader follows
        for number, line in enumerate(text.splitlines(), 1):
            if FOREIGN.search(line) or PERFORMANCE.search(OWN_PERFORMANCE.sub("", line)):
                offending.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not offending, "\n".join(offending)


def test_the_foreign_document_check_catches_each_spelling() -> None:
    # The check above passes only if the patterns really match what they must.
    # The samples are put together here, so that this file itself never reads
    # as a reference to the developers' notes.
    shared = "../" + "shared"
    interfaces = "QUBES-" + "INTERFACES.md"
    style = "STYLE" + ".md"
    for line in (f"see {shared}/notes", f"as {interfaces} section 3 says", f"our {style}",
                 "(shared/" + "PERFORMANCE.md)", "PERFORMANCE" + ".md measured"):
        assert FOREIGN.search(line) or PERFORMANCE.search(OWN_PERFORMANCE.sub("", line)), line
    for line in ("see docs/PERFORMANCE.md", "[numbers](PERFORMANCE.md#measured)"):
        assert not (FOREIGN.search(line) or PERFORMANCE.search(OWN_PERFORMANCE.sub("", line)))


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(document: Path) -> None:
    broken = []
    for line in prose_lines(document):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{target}: no such heading")
    assert not broken, "\n".join(broken)


def test_docs_stay_within_their_word_limits() -> None:
    words = {path: len(path.read_text().split()) for path in DOCS}
    assert README in words and PERFORMANCE_DOC in words
    assert words[README] <= README_MAX_WORDS
    assert sum(words.values()) <= DOCS_MAX_WORDS, {
        str(path.relative_to(REPO)): count for path, count in words.items()}


def test_dated_figures_live_only_in_performance_md() -> None:
    dated = [f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
             for path in DOCS if path != PERFORMANCE_DOC
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if DATE.search(line)]
    assert not dated, "\n".join(dated)
    assert DATE.search(PERFORMANCE_DOC.read_text()), "PERFORMANCE.md dates its figures"


def test_no_doc_points_to_an_issue_tracker() -> None:
    pointers = [f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
                for path in DOCS
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if TRACKER.search(line)]
    assert not pointers, "\n".join(pointers)


def test_the_date_and_tracker_patterns_catch_what_they_must() -> None:
    assert DATE.search("measured on 2026-12-01") and not DATE.search("home-restore-YYYY-MM-DD")
    assert not DATE.search("laptop/daily-20261122T235959Z")
    for line in ("see issue 11", "Issue #9 says", "fixed in #42", "(#7)"):
        assert TRACKER.search(line), line
    for line in ("[exit codes](PROTOCOL.md#4-exit-codes)", "§1.2", "exit 11"):
        assert not TRACKER.search(line), line


def test_slugs_follow_github() -> None:
    assert slug("5. Exit codes and errors") == "5-exit-codes-and-errors"
    assert slug("Install the carrier TemplateVM (Debian or Fedora)") == \
        "install-the-carrier-templatevm-debian-or-fedora"
    assert slug("`qbackup-server`: the admin's tool") == "qbackup-server-the-admins-tool"


def test_readme_starts_with_make_test_and_make_demo() -> None:
    text = README.read_text()
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]
                if line.strip()]
    assert commands[:2] == ["make test", "make demo"]


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {target for line in text.splitlines()
            for target in re.findall(r"^([A-Za-z0-9_.%-]+)\s*:(?!=)", line)}


def test_every_make_target_the_readme_names_exists() -> None:
    named = {target for text in code_texts(README)
             for target in re.findall(r"(?:^|[\s(])make ([a-z][\w-]*)", text.split(" #")[0])}
    assert named, "the README names no make target at all"
    assert named - makefile_targets() == set()


def qbackup_invocations(path: Path) -> list[list[str]]:
    """Return the words after each `qbackup` command PATH shows (in code),
    without comments, brackets and alternatives' bars."""
    found = []
    for text in code_texts(path):
        command = re.search(r"(?:^|[\s=])(?:/usr/bin/)?qbackup(?=\s|$)(.*)", text)
        if command is None or re.search(r"-t\s+qbackup|│", text):
            continue  # journalctl -t qbackup: the log's tag; a diagram's box: no command
        words = command.group(1).split(" #")[0].replace("|", " ").split()
        found.append([word.strip("[]()") for word in words if word.strip("[]()")])
    return found


def parser_options() -> tuple[set[str], dict[str, set[str]]]:
    """Return qbackup's top-level options and each subcommand's options."""
    parser = build_parser()
    top = {option for action in parser._actions for option in action.option_strings}
    subcommands = next(action for action in parser._actions
                       if isinstance(action, argparse._SubParsersAction))
    return top, {name: {option for action in sub._actions for option in action.option_strings}
                 for name, sub in subcommands.choices.items()}


def test_every_qbackup_command_and_option_the_readme_shows_exists() -> None:
    top, subcommands = parser_options()
    with_value = {"--config", "--history", "--lock-dir"}
    problems = []
    invocations = qbackup_invocations(README)
    assert len(invocations) > 10, "the README shows qbackup commands"
    for words in invocations:
        index = 0
        while index < len(words) and words[index] in top - {"--version", "-h", "--help"}:
            index += 2 if words[index] in with_value else 1
        if index < len(words) and not words[index].startswith("-"):
            command = words[index]
            if command not in subcommands:
                problems.append(f"qbackup {command}: no such command")
                continue
        else:
            command = "backup"  # the original form: qbackup -f PREFIX -t VM -p FILE
        allowed = top | subcommands[command]
        for word in words:
            option = word.split("=")[0]
            if re.fullmatch(r"--?[a-zA-Z][\w-]*", option) and option not in allowed:
                problems.append(f"qbackup {command} {option}: no such option")
    assert not problems, "\n".join(problems)


def test_every_systemd_unit_the_readme_names_is_shipped() -> None:
    shipped = {path.name for path in (REPO / "dom0" / "systemd").iterdir()}
    named = set(re.findall(r"\b(qbackup[\w-]*@?)[\w.-]*?\.(timer|service)\b",
                           README.read_text()))
    assert named
    assert {f"{stem}.{kind}" for stem, kind in named} - shipped == set()


def test_every_qbackup_server_command_the_readme_shows_parses() -> None:
    from server_shell.admin import parse  # the admin tool's own argument parser

    shown = []
    for text in code_texts(README):
        command = re.search(r"(?:^|[\s=(])(?:/usr/sbin/)?qbackup-server(?=\s|$)([^)#|]*)", text)
        words = command.group(1).replace("[", " ").replace("]", " ").split() if command else []
        if words:  # a bare `qbackup-server` names the tool, it is no command
            shown.append(words)
    assert len(shown) >= 5, "the README shows the admin's commands"
    for words in shown:
        parse(words)  # raises AdminError on an unknown command or option


def test_x_keeps_the_carrier_as_the_readme_says() -> None:
    # The README promises the original call's meaning of -x ("leave the
    # carrier running") in every command that starts the carrier; the parser
    # holds every command to it (tests/dom0/test_cli.py).
    assert "`-x` (`--keep-carrier`)" in README.read_text()
