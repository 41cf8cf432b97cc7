"""Ad-hoc measurement (not a test): dom0 backup/verify throughput end to end.

    /opt/qbackup-venv/bin/python -m bench.measure_backup [MIB]    (as root, from the repo)

Runs the simulated Qubes engine into the REAL carrier, sshd and shell, and
compares with the carrier alone (`qbackup-carrier put` reading a file: staging only) and
with generating the simulated stream alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dom0.cli import main
from testbed.carrier import write_carrier_config
from testbed.qubes_sim import simulated_dom0, stream
from testbed.server import BackupServer, remove_stale_accounts

CARRIER = "sys-backup"
MIB = 1024 * 1024


def rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:7.1f} MiB/s ({seconds:5.2f} s)"


def measure(mib: int) -> None:
    size = mib * MIB
    remove_stale_accounts()
    with BackupServer.create() as server:
        server.start()
        account = server.add_account()
        tmp = Path(tempfile.mkdtemp(prefix="qbackup-measure-", dir="/tmp"))
        os.chmod(tmp, 0o755)
        carrier_config = write_carrier_config(server, account, tmp)
        sim = simulated_dom0(tmp, carrier_config)
        sim.add_vm("work", size=size, running=True)
        sim.add_vm(CARRIER, include_in_backups=False)
        passfile = tmp / "pass"
        passfile.write_text("measure\n")
        passfile.chmod(0o600)
        os.environ.update(QBACKUP_HISTORY=str(tmp / "history"), QBACKUP_LOCK_DIR=str(tmp / "l"),
                          QBACKUP_LOG_SOCKET=str(tmp / "no-socket"))

        start = time.monotonic()
        for _ in stream.build_stream([("work", size)], "p", b"s", True):
            pass
        print(f"generate simulated stream only       {rate(size, time.monotonic() - start)}")

        sim.add_vm("tiny", size=64 * 1024)
        start = time.monotonic()
        assert main(["-f", "tiny", "-t", CARRIER, "-p", str(passfile), "tiny"], app=sim) == 0
        elapsed = time.monotonic() - start
        print(f"fixed cost: 64 KiB backup (info, list, put, commit) {elapsed:5.2f} s")

        start = time.monotonic()
        code = main(["-f", "m", "-t", CARRIER, "-p", str(passfile), "work"], app=sim)
        elapsed = time.monotonic() - start
        assert code == 0, code
        print(f"qbackup backup (sim -> carrier -> sshd) {rate(size, elapsed)}")

        [name] = [p.name for p in account.storage.iterdir() if p.name.startswith("m-")]
        start = time.monotonic()
        assert main(["verify", "-t", CARRIER, "-p", str(passfile), name], app=sim) == 0
        print(f"qbackup verify (2 gets, HMAC check)   {rate(size, time.monotonic() - start)}")

        blob = tmp / "blob"
        with open(blob, "wb") as handle:
            for chunk in stream.build_stream([("work", size)], "p", b"s", True):
                handle.write(chunk)
        start = time.monotonic()
        with open(blob, "rb") as handle:
            subprocess.run(["qbackup-carrier", "put", "direct-1"], stdin=handle,
                           env=sim.carrier_env, check=True, stdout=subprocess.DEVNULL)
        print(f"qbackup-carrier put alone from a file {rate(size, time.monotonic() - start)}")


if __name__ == "__main__":
    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
