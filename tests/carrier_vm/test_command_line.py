"""qbackup-carrier's command line (carrier_vm/arguments.py): every verb has
its --help, the program its --version, and no option is ever taken for a
backup NAME or PREFIX: none of it reads the config or contacts the server."""

from __future__ import annotations

import os
import pty
import socket
import subprocess

import pytest

from carrier_vm.arguments import VERBS, Printout, parse_arguments
from carrier_vm.errors import UsageError
from qbackup_protocol import __version__
from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import REPO, Carrier, assert_one_safe_line


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("word", ["-h", "--help"])
def test_every_verb_has_its_help(verb: str, word: str) -> None:
    for argv in ([verb, word], [verb, "some-name", word]):
        if verb == "qrexec-service" and len(argv) > 2:
            continue  # its one argument is qrexec's (see below)
        printed = parse_arguments(argv)
        assert isinstance(printed, Printout), argv
        text = printed.text
        assert text.startswith(f"usage: qbackup-carrier {verb}")
        assert "examples:\n  qbackup-carrier " in text or f"| qbackup-carrier {verb}" in text
        # Its exit codes, each with the enum's meaning.
        for code in VERBS[verb].codes:
            assert f"  {int(code):3d}  {code.meaning}\n" in text
        assert all(line.rstrip() == line and len(line) <= 78 for line in text.splitlines())


def test_every_verbs_help_names_its_failures_and_success() -> None:
    for verb, entry in VERBS.items():
        assert {CarrierExit.OK, CarrierExit.USAGE} <= set(entry.codes), verb


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "--help-me"],
        ["get", "-x"],
        ["get", "--", "-x"],
        ["check", "-1"],  # looks like a number, is still an option
        ["commit", "-"],
        ["list", "--all"],
        ["list", "-laptop"],
        ["put", "--commit", "--commit", "x"],
        ["put", "x", "--commit"],
        ["put", "--commit"],
        ["transfer", "--version"],
        ["get", "-h-"],
    ],
)
def test_an_option_is_never_a_name_or_prefix(argv: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        parse_arguments(argv)
    assert "usage: qbackup-carrier" in str(refused.value)


@pytest.mark.parametrize(
    ("argv", "verb", "argument", "then_commit"),
    [
        (["put", "--commit", "a/b-1"], "put", "a/b-1", True),
        (["put", "b"], "put", "b", False),
        (["list"], "list", None, False),
        (["list", ""], "list", None, False),
        (["list", "host/"], "list", "host/", False),
        (["info"], "info", None, False),
        (["get", "x-1"], "get", "x-1", False),
        (["qrexec-service", "list"], "qrexec-service", "list", False),
    ],
)
def test_command_lines_that_are_requests(
    argv: list[str], verb: str, argument: str | None, then_commit: bool
) -> None:
    request = parse_arguments(argv)
    assert not isinstance(request, Printout)
    assert request.verb == verb
    assert request.argument == argument
    assert request.then_commit is then_commit


def test_under_qrexec_the_services_argument_is_never_help() -> None:
    # Threat: a VM calling qubes.BackupCarrier+--help: the argument is the
    # caller's, for the service's table (and its caller check) to refuse.
    request = parse_arguments(["qrexec-service", "--help"], under_qrexec=True)
    assert not isinstance(request, Printout) and request.argument == "--help"


@pytest.mark.parametrize("argv", [["lst"], ["-x"], ["--version", "x"], []])
def test_an_unknown_verb_shows_the_verbs(argv: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        parse_arguments(argv)
    assert "verbs: put, commit, get, list, check, info" in str(refused.value)


@pytest.mark.offline  # reaches no sshd: needs no account
@pytest.mark.parametrize(
    "argv", [["get", "--help"], ["check", "-h"], ["commit", "--help"], ["list", "--help"],
             ["put", "--commit", "--help"], ["--help"], ["-h"]])
def test_help_never_contacts_the_server(
    carrier: Carrier, tripwire: socket.socket, argv: list[str]
) -> None:
    result = carrier.run(*argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"usage: qbackup-carrier ")
    assert result.stderr == b""
    with pytest.raises(BlockingIOError):
        tripwire.accept()  # nobody connected


@pytest.mark.offline  # reaches no sshd: needs no account
def test_version_exits_0(carrier: Carrier, tripwire: socket.socket) -> None:
    result = carrier.run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"qbackup-carrier {__version__}\n".encode()
    with pytest.raises(BlockingIOError):
        tripwire.accept()


@pytest.mark.offline  # reaches no sshd: needs no account
@pytest.mark.parametrize("argv", [["put", "b"], ["put", "--commit", "b"]])
def test_put_refuses_a_terminal_on_stdin(
    carrier: Carrier, tripwire: socket.socket, argv: list[str]
) -> None:
    # Someone typing `qbackup-carrier put NAME` at a prompt: refused at once,
    # not a wait for a backup to be typed in (nor a connection).
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [*carrier.argv0, *argv], stdin=terminal, capture_output=True,
            env=carrier.env(), cwd=REPO, timeout=30, check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == CarrierExit.USAGE
    assert b"reads the backup data from stdin" in result.stderr
    assert_one_safe_line(result.stderr)
    with pytest.raises(BlockingIOError):
        tripwire.accept()


def test_put_partial_ok_is_a_flag_of_put_alone() -> None:
    # dom0 writes it into Qubes' profile: Qubes fails a backup whose command
    # exits non-zero, so a put that staged on some destinations must exit 0.
    request = parse_arguments(["put", "--to", "home,offsite", "--partial-ok", "a-1"])
    assert not isinstance(request, Printout)
    assert request.partial_ok and request.destinations == ("home", "offsite")
    assert not parse_arguments(["put", "a-1"]).partial_ok  # type: ignore[union-attr]
    for argv in (["put", "--partial-ok=1", "a-1"], ["put", "--partial-ok", "--partial-ok", "a-1"],
                 ["commit", "--partial-ok", "a-1"], ["put", "a-1", "--partial-ok"]):
        with pytest.raises(UsageError):
            parse_arguments(argv)
