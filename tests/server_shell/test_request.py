"""The pure parsers: the command grammar and the argv/environment forms."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbackup_protocol import __version__, wire
from server_shell.config import NotAllowed
from server_shell.config import Refused as CommandRefused
from server_shell.main import Request, main, parse_command, parse_invocation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("put a", Request("put", "a")),
        (
            "put 2024/laptop/qubes-backup-2024-01-01T00-00",
            Request("put", "2024/laptop/qubes-backup-2024-01-01T00-00"),
        ),
        ("get a.b-c_d", Request("get", "a.b-c_d")),
        ("check x/y/z", Request("check", "x/y/z")),
        ("list", Request("list", "")),
        ("list 2024/", Request("list", "2024/")),
        ("list lap", Request("list", "lap")),
        ("info", Request("info", None)),
        ("resume a/b", Request("resume", "a/b")),
        ("get a 0", Request("get", "a", 0)),
        ("get a 123456789", Request("get", "a", 123456789)),
    ],
)
def test_parse_command_accepts_the_grammar(text: str, expected: Request) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "put",
        "put ",
        "put  a",
        " put a",
        "put a ",
        "put a b",
        "PUT a",
        "get",
        "check",
        "info x",
        "list a b",
        "list /",
        "put ../x",
        "put ..",
        "put .",
        "put a/../b",
        "put /etc/passwd",
        "put a//b",
        "put a/",
        "put .hidden",
        "put a/.tmp-1",
        "put a;rm -rf ~",
        "put $(reboot)",
        "put `id`",
        "put a|b",
        "put a&b",
        "put a>b",
        "put ~/x",
        "put a*",
        "put a?",
        "put [a]",
        "put a\nget b",
        "put a\r",
        "put a\x00b",
        "put a\tb",
        "resume",
        "resume a b",
        "get a -1",
        "get a 01",
        "get a 1 2",
        "get a 0x10",
        "get a " + "9" * 20,
        "commit a 5",
        "put \x1b[31m",
        "put é",
        "scp -t x",
        "scp -f x",
        "/usr/lib/openssh/sftp-server",
        "internal-sftp",
        "rsync --server -vlogDtpre.iLsfxC . x",
        "sh",
        "bash -i",
        "exec sh",
        "git-upload-pack x",
        "put " + "a" * 101,
        "put " + "/".join(["a"] * 9),
        "put " + "a" * (wire.MAX_COMMAND_LENGTH + 1),
    ],
)
def test_parse_command_refuses_everything_else(text: str) -> None:
    with pytest.raises(CommandRefused):
        parse_command(text)


@pytest.mark.parametrize(
    "text", ["prune", "prune --keep-last 1", "prune --root / --keep-last 0", "status", "scrub"]
)
def test_parse_command_refuses_prune_as_not_allowed(text: str) -> None:
    with pytest.raises(NotAllowed):
        parse_command(text)


def test_refusal_never_echoes_the_input() -> None:
    with pytest.raises(CommandRefused) as caught:
        parse_command("put ../../etc/evil-MARKER")
    assert "MARKER" not in str(caught.value) and ".." not in str(caught.value)


@given(st.text(max_size=60))
def test_parse_command_accepts_a_put_iff_the_name_is_valid(name: str) -> None:
    try:
        wire.check_name(name)
        valid = " " not in name
    except wire.InvalidName:
        valid = False
    try:
        request = parse_command(f"put {name}")
    except CommandRefused:
        assert not valid
    else:
        assert valid and request == Request("put", name)
        assert not name.startswith("/") and ".." not in name.split("/")


SSH_ENV = {"SSH_CONNECTION": "127.0.0.1 5000 127.0.0.1 22", "SSH_CLIENT": "127.0.0.1 5000 22"}


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["qbackup-shell", "-c", "info"], SSH_ENV, "info"),
        (["qbackup-shell", "-c", "put a"], {}, "put a"),
        # Forced command=/usr/sbin/qbackup-shell in authorized_keys, login shell = us.
        (
            ["qbackup-shell", "-c", "/usr/sbin/qbackup-shell"],
            {**SSH_ENV, "SSH_ORIGINAL_COMMAND": "list"},
            "list",
        ),
        # Forced command through another login shell (/bin/sh -c /usr/sbin/qbackup-shell).
        (
            ["/usr/sbin/qbackup-shell"],
            {**SSH_ENV, "SSH_ORIGINAL_COMMAND": "info"},
            "info",
        ),
        # An admin forcing one fixed command keeps it, whatever the client asked.
        (
            ["qbackup-shell", "-c", "list"],
            {**SSH_ENV, "SSH_ORIGINAL_COMMAND": "get x"},
            "list",
        ),
    ],
)
def test_parse_invocation_accepts(
    argv: list[str], environ: dict[str, str], expected: str
) -> None:
    assert parse_invocation(argv, environ) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "error"),
    [
        (["-qbackup-shell"], SSH_ENV, NotAllowed),  # interactive login
        (["qbackup-shell"], {}, NotAllowed),
        (
            ["qbackup-shell", "-c", "/usr/sbin/qbackup-shell"],
            SSH_ENV,
            NotAllowed,
        ),  # forced, no command
        # Admin actions are another program (qbackup-server): no argv form here.
        (["qbackup-shell", "prune", "--keep-last", "1"], SSH_ENV, CommandRefused),
        (["qbackup-shell", "prune", "--keep-last", "1"], {}, CommandRefused),
        (["qbackup-shell", "-c"], SSH_ENV, CommandRefused),
        (["qbackup-shell", "-c", "info", "extra"], SSH_ENV, CommandRefused),
        (["qbackup-shell", "-l"], SSH_ENV, CommandRefused),
        (["qbackup-shell", "info"], {}, CommandRefused),
    ],
)
def test_parse_invocation_refuses(
    argv: list[str], environ: dict[str, str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_invocation(argv, environ)


@pytest.mark.parametrize("word", ["--help", "--version", "-h"])
def test_an_option_is_never_a_client_command(word: str) -> None:
    # Only main() answers an admin's --help and --version (below); as an
    # invocation they are refused, with a pointer to the man page.
    with pytest.raises(CommandRefused, match="see man qbackup-shell"):
        parse_invocation(["qbackup-shell", word], {})


@pytest.mark.parametrize(("word", "said"), [("--version", f"qbackup-shell {__version__}\n"),
                                            ("--help", "exit codes:\n")])
def test_an_admin_asking_the_shell_itself_is_answered_and_nothing_runs(
        word: str, said: str, capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "unreadable.conf"
    config.write_text("[broken")  # never read: an answer needs no config, storage or syslog
    assert main(["qbackup-shell", word], str(config), {}) == 0
    assert said in capfd.readouterr().out
