"""A tiny test-side client of the wire protocol, plus storage snapshots.

Frames data with qbackup_protocol.wire (never a second copy of the framing) and
runs commands through the real OpenSSH client via BackupServer.run.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

from qbackup_protocol import client, wire
from testbed.server import Account, BackupServer


def frame_stream(
    data: bytes,
    chunk: int = wire.DEFAULT_DATA_FRAME,
    declared_size: int | None = None,
    declared_digest: bytes | None = None,
) -> bytes:
    """Given data, return the framed upload (D frames of CHUNK bytes, then E);
    DECLARED_* override what the E frame claims."""
    out = bytearray()
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        out += wire.encode_data_header(len(piece)) + piece
    size = len(data) if declared_size is None else declared_size
    digest = hashlib.sha256(data).digest() if declared_digest is None else declared_digest
    out += wire.encode_end_frame(size, digest)
    return bytes(out)


def stage(
    server: BackupServer, account: Account, name: str, data: bytes, **frame_options: object
) -> subprocess.CompletedProcess[bytes]:
    """Upload DATA as NAME over real ssh (`put`: staged, not published); return
    the completed ssh process."""
    return server.run(account, f"put {name}", frame_stream(data, **frame_options))  # type: ignore[arg-type]


def put(
    server: BackupServer, account: Account, name: str, data: bytes, **frame_options: object
) -> subprocess.CompletedProcess[bytes]:
    """Upload DATA as NAME and publish it (`put`, then `commit` if the put
    succeeded); return the last completed ssh process."""
    staged = stage(server, account, name, data, **frame_options)
    if staged.returncode != 0:
        return staged
    return server.run(account, f"commit {name}")


def receipt(stdout: bytes) -> wire.BackupRecord:
    """Given a put's or resume's stdout, return its receipt (the last line),
    after checking the lines before it: one offset line, then acks."""
    lines = stdout.splitlines(keepends=True)
    client.parse_offset(lines[0])
    assert all(isinstance(client.parse_upload_line(line), wire.Ack) for line in lines[1:-1])
    record = client.parse_upload_line(lines[-1])
    assert isinstance(record, wire.BackupRecord), lines[-1]
    return record


def unframe(stream: bytes) -> tuple[bytes, int, bytes]:
    """Given a get's stdout, return (data, declared size, declared digest);
    raise AssertionError if the framing is broken or truncated."""
    data = bytearray()
    offset = 0
    while True:
        header = wire.decode_frame_header(stream[offset : offset + wire.FRAME_HEADER_SIZE])
        offset += wire.FRAME_HEADER_SIZE
        payload = stream[offset : offset + header.length]
        assert len(payload) == header.length, "truncated frame"
        offset += header.length
        if header.kind == wire.FRAME_END:
            end = wire.decode_end_payload(payload)
            assert offset == len(stream), "bytes after the end frame"
            return bytes(data), end.length, end.digest
        data += payload


def get(server: BackupServer, account: Account, name: str) -> tuple[bytes, int, bytes]:
    """Download NAME; return (data, declared size, declared digest)."""
    result = server.run(account, f"get {name}")
    assert result.returncode == 0, result.stderr
    return unframe(result.stdout)


LOCKS = (".qbackup-upload.lock", ".qbackup-sessions.lock")


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Given a directory, return {relative path: (kind, content digest or link
    target)} for everything below it, without following symlinks. The
    account's two lock files are left out while they are regular files in
    the root: the first session creates them (even one refused later); the
    upload lock holds only "PID NAME" of its last holder."""
    found: dict[str, tuple[str, str]] = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in dirnames + filenames:
            path = Path(directory) / entry
            relative = str(path.relative_to(root))
            info = path.lstat()
            if relative in LOCKS and stat.S_ISREG(info.st_mode):
                continue
            mode = info.st_mode
            if stat.S_ISLNK(mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[relative] = ("dir", "")
            else:
                found[relative] = ("file", file_sha256(path))
    return found


def file_sha256(path: Path) -> str:
    """Given a file, return its SHA-256, read in pieces (a drill's backup
    may be GiBs; a sparse test file even more)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(4 * 1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()


def pending(root: Path) -> list[str]:
    """Given a storage root, return the staged uploads (data and records) below it."""
    return [
        name for name in snapshot(root)
        if Path(name).name.startswith(".") and ".pending" in Path(name).name
    ]


TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{16}")  # the shell's exact temporary names


def temporaries(root: Path) -> list[str]:
    """Given a storage root, return the put temporaries anywhere below it."""
    return [name for name in snapshot(root) if TEMPORARY.fullmatch(Path(name).name)]


def chown_tree(path: Path, account: Account) -> None:
    """Give PATH (and what is below it) to ACCOUNT, as its own puts would be."""
    os.lchown(path, account.uid, account.gid)
    if path.is_dir() and not path.is_symlink():
        for child in path.rglob("*"):
            os.lchown(child, account.uid, account.gid)


def run_admin(
    server: BackupServer, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed admin tool, qbackup-server, locally as root (like root's cron)."""
    return subprocess.run(
        [str(server.shell_path.parent / "qbackup-server"), *arguments],
        capture_output=True, timeout=60, check=False,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
    )
