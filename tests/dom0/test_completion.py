"""Bash completion for `qbackup`: generated from the argument parser (the
shipped script is the generator's output), it completes every command and
option the parser has, VMs, and the job file's job names; `make dom0`
installs it and `make uninstall-dom0` removes it. Needs bash; no server."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from dom0 import completion
from dom0.arguments import build_parser
from testbed.server import REPO

SCRIPT = REPO / "dom0" / "qbackup.bash-completion"
JOBS = """\
# the example's layout
jobs:
  daily:
    carrier: sys-backup   # a comment
    prefix: laptop/daily
    hooks:
      on_start: [x]
  weekly-2:
    carrier: sys-backup
other: 1
"""


def complete(*words: str, path: str = "/usr/bin:/bin", home: Path | None = None) -> list[str]:
    """Return what bash completes for `qbackup WORDS` (the last word is the
    one being completed), with the shipped script loaded."""
    program = (f"source {SCRIPT}; COMP_WORDS=(qbackup {' '.join(repr(w) for w in words)});"
               f" COMP_CWORD={len(words)}; _qbackup; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    env = {"PATH": path, "HOME": str(home or "/nonexistent")}
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], env=env,
                            capture_output=True, text=True, check=True)
    return sorted(line for line in result.stdout.splitlines() if line)


def parser_commands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [action for action in build_parser()._actions
                  if isinstance(action, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_the_shipped_script_is_generated_from_the_parser() -> None:
    assert SCRIPT.read_text() == completion.render(), \
        "regenerate it: python3 -m dom0.completion > dom0/qbackup.bash-completion"


def test_every_command_completes() -> None:
    assert complete("") == sorted(parser_commands())
    assert complete("ba") == ["backup"]
    assert complete("-v", "st") == ["status"]


@pytest.mark.parametrize("command", sorted(parser_commands()))
def test_every_option_of_every_command_completes(command: str) -> None:
    options = {option for action in parser_commands()[command]._actions
               if action.help != argparse.SUPPRESS for option in action.option_strings}
    assert set(complete(command, "-")) == options
    assert complete(command, "--max-") == sorted(option for option in options
                                                 if option.startswith("--max-"))


def test_job_names_come_from_the_job_file_in_use(tmp_path: Path) -> None:
    config = tmp_path / "jobs.yaml"
    config.write_text(JOBS)
    assert complete("backup", "--config", str(config), "--job", "") == ["daily", "weekly-2"]
    assert complete("--config", str(config), "status", "--job", "w") == ["weekly-2"]
    home = tmp_path / "home"
    (home / ".config/qbackup").mkdir(parents=True)
    (home / ".config/qbackup/qbackup.yaml").write_text(JOBS)
    assert complete("drill", "--job", "", home=home) == ["daily", "weekly-2"]


def test_vms_come_from_qubes(tmp_path: Path) -> None:
    qvm_ls = tmp_path / "qvm-ls"
    qvm_ls.write_text("#!/bin/sh\n[ \"$1\" = --raw-list ] &&"
                      " printf 'dom0\\nwork\\nsys-backup\\n'\n")
    qvm_ls.chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"
    assert complete("list", "-t", "sys", path=path) == ["sys-backup"]
    assert complete("backup", "--job", "daily", "wo", path=path) == ["work"]
    assert complete("-f", "laptop", "-t", "", path=path) == ["dom0", "sys-backup", "work"]
    assert complete("config", "") == ["check"]


def test_make_dom0_installs_the_completion_and_uninstall_removes_it(tmp_path: Path) -> None:
    make = ["make", "-s", "-C", str(REPO), f"DESTDIR={tmp_path}"]
    subprocess.run([*make, "dom0"], check=True, capture_output=True)
    installed = tmp_path / "usr/share/bash-completion/completions/qbackup"
    assert installed.read_text() == SCRIPT.read_text()
    subprocess.run([*make, "uninstall-dom0"], check=True, capture_output=True)
    assert not installed.exists()
