"""A streaming reader of tar archives, for both layers of a Qubes backup:
the outer archive (`tar -cO --posix` outputs concatenated, so end-of-archive
blocks recur and are skipped) and the inner ones (GNU or pax format, sparse
files in the old GNU form or pax 0.1/1.0, as `tar --sparse` and Qubes'
tarwriter write them). Nothing here touches the filesystem: it yields
entries and their stored bytes; every size and count is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from qbackup_extract.errors import ExtractError, unsupported

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# Metadata records (pax headers, GNU long names, sparse maps) at most this big.
MAX_METADATA = 1024 * 1024
MAX_SPARSE_ENTRIES = 1_000_000
REGULAR = frozenset({b"0", b"\0", b"7"})
DIRECTORY = b"5"
SYMLINK = b"2"
HARDLINK = b"1"
GNU_SPARSE = b"S"


class Reader(Protocol):
    def read(self, size: int) -> bytes: ...


@dataclass
class TarEntry:
    """One archive member: NAME, its type flag, MODE, the bytes stored in the
    archive (STORED) and, for a sparse file, the map of its data segments
    (offset, length) and its real size."""

    name: str
    kind: bytes
    mode: int
    stored: int
    size: int
    linkname: str = ""
    sparse_map: list[tuple[int, int]] = field(default_factory=list)

    @property
    def is_regular(self) -> bool:
        """Return whether the entry is a file with data (plain, contiguous or sparse)."""
        return self.kind in REGULAR or self.kind == GNU_SPARSE


def parse_number(field_bytes: bytes, what: str) -> int:
    """Given a numeric header field (octal, or GNU base-256), return its value;
    raise ExtractError if it is neither."""
    if field_bytes[:1] == b"\x80":
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text.decode("ascii"), 8)
    except ValueError:
        raise ExtractError(f"tar header: bad {what} field") from None


def parse_pax(data: bytes) -> dict[str, str]:
    """Given a pax extended header's records, return them; raise ExtractError if malformed."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        if data[position:] == bytes(len(data) - position):
            break
        space = data.find(b" ", position)
        try:
            length = int(data[position:space].decode("ascii"))
            record = data[space + 1: position + length]
            key, value = record.rstrip(b"\n").split(b"=", 1)
            records[key.decode("utf-8")] = value.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise ExtractError("tar: malformed pax header") from None
        if length <= 0:
            raise ExtractError("tar: malformed pax header")
        position += length
    return records


class TarReader:
    """Reads entries in order from a stream: next_entry(), then read() of its data."""

    def __init__(self, stream: Reader, what: str, concatenated: bool = False) -> None:
        self._stream = stream
        self._what = what
        self._concatenated = concatenated
        self._left = 0  # stored bytes of the current entry not yet read
        self._padding = 0
        self.ended = False

    def _read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            piece = self._stream.read(size - len(data))
            if not piece:
                raise ExtractError(f"{self._what}: truncated (ends inside a tar entry)")
            data += piece
        return data

    def read(self, size: int) -> bytes:
        """Return up to SIZE stored bytes of the current entry (b"" at its end)."""
        size = min(size, self._left)
        if size <= 0:
            return b""
        data = self._stream.read(size)
        if not data:
            raise ExtractError(f"{self._what}: truncated (ends inside a tar entry)")
        self._left -= len(data)
        return data

    def skip(self) -> None:
        """Read past the rest of the current entry and its padding."""
        while self._left:
            self.read(1024 * 1024)
        if self._padding:
            self._read_exact(self._padding)
            self._padding = 0

    def _metadata(self, size: int) -> bytes:
        if size > MAX_METADATA:
            raise ExtractError(f"{self._what}: tar metadata record too large")
        data = self._read_exact(size)
        padding = -size % BLOCK
        if padding:
            self._read_exact(padding)
        return data

    def _next_block(self) -> bytes | None:
        """Return the next header block, or None at the end of the archive."""
        while True:
            block = self._stream.read(BLOCK)
            if len(block) < BLOCK and block:
                block += self._read_exact(BLOCK - len(block))
            if not block:
                if self._concatenated:
                    return None
                raise ExtractError(f"{self._what}: truncated (no end-of-archive marker)")
            if block != ZERO_BLOCK:
                return block
            if not self._concatenated:
                return None

    def next_entry(self) -> TarEntry | None:
        """Return the next entry (its data is then read with read()), or None at
        the archive's end; raise ExtractError on a damaged or unreadable header."""
        self.skip()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self._next_block()
            if block is None:
                if pax or long_name is not None:
                    raise ExtractError(f"{self._what}: truncated after an extended header")
                self.ended = True
                return None
            check_header(block, self._what)
            kind = block[156:157]
            size = parse_number(block[124:136], "size")
            if kind == b"x":
                pax.update(parse_pax(self._metadata(size)))
            elif kind == b"g":
                self._metadata(size)  # global defaults (a comment, a charset): nothing we use
            elif kind == b"L":
                long_name = self._metadata(size).split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == b"K":
                long_link = self._metadata(size).split(b"\0", 1)[0].decode("utf-8", "replace")
            else:
                return self._entry(block, kind, size, pax, long_name, long_link)

    def _entry(self, block: bytes, kind: bytes, size: int, pax: dict[str, str],
               long_name: str | None, long_link: str | None) -> TarEntry:
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
        full = (prefix + b"/" + name) if prefix else name
        entry = TarEntry(
            name=pax.get("path", long_name or full.decode("utf-8", "replace")),
            kind=kind,
            mode=parse_number(block[100:108], "mode") & 0o7777,
            stored=int(pax.get("size", size)),
            size=int(pax.get("size", size)),
            linkname=pax.get("linkpath", long_link or block[157:257].split(b"\0", 1)[0].decode(
                "utf-8", "replace")),
        )
        if entry.stored < 0:
            raise ExtractError(f"{self._what}: negative size in tar header")
        map_in_data = False
        if kind == GNU_SPARSE:
            self._gnu_sparse(block, entry)
        elif "GNU.sparse.major" in pax or "GNU.sparse.map" in pax:
            map_in_data = self._pax_sparse(pax, entry)
        elif kind in (DIRECTORY, SYMLINK, HARDLINK):
            if kind == DIRECTORY and entry.name.endswith("/"):
                entry.name = entry.name[:-1]  # GNU tar names directories with a slash
            entry.stored = 0
            entry.size = 0
        self._left = entry.stored
        self._padding = -entry.stored % BLOCK
        if map_in_data:
            self._read_sparse_map_from_data(entry)
        return entry

    def _gnu_sparse(self, block: bytes, entry: TarEntry) -> None:
        entries = sparse_pairs(block[386:482], 4)
        extended = block[482] != 0
        entry.size = parse_number(block[483:495], "realsize")
        while extended:
            ext = self._read_exact(BLOCK)
            entries += sparse_pairs(ext[:504], 21)
            extended = ext[504] != 0
            if len(entries) > MAX_SPARSE_ENTRIES:
                raise ExtractError(f"{self._what}: sparse map too large")
        entry.sparse_map = check_map(entries, entry, self._what)

    def _pax_sparse(self, pax: dict[str, str], entry: TarEntry) -> bool:
        """Fill ENTRY's sparse fields from PAX; return whether its map leads its data."""
        version = (pax.get("GNU.sparse.major", "0"), pax.get("GNU.sparse.minor", "1"))
        entry.name = pax.get("GNU.sparse.name", entry.name)
        try:
            entry.size = int(pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size", "-1")))
        except ValueError:
            raise ExtractError(f"{self._what}: bad sparse size") from None
        if entry.size < 0:
            raise ExtractError(f"{self._what}: sparse file without its real size")
        if version == ("1", "0"):
            return True
        if version == ("0", "1") and "GNU.sparse.map" in pax:
            entry.sparse_map = check_map(
                number_pairs(pax["GNU.sparse.map"].split(","), self._what), entry, self._what)
            return False
        raise unsupported(f"{self._what}: sparse format {'.'.join(version)} is not supported")

    def _read_sparse_map_from_data(self, entry: TarEntry) -> None:
        # Decimal lines ahead of the data: a count, then offset and length
        # pairs; padded to a whole block.
        text = b""
        while True:
            text += self._read_exact(BLOCK)
            self._left -= BLOCK
            if self._left < 0 or len(text) > MAX_METADATA:
                raise ExtractError(f"{self._what}: bad sparse map")
            lines = text.split(b"\n")[:-1]  # the last piece is unfinished (or padding)
            if not lines:
                continue
            count = number_pairs([lines[0], b"0"], self._what)[0][0]
            if count > MAX_SPARSE_ENTRIES:
                raise ExtractError(f"{self._what}: sparse map too large")
            if len(lines) >= 1 + 2 * count:
                pairs = number_pairs(lines[1: 1 + 2 * count], self._what)
                break
        entry.stored = self._left
        entry.sparse_map = check_map(pairs, entry, self._what)


def number_pairs(fields: list[str] | list[bytes], what: str) -> list[tuple[int, int]]:
    """Given decimal fields, return them as (offset, length) pairs; raise
    ExtractError unless they are an even number of non-negative integers."""
    try:
        numbers = [int(value) for value in fields]
    except ValueError:
        raise ExtractError(f"{what}: bad sparse map") from None
    if len(numbers) % 2 or any(number < 0 for number in numbers):
        raise ExtractError(f"{what}: bad sparse map")
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def sparse_pairs(data: bytes, count: int) -> list[tuple[int, int]]:
    """Given COUNT (offset, length) fields of 12+12 bytes, return the non-empty ones."""
    pairs = []
    for index in range(count):
        raw = data[index * 24: index * 24 + 24]
        if raw[:1] == b"\0":
            break
        pairs.append((parse_number(raw[:12], "sparse offset"), parse_number(raw[12:], "length")))
    return pairs


def check_map(pairs: list[tuple[int, int]], entry: TarEntry, what: str) -> list[tuple[int, int]]:
    """Given a sparse map, return it; raise ExtractError unless its segments are
    in order, inside the real size and add up to the bytes stored (threat: a
    map that writes outside the file or makes the reader lose its place)."""
    end = 0
    for offset, length in pairs:
        if offset < end or length < 0 or offset + length > entry.size:
            raise ExtractError(f"{what}: bad sparse map")
        end = offset + length
    if sum(length for _, length in pairs) != entry.stored:
        raise ExtractError(f"{what}: sparse map does not match the stored data")
    return pairs


def check_header(block: bytes, what: str) -> None:
    """Return if BLOCK's checksum is right; raise ExtractError otherwise."""
    stored = parse_number(block[148:156], "checksum")
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != computed:
        raise ExtractError(f"{what}: damaged tar header (checksum)")
