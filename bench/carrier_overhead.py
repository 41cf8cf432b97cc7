"""The carrier's own CPU cost per GiB, next to a bare asyncssh client, in ONE run.

    python -m bench.carrier_overhead [--mib 1024] [--rounds 3] [--data FILE]

Starts the test harness (a real sshd on 127.0.0.1, run as root) and sends
the same incompressible data (a file in page cache, fed as qrexec feeds a
service: through a socketpair, in 64 KiB writes) to each sender, taking
the sender's user+system CPU seconds from wait4(); every sender uses
aes128-gcm and the same sshd:

  bare        a minimal asyncssh client: fill a 1 MiB buffer with readinto
              (blocking), write, drain, into `cat > /dev/null` (the floor any
              asyncssh sender pays)
  carrier     `qbackup-carrier put` (protocol 3: offset, acks, resumable; SHA-256
              of every byte) into a sink that speaks protocol 3 and discards
  carrier-v2  the carrier as it was before resumption (git commit V2_COMMIT,
              protocol 2) into the same sink speaking protocol 2: "without
              resumption", for the throughput comparison
  shell       `qbackup-carrier put` into the real qbackup-shell (hash, write,
              fdatasync every sync_interval): the whole path

The sink (bench/protocol_sink.py) parses frames and echoes the client's own
digest in its receipt, so the server side costs little and the sender's CPU
is what differs. Prints one table: CPU s/GiB (median), MiB/s (median), and
the carrier's overhead above bare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sampler import PeakRss  # noqa: E402
from testbed.carrier import carrier_config  # noqa: E402
from testbed.server import Account, BackupServer  # noqa: E402

CIPHER = "aes128-gcm@openssh.com"
MIB = 1024 * 1024
GIB = 1024**3
# The last commit whose carrier spoke protocol 2 (before resumable uploads).
V2_COMMIT = "08594a0"

BARE_CLIENT = """
import asyncio, fcntl, sys, asyncssh
async def main():
    port, user, key, known = sys.argv[1:5]
    async with asyncssh.connect("127.0.0.1", port=int(port), username=user,
            client_keys=[key], known_hosts=known, encryption_algs=["CIPHER"],
            compression_algs=None) as conn:
        writer, reader, errors = await conn.open_session("cat > /dev/null", encoding=None)
        try:
            fcntl.fcntl(0, 1031, 1024 * 1024)  # F_SETPIPE_SZ, as the carrier does
        except OSError:
            pass  # not a pipe (qrexec's socketpair)
        buffer = bytearray(1024 * 1024)
        view = memoryview(buffer)
        stdin = sys.stdin.buffer.raw
        while True:
            count = 0
            while count < len(buffer):
                got = stdin.readinto(view[count:])
                if not got:
                    break
                count += got
            if not count:
                break
            writer.write(view[:count])
            await writer.drain()
        writer.write_eof()
        await writer.channel.wait_closed()
asyncio.run(main())
""".replace("CIPHER", CIPHER)


# Writes the file named in argv[1] to fd 1 in 64 KiB pieces: qrexec's
# largest data message, and how it hands Qubes' stream to the carrier.
QREXEC_FEEDER = """
import os, sys
with open(sys.argv[1], "rb", buffering=0) as source:
    while piece := source.read(65536):
        view = memoryview(piece)
        while view:
            view = view[os.write(1, view):]
"""


def start_feeder(data: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start feeding DATA as qrexec feeds a service: through one end of an
    AF_UNIX socketpair, in 64 KiB writes; return the feeder and the other
    end's fd (for the sender's stdin; the caller closes it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        feeder = subprocess.Popen(
            [sys.executable, "-c", QREXEC_FEEDER, str(data)], stdout=ours.fileno()
        )
    return feeder, theirs.detach()


def run_sender(
    argv: list[str], data: Path, env: dict[str, str], cwd: Path
) -> tuple[float, float, int]:
    """Run ARGV in CWD with DATA on stdin, fed as qrexec feeds it; return
    (CPU seconds, wall seconds, peak RSS in KiB). Only the sender's own CPU
    (its rusage) is counted, not the feeder's."""
    started = time.monotonic()
    feeder, stdin = start_feeder(data)
    child = subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    os.close(stdin)
    with PeakRss(child.pid) as peak:  # not ru_maxrss: see PeakRss
        _, status, usage = os.wait4(child.pid, 0)
    feeder.wait()
    wall = time.monotonic() - started
    stderr = child.stderr.read() if child.stderr else b""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed: {stderr.decode(errors='replace')[-400:]}")
    return usage.ru_utime + usage.ru_stime, wall, peak.peak_kib


def add_sink_account(server: BackupServer, protocol: int = 3) -> Account:
    """Add an account whose login shell is bench/protocol_sink.py speaking
    PROTOCOL (3 or 2); return it."""
    sink = server.base / "protocol_sink.py"
    if not sink.exists():
        shutil.copy(REPO / "bench" / "protocol_sink.py", sink)
        sink.chmod(0o755)
    account = server.add_account(login_shell=sink)
    if protocol != 3:
        (account.home / "protocol").write_text(str(protocol))
    return account


def bare_argv(server: BackupServer, account: Account, extra: list[str] | None = None) -> list[str]:
    """Return the argv of the bare asyncssh client logging in as ACCOUNT
    (whose shell must take `cat > /dev/null`); EXTRA goes before -c."""
    return [sys.executable, *(extra or []), "-c", BARE_CLIENT, str(server.port), account.name,
            str(server.client_key), str(server.known_hosts)]


def carrier_argv(extra: list[str] | None = None) -> list[str]:
    """Return the argv of the carrier's `put b` (run with cwd and PYTHONPATH
    at the tree whose carrier is meant)."""
    return [sys.executable, *(extra or []), "-m", "carrier_vm.cli", "put", "b"]


def profiling(output: Path | None) -> list[str]:
    """Given where to write a profile (or None), return python's extra arguments."""
    return ["-m", "cProfile", "-o", str(output)] if output else []


def old_carrier(commit: str) -> Path:
    """Return a directory holding the carrier (and protocol module) of COMMIT."""
    target = Path(tempfile.mkdtemp(prefix="carrier-v2-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "carrier_vm", "qbackup_protocol.py"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--only", nargs="*", help="run only these senders")
    parser.add_argument("--profile", type=Path, help="cProfile the carrier's main thread into FILE")
    args = parser.parse_args()
    data = args.data
    made = data is None
    if data is None:
        data = Path(tempfile.mkstemp(prefix="carrier-bench-")[1])
        with open(data, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(MIB))
    size = data.stat().st_size
    v2 = old_carrier(V2_COMMIT)
    try:
        with BackupServer.create() as server:
            server.start()
            sink3 = add_sink_account(server)
            sink2 = add_sink_account(server, protocol=2)
            cat = server.add_account(login_shell=Path("/bin/sh"))
            shell = server.add_account()
            configs = {}
            for label, account in (("carrier", sink3), ("carrier-v2", sink2), ("shell", shell)):
                path = server.base / f"{label}.yaml"
                path.write_text(carrier_config(server.endpoint, account.name))
                configs[label] = path
            base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(server.base)}
            senders = {
                "bare": (
                    bare_argv(
                        server, cat, profiling(args.profile and args.profile.with_suffix(".bare"))
                    ),
                    base_env,
                ),
                "carrier": (
                    carrier_argv(profiling(args.profile)),
                    {**base_env, "PYTHONPATH": str(REPO),
                     "QBACKUP_CARRIER_CONFIG": str(configs["carrier"])},
                ),
                "carrier-v2": (
                    [sys.executable, "-m", "carrier_vm.cli", "put", "b"],
                    {**base_env, "PYTHONPATH": str(v2),
                     "QBACKUP_CARRIER_CONFIG": str(configs["carrier-v2"])},
                ),
                "shell": (
                    [sys.executable, "-m", "carrier_vm.cli", "put"],
                    {**base_env, "PYTHONPATH": str(REPO),
                     "QBACKUP_CARRIER_CONFIG": str(configs["shell"])},
                ),
            }
            if args.only:
                senders = {k: v for k, v in senders.items() if k in args.only}
            results: dict[str, list[tuple[float, float, int]]] = {label: [] for label in senders}
            for round_number in range(args.rounds):
                for label, (argv, env) in senders.items():
                    if label == "shell":
                        argv = [*argv, f"bench-{round_number}"]
                    # python -m imports from the working directory first.
                    cwd = v2 if label == "carrier-v2" else REPO
                    cpu, wall, rss = run_sender(argv, data, env, cwd)
                    results[label].append((cpu, wall, rss))
                    print(
                        f"round {round_number} {label:11} {cpu / size * GIB:5.2f} CPU-s/GiB "
                        f"{size / wall / MIB:6.1f} MiB/s  peak RSS {rss / 1024:5.1f} MiB",
                        flush=True,
                    )
    finally:
        shutil.rmtree(v2, ignore_errors=True)
        if made:
            data.unlink()
    print(f"\n{size / MIB:.0f} MiB from page cache, {args.rounds} rounds, medians:")
    print("| sender | CPU s/GiB | MiB/s | peak RSS MiB |")
    print("|---|---|---|---|")
    medians = {}
    for label, values in results.items():
        cpu = statistics.median(c for c, _, _ in values) / size * GIB
        rate = statistics.median(size / w for _, w, _ in values) / MIB
        peak = max(r for _, _, r in values) / 1024
        medians[label] = (cpu, rate)
        print(f"| {label} | {cpu:.2f} | {rate:.0f} | {peak:.0f} |")
    if "bare" in medians and "carrier" in medians:
        overhead = medians["carrier"][0] - medians["bare"][0]
        print(f"carrier overhead above bare: {overhead:.2f} CPU-s/GiB")
    if "carrier" in medians and "carrier-v2" in medians:
        ratio = medians["carrier"][1] / medians["carrier-v2"][1]
        print(f"throughput with resumption / without: {ratio:.3f}")


if __name__ == "__main__":
    main()
