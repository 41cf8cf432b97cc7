"""The man pages, rendered from the programs' own parsers and tables.

qbackup(1) comes from dom0's argparse parser, qbackup-carrier(1) from the
carrier's verb table (carrier_vm/arguments.py), qbackup-server(8) from the
admin tool's parser, qbackup-shell(8) from the wire protocol's verbs, the
shell's settings and ShellExit, qbackup-extract(1) from its parser. Each
page's exit codes are its program's exit enum. `make man` writes the pages
into man/; tests render them again and compare, so a page cannot drift
from its program. The make targets install the committed pages: no part
needs this module at install time.

Run as `python -m man.render [DIRECTORY]` (default: man/).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from qbackup_protocol import __version__
from qbackup_protocol.wire import ExitStatus

MANUAL = "qbackup manual"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Page:
    """One man page: its file name and its roff text."""

    file_name: str
    text: str


def escape(text: str) -> str:
    """Given plain text, return it as roff text: backslashes and hyphens
    escaped, and no line starting with a control character."""
    lines = text.replace("\\", "\\e").replace("-", "\\-").split("\n")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def header(name: str, section: int, version: str, summary: str) -> list[str]:
    """Given a program, its section, version and one-line summary, return the
    page's title and NAME section."""
    return [f'.TH "{name.upper()}" "{section}" "" "qbackup {version}" "{MANUAL}"',
            ".SH NAME", f"{escape(name)} \\- {escape(summary)}"]


def preformatted(text: str) -> list[str]:
    """Given text laid out in lines (examples, tables), return it kept as is."""
    return [".PP", ".nf", escape(text.strip("\n")), ".fi"]


def exit_section(codes: Iterable[ExitStatus]) -> list[str]:
    """Given a program's exit codes, return its EXIT STATUS section."""
    lines = [".SH EXIT STATUS"]
    for code in codes:
        lines += [".TP", f"\\fB{int(code)}\\fR", escape(code.meaning)]
    return lines


def usage_of(parser: argparse.ArgumentParser) -> str:
    """Given a parser, return its usage as one line of roff text."""
    return escape(" ".join(parser.format_usage().removeprefix("usage: ").split()))


def options_of(parser: argparse.ArgumentParser, shown: frozenset[str] = frozenset()) -> list[str]:
    """Given a parser and the options already SHOWN (the program's own, which
    every command takes too), return a tagged paragraph per other option and
    positional (its help with %(default)s expanded, as --help shows it)."""
    formatter = parser._get_formatter()  # what --help expands help texts with
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if set(action.option_strings) & shown:
            continue
        help_text = formatter._expand_help(action) if action.help else ""
        label = formatter._format_action_invocation(action)  # as --help names it
        lines += [".TP", f"\\fB{escape(label)}\\fR", escape(help_text)]
    return lines


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Given a parser with subcommands, return them by name, in order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def notes(epilog: str | None) -> str:
    """Given a parser's epilog, return it without its exit codes (the page
    has them once, in EXIT STATUS)."""
    return (epilog or "").split("\n\nexit codes", 1)[0]


def argparse_body(parser: argparse.ArgumentParser, program: str) -> list[str]:
    """Given a program's parser, return SYNOPSIS, DESCRIPTION, OPTIONS and
    one section per subcommand (its description, options and examples)."""
    lines = [".SH SYNOPSIS", usage_of(parser), ".SH DESCRIPTION", escape(parser.description or "")]
    lines += [".SH OPTIONS", *options_of(parser)]
    shown = frozenset(option for action in parser._actions for option in action.option_strings)
    for name, command in commands_of(parser).items():
        lines += [f".SH COMMAND: {escape(name.upper())}", usage_of(command), ".PP",
                  escape(command.description or "")]
        lines += options_of(command, shown)
        for sub_name, sub in commands_of(command).items():
            lines += [f".SS {escape(program)} {escape(name)} {escape(sub_name)}",
                      usage_of(sub), ".PP", escape(sub.description or ""),
                      *options_of(sub, shown)]
        if notes(command.epilog).strip():
            lines += preformatted(notes(command.epilog))
    if notes(parser.epilog).strip():
        lines += [".SH NOTES", *preformatted(notes(parser.epilog))]
    return lines


def qbackup_page() -> Page:
    from dom0.arguments import build_parser
    from dom0.errors import QbackupExit

    parser = build_parser()
    lines = header("qbackup", 1, __version__, "scheduled, encrypted, off-site Qubes backups")
    lines += argparse_body(parser, "qbackup") + exit_section(QbackupExit)
    lines += [".SH SEE ALSO", "qbackup\\-carrier(1), qbackup\\-server(8), qbackup\\-shell(8),",
              "qvm\\-backup(1), qvm\\-backup\\-restore(1)"]
    return Page("qbackup.1", "\n".join(lines) + "\n")


def carrier_page() -> Page:
    from carrier_vm.arguments import CONFIGURATION, DESCRIPTION, PROGRAM, VERBS, verb_help
    from qbackup_protocol.carrier_service import CarrierExit

    lines = header(PROGRAM, 1, __version__, "carry qbackup streams between dom0 and the server")
    lines += [".SH SYNOPSIS", f"{PROGRAM} VERB [ARGUMENTS]", ".br",
              f"{PROGRAM} \\-\\-help | \\-\\-version", ".SH DESCRIPTION",
              *preformatted(DESCRIPTION)]
    for verb in VERBS:
        text = verb_help(verb)
        usage, _, rest = text.partition("\n\n")
        lines += [f".SH VERB: {escape(verb.upper())}", escape(usage.removeprefix("usage: ")),
                  *preformatted(rest.split("\nexit codes:", 1)[0])]
    lines += [".SH FILES", escape(" ".join(CONFIGURATION.split()))]
    lines += exit_section(CarrierExit)
    lines += [".SH SEE ALSO", "qbackup(1), qbackup\\-shell(8)"]
    return Page(f"{PROGRAM}.1", "\n".join(lines) + "\n")


def server_page() -> Page:
    from server_shell.admin import ServerExit, build_parser

    lines = header("qbackup-server", 8, __version__, "the backup server admin's tool")
    lines += argparse_body(build_parser(), "qbackup-server") + exit_section(ServerExit)
    lines += [".SH SEE ALSO", "qbackup\\-shell(8), qbackup(1)"]
    return Page("qbackup-server.8", "\n".join(lines) + "\n")


def shell_page() -> Page:
    from qbackup_protocol import wire
    from server_shell.config import KEYS
    from server_shell.main import DEFAULT_CONFIG_PATH

    lines = header("qbackup-shell", 8, __version__, "login shell of a qbackup storage account")
    lines += [".SH SYNOPSIS", "qbackup\\-shell \\-c COMMAND", ".br",
              "qbackup\\-shell \\-\\-help | \\-\\-version", ".SH DESCRIPTION",
              escape("The login shell (or the forced command) of the account that stores "
                     "qbackup backups on the server. It runs one protocol command per SSH "
                     "session and refuses everything else: interactive logins, other "
                     "programs, sftp and scp. Backups are written append-only: never "
                     "replaced, never removed by a client (qbackup-server prunes, as root)."),
              ".SH COMMANDS"]
    for verb in sorted(wire.ALL_VERBS):
        argument = ("NAME" if verb in wire.VERBS_WITH_NAME else
                    "[PREFIX]" if verb in wire.VERBS_WITH_OPTIONAL_PREFIX else "")
        offset = " [OFFSET]" if verb == wire.VERB_GET else ""
        lines += [".TP", f"\\fB{verb}\\fR {argument}{offset}".rstrip()]
    lines += [".SH CONFIGURATION", escape(f"{DEFAULT_CONFIG_PATH}: [storage] sets every "
              "account's values, [account NAME] one account's; sizes take K, M, G or T, "
              "durations s, m, h or d.")]
    for key, setting in KEYS.items():
        lines += [".TP", f"\\fB{escape(key)}\\fR (default {escape(setting.default)}, "
                  f"at least {escape(setting.floor)})", escape(setting.help)]
    lines += exit_section(wire.ShellExit)
    lines += [".SH SEE ALSO", "qbackup\\-server(8), qbackup\\-carrier(1), sshd(8)"]
    return Page("qbackup-shell.8", "\n".join(lines) + "\n")


def extract_page() -> Page:
    from qbackup_extract.cli import PROG, build_parser
    from qbackup_extract.errors import ExtractExit

    lines = header(PROG, 1, __version__, "get VM images out of a Qubes backup without Qubes")
    lines += argparse_body(build_parser(), PROG) + exit_section(ExtractExit)
    lines += [".SH SEE ALSO", "qbackup(1), qvm\\-backup\\-restore(1), scrypt(1)"]
    return Page(f"{PROG}.1", "\n".join(lines) + "\n")


PAGES: tuple[Callable[[], Page], ...] = (qbackup_page, carrier_page, server_page, shell_page,
                                         extract_page)


def main(argv: list[str]) -> int:
    """Write every page into the directory named by ARGV (default: man/)."""
    directory = Path(argv[0]) if argv else HERE
    for render in PAGES:
        page = render()
        (directory / page.file_name).write_text(page.text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
