"""The parts of one backed-up file: `PATH.000.enc`, `PATH.001.enc`, ... in
the outer archive, each an scrypt file under `BACKUP_ID!PATH.NNN!PASSPHRASE`,
together one compressed tar (cut into chunks after compression).
PartChain reads them in order as one decompressed stream."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from qbackup_extract.decompress import Decompressor
from qbackup_extract.errors import ExtractError
from qbackup_extract.scrypt_file import KdfLimits, ScryptDecryptor
from qbackup_extract.tar_reader import TarEntry, TarReader

PART_NAME = re.compile(r"(?P<path>.+)\.(?P<number>[0-9]{3,6})\.enc")
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class PartName:
    """An outer member's name, split: the file's PATH and the part NUMBER."""

    path: str
    number: int

    @property
    def member(self) -> str:
        """Return the outer member's name this part has."""
        return f"{self.path}.{self.number:03d}.enc"


def parse_part_name(name: str) -> PartName:
    """Given an outer member's name, return its PartName; raise ExtractError if
    it is not a part's name (threat: names that are not Qubes', `..` in any form)."""
    match = PART_NAME.fullmatch(name)
    if match is None or ".." in name.split("/") or name.startswith("/"):
        raise ExtractError(f"unexpected member in the backup: {name[:100]!r}")
    part = PartName(path=match["path"], number=int(match["number"]))
    if part.member != name:
        raise ExtractError(f"unexpected member in the backup: {name[:100]!r}")
    return part


@dataclass(frozen=True)
class ChainContext:
    """What every part needs: the passphrase, the backup id, the filter, the
    KDF limits, and a callback told the bytes of each part read."""

    passphrase: bytes
    backup_id: str
    filter_name: str | None
    limits: KdfLimits
    on_bytes: Callable[[int], None]


class OuterArchive:
    """The outer archive's members, with one member of lookahead."""

    def __init__(self, tar: TarReader) -> None:
        self.tar = tar
        self._peeked: TarEntry | None = None
        self._has_peeked = False

    def peek(self) -> TarEntry | None:
        """Return the next member without taking it (None at the archive's end)."""
        if not self._has_peeked:
            self._peeked = self.tar.next_entry()
            if self._peeked is not None and self._peeked.kind not in (b"0", b"\0"):
                raise ExtractError(f"unexpected member in the backup: {self._peeked.name[:100]!r}")
            self._has_peeked = True
        return self._peeked

    def take(self) -> TarEntry | None:
        """Return the next member and move past it (None at the archive's end)."""
        entry = self.peek()
        self._has_peeked = False
        return entry


class PartChain:
    """Reads the parts of one file as one decompressed stream (read()); every
    part is authenticated when its last byte has been read."""

    def __init__(self, archive: OuterArchive, first: PartName, context: ChainContext) -> None:
        self._archive = archive
        self._context = context
        self.path = first.path
        self._part = first
        self._decryptor = self._open(first)
        self._part_done = False
        self._decompressor = Decompressor(context.filter_name, first.path)
        self._buffer = b""
        self._position = 0
        self.ended = False
        self.parts = 1

    def _open(self, part: PartName) -> ScryptDecryptor:
        secret = f"{self._context.backup_id}!{part.path}.{part.number:03d}!".encode()
        return ScryptDecryptor(secret + self._context.passphrase, self._context.limits,
                               part.member)

    def read(self, size: int) -> bytes:
        """Return up to SIZE decompressed bytes (b"" at the end of the last
        part); raise ExtractError if a part is damaged, missing or out of order."""
        while self._position >= len(self._buffer):
            if not self._fill():
                return b""
        data = self._buffer[self._position: self._position + size]
        self._position += len(data)
        return data

    def _fill(self) -> bool:
        out = self._decompressor.output()
        if out:
            self._buffer = out
            self._position = 0
            return True
        raw = self._next_plain()
        if raw:
            self._decompressor.feed(raw)
            return True
        if not self.ended:
            self._decompressor.finish()
            self.ended = True
        return False

    def _next_plain(self) -> bytes:
        while True:
            if self._part_done and not self._next_part():
                return b""
            data = self._archive.tar.read(READ_SIZE)
            if not data:
                self._decryptor.finish()
                self._part_done = True
                continue
            self._context.on_bytes(len(data))
            plain = self._decryptor.feed(data)
            if plain:
                return plain

    def _next_part(self) -> bool:
        entry = self._archive.peek()
        if entry is None:
            return False
        following = parse_part_name(entry.name)
        if following.path != self.path:
            return False
        expected = self._part.number + 1
        # threat: parts dropped, repeated or swapped (each is authentic alone)
        if following.number != expected:
            raise ExtractError(f"{following.member}: part out of order or repeated "
                               f"(expected part {expected:03d})")
        self._archive.take()
        self._part = following
        self._decryptor = self._open(following)
        self._part_done = False
        self.parts += 1
        return True

    def finish(self) -> None:
        """Read what remains (only tar's zero padding may), down to the last
        part's HMAC; raise ExtractError if anything else is left or damaged."""
        while True:
            data = self.read(READ_SIZE)
            if not data:
                return
            if data.count(0) != len(data):
                raise ExtractError(f"{self.path}: data after the end of its tar archive")

    def explain(self, error: ExtractError) -> ExtractError:
        """Given an error raised while reading, return the better explanation:
        if the current part is not authentic, that (garbled plaintext is the
        symptom, the damage the cause), else ERROR itself."""
        if self._part_done:
            return error
        try:
            while True:
                data = self._archive.tar.read(READ_SIZE)
                if not data:
                    self._decryptor.finish()
                    return error
                self._decryptor.feed(data)
        except ExtractError as cause:
            return cause
