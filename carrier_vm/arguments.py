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
from qbackup_protocol.carrier_service import (
    CarrierExit,
    check_destination,
    check_destinations,
)
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import InvalidName, ProtocolError, check_name, check_prefix

PROGRAM = "qbackup-carrier"
HELP_WORDS = ("-h", "--help")
VERSION_WORD = "--version"
COMMIT_OPTION = "--commit"  # put: commit right after
TO_OPTION = "--to"  # put: these destinations only (comma-separated)
FROM_OPTION = "--from"  # list, check, get, info: this destination, not the first
# put: exit 0 when some destinations staged. Qubes' backup engine fails the
# whole backup when its command exits non-zero (qubes/backup.py,
# _monitor_process), so dom0 passes it and learns the rest from commit.
PARTIAL_OK_OPTION = "--partial-ok"
FLAGS = (COMMIT_OPTION, PARTIAL_OK_OPTION)  # the options that take no value
# How usage shows each option.
OPTION_USAGE = {COMMIT_OPTION: COMMIT_OPTION, TO_OPTION: f"{TO_OPTION} D[,D...]",
                FROM_OPTION: f"{FROM_OPTION} D", PARTIAL_OK_OPTION: PARTIAL_OK_OPTION}
WIDTH = 78
SHOWN_WORD = 40  # characters of a refused word repeated in its error

# The exit codes of any run, and of every verb that talks to the server.
LOCAL_CODES = (CarrierExit.OK, CarrierExit.USAGE, CarrierExit.SOFTWARE)
SERVER_CODES = (*LOCAL_CODES, CarrierExit.DATA, CarrierExit.REFUSED, CarrierExit.TEMPORARY,
                CarrierExit.LOGIN_REFUSED, CarrierExit.HOST_KEY, CarrierExit.CONFIG)
# A verb that answers for several destinations may also end with PARTIAL.
FANOUT_CODES = (*SERVER_CODES, CarrierExit.PARTIAL)


@dataclass(frozen=True)
class Verb:
    """One verb: its ARGUMENTS as usage shows them ("NAME", "[PREFIX]",
    "[ARG]" or ""), a one-line SUMMARY, what it does, EXAMPLES, the exit
    CODES it can end with and the OPTIONS it takes (before its argument)."""

    arguments: str
    summary: str
    description: str
    examples: tuple[str, ...]
    codes: tuple[CarrierExit, ...]
    options: tuple[str, ...] = ()


VERBS: dict[str, Verb] = {
    "put": Verb(
        "NAME",
        "backup on stdin -> every destination, STAGED; a JSON outcome line each",
        "Send the backup on stdin (Qubes' stream, from qubes.Backup) to every "
        f"destination of carrier.yaml (or those {TO_OPTION} names), reading and hashing "
        "it once; each server stages it: it becomes backup NAME only with `commit NAME`, "
        "which dom0 sends once Qubes reports the backup complete. Prints one outcome "
        "line per destination: the server's receipt (its size and SHA-256 those "
        "computed while sending) or why it failed. A lost connection is resumed "
        "within resume_window; a destination that holds the shared buffer without "
        "progress for progress_timeout is dropped and the others go on. Exits 0 when "
        f"every destination staged, {int(CarrierExit.PARTIAL)} when some did. stdin "
        f"may not be a terminal. {COMMIT_OPTION} commits right after, for standalone use; "
        f"{PARTIAL_OK_OPTION} exits 0 when some staged (Qubes fails a backup whose "
        "command exits non-zero; dom0 commits and reads each outcome from commit).",
        (f"qbackup-carrier put {COMMIT_OPTION} test-1 < backup.bin",
         f"qbackup-carrier put {TO_OPTION} home,offsite laptop-1 < backup.bin"),
        (*FANOUT_CODES, CarrierExit.EXISTS),
        (TO_OPTION, COMMIT_OPTION, PARTIAL_OK_OPTION),
    ),
    "commit": Verb(
        "NAME",
        "publish the staged upload NAME on each destination; a JSON outcome line each",
        "Publish what `put NAME` staged as backup NAME on every destination where "
        "that put in this VM staged it (all of them when it kept no receipt) and print "
        "one outcome line per destination: the receipt, or why it failed. A "
        "receipt counts only when its size and SHA-256 are those of the put.",
        ("qbackup-carrier commit laptop-20250501T030000Z",),
        (*FANOUT_CODES, CarrierExit.NO_SUCH_BACKUP, CarrierExit.EXISTS),
    ),
    "get": Verb(
        "NAME",
        "stored backup NAME -> stdout, verified (repeatable)",
        "Write backup NAME to stdout. Exits 0 only when its length and SHA-256 are "
        "those the server listed for NAME before the first byte; a lost connection "
        "is resumed within resume_window.",
        ("qbackup-carrier get laptop-20250501T030000Z > backup.bin",),
        (*SERVER_CODES, CarrierExit.NO_SUCH_BACKUP),
        (FROM_OPTION,),
    ),
    "list": Verb(
        "[PREFIX]",
        "the backups (under PREFIX): JSON lines, ending with the summary line",
        "Print one JSON line per stored backup whose name starts with PREFIX, then "
        "the summary line. Trust the listing only when the exit code is 0.",
        ("qbackup-carrier list", f"qbackup-carrier list {FROM_OPTION} offsite laptop-"),
        SERVER_CODES,
        (FROM_OPTION,),
    ),
    "check": Verb(
        "NAME",
        "the server re-hashes backup NAME: one JSON line, the record and \"ok\"",
        "Have the server re-hash backup NAME and compare it with its record; print "
        "the record and \"ok\" as one JSON line.",
        ("qbackup-carrier check laptop-20250501T030000Z",),
        (*SERVER_CODES, CarrierExit.NO_SUCH_BACKUP, CarrierExit.CORRUPTED),
        (FROM_OPTION,),
    ),
    "info": Verb(
        "",
        "one JSON line: the server's protocol and space",
        "Log in and print the server's protocol version and space as one JSON line: "
        "the way to test the configuration, the key and the pinned host key.",
        ("qbackup-carrier info",),
        SERVER_CODES,
        (FROM_OPTION,),
    ),
    "transfer": Verb(
        "NAME",
        "a JSON line per destination: how the last put of NAME in this VM went",
        "Print, for each destination, how the last put of NAME in this VM went: "
        "connections lost, each outage, bytes sent again (zeros when this VM never "
        "put NAME there). Local: no server is contacted.",
        ("qbackup-carrier transfer laptop-20250501T030000Z",),
        (*LOCAL_CODES, CarrierExit.DATA, CarrierExit.CONFIG),
    ),
    "destinations": Verb(
        "",
        "one JSON line: the destinations of carrier.yaml, in order",
        "Print carrier.yaml's destination names, in order, as one JSON line (a "
        "file with host: only has one, named default). Local.",
        ("qbackup-carrier destinations",),
        (*LOCAL_CODES, CarrierExit.CONFIG),
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
        "check, info, get, commit, abort, transfer or destinations; a name or prefix "
        "comes as one line on stdin, then (list, check, get, info) optionally a "
        "destination as a second line.",
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
    """Given a verb, return its usage: the program, the verb, its options, its arguments."""
    options = " ".join(f"[{OPTION_USAGE[option]}]" for option in VERBS[verb].options)
    return " ".join(filter(None, (PROGRAM, verb, options, VERBS[verb].arguments)))


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
    chosen = Chosen()
    while rest and rest[0].startswith("-") and option_name(rest[0]) in VERBS[verb].options:
        rest = take_option(verb, rest, chosen)
    # A word starting with '-' is an option, never a NAME or PREFIX: `get
    # --help` must not ask the server for a backup named "--help", nor `put
    # NAME --commit` stage one named "--commit".
    options = [word for word in rest if word.startswith("-")]
    if options:
        raise UsageError(f"unexpected option '{shown(options[0])}' for {verb}: "
                         f"usage: {verb_usage(verb)}")
    return build_request(verb, rest, chosen)


@dataclass
class Chosen:
    """The options of one command line, as read so far."""

    then_commit: bool = False
    destinations: tuple[str, ...] | None = None
    partial_ok: bool = False


def option_name(word: str) -> str:
    """Given an option word (`--to=a,b` or `--to`), return the option's name."""
    return word.partition("=")[0]


def take_option(verb: str, words: list[str], chosen: Chosen) -> list[str]:
    """Given the verb and the words starting with one of its options, note
    the option in CHOSEN and return the words after it; raise UsageError for
    an option given twice, a missing value or an invalid destination."""
    name, equals, value = words[0].partition("=")
    given = {COMMIT_OPTION: chosen.then_commit, PARTIAL_OK_OPTION: chosen.partial_ok}.get(
        name, chosen.destinations is not None)
    if given:
        raise UsageError(f"{name} is given twice: usage: {verb_usage(verb)}")
    if name in FLAGS:
        if equals:
            raise UsageError(f"{name} takes no value: usage: {verb_usage(verb)}")
        chosen.then_commit = chosen.then_commit or name == COMMIT_OPTION
        chosen.partial_ok = chosen.partial_ok or name == PARTIAL_OK_OPTION
        return words[1:]
    if not equals:
        if len(words) < 2:
            raise UsageError(f"{name} needs a value: usage: {verb_usage(verb)}")
        value = words[1]
        words = words[1:]
    try:
        if name == TO_OPTION:
            chosen.destinations = check_destinations(value.split(","))
        else:
            chosen.destinations = (check_destination(value),)
    except ProtocolError as error:
        raise UsageError(f"{name} '{shown(value)}': {error}") from None
    return words[1:]


def build_request(verb: str, words: list[str], chosen: Chosen) -> Request:
    """Given a verb, its words (no options among them) and its options,
    return the Request; raise UsageError for a wrong count of words or an
    invalid name or prefix."""
    arguments = VERBS[verb].arguments.split()[-1:]
    optional = arguments == ["[PREFIX]"]
    if len(words) > len(arguments) or (len(words) < len(arguments) and not optional):
        raise UsageError(f"usage: {verb_usage(verb)} (see {PROGRAM} {verb} --help)")
    try:
        if not words:
            return Request(verb, None, destinations=chosen.destinations)
        if optional:
            return Request(verb, check_prefix(words[0]) or None, destinations=chosen.destinations)
        return Request(verb, check_name(words[0]), chosen.then_commit, chosen.destinations,
                       chosen.partial_ok)
    except InvalidName as error:
        raise UsageError(f"invalid backup name: {error}") from None
