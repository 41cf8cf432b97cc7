"""Where a backup is read from: a file, `-` (standard input), or
`ssh://[user@]host[:port]/NAME`: the storage account's own `get NAME`, run by
the system's OpenSSH client, its framed output checked by get_stream.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from qbackup_extract.errors import ExtractError, ExtractExit, usage_error
from qbackup_extract.get_stream import GetStream
from qbackup_protocol.client import build_command
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import VERB_GET, InvalidName, ProtocolError, ShellExit

SSH_PREFIX = "ssh://"
# threat: a host or user read by ssh as an option (`ssh://-oProxyCommand=...`)
HOST_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
SSH_URL = re.compile(r"ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^]/]+\]|[^:/]+)(?::(?P<port>[0-9]{1,5}))?/(?P<name>.+)")
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class SshOptions:
    """How to reach the storage account: an identity file, a pinned
    known_hosts file, and more `-o` options for ssh."""

    identity: str | None = None
    known_hosts: str | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SshSource:
    """A parsed ssh:// SOURCE."""

    user: str | None
    host: str
    port: int | None
    name: str


def parse_ssh_url(url: str) -> SshSource:
    """Given an ssh:// SOURCE, return its parts; raise ExtractError (usage) if malformed."""
    match = SSH_URL.fullmatch(url)
    if match is None:
        raise usage_error("SOURCE: use ssh://[user@]host[:port]/NAME")
    user = match["user"]
    if user is not None and not USER_PATTERN.fullmatch(user):
        raise usage_error("SOURCE: invalid user name")
    if not HOST_PATTERN.fullmatch(match["host"]):
        raise usage_error("SOURCE: invalid host name")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise usage_error("SOURCE: invalid port")
    try:
        build_command(VERB_GET, match["name"])
    except (InvalidName, ProtocolError) as error:
        raise usage_error(f"SOURCE: invalid backup name: {error}") from None
    return SshSource(user=user, host=match["host"].strip("[]"), port=port, name=match["name"])


def ssh_argv(source: SshSource, options: SshOptions) -> list[str]:
    """Given an ssh SOURCE and OPTIONS, return the ssh command line that runs `get NAME`."""
    argv = ["ssh", "-o", "BatchMode=yes", "-T"]
    if source.port is not None:
        argv += ["-p", str(source.port)]
    if options.identity:
        argv += ["-i", options.identity, "-o", "IdentitiesOnly=yes"]
    if options.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={options.known_hosts}",
                 "-o", "StrictHostKeyChecking=yes"]
    for option in options.options:
        argv += ["-o", option]
    destination = f"{source.user}@{source.host}" if source.user else source.host
    return [*argv, "--", destination, build_command(VERB_GET, source.name)]


@contextlib.contextmanager
def ssh_stream(source: SshSource, options: SshOptions, label: str) -> Iterator[GetStream]:
    """Given an ssh SOURCE, yield the backup's bytes as `get` sends them; raise
    ExtractError if ssh or get fails, or the stream is not complete."""
    try:
        process = subprocess.Popen(  # noqa: S603  (argv list; host, user and name checked)
            ssh_argv(source, options), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as error:
        raise ExtractError(f"cannot run ssh: {error.strerror}", ExtractExit.NO_INPUT) from None
    stdout = cast(BinaryIO, process.stdout)
    stderr_pipe = cast(BinaryIO, process.stderr)
    stream = GetStream(stdout, label)
    failure: ExtractError | None = None
    try:
        yield stream
    except ExtractError as error:
        failure = error
    finally:
        # Stopped early (list needs only the start, or an error): ssh goes;
        # cut by the other side: ssh's own status says why.
        if not (stream.finished or stream.cut):
            process.kill()
        stdout.close()
        stderr = stderr_pipe.read(4096)
        stderr_pipe.close()
        status = process.wait()
    if (stream.finished or stream.cut) and status != 0:
        raise ssh_failure(label, status, stderr) from None
    if failure is not None:
        raise failure


def ssh_failure(label: str, status: int, stderr: bytes) -> ExtractError:
    """Given how ssh ended, return the error to show (the shell's exit codes
    say what they mean; its and ssh's words are hostile text: one clean line)."""
    meaning = ShellExit(status).meaning if status in set(ShellExit) else "ssh failed"
    return ExtractError(f"{label}: get failed ({status}: {meaning}): {clean_text(stderr, 200)}",
                        ExtractExit.NO_INPUT)


@contextlib.contextmanager
def open_source(spec: str, options: SshOptions) -> Iterator[BinaryIO | GetStream]:
    """Given SOURCE as the user wrote it, yield a stream of the backup; raise
    ExtractError if it cannot be opened."""
    if spec == "-":
        yield sys.stdin.buffer
    elif spec.startswith(SSH_PREFIX):
        source = parse_ssh_url(spec)
        with ssh_stream(source, options, clean_text(spec)) as stream:
            yield stream
    else:
        try:
            handle = open(spec, "rb", buffering=READ_SIZE)  # noqa: SIM115
        except OSError as error:
            raise ExtractError(f"{clean_text(spec)}: {error.strerror}",
                               ExtractExit.NO_INPUT) from None
        with handle:
            yield handle


def source_size(stream: object) -> int | None:
    """Given an opened source, return its size in bytes if it is a regular file."""
    if isinstance(stream, io.BufferedReader):
        with contextlib.suppress(OSError):
            info = os.fstat(stream.fileno())
            if stat.S_ISREG(info.st_mode):
                return info.st_size
    return None
