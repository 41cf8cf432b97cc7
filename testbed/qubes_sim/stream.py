"""The simulated backup stream: deterministic pseudo-data, authenticated by the passphrase.

Layout (all one byte stream, like Qubes' tar of encrypted parts):

    MAGIC
    header JSON line: {"vms": [[name, size], ...], "compressed": bool,
                       "compression_filter": name, "salt": hex}
    header HMAC line: 64 hex digits, HMAC-SHA256(key, MAGIC + header line)
    the VMs' data, concatenated in header order
    trailer: 64 hex digits + "\n", HMAC-SHA256(key, everything before)

key = scrypt-free stand-in: SHA-256(salt + passphrase). A wrong passphrase fails
the header HMAC (like Qubes failing to decrypt the header); any changed, lost
or added byte fails the trailer HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"QUBES-SIM-BACKUP 1\n"
CHUNK = 256 * 1024
HEX_LINE = 65


class StreamError(ValueError):
    """The stream is not a valid simulated backup (or the passphrase is wrong)."""


def vm_chunks(name: str, size: int) -> Iterator[bytes]:
    """Given a VM NAME and SIZE, yield its deterministic pseudo-random volume
    data in CHUNK pieces (never the whole volume in memory)."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    for index, offset in enumerate(range(0, size, CHUNK)):
        generator = random.Random(seed + index)  # noqa: S311 - test data, not crypto
        yield generator.randbytes(min(CHUNK, size - offset))


def vm_data(name: str, size: int) -> bytes:
    """Given a VM NAME and SIZE, return its deterministic pseudo-random volume data."""
    return b"".join(vm_chunks(name, size))


def derive_key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + passphrase.encode()).digest()


def build_stream(vms: list[tuple[str, int]], passphrase: str, salt: bytes,
                 compression: object) -> Iterator[bytes]:
    """Given (name, size) pairs, the passphrase and a salt, yield the stream in chunks."""
    key = derive_key(passphrase, salt)
    # Like qubesd: compressed = bool(compression); the filter is the program
    # named, else gzip (qubes/api/admin.py, qubes/backup.py, release4.2).
    header = json.dumps({"vms": vms, "compressed": bool(compression),
                         "compression_filter": compression if isinstance(compression, str)
                         else "gzip", "salt": salt.hex()}).encode()
    head = MAGIC + header + b"\n"
    head += hmac.new(key, head, hashlib.sha256).hexdigest().encode() + b"\n"
    whole = hmac.new(key, head, hashlib.sha256)
    yield head
    for name, size in vms:
        for chunk in vm_chunks(name, size):
            whole.update(chunk)
            yield chunk
    yield whole.hexdigest().encode() + b"\n"


@dataclass
class Header:
    vms: list[tuple[str, int]]
    raw: bytes
    key: bytes
    compressed: bool
    compression_filter: str


def parse_header(data: bytes, passphrase: str) -> Header:
    """Given the stream's first bytes, return its Header; raise StreamError if
    it is malformed or the passphrase does not authenticate it."""
    if not data.startswith(MAGIC):
        raise StreamError("not a Qubes backup")
    lines = data[len(MAGIC) :].split(b"\n", 2)
    if len(lines) < 3:
        raise StreamError("backup header truncated")
    header_line = lines[0]
    mac_line = lines[1]
    try:
        header = json.loads(header_line)
        salt = bytes.fromhex(header["salt"])
        vms = [(str(name), int(size)) for name, size in header["vms"]]
        compressed = bool(header["compressed"])
        compression_filter = str(header["compression_filter"])
    except (ValueError, KeyError, TypeError):
        raise StreamError("backup header corrupted") from None
    key = derive_key(passphrase, salt)
    raw = MAGIC + header_line + b"\n"
    expected = hmac.new(key, raw, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, mac_line):
        raise StreamError("header HMAC mismatch: wrong passphrase or corrupted header")
    return Header(vms=vms, raw=raw + mac_line + b"\n", key=key, compressed=compressed,
                  compression_filter=compression_filter)


def header_length_needed(data: bytes) -> bool:
    """Given the bytes read so far, return whether the header is complete."""
    return data.startswith(MAGIC) and data.count(b"\n") >= 3


def check_stream(data: bytes, passphrase: str) -> dict[str, bytes]:
    """Given a whole stream and the passphrase, return {VM name: data}; raise
    StreamError on any corruption, truncation or wrong passphrase."""
    header = parse_header(data, passphrase)
    total = sum(size for _, size in header.vms)
    body = data[len(header.raw) :]
    if len(body) != total + HEX_LINE:
        raise StreamError("backup truncated or extended")
    mac = hmac.new(header.key, header.raw + body[:total], hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac + b"\n", body[total:]):
        raise StreamError("backup HMAC mismatch: data corrupted")
    result: dict[str, bytes] = {}
    offset = 0
    for name, size in header.vms:
        result[name] = body[offset : offset + size]
        offset += size
    return result
