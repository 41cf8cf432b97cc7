"""The one place that talks SSH: connection options, connecting, and mapping
transport failures to carrier errors.

Two failure layers, kept apart (as asyncssh's own examples do): the transport
(OSError, asyncssh.Error, timeouts) becomes TemporaryFailure/HostKeyNotTrusted
here; the remote command's exit status is mapped by errors.error_for_shell_status.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import (
    CarrierError,
    ConfigError,
    DataError,
    HostKeyNotTrusted,
    ServerRefused,
    TemporaryFailure,
)

# Debian bookworm's python3-cryptography warns about ciphers asyncssh 2.10
# merely registers; those warnings would land on the stderr that dom0 reads.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import asyncssh

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STDERR_BYTES = 4096
MAX_DETAIL_CHARACTERS = 200


def printable(data: bytes | str, limit: int = MAX_DETAIL_CHARACTERS) -> str:
    """Given untrusted bytes or text, return at most LIMIT characters of it with
    everything but printable ASCII replaced by '?' (no escapes reach a terminal)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())  # newlines and tabs become single spaces
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def server_label(config: CarrierConfig) -> str:
    """Given the config, return HOST or [HOST]:PORT as known_hosts spells it."""
    if config.port is None or config.port == 22:
        return config.host
    return f"[{config.host}]:{config.port}"


def pin_hint(config: CarrierConfig) -> str:
    """Given the config, return the command that pins the server's host key."""
    port = f"-p {config.port} " if config.port else ""
    return (
        f"ssh-keyscan {port}{config.host} >> {config.known_hosts} "
        "(verify the fingerprint out of band)"
    )


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
        "config": [str(config.ssh_config)]
        if config.ssh_config and config.ssh_config.exists()
        else None,
    }
    if config.port is not None:
        options["port"] = config.port
    if config.user is not None:
        options["username"] = config.user
    if config.identity_file is not None:
        options["client_keys"] = [str(config.identity_file)]
    return options


@asynccontextmanager
async def open_connection(config: CarrierConfig) -> AsyncIterator[Any]:
    """Given the config, yield an authenticated asyncssh connection and close
    it afterwards; raise a CarrierError if the server cannot be reached, its
    host key is not pinned, or the login is refused."""
    if not config.known_hosts.is_file():
        # An unpinned server is refused before any packet is exchanged.
        raise HostKeyNotTrusted(
            f"refused: host key for {server_label(config)} cannot be checked: "
            f"{config.known_hosts} does not exist - pin it with {pin_hint(config)}"
        )
    options = build_connect_options(config)
    logger.info("connecting to %s", server_label(config))
    try:
        # wait_for on top of connect_timeout: asyncssh 2.10 does not bound
        # every step of the handshake with it.
        connection = await asyncio.wait_for(
            asyncssh.connect(config.host, **options), config.connect_timeout + 5
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyNotTrusted(
            f"refused: host key for {server_label(config)} is not in {config.known_hosts} "
            f"(unknown or changed) - pin it with {pin_hint(config)}"
        ) from None
    except asyncssh.PermissionDenied:
        raise ServerRefused(
            f"the server refused the login to {server_label(config)}: is this carrier's "
            "public key in the backup account's authorized_keys?"
        ) from None
    except asyncssh.KeyImportError as error:
        raise ConfigError(
            f"{config.source}: key 'identity_file': {printable(str(error))}"
        ) from None
    except TimeoutError:
        raise TemporaryFailure(
            f"cannot reach {server_label(config)} within {config.connect_timeout:g}s"
        ) from None
    except (OSError, asyncssh.Error) as error:
        raise TemporaryFailure(
            f"cannot reach {server_label(config)}: {printable(describe(error))}"
        ) from None
    try:
        yield connection
    finally:
        if _aborting():
            connection.abort()  # no orderly close: the server must see a cut
        else:
            connection.close()
        try:
            await asyncio.wait_for(connection.wait_closed(), 5)
        except (OSError, asyncssh.Error, TimeoutError):
            pass


def _aborting() -> bool:
    """Return whether the current task is being cancelled (abort, don't linger)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


def describe(error: BaseException) -> str:
    """Given a transport exception, return a short description of it."""
    if isinstance(error, asyncssh.Error):
        return error.reason or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def transport_error(error: BaseException, config: CarrierConfig) -> CarrierError:
    """Given an exception raised while a session was running, return the
    carrier error to raise for it (a lost connection is temporary)."""
    if isinstance(error, CarrierError):
        return error
    return TemporaryFailure(
        f"connection to {server_label(config)} lost: {printable(describe(error))}"
    )


async def read_bounded(reader: Any, limit: int) -> bytes:
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


async def with_stderr(main: Awaitable[T], errors: Any) -> tuple[T, str]:
    """Given a coroutine reading the session's stdout and its stderr reader,
    run both at once (a server flooding stderr must not stall stdout) and
    return (MAIN's result, stderr made printable); raise the first failure."""
    main_task = asyncio.ensure_future(main)
    stderr_task = asyncio.ensure_future(read_bounded(errors, MAX_STDERR_BYTES))
    try:
        done, _ = await asyncio.wait({main_task, stderr_task}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            failure = task.exception()
            if failure is not None:
                raise failure
        return await main_task, printable(await stderr_task)
    finally:
        main_task.cancel()
        stderr_task.cancel()


def exit_status(channel: Any) -> int | None:
    """Given a closed channel, return the remote exit status, or None if the
    command died by a signal or sent none."""
    status = channel.get_exit_status()
    if status is None or status < 0:
        return None
    return int(status)
