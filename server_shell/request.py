"""Pure parsing: how the shell was invoked, and which protocol command was asked for.

Nothing here touches the disk, the environment or a socket: `parse_invocation`
gets argv and the environment as arguments, `parse_command` gets the text.
The allowed verbs are a static table (qbackup_protocol); anything else gets a
generic refusal that never repeats the client's input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import qbackup_protocol as protocol

from .errors import CommandRefused, NotAllowed

SHELL_NAME = "qbackup-shell"
PRUNE_WORD = "prune"
INTERACTIVE_REFUSAL = "interactive logins are not allowed; this account only stores backups"
# sshd sets these for every session; any of them means "reached over SSH".
SSH_ENVIRONMENT = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_ORIGINAL_COMMAND")
# Printable ASCII only: no NUL, newline, tab, escape or other control bytes.
ALLOWED_COMMAND_CHARACTERS = frozenset(chr(code) for code in range(0x20, 0x7F))


@dataclass(frozen=True)
class Request:
    """One protocol command: a verb and its (already validated) argument."""

    verb: str
    argument: str | None = None


@dataclass(frozen=True)
class Invocation:
    """What argv + environment ask for: a remote protocol command, or a local prune."""

    command: str | None = None
    prune_arguments: tuple[str, ...] | None = None


def parse_command(text: str) -> Request:
    """Given the command text a client sent, return the Request it names; raise
    NotAllowed for `prune`, CommandRefused for anything else not in the grammar."""
    # Bound before looking inside: nothing long is worth parsing.
    if len(text) > protocol.MAX_COMMAND_LENGTH:
        raise CommandRefused("command too long")
    # Control characters (NUL, newline, escapes) never belong in a command:
    # refuse them before splitting, so no later step can be confused by them.
    if not set(text) <= ALLOWED_COMMAND_CHARACTERS:
        raise CommandRefused("command contains control or non-ASCII characters")
    # Exactly one space between words: no quoting, no tabs, no empty words, so
    # there is only one way to read a command.
    words = text.split(" ")
    verb, arguments = words[0], words[1:]
    if verb == PRUNE_WORD:
        # prune deletes backups: it exists only for the local admin.
        raise NotAllowed("prune is only allowed for the local admin, not over SSH")
    if verb not in protocol.ALL_VERBS:
        raise CommandRefused("unknown command (allowed: put, commit, get, list, check, info)")
    try:
        if verb in protocol.VERBS_WITH_NAME:
            if len(arguments) != 1:
                raise CommandRefused(f"{verb} takes exactly one name")
            return Request(verb, protocol.check_name(arguments[0]))
        if verb in protocol.VERBS_WITH_OPTIONAL_PREFIX:
            if len(arguments) > 1:
                raise CommandRefused(f"{verb} takes at most one prefix")
            if not arguments:
                return Request(verb, None)
            return Request(verb, protocol.check_prefix(arguments[0]) or None)
        if arguments:
            raise CommandRefused(f"{verb} takes no argument")
        return Request(verb, None)
    except protocol.InvalidName as error:
        # The rule that was broken, never the name itself.
        raise CommandRefused(f"invalid name: {error}") from None


def names_this_shell(command: str) -> bool:
    """Given a forced `command=` from authorized_keys, return True if it just
    runs this shell again (so the client's command is in SSH_ORIGINAL_COMMAND)."""
    return " " not in command and os.path.basename(command) == SHELL_NAME


def parse_invocation(argv: list[str], environ: Mapping[str, str]) -> Invocation:
    """Given argv and the environment, return what was asked for; raise
    NotAllowed for an interactive login or a prune over SSH, CommandRefused
    for any other argv shape.

    sshd runs a login shell as `SHELL -c COMMAND` for every exec request
    (scp, sftp and rsync included) and as `-SHELL` with no argument for an
    interactive login. With a forced `command=` in authorized_keys, sshd runs
    `SHELL -c FORCED` and puts the client's own command in
    SSH_ORIGINAL_COMMAND; if the forced command runs another shell that then
    starts this one, we see just `[prog]` plus SSH_ORIGINAL_COMMAND."""
    arguments = argv[1:]
    original = environ.get("SSH_ORIGINAL_COMMAND")
    if not arguments:
        if original is not None:
            return Invocation(command=original)
        raise NotAllowed(INTERACTIVE_REFUSAL)
    if arguments[0] == "-c":
        if len(arguments) != 2:
            raise CommandRefused("usage: qbackup-shell -c COMMAND")
        command = arguments[1]
        if names_this_shell(command):
            if original is None:
                raise NotAllowed(INTERACTIVE_REFUSAL)
            return Invocation(command=original)
        return Invocation(command=command)
    if arguments[0] == PRUNE_WORD:
        # Deleting is for the local admin only: any trace of sshd refuses it,
        # even though sshd itself would always use -c.
        if any(name in environ for name in SSH_ENVIRONMENT):
            raise NotAllowed("prune is only allowed for the local admin, not over SSH")
        return Invocation(prune_arguments=tuple(arguments[1:]))
    raise CommandRefused("usage: qbackup-shell -c COMMAND | qbackup-shell prune ...")
