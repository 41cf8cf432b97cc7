"""Bash completion for `qbackup`, generated from its argument parser.

`python3 -m dom0.completion > dom0/qbackup.bash-completion` writes the
script `make dom0` installs; tests/dom0/test_completion.py holds the file to
this module's output, so a command or option added to dom0/arguments.py
fails the tests until the script is regenerated. The script completes the
commands, each command's options, VM names (from `qvm-ls`) where an option
or argument takes a VM, files and directories, and `--job` with the job
names of the job file in use (`--config FILE` on the line, else the default).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dom0 import config
from dom0.arguments import build_parser

# What an option's value (or a positional argument) is, by its metavar or
# dest: the bash words that complete it.
COMPLETERS = {
    "FILE": 'compgen -f -- "$cur"',
    "DIR": 'compgen -d -- "$cur"',
    "VM": 'compgen -W "$(qvm-ls --raw-list 2>/dev/null)" -- "$cur"',
    "job": 'compgen -W "$(_qbackup_jobs)" -- "$cur"',
}
# The job names: keys one level under the top-level `jobs:` of the job file
# (block style, as the example writes it); names follow config.JOB_NAME.
JOBS_AWK = r"""/^[^[:space:]#]/ { jobs = ($0 ~ /^jobs:[[:space:]]*$/); next }
        jobs && /^[[:space:]]+[A-Za-z0-9][A-Za-z0-9_-]*:/ {
            match($0, /^[[:space:]]+/)
            if (!indent) indent = RLENGTH
            if (RLENGTH == indent) { sub(/^[[:space:]]+/, ""); sub(/:.*/, ""); print }
        }"""


@dataclass(frozen=True)
class Command:
    """What completion needs of one command's parser."""

    options: list[str]  # every option string, as --help lists them
    values: dict[str, str]  # option -> what its value is ('' for nothing to complete)
    positional: str  # what its first positional argument is ('' for nothing to complete)


def what_it_takes(action: argparse.Action) -> str:
    """Given a parser action, return the COMPLETERS key its values complete
    with, 'words:' and its choices, or '' for nothing to complete."""
    if action.choices:
        return "words:" + " ".join(str(choice) for choice in action.choices)
    if action.dest == "job":
        return "job"
    return str(action.metavar) if action.metavar in COMPLETERS else ""


def read_command(parser: argparse.ArgumentParser) -> Command:
    """Given a command's parser, return its options and what their values are."""
    options: list[str] = []
    values: dict[str, str] = {}
    positionals: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            positionals.append(what_it_takes(action))
        options += action.option_strings
        if action.option_strings and action.nargs != 0:
            values.update(dict.fromkeys(action.option_strings, what_it_takes(action)))
    return Command(options, values, positionals[0] if positionals else "")


def completion(kind: str) -> str:
    """Given what a value is, return the bash command that lists its completions."""
    if kind.startswith("words:"):
        return f'compgen -W "{kind.removeprefix("words:")}" -- "$cur"'
    return COMPLETERS[kind]


def reply(kind: str) -> str:
    """Given what a value is, return the bash that sets COMPREPLY to its completions."""
    return f"COMPREPLY=($({completion(kind)}))"


def render() -> str:
    """Return the bash completion script for the parser of dom0/arguments.py."""
    parser = build_parser()
    [subcommands] = [action for action in parser._actions
                     if isinstance(action, argparse._SubParsersAction)]
    commands = {name: read_command(sub) for name, sub in subcommands.choices.items()}
    top = read_command(parser)
    values: dict[str, str] = {}
    for command in [top, *commands.values()]:
        for option, kind in command.values.items():
            if values.setdefault(option, kind) != kind:
                raise ValueError(f"{option} takes different values in different commands")
    by_kind: dict[str, list[str]] = {}
    for option, kind in values.items():
        by_kind.setdefault(kind, []).append(option)
    value_cases = "".join(f"        {'|'.join(options)}) {reply(kind) + '; ' if kind else ''}"
                          "return ;;\n" for kind, options in sorted(by_kind.items()))
    # The original form (no command) takes backup's options.
    legacy = sorted(set(top.options) | set(commands["backup"].options))
    command_cases = "".join(
        f"        {name}) options=\"{' '.join(command.options)}\""
        f"{'; positional=1' if command.positional else ''} ;;\n"
        for name, command in commands.items())
    positional_cases = "".join(f"        {name}) {reply(command.positional)} ;;\n"
                               for name, command in commands.items() if command.positional)
    return f"""\
# bash completion for qbackup. Generated from its argument parser by
# `python3 -m dom0.completion`: do not edit (tests/dom0/test_completion.py).

_qbackup_jobs() {{
    local file= i
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ ${{COMP_WORDS[i]}} == --config ]] && file=${{COMP_WORDS[i+1]/#\\~/$HOME}}
    done
    if [[ -z $file ]]; then
        for file in {config.USER_CONFIG} {config.SYSTEM_CONFIG}; do
            [[ -r $file ]] && break
        done
    fi
    [[ -r $file ]] && awk '{JOBS_AWK}' "$file"
}}

_qbackup() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local command= options= positional= i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i-1]}} in
            {'|'.join(sorted(values))}) continue ;;
        esac
        case ${{COMP_WORDS[i]}} in
            {'|'.join(commands)}) command=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    case $prev in
{value_cases}    esac
    case $command in
        "") options="{' '.join(legacy)}"
            if [[ $cur != -* ]]; then
                COMPREPLY=($(compgen -W "{' '.join(commands)}" -- "$cur"))
                return
            fi ;;
{command_cases}    esac
    if [[ $cur == -* || -z $positional ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
        return
    fi
    case $command in
{positional_cases}    esac
}}
complete -F _qbackup qbackup
"""


if __name__ == "__main__":
    print(render(), end="")
