"""docs/PROTOCOL.md and the config example say what the code does: each
table is checked against its one definition in the code."""

from __future__ import annotations

import re

from qbackup_protocol import wire
from server_shell.config import KEYS
from testbed.server import REPO

DOC = (REPO / "docs" / "PROTOCOL.md").read_text()
EXAMPLE = (REPO / "server_shell" / "qbackup-shell.conf.example").read_text()


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


def test_the_exit_code_table_is_shell_exit() -> None:
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+) \|$", section("## 4. Exit codes"), re.M)
    assert [(int(code), name, meaning) for code, name, meaning in rows] == [
        (int(code), code.name, code.meaning) for code in wire.ShellExit
    ]


def test_the_command_table_lists_every_verb_and_nothing_else() -> None:
    rows = re.findall(r"^\| `(\w+)[ `]", section("## 1. Sessions and commands"), re.M)
    assert set(rows) == set(wire.ALL_VERBS) and len(rows) == len(wire.ALL_VERBS)


def test_the_version_is_the_code_s() -> None:
    assert DOC.splitlines()[0].endswith(f"version {wire.PROTOCOL_VERSION}")
    assert f"Protocol version: **{wire.PROTOCOL_VERSION}**" in DOC
    assert f'"protocol": {wire.PROTOCOL_VERSION}' in DOC
    assert "protocol 1" not in DOC.lower() and "version 1" not in DOC.lower()


def test_the_config_example_documents_every_key_with_its_default() -> None:
    documented = set(re.findall(r"^#(\w+) = ", EXAMPLE, re.M))
    assert documented == {"root", "socket", *KEYS}


def test_the_readme_table_of_server_keys_is_the_code_s() -> None:
    readme = (REPO / "README.md").read_text()
    keys = set(re.findall(r"^\| `(\w+)` \| `?[^|]*\| ", readme, re.M))
    assert {"root", *KEYS} <= keys
    assert "qbackup-shell prune" not in readme


def test_the_readme_gives_qbackup_server_s_exit_codes_as_server_exit() -> None:
    from server_shell.admin import ServerExit  # the admin tool (not the shell)

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Server administration"):]
    listed = ", ".join(f"{int(code)} {code.name}" for code in ServerExit)
    assert listed in " ".join(section[:section.index("\n## ")].split())


# A cron line: five time fields, the user, a command.
CRON_LINE = re.compile(r"^\s*(?:[0-9*/,-]+\s+){5}root\s+(.*)$")


def test_the_server_s_cron_lines_are_shown_once_and_prune_s_mails_only_its_output() -> None:
    docs = sorted(REPO.glob("*.md")) + sorted(REPO.glob("*/*.md"))
    shown = {path.relative_to(REPO).as_posix(): [match.group(1) for line in
                                                 path.read_text().splitlines()
                                                 if (match := CRON_LINE.match(line))]
             for path in docs}
    assert {path for path, lines in shown.items() if lines} == {"README.md"}
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("# /etc/cron.d/qbackup"):].split("```", 1)[0]
    assert [CRON_LINE.match(line).group(1) for line in block.splitlines()  # type: ignore[union-attr]
            if CRON_LINE.match(line)] == shown["README.md"]
    prune = [command for command in shown["README.md"] if " prune " in command]
    # Quiet unless it removed something or something is wrong: cron mails its output.
    assert len(prune) == 1 and "||" not in prune[0] and "out=" not in prune[0]
