"""Protocol 3 over the real sshd: acks, resuming an interrupted put, and a
ranged `get`. Every hostile resume is refused with its code and changes nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qbackup_protocol import client, wire
from testbed.client import frame_stream, get, put, receipt, snapshot, stage, unframe
from testbed.server import Account, BackupServer

MIB = 1024 * 1024
DATA = os.urandom(5 * MIB + 123)


def frames_from(data: bytes, offset: int, sent: bytes | None = None) -> bytes:
    """The stream a resuming client sends: data from OFFSET on (or SENT,
    altered data), then an E frame with the WHOLE stream's length and digest."""
    body = frame_stream(data[offset:] if sent is None else sent)
    end = wire.FRAME_HEADER_SIZE + wire.END_PAYLOAD.size
    return body[:-end] + wire.encode_end_frame(len(data), hashlib.sha256(data).digest())


def start(server: BackupServer, account: Account, command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*server.ssh_command(account), command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_line(process: subprocess.Popen[bytes]) -> bytes:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.endswith(b"\n"), (line, process.poll())
    return line


def interrupted_put(server: BackupServer, account: Account, name: str, sent: int) -> int:
    """Start `put NAME`, send SENT bytes of DATA in frames, wait for the last
    ack the server sends for them, then kill the client; return that ack."""
    process = start(server, account, f"put {name}")
    assert process.stdin is not None
    assert client.parse_offset(read_line(process)).offset == 0
    process.stdin.write(frame_stream(DATA[:sent])[: -(5 + wire.END_PAYLOAD.size)])
    process.stdin.flush()
    acked = 0
    while acked + MIB <= sent:  # sync_interval is 1M in these tests
        line = client.parse_upload_line(read_line(process))
        assert isinstance(line, wire.Ack)
        acked = line.offset
    process.kill()
    process.wait()
    return acked


@pytest.fixture
def resumable(shell_config: BackupServer, account: Account) -> Account:
    shell_config.write_shell_config(f"[account {account.name}]\nsync_interval = 1M\n")
    return account


def wait_for_no_shell(account: Account) -> None:
    deadline = time.monotonic() + 15
    while account.uid in process_owners():
        assert time.monotonic() < deadline, "the shell did not end"
        time.sleep(0.05)


def process_owners() -> set[int]:
    """Return the uids of the processes running now (one that exits while
    /proc is read is simply not counted)."""
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            owners.add(os.stat(f"/proc/{pid}").st_uid)
        except FileNotFoundError:
            continue
    return owners


def test_put_acks_what_it_holds_durably_then_sends_its_receipt(
    shell_config: BackupServer, resumable: Account
) -> None:
    result = stage(shell_config, resumable, "acked", DATA)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines(keepends=True)
    assert client.parse_offset(lines[0]).offset == 0
    acks = [client.parse_upload_line(line) for line in lines[1:-1]]
    # One ack per sync_interval (1 MiB frames here), each after its fdatasync.
    assert [ack.offset for ack in acks] == [n * MIB for n in range(1, 6)]  # type: ignore[union-attr]
    assert receipt(result.stdout).sha256 == hashlib.sha256(DATA).hexdigest()


def test_an_interrupted_put_resumes_from_the_acked_offset_byte_exact(
    shell_config: BackupServer, resumable: Account
) -> None:
    acked = interrupted_put(shell_config, resumable, "lap/b1", 3 * MIB + 500)
    wait_for_no_shell(resumable)
    # Nothing visible: not listed, not staged, nothing to commit.
    listing = shell_config.run(resumable, "list")
    assert listing.stdout == b'{"count":0,"end":true,"truncated":false}\n'
    process = start(shell_config, resumable, "resume lap/b1")
    offset = client.parse_offset(read_line(process)).offset
    assert offset >= acked == 3 * MIB
    stdout, stderr = process.communicate(frames_from(DATA, offset), timeout=60)
    assert process.returncode == 0, stderr
    record = client.parse_upload_line(stdout.splitlines()[-1])
    assert record == wire.BackupRecord("lap/b1", len(DATA), hashlib.sha256(DATA).hexdigest(),
                                           record.mtime)  # type: ignore[union-attr]
    assert shell_config.run(resumable, "commit lap/b1").returncode == 0
    assert (resumable.storage / "lap/b1").read_bytes() == DATA
    assert sorted(os.listdir(resumable.storage / "lap")) == [".b1.sha256", "b1"]


def test_a_resume_that_sends_wrong_bytes_is_refused_and_removes_the_partial(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "bad", 2 * MIB)
    wait_for_no_shell(resumable)
    process = start(shell_config, resumable, "resume bad")
    offset = client.parse_offset(read_line(process)).offset
    wrong = bytearray(DATA)
    wrong[offset] ^= 1
    # The E frame declares the real data: one flipped byte must not match.
    stream = frames_from(DATA, offset, sent=bytes(wrong[offset:]))
    _, stderr = process.communicate(stream, timeout=60)
    assert process.returncode == 65, stderr
    assert not (resumable.storage / ".bad.partial").exists()


def test_get_from_an_offset_sends_the_rest_and_the_whole_digest(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "whole", DATA).returncode == 0
    for offset in (0, 1, 2 * MIB + 7, len(DATA)):
        result = backup_server.run(account, f"get whole {offset}")
        assert result.returncode == 0, result.stderr
        data, size, digest = unframe(result.stdout)
        assert (data, size, digest) == (DATA[offset:], len(DATA), hashlib.sha256(DATA).digest())
    assert get(backup_server, account, "whole")[0] == DATA


@pytest.mark.parametrize("offset", [str(len(DATA) + 1), "-1", "01", "1e3", "9" * 20])
def test_get_refuses_an_offset_past_the_end_or_malformed(
    backup_server: BackupServer, account: Account, offset: str
) -> None:
    assert put(backup_server, account, "ranged", DATA).returncode == 0
    result = backup_server.run(account, f"get ranged {offset}")
    expected = 65 if offset == str(len(DATA) + 1) else 64
    assert (result.returncode, result.stdout) == (expected, b""), result.stderr


# Threat: hostile resumes. Each is refused with its code and changes nothing.
def test_resume_of_a_committed_or_staged_name_is_73(
    shell_config: BackupServer, resumable: Account
) -> None:
    assert put(shell_config, resumable, "done", b"committed").returncode == 0
    assert stage(shell_config, resumable, "staged", b"staged").returncode == 0
    before = snapshot(resumable.storage)
    for name in ("done", "staged"):
        result = shell_config.run(resumable, f"resume {name}", frames_from(DATA, 0))
        assert (result.returncode, result.stdout) == (73, b""), result.stderr
    assert snapshot(resumable.storage) == before


def test_resume_with_nothing_to_resume_is_66(
    shell_config: BackupServer, resumable: Account
) -> None:
    before = snapshot(resumable.storage)
    for name in ("never", "no/such/dir"):
        result = shell_config.run(resumable, f"resume {name}", frames_from(DATA, 0))
        assert (result.returncode, result.stdout) == (66, b""), result.stderr
        assert result.stderr == b"qbackup-shell: nothing to resume under that name " \
            b"(never put, finished, or expired)\n"
    assert snapshot(resumable.storage) == before


def test_resume_of_an_expired_partial_is_66_and_changes_nothing(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "old", 2 * MIB)
    wait_for_no_shell(resumable)
    stamp = time.time() - 2 * 3600  # partial_max_age defaults to 1h
    os.utime(resumable.storage / ".old.partial", (stamp, stamp))
    before = snapshot(resumable.storage)
    result = shell_config.run(resumable, "resume old", frames_from(DATA, 0))
    assert (result.returncode, result.stdout) == (66, b""), result.stderr
    assert snapshot(resumable.storage) == before
    # The next admitted put in the account removes it.
    assert put(shell_config, resumable, "other", b"x").returncode == 0
    assert not (resumable.storage / ".old.partial").exists()
    assert not (resumable.storage / ".old.partial-state").exists()


def test_resume_of_another_accounts_upload_is_impossible(
    shell_config: BackupServer, resumable: Account
) -> None:
    # Storage is per account and names are relative to it: another account
    # resuming the same NAME finds nothing of ours.
    interrupted_put(shell_config, resumable, "mine", 2 * MIB)
    wait_for_no_shell(resumable)
    other = shell_config.add_account()
    before = snapshot(resumable.storage)
    result = shell_config.run(other, "resume mine", frames_from(DATA, 0))
    assert (result.returncode, result.stdout) == (66, b"")
    assert snapshot(resumable.storage) == before


def test_resume_with_a_state_record_promising_more_than_held_is_66(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "short", 2 * MIB)
    wait_for_no_shell(resumable)
    with open(resumable.storage / ".short.partial", "r+b") as partial:
        partial.truncate(MIB // 2)
    before = snapshot(resumable.storage)
    result = shell_config.run(resumable, "resume short", frames_from(DATA, 0))
    assert (result.returncode, result.stdout) == (66, b""), result.stderr
    assert snapshot(resumable.storage) == before


def test_a_left_behind_put_is_ended_and_the_resume_proceeds(
    shell_config: BackupServer, resumable: Account
) -> None:
    # The connection of a put died without sshd noticing (the client is
    # frozen): its shell still holds the upload lock, waiting for data.
    process = start(shell_config, resumable, "put stuck")
    assert process.stdin is not None
    read_line(process)
    process.stdin.write(frame_stream(DATA[: 2 * MIB])[:-45])
    process.stdin.flush()
    for expected in (MIB, 2 * MIB):
        assert client.parse_upload_line(read_line(process)) == wire.Ack(expected)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resumed = start(shell_config, resumable, "resume stuck")
        offset = client.parse_offset(read_line(resumed)).offset
        assert offset == 2 * MIB
        assert time.monotonic() - started < 12
        stdout, stderr = resumed.communicate(frames_from(DATA, offset), timeout=60)
        assert resumed.returncode == 0, stderr
    finally:
        process.kill()
        process.wait()
    assert shell_config.run(resumable, "commit stuck").returncode == 0
    assert (resumable.storage / "stuck").read_bytes() == DATA


def test_a_second_live_resume_is_refused_69_and_the_first_goes_on(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "twice", 2 * MIB)
    wait_for_no_shell(resumable)
    first = start(shell_config, resumable, "resume twice")
    offset = client.parse_offset(read_line(first)).offset
    stream = frames_from(DATA, offset)
    assert first.stdin is not None
    # The first keeps sending (a frame every 0.3 s, far inside the 2 s the
    # takeover waits for progress): it is live, not left behind.
    second = start(shell_config, resumable, "resume twice")
    sent = 0
    while second.poll() is None:
        first.stdin.write(stream[sent : sent + 64 * 1024])
        first.stdin.flush()
        sent += 64 * 1024
        time.sleep(0.3)
    assert second.returncode == 69
    assert second.stderr is not None and b"another upload" in second.stderr.read()
    stdout, stderr = first.communicate(stream[sent:], timeout=60)
    assert first.returncode == 0, stderr
    assert shell_config.run(resumable, "commit twice").returncode == 0
    assert (resumable.storage / "twice").read_bytes() == DATA


ZERO_GIB = 5


def big_sparse_partial(account: Account, name: str) -> hashlib._Hash:
    """A kept partial of NAME: ZERO_GIB GiB of zeros (sparse: no disk used)
    and its state record; return the hasher of those bytes."""
    hasher = hashlib.sha256()
    zeros = bytes(64 * MIB)
    for _ in range(ZERO_GIB * 16):
        hasher.update(zeros)
    partial = account.storage / f".{name}.partial"
    with open(partial, "wb") as file:
        file.truncate(ZERO_GIB * 1024 * MIB)
    state = account.storage / f".{name}.partial-state"
    state.write_text(f'{{"offset": {ZERO_GIB * 1024 * MIB}, "sha256": "{hasher.hexdigest()}"}}')
    for path in (partial, state):
        os.chown(path, account.uid, account.gid)
    return hasher


# Threat: a second `resume NAME` took a LIVE first
# resume, busy re-hashing a big partial (its size does not change), for a
# process left behind, and killed it. Now only a holder that reads and
# writes nothing (/proc/PID/io) for 2 s is ended.
def test_a_second_resume_never_ends_a_first_one_that_is_rehashing(
    shell_config: BackupServer, resumable: Account
) -> None:
    hasher = big_sparse_partial(resumable, "huge")
    tail = b"the end of the stream"
    whole = hasher.copy()
    whole.update(tail)
    first = start(shell_config, resumable, "resume huge")
    # The first holds the upload lock once its shell runs; then the second starts.
    deadline = time.monotonic() + 20
    while not (resumable.storage / ".qbackup-upload.lock").exists() or b"huge" not in (
            resumable.storage / ".qbackup-upload.lock").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = start(shell_config, resumable, "resume huge")
    assert client.parse_offset(read_line(first)).offset == ZERO_GIB * 1024 * MIB
    assert first.stdin is not None
    rest = wire.encode_data_header(len(tail)) + tail + wire.encode_end_frame(
        ZERO_GIB * 1024 * MIB + len(tail), whole.digest())
    # The first, live, receives a byte every 0.3 s (far inside the 2 s idle
    # the takeover needs) until the second has given up.
    sent = 0
    while second.poll() is None and sent < len(rest) - 1:
        first.stdin.write(rest[sent : sent + 1])
        first.stdin.flush()
        sent += 1
        time.sleep(0.3)
    _, second_err = second.communicate(timeout=60)
    assert second.returncode == 69, second_err
    stdout, stderr = first.communicate(rest[sent:], timeout=120)
    assert first.returncode == 0, stderr
    assert client.parse_upload_line(stdout.splitlines()[-1]).sha256 == whole.hexdigest()  # type: ignore[union-attr]


# Threat: a crash while staging (after linking the
# partial to the pending name) leaves one inode under both names; a resume
# must never write into what is staged.
def test_resume_refuses_a_partial_that_is_also_staged_data(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "linked", 2 * MIB)
    wait_for_no_shell(resumable)
    os.link(resumable.storage / ".linked.partial", resumable.storage / "elsewhere-link")
    os.lchown(resumable.storage / "elsewhere-link", resumable.uid, resumable.gid)
    before = snapshot(resumable.storage)
    result = shell_config.run(resumable, "resume linked", frames_from(DATA, 0))
    assert (result.returncode, result.stdout) == (66, b""), result.stderr
    assert snapshot(resumable.storage) == before


# Threat: a few bytes (`check huge`) made the server
# hash a whole file and go on for many seconds after the client had left.
def test_check_stops_when_its_client_goes_away(
    shell_config: BackupServer, resumable: Account
) -> None:
    size = 48 * 1024 * MIB  # sparse: ~30 s of hashing if nobody stopped it
    path = resumable.storage / "huge"
    with open(path, "wb") as file:
        file.truncate(size)
    record = resumable.storage / ".huge.sha256"
    record.write_text(f'{{"size": {size}, "sha256": "{"0" * 64}"}}')
    for entry in (path, record):
        os.chown(entry, resumable.uid, resumable.gid)
    checker = start(shell_config, resumable, "check huge")
    deadline = time.monotonic() + 20
    while not checking(resumable):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    checker.kill()
    checker.wait()
    line = f"account={resumable.name} command=check huge outcome=interrupted"
    assert shell_config.syslog.wait_for(line, timeout=10), "the check went on hashing"


def checking(account: Account) -> bool:
    """Whether a shell of ACCOUNT is running `check` (found via /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == account.uid and b"check" in Path(
                f"/proc/{pid}/cmdline"
            ).read_bytes():
                return True
        except OSError:
            continue
    return False


# Quota and reserve count a resumable upload's bytes (a client
# cannot park data outside its quota in interrupted uploads).
def test_a_kept_partial_counts_toward_the_quota(
    shell_config: BackupServer, resumable: Account
) -> None:
    interrupted_put(shell_config, resumable, "parked", 3 * MIB)
    wait_for_no_shell(resumable)
    shell_config.write_shell_config(
        f"[account {resumable.name}]\nsync_interval = 1M\nquota = 4M\nreserve = 0\n"
    )
    info = client.parse_info(shell_config.run(resumable, "info").stdout)
    assert info.used is not None and info.used >= 3 * MIB
    before = snapshot(resumable.storage)
    result = stage(shell_config, resumable, "more", os.urandom(2 * MIB))
    assert result.returncode == 69, result.stderr
    assert snapshot(resumable.storage) == before
