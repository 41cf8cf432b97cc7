"""`make demo`: one real backup end to end on this machine, then list, check,
verify and restore it.

    simulated dom0 (Qubes' engine)  ->  qbackup-carrier  ->  OpenSSH sshd
        ->  qbackup-shell (login shell of a demo account)  ->  disk

Only Qubes is simulated (testbed/qubes_sim); everything after the stream leaves
"dom0" is the real code: the carrier over SSH, a real sshd on 127.0.0.1, the
installed shell as the account's login shell, a real filesystem. Everything the
demo starts is stopped and removed at the end, so it can run again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from dom0.cli import main as qbackup
from testbed.carrier import write_carrier_config
from testbed.qubes_sim import SimulatedQubes, simulated_dom0
from testbed.qubes_sim.stream import vm_data
from testbed.server import BackupServer, SyslogSink, remove_stale_accounts

MIB = 1024 * 1024
CARRIER = "sys-backup"
VMS = {"work": 160 * MIB, "personal": 96 * MIB, "mail": 48 * MIB}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(*argv: str, app: SimulatedQubes) -> tuple[int, str]:
    """Run `qbackup ARGV` against the simulated dom0; echo and return its output."""
    print("$ qbackup " + " ".join(argv), flush=True)
    captured = io.StringIO()
    app.new_process()  # each qbackup is a process of its own: nothing cached yet
    with contextlib.redirect_stdout(captured):
        code = qbackup(list(argv), app=app)
    out = captured.getvalue()
    print(out, end="", flush=True)
    if code != 0:
        raise SystemExit(f"demo: `qbackup {' '.join(argv)}` exited {code}")
    return code, out


def demo(work: Path) -> None:
    say("1. a backup server: real OpenSSH sshd on 127.0.0.1, qbackup-shell as the login shell")
    with BackupServer.create() as server:
        server.write_shell_config("[storage]\nreserve = 256M\n")
        account = server.add_account()
        server.start()
        print(f"sshd on 127.0.0.1:{server.port}; account {account.name}")
        print(f"login shell: {server.shell_path}")
        print(f"storage: {account.storage}; shell config: {server.config_path}")

        say("2. the carrier VM's configuration, host key pinned")
        carrier_config = write_carrier_config(server, account, work)
        print(carrier_config.read_text(), end="")

        say(
            "3. dom0: simulated Qubes with "
            + ", ".join(f"{n} ({s // MIB} MiB)" for n, s in VMS.items())
        )
        sim = simulated_dom0(work, carrier_config)
        for name, size in VMS.items():
            sim.add_vm(name, size=size)
        sim.add_vm(CARRIER, include_in_backups=False)
        passfile = work / "passphrase"
        passfile.write_text("demo passphrase, keep it secret\n")
        passfile.chmod(0o600)
        os.environ["QBACKUP_HISTORY"] = str(work / "history.jsonl")
        os.environ["QBACKUP_LOCK_DIR"] = str(work / "locks")
        journal = SyslogSink(work / "journal.sock")  # stands in for dom0's /dev/log
        os.environ["QBACKUP_LOG_SOCKET"] = str(journal.path)

        say("4. back up, with the original tool's invocation (as cron would run it)")
        started = time.monotonic()
        run("-f", "demo", "-t", CARRIER, "-p", str(passfile), *VMS, app=sim)
        seconds = time.monotonic() - started
        [record] = [json.loads(line) for line in (work / "history.jsonl").read_text().splitlines()]
        name = record["name"]
        print("what `journalctl -t qbackup` shows of that run:")
        for line in journal.flush():  # everything the run sent
            print("  " + line.split(">", 1)[-1].strip())  # drop the syslog priority

        say("5. list, check (server re-hashes), verify (Qubes decrypts every part)")
        run("list", "-t", CARRIER, app=sim)
        run("check", "-t", CARRIER, name, app=sim)
        run("verify", "-t", CARRIER, "-p", str(passfile), name, app=sim)

        say("6. lose a VM, restore it from the server")
        lost = "personal"
        sim.remove_vm(lost)
        run("restore", "-t", CARRIER, "-p", str(passfile), name, lost, app=sim)
        restored = (sim.restore_dir / f"{lost}.img").read_bytes()
        if restored != vm_data(lost, VMS[lost]):
            raise SystemExit("demo: the restored VM differs from the original")

        stored = account.storage / name
        size = stored.stat().st_size
        say("summary")
        print(f"backup     {name}")
        print(f"stored at  {stored} (on the server, as {account.name})")
        vm_total = sum(VMS.values()) // MIB
        print(f"size       {size:,} bytes ({size / MIB:.1f} MiB) for {vm_total} MiB of VM data")
        print(f"sha256     {record['sha256']}")
        print(f"time       {seconds:.1f} s for the whole run (carrier start, server info, backup,")
        print(f"           commit, carrier shutdown): {size / seconds / 1e6:.0f} MB/s")
        print(f"restore    {lost}: {len(restored):,} bytes, byte-exact")
        print("everything started by the demo is stopped and removed now")
        journal.close()


def main() -> int:
    if os.geteuid() != 0:
        print("make demo runs sshd and creates an account: run it as root", file=sys.stderr)
        return 2
    remove_stale_accounts()
    with tempfile.TemporaryDirectory(prefix="qbackup-demo-", dir="/tmp") as work:
        # Open to read like the test bed's own directories; the one secret in it,
        # the passphrase file, is 0600 itself.
        os.chmod(work, 0o755)  # noqa: S103
        demo(Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
