"""The backup-header: the first member of a Qubes backup, in plain text, and
backup-header.hmac after it: the same text encrypted with the scrypt format
under `backup-header!PASSPHRASE`. The header counts only if the two agree.

    version=4
    hmac-algorithm=scrypt
    encrypted=True
    compressed=True
    compression-filter=gzip
    backup-id=20261206T101500-1234
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qbackup_extract.decompress import check_filter
from qbackup_extract.errors import ExtractError, unsupported
from qbackup_extract.scrypt_file import KdfLimits, decrypt_bytes

HEADER_NAME = "backup-header"
HEADER_MAC_NAME = "backup-header.hmac"
SUPPORTED_VERSION = 4
MAX_HEADER_SIZE = 4096
# As Qubes reads it: keys and values of letters, digits and a few signs.
FIELD_PATTERN = re.compile(r"[a-zA-Z0-9_.=-]+")
TRUE_WORDS = frozenset({"1", "true", "yes"})


@dataclass(frozen=True)
class BackupHeader:
    """What an authenticated backup-header says."""

    version: int
    compression_filter: str | None  # None: not compressed
    backup_id: str


def parse_fields(text: bytes) -> dict[str, str]:
    """Given a header's bytes, return its key=value fields; raise ExtractError
    if it is not such lines of safe characters."""
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise ExtractError("backup-header: not ASCII") from None
    fields: dict[str, str] = {}
    for line in lines:
        if line.count("=") != 1 or not FIELD_PATTERN.fullmatch(line):
            raise ExtractError("backup-header: malformed line")
        key, value = line.split("=")
        if key in fields:
            raise ExtractError(f"backup-header: {key} given twice")
        fields[key] = value
    return fields


def check_version(text: bytes) -> None:
    """Given the header's (not yet authenticated) bytes, return if it claims
    format 4; raise ExtractError saying which format it is otherwise."""
    version = parse_fields(text).get("version", "?")
    if version != str(SUPPORTED_VERSION):
        raise unsupported(
            f"backup format version {version} is not supported (only {SUPPORTED_VERSION}, "
            "written by Qubes 4.x); restore it with Qubes' qvm-backup-restore"
        )


def authenticate_header(text: bytes, mac_file: bytes, passphrase: bytes,
                        limits: KdfLimits) -> BackupHeader:
    """Given the header, its .hmac member and the passphrase, return the header;
    raise ExtractError if they do not agree, or it is not a format we read."""
    if len(text) > MAX_HEADER_SIZE or len(mac_file) > MAX_HEADER_SIZE:
        raise ExtractError("backup-header: too large")
    check_version(text)
    plain = decrypt_bytes(mac_file, HEADER_NAME.encode() + b"!" + passphrase, limits,
                          HEADER_MAC_NAME)
    # threat: an edited plain header (say, another filter or backup id) beside
    # an authentic .hmac: only the authenticated copy is believed
    if plain != text:
        raise ExtractError("backup-header: does not match its authenticated copy (altered)")
    fields = parse_fields(text)
    encrypted = fields.get("encrypted", "").lower() in TRUE_WORDS
    if fields.get("hmac-algorithm") != "scrypt" or not encrypted:
        raise unsupported("backup-header: only encrypted backups (scrypt) are supported")
    backup_id = fields.get("backup-id", "")
    if not backup_id or backup_id.startswith("-"):
        raise ExtractError("backup-header: no backup-id")
    compressed = fields.get("compressed", "").lower() in TRUE_WORDS
    filter_name = check_filter(fields.get("compression-filter", "gzip")) if compressed else None
    return BackupHeader(version=SUPPORTED_VERSION, compression_filter=filter_name,
                        backup_id=backup_id)
