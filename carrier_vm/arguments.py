"""qbackup-carrier's command line: each verb with its usage, what it does,
examples and the exit codes it can end with (its --help), and reading argv
into a Request. Help, the version and every refusal of a command line come
from here, before the configuration is read or the server contacted.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from carrier_vm.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, SSH_CONN_ENV
from carrier_vm.errors import UsageError
from carrier_vm.qrexec import Request
from qbackup_protocol import __version__
from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import InvalidName, check_name, check_prefix

PROGRAM = "qbackup-carrier"
HELP_WORDS = ("-h", "--help")
VERSION_WORD = "--version"
COMMIT_OPTION = "--commit"  # put's only option: commit right after
WIDTH = 78
SHOWN_WORD = 40  # characters of a refused word repeated in its error

# The exit codes of any run, and of every verb that talks to the server.
LOCAL_CODES = (CarrierExit.OK, CarrierExit.USAGE, CarrierExit.SOFTWARE)
SERVER_CODES = (*LOCAL_CODES, CarrierExit.DATA, CarrierExit.REFUSED, CarrierExit.TEMPORARY,
                CarrierExit.LOGIN_REFUSED, CarrierExit.HOST_KEY, CarrierExit.CONFIG)


@dataclass(frozen=True)
class Verb:
    """One verb: its ARGUMENTS as usage shows them ("NAME", "[PREFIX]",
    "[ARG]" or ""), a one-line SUMMARY, what it does, EXAMPLES and the exit
    CODES it can end with."""

    arguments: str
    summary: str
    description: str
    examples: tuple[str, ...]
    codes: tuple[CarrierExit, ...]


VERBS: dict[str, Verb] = {
    "put": Verb(
        f"[{COMMIT_OPTION}] NAME",
        "backup on stdin -> server, STAGED; the receipt, one JSON line, on stdout",
        "Send the backup on stdin (Qubes' stream, from qubes.Backup) to the server, "
        "which stages it: it becomes backup NAME only with `commit NAME`, which dom0 "
        "sends once Qubes reports the backup complete. Exits 0 only when the server's "
        "receipt has the size and SHA-256 computed while sending; a lost connection is "
        f"resumed within resume_window. stdin may not be a terminal. {COMMIT_OPTION} "
        "(before NAME) commits right after, for standalone use.",
        (f"qbackup-carrier put {COMMIT_OPTION} test-1 < backup.bin",),
        (*SERVER_CODES, CarrierExit.EXISTS),
    ),
    "commit": Verb(
        "NAME",
        "publish the staged upload NAME as a backup; its receipt on stdout",
        "Publish what `put NAME` staged as backup NAME and print its receipt (one "
        "JSON line). Exits 0 only when the receipt's size and SHA-256 are those of "
        "the put in this VM, if it kept its receipt (else dom0 compares).",
        ("qbackup-carrier commit laptop-20250501T030000Z",),
        (*SERVER_CODES, CarrierExit.NO_SUCH_BACKUP, CarrierExit.EXISTS),
    ),
    "get": Verb(
        "NAME",
        "stored backup NAME -> stdout, verified (repeatable)",
        "Write backup NAME to stdout. Exits 0 only when its length and SHA-256 are "
        "those the server listed for NAME before the first byte; a lost connection "
        "is resumed within resume_window.",
        ("qbackup-carrier get laptop-20250501T030000Z > backup.bin",),
        (*SERVER_CODES, CarrierExit.NO_SUCH_BACKUP),
    ),
    "list": Verb(
        "[PREFIX]",
        "the backups (under PREFIX): JSON lines, ending with the summary line",
        "Print one JSON line per stored backup whose name starts with PREFIX, then "
        "the summary line. Trust the listing only when the exit code is 0.",
        ("qbackup-carrier list", "qbackup-carrier list laptop-"),
        SERVER_CODES,
    ),
    "check": Verb(
        "NAME",
        "the server re-hashes backup NAME: one JSON line, the record and \"ok\"",
        "Have the server re-hash backup NAME and compare it with its record; print "
        "the record and \"ok\" as one JSON line.",
        ("qbackup-carrier check laptop-20250501T030000Z",),
        (*SERVER_CODES, CarrierExit.NO_SUCH_BACKUP, CarrierExit.CORRUPTED),
    ),
    "info": Verb(
        "",
        "one JSON line: the server's protocol and space",
        "Log in and print the server's protocol version and space as one JSON line: "
        "the way to test the configuration, the key and the pinned host key.",
        ("qbackup-carrier info",),
        SERVER_CODES,
    ),
    "transfer": Verb(
        "NAME",
        "one JSON line: how the last put of NAME in this VM went",
        "Print how the last put of NAME in this VM went: connections lost, each "
        "outage, bytes sent again (zeros when this VM never put NAME). Local: the "
        "server is not contacted.",
        ("qbackup-carrier transfer laptop-20250501T030000Z",),
        (*LOCAL_CODES, CarrierExit.DATA),
    ),
    "abort": Verb(
        "",
        "end the put running in this VM; nothing is committed",
        "End the put running in this VM without its end frame, so the server stages "
        "nothing: SIGTERM, SIGKILL after 8 s. Exits 0 once no put runs.",
        ("qbackup-carrier abort",),
        (*LOCAL_CODES, CarrierExit.TEMPORARY),
    ),
    "qrexec-service": Verb(
        "[ARG]",
        "what /etc/qubes-rpc/qubes.BackupCarrier runs",
        "The qrexec service qubes.BackupCarrier+ARG, for dom0 only: ARG is list, "
        "check, info, get, commit, abort or transfer; a name or prefix comes as one "
        "line on stdin.",
        ("echo laptop-20250501T030000Z | qbackup-carrier qrexec-service check",),
        tuple(CarrierExit),
    ),
}
USAGE = f"usage: {PROGRAM} VERB [ARGUMENTS] (verbs: {', '.join(VERBS)}; see {PROGRAM} --help)"


@dataclass(frozen=True)
class Printout:
    """What a command line asks to be printed instead of run (help, version)."""

    text: str


def verb_usage(verb: str) -> str:
    """Given a verb, return its usage: the program, the verb, its arguments."""
    return " ".join(filter(None, (PROGRAM, verb, VERBS[verb].arguments)))


def code_lines(codes: tuple[CarrierExit, ...]) -> str:
    """Given exit codes, return one line per code, in order: its number and meaning."""
    return "".join(f"  {int(code):3d}  {code.meaning}\n" for code in sorted(codes))


# What --help (and the man page) says of the program and of its configuration.
DESCRIPTION = ("Moves Qubes' encrypted backup streams between dom0 and the backup server\n"
               "over SSH.")
CONFIGURATION = (f"{DEFAULT_CONFIG_PATH}, or the file named by\n"
                 f"${CONFIG_ENV}; {SSH_CONN_ENV}=[user@]host supplies host and user.\n"
                 "carrier.yaml.example (installed with the documentation) describes every key.")


def help_text() -> str:
    """Return `qbackup-carrier --help`: every verb, the configuration, the exit codes."""
    verbs = "".join(f"  {verb_usage(verb)}\n      {VERBS[verb].summary}\n" for verb in VERBS)
    return (
        f"usage: {PROGRAM} VERB [ARGUMENTS]\n\n{DESCRIPTION}\n\n"
        f"verbs ({PROGRAM} VERB --help for each):\n{verbs}\n"
        f"configuration: {CONFIGURATION}\n\n"
        f"exit codes:\n{code_lines(tuple(CarrierExit))}"
    )


def verb_help(verb: str) -> str:
    """Given a verb, return its --help: usage, what it does, examples, exit codes."""
    entry = VERBS[verb]
    examples = "".join(f"  {example}\n" for example in entry.examples)
    return (
        f"usage: {verb_usage(verb)}\n\n{textwrap.fill(entry.description, WIDTH)}\n\n"
        f"examples:\n{examples}\nexit codes:\n{code_lines(entry.codes)}\n"
        f"The configuration and every verb: {PROGRAM} --help\n"
    )


def shown(word: str) -> str:
    """Given a word of the command line, return it safe to repeat in an error."""
    return clean_text(word, SHOWN_WORD)


def parse_arguments(argv: list[str], under_qrexec: bool = False) -> Request | Printout:
    """Given the arguments after the program name (UNDER_QREXEC: run by
    qrexec, whose argument is the calling VM's), return the Request, or the
    Printout asked for; raise UsageError for an unknown verb or option, a
    wrong argument count or an invalid name."""
    if not argv:
        raise UsageError(USAGE)
    verb = argv[0]
    rest = argv[1:]
    if argv == [VERSION_WORD]:
        return Printout(f"{PROGRAM} {__version__}\n")
    if verb in HELP_WORDS and not rest:
        return Printout(help_text())
    if verb not in VERBS:
        what = "option" if verb.startswith("-") else "verb"
        raise UsageError(f"unknown {what} '{shown(verb)}': {USAGE}")
    if verb == "qrexec-service":
        # Threat: under qrexec, ARG comes from the calling VM: the service's
        # own table answers it (service_request), never this parser.
        if not under_qrexec and len(rest) == 1 and rest[0] in HELP_WORDS:
            return Printout(verb_help(verb))
        if len(rest) > 1:
            raise UsageError(f"usage: {verb_usage(verb)}")
        return Request(verb, rest[0] if rest else None)
    if any(word in HELP_WORDS for word in rest):
        return Printout(verb_help(verb))
    then_commit = verb == "put" and rest[:1] == [COMMIT_OPTION]
    if then_commit:
        rest = rest[1:]
    # A word starting with '-' is an option, never a NAME or PREFIX: `get
    # --help` must not ask the server for a backup named "--help", nor `put
    # NAME --commit` stage one named "--commit".
    options = [word for word in rest if word.startswith("-")]
    if options:
        raise UsageError(f"unexpected option '{shown(options[0])}' for {verb}: "
                         f"usage: {verb_usage(verb)}")
    return build_request(verb, rest, then_commit)


def build_request(verb: str, words: list[str], then_commit: bool) -> Request:
    """Given a verb, its words (no options among them) and whether put
    commits right after, return the Request; raise UsageError for a wrong
    count of words or an invalid name or prefix."""
    arguments = VERBS[verb].arguments.split()[-1:]
    optional = arguments == ["[PREFIX]"]
    if len(words) > len(arguments) or (len(words) < len(arguments) and not optional):
        raise UsageError(f"usage: {verb_usage(verb)} (see {PROGRAM} {verb} --help)")
    try:
        if not words:
            return Request(verb, None)
        if optional:
            return Request(verb, check_prefix(words[0]) or None)
        return Request(verb, check_name(words[0]), then_commit=then_commit)
    except InvalidName as error:
        raise UsageError(f"invalid backup name: {error}") from None
