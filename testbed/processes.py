"""The test server's processes as a test sees them from outside: what an
account runs (its sshd session processes and its qbackup-shell), who waits
for a flock on a file, and a process's parent. A process that exits while it
is looked at is simply not counted."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from testbed.server import Account


def account_pids(account: Account) -> list[int]:
    """Return the PIDs running as ACCOUNT: its sshd session processes and its shells."""
    # pgrep reads the effective uid from /proc/PID/status: sshd's session
    # process is not dumpable, so /proc/PID itself is owned by root.
    found = subprocess.run(["pgrep", "-u", account.name], capture_output=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def shell_pids(account: Account) -> list[int]:
    """Return the PIDs of ACCOUNT's qbackup-shell processes."""
    found = []
    for pid in account_pids(account):
        with contextlib.suppress(OSError):
            if b"qbackup-shell" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def flock_waiters(inode: int) -> list[int]:
    """Return the PIDs waiting (blocked) for a flock on INODE, from /proc/locks."""
    waiters = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK":
            if int(fields[6].rsplit(":", 1)[1]) == inode:
                waiters.append(int(fields[5]))
    return waiters


def parent_pid(pid: int) -> int:
    """Return the PID of PID's parent, from /proc/PID/stat."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
