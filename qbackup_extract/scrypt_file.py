"""The scrypt file format (Tarsnap's `scrypt enc`), decrypted as a stream.

    0   "scrypt" + version byte 0
    7   log2(N) (1 byte), r (u32 BE), p (u32 BE)
    16  salt (32 bytes)
    48  first 16 bytes of SHA-256 of bytes 0..47
    64  HMAC-SHA256 of bytes 0..63           (key: derived key bytes 32..63)
    96  AES-256-CTR ciphertext, counter 0    (key: derived key bytes 0..31)
    end HMAC-SHA256 of everything before it  (key: derived key bytes 32..63)

The derived key is scrypt(passphrase, salt, N, r, p, 64 bytes). Plaintext is
released as it is decrypted (memory stays bounded); whether it was authentic
is known only when finish() checks the final HMAC, so callers write it to a
temporary name until then. The last 32 bytes seen are held back: they may be
the final HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from qbackup_extract.errors import ExtractError, unsupported

MAGIC = b"scrypt\x00"
HEADER_SIZE = 96
MAC_SIZE = 32
PARAMETERS = struct.Struct(">BII")
# The scrypt tool itself never asks for more: N < 2**64 by its format, and
# beyond 2**30 no machine we restore on has the memory.
MAX_LOG_N = 30
# Time: N*r*p blocks of work. `scrypt enc` aims at 5 seconds on the writing
# machine (about 2**23 with r=8); allow 64 times that, no more.
MAX_WORK = 2**29


@dataclass(frozen=True)
class KdfLimits:
    """What a part's header may ask of this machine: bytes of memory for the KDF."""

    max_memory: int


@dataclass(frozen=True)
class KdfParameters:
    """The scrypt parameters a file's header claims."""

    log_n: int
    r: int
    p: int

    @property
    def memory(self) -> int:
        """Return the bytes scrypt allocates for these parameters (OpenSSL's count)."""
        return 128 * self.r * (2**self.log_n + self.p + 2)


def check_parameters(params: KdfParameters, limits: KdfLimits, what: str) -> None:
    """Given a header's PARAMETERS, return if this machine may run them; raise
    ExtractError otherwise (threat: a hostile part asking for terabytes of
    memory or hours of CPU before its HMAC can even be checked)."""
    if not 1 <= params.log_n <= MAX_LOG_N or params.r < 1 or params.p < 1:
        raise ExtractError(f"{what}: invalid scrypt parameters")
    if params.memory > limits.max_memory:
        raise unsupported(
            f"{what}: its scrypt parameters need {params.memory // 2**20} MiB, more than the "
            f"limit of {limits.max_memory // 2**20} MiB (raise it with --kdf-memory MIB)"
        )
    if 2**params.log_n * params.r * params.p > MAX_WORK:
        raise unsupported(f"{what}: its scrypt parameters ask for too much CPU time")


@dataclass
class Keys:
    """What a file's derived key opens: its running HMAC and its AES-CTR decryptor."""

    mac: hmac.HMAC
    decryptor: CipherContext


class ScryptDecryptor:
    """Decrypts one scrypt file fed in pieces: feed() returns plaintext,
    finish() checks the final HMAC."""

    def __init__(self, passphrase: bytes, limits: KdfLimits, what: str) -> None:
        self._passphrase = passphrase
        self._limits = limits
        self._what = what
        self._header = b""
        self._tail = b""
        self._keys: Keys | None = None

    def feed(self, data: bytes) -> bytes:
        """Given the next bytes of the file, return the plaintext they complete;
        raise ExtractError if the header is damaged or the passphrase does not fit."""
        keys = self._keys
        if keys is None:
            self._header += data
            if len(self._header) < HEADER_SIZE:
                return b""
            data = self._header[HEADER_SIZE:]
            keys = self._keys = self._open(self._header[:HEADER_SIZE])
        held = self._tail + data
        release = held[: max(0, len(held) - MAC_SIZE)]
        self._tail = held[len(release):]
        if not release:
            return b""
        keys.mac.update(release)
        return keys.decryptor.update(release)

    def _open(self, header: bytes) -> Keys:
        if not header.startswith(MAGIC):
            raise ExtractError(f"{self._what}: not an scrypt file")
        # threat: a header damaged in transit, told apart from a wrong passphrase
        if hashlib.sha256(header[:48]).digest()[:16] != header[48:64]:
            raise ExtractError(f"{self._what}: its scrypt header is damaged")
        params = KdfParameters(*PARAMETERS.unpack(header[7:16]))
        check_parameters(params, self._limits, self._what)
        # cryptography's scrypt, not hashlib's: hashlib refuses above 2 GiB,
        # which `scrypt enc` may choose on a big machine.
        try:
            key = Scrypt(salt=header[16:48], length=64, n=2**params.log_n, r=params.r,
                         p=params.p).derive(self._passphrase)
        except MemoryError:
            raise unsupported(f"{self._what}: no memory for its scrypt parameters") from None
        header_mac = hmac.new(key[32:], header[:64], hashlib.sha256).digest()
        # threat: a wrong passphrase, or a part renamed or taken from another
        # backup (its name and the backup id are part of the passphrase)
        if not hmac.compare_digest(header_mac, header[64:96]):
            raise ExtractError(f"{self._what}: wrong passphrase, or the part is not authentic")
        cipher = Cipher(algorithms.AES(key[:32]), modes.CTR(bytes(16)))
        return Keys(mac=hmac.new(key[32:], header, hashlib.sha256), decryptor=cipher.decryptor())

    def finish(self) -> None:
        """Return if the whole file was authentic; raise ExtractError otherwise."""
        if self._keys is None or len(self._tail) != MAC_SIZE:
            raise ExtractError(f"{self._what}: truncated")
        # threat: any flipped, cut or appended byte of the encrypted data
        if not hmac.compare_digest(self._keys.mac.digest(), self._tail):
            raise ExtractError(f"{self._what}: not authentic (damaged or altered)")


def decrypt_bytes(data: bytes, passphrase: bytes, limits: KdfLimits, what: str) -> bytes:
    """Given a whole (small) scrypt file, return its authenticated plaintext;
    raise ExtractError if it is not authentic."""
    decryptor = ScryptDecryptor(passphrase, limits, what)
    plain = decryptor.feed(data)
    decryptor.finish()
    return plain
