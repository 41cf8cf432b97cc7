"""The one place that talks SSH: connection options, connecting, running one
remote command (``run_session``), and mapping transport failures to carrier errors.

Two failure layers, kept apart (as asyncssh's own examples do): the transport
(OSError, asyncssh.Error, timeouts) becomes TemporaryFailure/HostKeyNotTrusted/
LoginRefused here; the remote command's exit status is mapped by
errors.error_for_shell_status.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import (
    CarrierError,
    ConfigError,
    DataError,
    HostKeyNotTrusted,
    LoginRefused,
    TemporaryFailure,
    error_for_shell_status,
)
from qbackup_protocol.text import clean_text

# Debian bookworm's python3-cryptography warns about ciphers asyncssh 2.10
# merely registers; those warnings would land on the stderr that dom0 reads.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import asyncssh

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STDERR_BYTES = 4096
MAX_DETAIL_CHARACTERS = 200
# How long a session may take to close once its output ended (exit status in flight).
CLOSE_TIMEOUT = 10.0
# Seconds between cancels of a task that went on after being cancelled
# (Python 3.11's wait_for can swallow a cancel).
SETTLE_RETRY = 1.0
FIRST_BACKOFF = 1.0  # seconds before the first reconnection attempt, doubling
MAX_BACKOFF = 30.0

DEFAULT_SSH_PORT = 22
# getaddrinfo's answers that the server's name does not exist, or has no
# address: a configuration problem. Others, above all EAI_AGAIN (no DNS
# server answered: the network is down), are temporary.
NO_SUCH_NAME = frozenset({socket.EAI_NONAME, socket.EAI_NODATA})
ADMIN_FINGERPRINTS = "ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub"
VERIFY_BEFORE_PINNING = (
    "verify the server's fingerprint out of band (its admin reads it with "
    f"{ADMIN_FINGERPRINTS}) before pinning it, as the README's pinning step shows"
)

# Python 3.10's asyncio.wait_for raises asyncio.TimeoutError, which became the
# builtin TimeoutError only in 3.11; catch both (the carrier runs on >= 3.10).
TIMEOUTS = (TimeoutError, asyncio.exceptions.TimeoutError)

Connection = asyncssh.SSHClientConnection
Reader = asyncssh.SSHReader  # of bytes: every session is opened with encoding=None
Writer = asyncssh.SSHWriter


def one_line(data: bytes | str, limit: int = MAX_DETAIL_CHARACTERS) -> str:
    """Given untrusted bytes or text (the server's stderr, an error's text),
    return it as one line of detail: whitespace runs become single spaces,
    then clean_text makes it safe to show."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return clean_text(" ".join(text.split()), limit)


def server_label(config: CarrierConfig) -> str:
    """Given the config, return HOST or [HOST]:PORT as known_hosts spells it."""
    if config.port is None or config.port == DEFAULT_SSH_PORT:
        return config.host
    return f"[{config.host}]:{config.port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    """Given a public key, return its SHA256 fingerprint as `ssh-keygen -lf`
    prints it, and its type."""
    return f"{key.get_fingerprint('sha256')} ({key.get_algorithm()})"


@dataclass(frozen=True)
class OfferedKey:
    """A host key the server offered that no pinned key matched, with the
    host, address and port asyncssh looked pinned keys up for."""

    host: str
    addr: str
    port: int
    key: asyncssh.SSHKey


class HostKeyWitness(asyncssh.SSHClient):
    """asyncssh's callbacks for one connection: keeps the host key the server
    offered when no pinned key matched it, so that the refusal can show it.
    It never accepts one: pinning is the user's act, after checking the
    fingerprint out of band."""

    def __init__(self) -> None:
        self.offered: OfferedKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = OfferedKey(host, addr, port, key)
        return False


def pinned_keys(known_hosts: Path, offered: OfferedKey) -> list[asyncssh.SSHKey]:
    """Given the known_hosts file and an offered key, return the keys the
    file pins for the host it was offered by (none if it cannot be read)."""
    port = None if offered.port == DEFAULT_SSH_PORT else offered.port
    try:
        trusted, *_ = asyncssh.match_known_hosts(str(known_hosts), offered.host, offered.addr,
                                                 port)
    except (OSError, ValueError, asyncssh.Error):
        return []
    return list(trusted)


def host_key_refusal(
    config: CarrierConfig, offered: OfferedKey | None, reason: str
) -> HostKeyNotTrusted:
    """Given the config, the key the server offered (None: asyncssh refused it
    without asking, e.g. a revoked key) and asyncssh's reason, return the
    refusal: for a key that CHANGED (the host has another pinned), an alarm
    with both fingerprints; for a host with none pinned, how to pin safely."""
    label = server_label(config)
    if offered is None:
        return HostKeyNotTrusted(f"refused: the host key of {label} is not accepted "
                                 f"({one_line(reason)}); see {config.known_hosts}")
    pinned = pinned_keys(config.known_hosts, offered)
    if pinned:
        # Threat: someone between the carrier and the server, presenting
        # their own key. Only the server's admin can tell it from a
        # reinstalled server, so no command to re-pin is suggested.
        return HostKeyNotTrusted(
            f"ALARM: the host key of {label} CHANGED: {config.known_hosts} pins "
            f"{', '.join(fingerprint(key) for key in pinned)}, the server offers "
            f"{fingerprint(offered.key)}. The connection may be intercepted; nothing was "
            "sent. Replace the pinned key only once the server's admin confirms the new "
            f"fingerprint on the server ({ADMIN_FINGERPRINTS})"
        )
    return HostKeyNotTrusted(
        f"refused: no host key of {label} is pinned in {config.known_hosts}; the server "
        f"offers {fingerprint(offered.key)}: {VERIFY_BEFORE_PINNING}"
    )


def ssh_config_in_use(config: CarrierConfig) -> Path | None:
    """Given the config, return the OpenSSH client config read, if any."""
    if config.ssh_config and config.ssh_config.exists():
        return config.ssh_config
    return None


def build_connect_options(config: CarrierConfig) -> dict[str, Any]:
    """Given the validated config, return asyncssh.connect keyword arguments.

    Only keys the user set are passed, so ~/.ssh/config may supply the rest
    (asyncssh gives explicit arguments precedence over the config file)."""
    options: dict[str, Any] = {
        # Always a pinned file: None would switch host key checking off, and
        # an explicit argument beats UserKnownHostsFile in ~/.ssh/config.
        "known_hosts": str(config.known_hosts),
        "encryption_algs": list(config.ciphers),
        # The stream is encrypted ciphertext: compression only burns CPU.
        "compression_algs": None,
        "connect_timeout": config.connect_timeout,
        "login_timeout": config.connect_timeout,
        # A dead network is noticed after interval * (count_max + 1) seconds.
        "keepalive_interval": config.keepalive_interval,
        "keepalive_count_max": config.keepalive_count_max,
        # Unattended: never fall back to passwords or keyboard prompts.
        "password_auth": False,
        "kbdint_auth": False,
        "config": [str(ssh_config)] if (ssh_config := ssh_config_in_use(config)) else None,
    }
    if config.port is not None:
        options["port"] = config.port
    if config.user is not None:
        options["username"] = config.user
    if config.identity_file is not None:
        options["client_keys"] = [str(config.identity_file)]
    return options


async def connect(config: CarrierConfig) -> Connection:
    """Given the config, return an authenticated asyncssh connection; raise a
    CarrierError if the server cannot be reached, its host key is not pinned,
    or the login is refused."""
    if not config.known_hosts.is_file():
        # An unpinned server is refused before any packet is exchanged.
        raise HostKeyNotTrusted(
            f"refused: the host key of {server_label(config)} cannot be checked: "
            f"{config.known_hosts} does not exist; {VERIFY_BEFORE_PINNING}"
        )
    options = build_connect_options(config)
    witness = HostKeyWitness()
    logger.info("connecting to %s", server_label(config))
    try:
        # wait_for on top of connect_timeout: asyncssh 2.10 does not bound
        # every step of the handshake with it.
        return await asyncio.wait_for(
            asyncssh.connect(config.host, client_factory=lambda: witness, **options),
            config.connect_timeout + 5,
        )
    except asyncssh.HostKeyNotVerifiable as error:
        raise host_key_refusal(config, witness.offered, error.reason) from None
    except asyncssh.PermissionDenied:
        raise LoginRefused(
            f"the server refused the login to {server_label(config)}: is this carrier's "
            "public key in the backup account's authorized_keys?"
        ) from None
    except asyncssh.KeyImportError as error:
        raise ConfigError(
            f"{config.source}: identity_file: {one_line(str(error))}"
        ) from None
    except TIMEOUTS:
        raise TemporaryFailure(
            f"cannot reach {server_label(config)} within {config.connect_timeout:g}s"
        ) from None
    except socket.gaierror as error:
        raise resolution_failure(config, error) from None
    except (OSError, asyncssh.Error) as error:
        raise TemporaryFailure(
            f"cannot reach {server_label(config)}: {one_line(describe(error))}"
        ) from None


def resolution_failure(config: CarrierConfig, error: socket.gaierror) -> CarrierError:
    """Given getaddrinfo's failure for the server's name, return the error to
    raise: a name that does not exist is the configuration's (no retry
    helps); any other failure (no DNS server answered) is temporary."""
    if error.errno not in NO_SUCH_NAME:
        return TemporaryFailure(f"cannot reach {server_label(config)}: {one_line(describe(error))}")
    where = config.host_origin or f"`host` in {config.source}"
    ssh_config = ssh_config_in_use(config)
    also = f" (or its Hostname in {ssh_config})" if ssh_config else ""
    return ConfigError(f"host {config.host} does not resolve: check {where}{also}")


async def disconnect(connection: Connection, cut: bool) -> None:
    """Given a connection, close it (CUT: abort it, so the server sees the
    connection drop rather than an orderly end) and wait briefly for that."""
    if cut:
        connection.abort()
    else:
        connection.close()
    try:
        await asyncio.wait_for(connection.wait_closed(), 5)
    except (OSError, asyncssh.Error, *TIMEOUTS):
        pass


class Link:
    """The carrier's connection to the server, which a resuming transfer can
    replace: ``connection`` is the current one; ``reconnect_within()`` drops
    it and opens a new one."""

    def __init__(
        self,
        config: CarrierConfig,
        connection: Connection,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.connection = connection
        self.stopping = stopping  # True once a signal asked the carrier to stop

    async def reconnect_within(self, failure: TemporaryFailure, lost_at: float) -> float:
        """Given the failure that lost the connection at LOST_AT (monotonic),
        drop it and reconnect (connect_within); return how long the outage
        lasted. Raise as connect_within does."""
        await disconnect(self.connection, cut=True)
        self.connection = await connect_within(self.config, failure, lost_at, self.stopping)
        return time.monotonic() - lost_at


async def connect_within(
    config: CarrierConfig,
    failure: TemporaryFailure,
    lost_at: float,
    stopping: Callable[[], bool] = lambda: False,
) -> Connection:
    """Given the config and the failure that left the carrier without a
    connection at LOST_AT (monotonic), connect with backoff until
    resume_window seconds after it; return the connection. Raise
    TemporaryFailure (FAILURE's text) once the window has passed, another
    CarrierError (host key, login, config) at once, CancelledError once
    STOPPING() (a signal asked the carrier to stop)."""
    delay = FIRST_BACKOFF
    while True:
        remaining = config.resume_window - (time.monotonic() - lost_at)
        if remaining <= 0:
            raise TemporaryFailure(
                f"{failure} (not resumed within resume_window, {config.resume_window:g}s)"
            )
        await asyncio.sleep(min(delay, remaining))
        delay = min(2 * delay, MAX_BACKOFF)
        if stopping():
            raise asyncio.CancelledError  # never resume after an abort
        try:
            return await connect(config)
        except TemporaryFailure as error:
            logger.info("reconnecting failed: %s", error)


@asynccontextmanager
async def open_link(
    config: CarrierConfig, stopping: Callable[[], bool] = lambda: False, patient: bool = False
) -> AsyncIterator[Link]:
    """Given the config, yield a Link with a fresh connection and close its
    (current) connection afterwards: orderly on success, cut on failure or
    cancellation (the server must see a cut, never an orderly end). PATIENT:
    a server that cannot be reached is tried again as a lost connection is
    (connect_within, from now); else its TemporaryFailure is raised at once."""
    try:
        connection = await connect(config)
    except TemporaryFailure as failure:
        if not patient or config.resume_window <= 0:
            raise
        logger.warning("%s: trying again for up to resume_window", failure)
        connection = await connect_within(config, failure, time.monotonic(), stopping)
    link = Link(config, connection, stopping)
    try:
        yield link
    except BaseException:
        await disconnect(link.connection, cut=True)
        raise
    else:
        await disconnect(link.connection, cut=False)


def describe(error: BaseException) -> str:
    """Given a transport exception, return a short description of it."""
    if isinstance(error, asyncssh.Error):
        return error.reason or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def is_transport_failure(error: BaseException) -> bool:
    """Given an exception from a session, return whether it is the transport's
    (connection lost, channel closed, socket error) rather than ours."""
    return isinstance(error, OSError | asyncssh.Error)


def transport_error(error: BaseException, config: CarrierConfig) -> CarrierError:
    """Given an exception raised while a session was running, return the
    carrier error to raise for it (a lost connection is temporary)."""
    if isinstance(error, CarrierError):
        return error
    return TemporaryFailure(
        f"connection to {server_label(config)} lost: {one_line(describe(error))}"
    )


@dataclass(frozen=True)
class SessionEnd(Generic[T]):
    """How one remote command ended: what the output reader returned, the
    shell's exit status (None: killed or none sent), its stderr made printable,
    and whether the input coroutine ran to its end (False: the server closed first)."""

    value: T
    status: int | None
    detail: str
    input_complete: bool

    def raise_for_status(self) -> None:
        """Raise the CarrierError the exit status means, unless it is 0."""
        if self.status != 0:
            raise error_for_shell_status(self.status, self.detail)


async def run_session(
    connection: Connection,
    command: str,
    config: CarrierConfig,
    read_output: Callable[[Reader[bytes]], Awaitable[T]],
    send_input: Callable[[Writer[bytes]], Awaitable[None]] | None = None,
) -> SessionEnd[T]:
    """Given a connection and a command line, run it in a new session: SEND_INPUT
    writes stdin (no input: EOF at once), READ_OUTPUT consumes stdout, stderr is
    kept bounded; return how it ended once stdout and stderr closed and the
    exit status came. Raise TemporaryFailure for a transport failure, DataError
    for stderr past its bound, and whatever CarrierError the two callbacks raise
    (an input failure that is the transport's waits for the exit status instead:
    a closed channel usually means the shell exited, and its status says why)."""
    try:
        writer, reader, errors = await connection.open_session(command, encoding=None)
    except (OSError, asyncssh.Error) as error:
        raise transport_error(error, config) from None
    channel = cast("asyncssh.SSHClientChannel[bytes]", writer.channel)
    output = asyncio.ensure_future(read_output(reader))
    stderr = asyncio.ensure_future(read_bounded(errors, MAX_STDERR_BYTES))
    sending: asyncio.Future[None] | None = None
    if send_input is None:
        writer.write_eof()
    else:
        sending = asyncio.ensure_future(send_input(writer))
    waiting: set[asyncio.Future[Any]] = {output, stderr} | ({sending} if sending else set())
    input_failure: BaseException | None = None
    grace: asyncio.Future[None] | None = None
    try:
        while not (output.done() and stderr.done()):
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is grace:
                    # The input broke and the output did not end either: the
                    # connection itself is gone.
                    raise transport_error(input_failure or EOFError(), config) from None
                failure = task.exception()
                if failure is None:
                    continue
                if task is sending and is_transport_failure(failure):
                    # The output ends soon if the shell exited; bound it in case not.
                    input_failure = failure
                    grace = asyncio.ensure_future(asyncio.sleep(CLOSE_TIMEOUT))
                    waiting.add(grace)
                    continue
                if isinstance(failure, CarrierError):
                    raise failure
                if is_transport_failure(failure):
                    raise transport_error(failure, config) from None
                raise failure
        try:
            await asyncio.wait_for(channel.wait_closed(), CLOSE_TIMEOUT)
        except TIMEOUTS:
            raise TemporaryFailure(
                f"the session with {server_label(config)} did not close after its output ended"
            ) from None
        status = exit_status(channel)
        complete = sending is None or (sending.done() and sending.exception() is None)
        return SessionEnd(output.result(), status, one_line(stderr.result()), complete)
    finally:
        # Close the channel FIRST: a write racing the cancellation (in 3.11,
        # wait_for can swallow a cancel) must fail, never reach the server --
        # above all not an end frame after an abort.
        if not channel.is_closing():
            channel.close()
        tasks: list[asyncio.Future[Any]] = [output, stderr]
        tasks += [task for task in (sending, grace) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await _settle(task)


async def _settle(task: asyncio.Future[Any]) -> None:
    """Given a finished or cancelled task, wait for it, ignoring its outcome
    (its failure, if any, was already reported). While it goes on, cancel it
    again every SETTLE_RETRY seconds: in Python 3.11 a wait_for whose inner
    future completes at the moment of the cancel swallows it, and the task
    would go on -- an aborted put waiting for stdin that never ends."""
    while not task.done():
        await asyncio.wait({task}, timeout=SETTLE_RETRY)
        if not task.done():
            logger.debug("a cancelled session task went on: cancelling it again")
            task.cancel()
    try:
        task.result()
    except (asyncio.CancelledError, Exception):  # noqa: S110
        pass


async def within(work: Awaitable[T], seconds: float, what: str) -> T:
    """Given an awaitable, return its result; raise DataError naming WHAT if it
    takes more than SECONDS (a server that never finishes its reply)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TIMEOUTS:
        raise DataError(f"no {what} from the server within {seconds:g}s") from None


async def read_bounded(reader: Reader[bytes], limit: int) -> bytes:
    """Given an asyncssh reader, return everything it yields until EOF; raise
    DataError as soon as more than LIMIT bytes came (endless output is refused,
    not buffered or waited out)."""
    kept = bytearray()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return bytes(kept)
        kept += chunk
        if len(kept) > limit:
            raise DataError(f"the server sent more than {limit} bytes where a short reply belongs")


def bounded_output(limit: int) -> Callable[[Reader[bytes]], Awaitable[bytes]]:
    """Given a byte bound, return an output reader for run_session that keeps
    the whole stdout (a short reply) or raises DataError past LIMIT."""

    def read(reader: Reader[bytes]) -> Awaitable[bytes]:
        return read_bounded(reader, limit)

    return read


def exit_status(channel: asyncssh.SSHClientChannel[bytes]) -> int | None:
    """Given a closed channel, return the remote exit status, or None if the
    command died by a signal or sent none."""
    status = channel.get_exit_status()
    if status is None or status < 0:
        return None
    return int(status)
