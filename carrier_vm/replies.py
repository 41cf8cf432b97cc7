"""``list``, ``check`` and ``info``: the server's JSON lines, re-validated.

The server is not trusted: every line is read with a length bound, parsed by
the protocol's strict parsers and RE-ENCODED (server bytes never pass through
raw), the number of lines and the time taken are bounded, and nothing may
follow the final line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import Corrupted, DataError, NoSuchBackup, parse_hostile
from carrier_vm.ssh import Connection, Reader, run_session, within
from qbackup_protocol.client import build_command, parse_check, parse_info, parse_list_line
from qbackup_protocol.wire import (
    MAX_LIST_ENTRIES,
    MAX_REPLY_LINE,
    VERB_CHECK,
    VERB_INFO,
    VERB_LIST,
    BackupRecord,
    CheckResult,
    ListEnd,
    ShellExit,
    encode_reply,
)

logger = logging.getLogger(__name__)

Emit = Callable[[bytes], None]


class LineReader:
    """Reads newline-terminated lines of at most MAX_REPLY_LINE bytes."""

    def __init__(self, reader: Reader[bytes]) -> None:
        self.reader = reader
        self.buffer = bytearray()
        self.eof = False

    async def next_line(self) -> bytes | None:
        """Return the next line (with its newline), or None at a clean EOF;
        raise DataError for an over-long line or a final line without newline."""
        while True:
            end = self.buffer.find(b"\n")
            if 0 <= end < MAX_REPLY_LINE:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if end >= MAX_REPLY_LINE or len(self.buffer) >= MAX_REPLY_LINE:
                # Bounded: an endless line is refused, not buffered.
                raise DataError(f"the server sent a reply line longer than {MAX_REPLY_LINE} bytes")
            if self.eof:
                if self.buffer:
                    raise DataError("the server's reply ends in the middle of a line")
                return None
            data = await self.reader.read(MAX_REPLY_LINE)
            if not data:
                self.eof = True
            self.buffer += data

    async def only_line(self) -> bytes | None:
        """Return the one line of a single-line reply, None if there is none
        (the exit status then says why); raise DataError for a second line."""
        first = await self.next_line()
        if first is not None and await self.next_line() is not None:
            raise DataError("the server sent more than one reply line")
        return first


async def run_text_command(
    connection: Connection,
    verb: str,
    argument: str | None,
    config: CarrierConfig,
    emit: Emit,
) -> None:
    """Given a connection and a list/check/info command, write the validated,
    re-encoded reply lines through EMIT; raise a CarrierError if the server
    refused, the reply is malformed or unbounded, or it took too long
    (Corrupted, after emitting the record, when check found the stored
    backup differs from its record)."""
    if verb == VERB_LIST:
        await list_backups(connection, argument or "", config, emit)
    elif verb == VERB_CHECK:
        result = await check_backup(connection, argument or "", config)
        emit(encode_reply(result.to_reply()))
        if not result.ok:
            raise Corrupted(
                "the stored backup differs from its digest record on the server (check failed)"
            )
    else:
        await show_info(connection, config, emit)


async def show_info(connection: Connection, config: CarrierConfig, emit: Emit) -> None:
    """Given a connection, emit the server's validated info line."""

    async def read(reader: Reader[bytes]) -> bytes | None:
        return await LineReader(reader).only_line()

    end = await within(
        run_session(connection, build_command(VERB_INFO), config, read),
        config.reply_timeout,
        "complete reply",
    )
    end.raise_for_status()
    if end.value is None:
        raise DataError("the server's reply is empty")
    emit(encode_reply(parse_hostile(parse_info, end.value, "reply").to_reply()))


async def check_backup(connection: Connection, name: str, config: CarrierConfig) -> CheckResult:
    """Given a connection and a valid NAME, return the server's check result
    for NAME (ok False: the server re-hashed it and it differs from its
    record); raise DataError for a malformed or inconsistent reply, another
    CarrierError if the server refused."""

    async def read(reader: Reader[bytes]) -> bytes | None:
        # The line is read even when the shell is about to fail: a mismatch
        # is reported as a record with ok false AND exit status DATA.
        return await LineReader(reader).only_line()

    end = await within(
        run_session(connection, build_command(VERB_CHECK, name), config, read),
        config.reply_timeout,
        "complete reply",
    )
    if end.status not in (ShellExit.OK, ShellExit.DATA) or end.value is None:
        end.raise_for_status()
        raise DataError("the server's reply is empty")
    result = parse_hostile(parse_check, end.value, "reply")
    # A check result for another backup proves nothing about NAME.
    if result.record.name != name:
        raise DataError("the server's check reply names a different backup")
    # The verdict and the exit status must agree, or neither can be believed.
    if result.ok != (end.status == ShellExit.OK):
        raise DataError("the server's check verdict contradicts its exit status")
    return result


async def list_backups(
    connection: Connection, prefix: str, config: CarrierConfig, emit: Emit
) -> None:
    """Given a connection and a checked PREFIX, emit each validated record,
    re-encoded, as it comes, then (only once the shell exited 0) the final
    ListEnd line.

    Records are emitted before the verdict (a listing can be long): callers
    must trust the output only if the command succeeds."""
    summary = await read_listing(
        connection, prefix, config, lambda record: emit(encode_reply(record.to_reply()))
    )
    emit(encode_reply(summary.to_reply()))


async def find_backup(connection: Connection, name: str, config: CarrierConfig) -> BackupRecord:
    """Given a connection and a valid NAME, return the record the server lists
    for NAME; raise NoSuchBackup if it is not listed, another CarrierError if
    the listing failed."""
    found: list[BackupRecord] = []

    def keep(record: BackupRecord) -> None:
        # A listing for NAME also lists what lies under NAME/.
        if record.name == name:
            found.append(record)

    await read_listing(connection, name, config, keep)
    if not found:
        raise NoSuchBackup("no such backup on the server")
    return found[0]


async def read_listing(
    connection: Connection,
    prefix: str,
    config: CarrierConfig,
    on_record: Callable[[BackupRecord], None],
) -> ListEnd:
    """Given a connection and a checked PREFIX, pass each validated record to
    ON_RECORD as it comes; return the final ListEnd once the shell exited 0.
    Raise DataError for anything malformed or unbounded, another CarrierError
    if the server refused."""

    async def read(reader: Reader[bytes]) -> ListEnd | None:
        return await relay_listing(LineReader(reader), prefix, on_record)

    end = await within(
        run_session(connection, build_command(VERB_LIST, prefix or None), config, read),
        config.reply_timeout,
        "complete reply",
    )
    end.raise_for_status()
    if end.value is None:
        raise DataError("the server's listing ends without its summary line")
    return end.value


async def relay_listing(
    lines: LineReader, prefix: str, on_record: Callable[[BackupRecord], None]
) -> ListEnd | None:
    """Given a listing's lines, pass each validated record to ON_RECORD as it
    comes and return the final ListEnd (None if the output ended without one:
    the exit status then says why); raise DataError for anything malformed or
    unbounded."""
    count = 0
    while True:
        line = await lines.next_line()
        if line is None:
            return None
        item = parse_hostile(parse_list_line, line, "listing")
        if isinstance(item, ListEnd):
            break
        count += 1
        if count > MAX_LIST_ENTRIES:
            raise DataError(f"the server listed more than {MAX_LIST_ENTRIES} backups")
        # Whatever the server's notion of prefix, a matching name starts with it.
        if not item.name.startswith(prefix):
            raise DataError("the server listed a backup outside the requested prefix")
        on_record(item)
    if item.count != count:
        raise DataError("the server's listing summary does not match its entries")
    if await lines.next_line() is not None:
        raise DataError("the server sent lines after the end of the listing")
    return item
