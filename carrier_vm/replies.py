"""``list``, ``check`` and ``info``: the server's JSON lines, re-validated.

The server is not trusted: every line is read with a length bound, parsed by
the protocol's strict parsers and RE-ENCODED (server bytes never pass through
raw), the number of lines and the time taken are bounded, and nothing may
follow the final line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, error_for_shell_status
from carrier_vm.ssh import exit_status, transport_error, with_stderr
from qbackup_protocol import (
    MAX_LIST_ENTRIES,
    MAX_REPLY_LINE,
    ListEnd,
    ProtocolError,
    build_command,
    encode_reply,
    parse_check,
    parse_info,
    parse_list_line,
)

logger = logging.getLogger(__name__)

Emit = Callable[[bytes], None]


class LineReader:
    """Reads newline-terminated lines of at most MAX_REPLY_LINE bytes."""

    def __init__(self, reader: Any) -> None:
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


async def run_text_command(
    connection: Any,
    verb: str,
    argument: str | None,
    config: CarrierConfig,
    emit: Emit,
) -> None:
    """Given a connection and a list/check/info command, write the validated,
    re-encoded reply lines through EMIT; raise a CarrierError if the server
    refused, the reply is malformed or unbounded, or it took too long."""
    command = build_command(verb, argument)
    try:
        return await asyncio.wait_for(
            _run(connection, command, verb, argument, config, emit), config.reply_timeout
        )
    except TimeoutError:
        raise DataError(
            f"no complete reply from the server within {config.reply_timeout:g}s"
        ) from None


async def _run(
    connection: Any,
    command: str,
    verb: str,
    argument: str | None,
    config: CarrierConfig,
    emit: Emit,
) -> None:
    try:
        writer, reader, errors = await connection.open_session(command, encoding=None)
        writer.write_eof()
    except Exception as error:
        raise transport_error(error, config) from None
    lines = LineReader(reader)
    try:
        if verb == "list":
            relay = _relay_listing(lines, argument or "", emit)
        elif verb == "check":
            relay = _relay_single(lines, lambda line: _checked(line, argument or ""), emit)
        else:
            relay = _relay_single(lines, _info, emit)
        finish, detail = await with_stderr(relay, errors)
        await writer.channel.wait_closed()
    except DataError:
        raise
    except Exception as error:
        raise transport_error(error, config) from None
    status = exit_status(writer.channel)
    if status != 0:
        raise error_for_shell_status(status, detail)
    finish()


def _info(line: bytes) -> bytes:
    return encode_reply(parse_info(line).to_reply())


def _checked(line: bytes, name: str) -> bytes:
    result = parse_check(line)
    # A check result for another backup proves nothing about NAME.
    if result.record.name != name:
        raise ProtocolError("check reply names a different backup")
    return encode_reply(result.to_reply())


async def _relay_single(
    lines: LineReader, convert: Callable[[bytes], bytes], emit: Emit
) -> Callable[[], None]:
    """Given the reply's lines, read exactly one line and convert it; return a
    function that emits it (called only once the shell exited 0)."""
    first = await lines.next_line()
    if first is None:
        return _nothing_came
    try:
        output = convert(first)
    except ProtocolError as error:
        raise DataError(f"the server's reply is malformed: {error}") from None
    if await lines.next_line() is not None:
        raise DataError("the server sent more than one reply line")
    return lambda: emit(output)


async def _relay_listing(lines: LineReader, prefix: str, emit: Emit) -> Callable[[], None]:
    """Given a listing's lines, emit each validated record as it comes and
    return a function that emits the final ListEnd (only once the shell exited 0).

    Records are emitted before the verdict (a listing can be long): callers
    must trust the output only if the command succeeds."""
    count = 0
    while True:
        line = await lines.next_line()
        if line is None:
            return _nothing_came
        try:
            item = parse_list_line(line)
        except ProtocolError as error:
            raise DataError(f"the server's listing is malformed: {error}") from None
        if isinstance(item, ListEnd):
            break
        count += 1
        if count > MAX_LIST_ENTRIES:
            raise DataError(f"the server listed more than {MAX_LIST_ENTRIES} backups")
        # Whatever the server's notion of prefix, a matching name starts with it.
        if not item.name.startswith(prefix):
            raise DataError("the server listed a backup outside the requested prefix")
        emit(encode_reply(item.to_reply()))
    if item.count != count:
        raise DataError("the server's listing summary does not match its entries")
    if await lines.next_line() is not None:
        raise DataError("the server sent lines after the end of the listing")
    summary = encode_reply(item.to_reply())
    return lambda: emit(summary)


def _nothing_came() -> None:
    raise DataError("the server's reply is empty")
