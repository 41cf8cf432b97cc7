"""qbackup-server's arguments and help (the retention rule itself is
qbackup_protocol.names.prunable, tested in tests/qbackup_protocol/test_retention.py)."""

from __future__ import annotations

import pytest

from qbackup_protocol import __version__, names, wire
from server_shell.admin import HELP, AdminError, ServerExit, build_parser, parse


@pytest.mark.parametrize(
    "arguments",
    [
        ["prune", "--account", "a"],
        ["prune", "--account", "a", "--keep-daily", "0"],
        ["prune", "--account", "a", "--keep-daily", "-1", "--keep-weekly", "3"],
        ["prune", "--account", "a", "--keep-daily", "x"],
        ["prune", "--account", "a", "--keep-last", "3"],  # not a rule dom0 knows
        ["prune", "--keep-daily", "1"],  # whose storage? never guessed
        ["prune", "--account", "a", "--keep-daily", "1", "--bogus"],
        ["status", "--max-age", "soon"],
        ["status", "--max-age", "-1h"],
        ["status", "--max-age", "36x"],
        ["scrub"],
        [],
    ],
)
def test_admin_arguments_refused(arguments: list[str]) -> None:
    with pytest.raises(AdminError):
        parse(arguments)


def test_a_refusal_says_how_to_write_it() -> None:
    with pytest.raises(AdminError, match=r"not an age: .* \(see qbackup-server status --help\)"):
        parse(["status", "--max-age", "36x"])


def test_prune_arguments_become_the_shared_retention_policy() -> None:
    options = parse(["prune", "--account", "bk", "--keep-daily", "7", "--keep-yearly", "2",
                     "--dry-run"])
    assert (options.account, options.dry_run) == ("bk", True)
    assert options.policy == names.RetentionPolicy(daily=7, yearly=2)
    assert parse(["status", "--max-age", "36h", "--json"]).max_age == 36 * 3600


# `qbackup-server status --max-age 36` meant 36 seconds while `qbackup
# status --max-age 36` meant hours: one rule now (names.parse_age).
@pytest.mark.parametrize(("text", "seconds"), [
    ("36", 36 * 3600), ("36h", 36 * 3600), ("90s", 90), ("90m", 5400), ("7d", 7 * 86400)])
def test_max_age_takes_units_and_a_bare_number_means_hours(text: str, seconds: int) -> None:
    assert parse(["status", "--max-age", text]).max_age == seconds
    assert parse(["status"]).max_age == 36 * 3600


def test_version_is_the_project_s_and_says_the_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        parse(["--version"])
    assert ended.value.code == 0
    expected = f"qbackup-server {__version__} (protocol {wire.PROTOCOL_VERSION})\n"
    assert capsys.readouterr().out == expected


def help_text(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ended:
        parse([*arguments, "--help"])
    assert ended.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [None, *HELP])
def test_every_help_has_a_description_examples_and_the_exit_codes(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text([command] if command else [], capsys)
    codes = tuple(ServerExit) if command is None else HELP[command].codes
    description = build_parser().description if command is None else HELP[command].description
    assert " ".join(text.split()).count(" ".join(str(description).split())) == 1
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(line.startswith(f"  qbackup-server {command or ''}")
                            for line in examples)
    for line in examples:  # each example parses
        parse(line.split()[1:])
    table = " ".join(text.split("exit codes:\n", 1)[1].split())
    assert table == " ".join(f"{int(code)} {code.name} {code.meaning}" for code in codes)
