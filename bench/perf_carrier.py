"""Ad-hoc throughput and memory benchmark of qbackup-carrier (not a test).

    head -c 4G /dev/urandom > /tmp/data4g
    python -m bench.perf_carrier --data /tmp/data4g [--rounds 2]

Run as root, from the repo: it starts a test-bed server (real sshd + installed qbackup-shell)
with one shell account and one plain /bin/sh account for the 'cat' baselines
(or uses --server JSON naming port, key, known_hosts, shell_user, cat_user).
DATA is a pre-made incompressible file (in page cache).
Each round measures, in the same run:
  openssh->cat     ssh -c aes128-gcm HOST 'cat > file'
  openssh->shell   OpenSSH piping an already-framed stream into the real shell's put
  carrier->shell   qbackup-carrier put --commit (venv asyncssh), peak RSS from /usr/bin/time
  carrier210->shell  the same under /usr/bin/python3 (Debian asyncssh 2.10)
  carrier->cat     the carrier's own put code, its session command swapped for
                   'cat > file' (the client alone, against the same sink as OpenSSH)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qbackup_protocol.wire import DEFAULT_DATA_FRAME, encode_data_header, encode_end_frame
from testbed.carrier import carrier_config
from testbed.openssh import Endpoint, ssh_argv
from testbed.server import BackupServer

REPO = Path(__file__).resolve().parents[1]
CIPHER = ("-c", "aes128-gcm@openssh.com")


def endpoint(server: dict) -> Endpoint:
    """Given the server's coordinates, return where the clients log in."""
    return Endpoint(
        port=int(server["port"]), identity=Path(server["key"]),
        known_hosts=Path(server["known_hosts"]),
    )


def framed_copy(data: Path, out: Path) -> None:
    digest = hashlib.sha256()
    total = 0
    with open(data, "rb") as source, open(out, "wb") as target:
        while chunk := source.read(DEFAULT_DATA_FRAME):
            digest.update(chunk)
            total += len(chunk)
            target.write(encode_data_header(len(chunk)) + chunk)
        target.write(encode_end_frame(total, digest.digest()))


def timed(argv: list[str], stdin: Path, env: dict | None = None) -> tuple[float, int, str]:
    start = time.monotonic()
    with open(stdin, "rb") as handle:
        done = subprocess.run(
            ["/usr/bin/time", "-v", *argv], stdin=handle, capture_output=True, env=env, check=False
        )
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[:2]} failed: {done.stderr.decode()[-500:]}")
    peak = int(re.search(rb"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return elapsed, peak, done.stdout.decode()


class CatConnection:
    """Wraps a real connection so put's session runs 'cat > perf.out' instead."""

    def __init__(self, connection: object) -> None:
        self.connection = connection

    async def open_session(self, _command: str, **options: object) -> object:
        return await self.connection.open_session("cat > perf.out", **options)  # type: ignore[attr-defined]


def carrier_to_cat() -> None:
    """Run the carrier's put code with stdin into 'cat' (a subprocess of this script)."""
    import asyncio

    from carrier_vm.config import load_config
    from carrier_vm.errors import DataError
    from carrier_vm.ssh import open_connection
    from carrier_vm.upload import put_backup

    async def run() -> None:
        config = load_config()
        async with open_connection(config) as connection:
            try:
                await put_backup(CatConnection(connection), "x", 0, config)
            except DataError as error:  # cat sends no receipt: expected
                assert "receipt" in str(error), error

    asyncio.run(run())


def main() -> None:
    if sys.argv[1:] == ["--to-cat"]:
        carrier_to_cat()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--server")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.server:
        server = json.loads(Path(args.server).read_text())
        run(args, server)
        return
    with BackupServer.create() as harness:
        harness.start()
        server = {
            "port": harness.port,
            "key": str(harness.client_key),
            "known_hosts": str(harness.known_hosts),
            "shell_user": harness.add_account().name,
            "cat_user": harness.add_account(login_shell=Path("/bin/sh")).name,
        }
        run(args, server)


def run(args: argparse.Namespace, server: dict) -> None:
    """Given the parsed arguments and the server's coordinates, run the rounds."""
    size = args.data.stat().st_size
    mib = size / 2**20
    framed = Path(tempfile.mkstemp(dir="/tmp", prefix="perf-framed-")[1])
    framed_copy(args.data, framed)
    config = Path(tempfile.mkstemp(dir="/tmp", prefix="perf-carrier-", suffix=".yaml")[1])
    config.write_text(carrier_config(endpoint(server), server["shell_user"]))
    cat_config = Path(str(config) + ".cat")
    cat_config.write_text(carrier_config(endpoint(server), server["cat_user"]))
    env = {**os.environ, "QBACKUP_CARRIER_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    cat_env = {**env, "QBACKUP_CARRIER_CONFIG": str(cat_config)}
    rows: dict[str, list[tuple[float, int]]] = {}
    stamp = int(time.time())
    try:
        for round_number in range(args.rounds):
            tag = f"perf/{stamp}-{round_number}"
            cases = {
                "openssh->cat": (
                    [*ssh_argv(endpoint(server), server["cat_user"], *CIPHER), "cat > perf.out"],
                    args.data,
                ),
                "openssh->shell": (
                    [*ssh_argv(endpoint(server), server["shell_user"], *CIPHER), f"put {tag}-o"],
                    framed,
                ),
                "carrier->shell": (
                    [f"{sys.prefix}/bin/qbackup-carrier", "put", "--commit", f"{tag}-c"],
                    args.data,
                ),
                "carrier->cat": (
                    [sys.executable, "-m", "bench.perf_carrier", "--to-cat"],
                    args.data,
                ),
                "carrier210->shell": (
                    ["/usr/bin/python3", "-m", "carrier_vm.cli", "put", "--commit", f"{tag}-d"],
                    args.data,
                ),
            }
            for label, (argv, source) in cases.items():
                elapsed, peak, _ = timed(argv, source, cat_env if label.endswith("cat") else env)
                rows.setdefault(label, []).append((mib / elapsed, peak))
                rate = f"{mib / elapsed:7.1f} MiB/s"
                print(f"round {round_number} {label:18} {rate}  peak RSS {peak / 1024:6.1f} MiB")
    finally:
        framed.unlink()
        config.unlink()
        cat_config.unlink()
    base = max(r for r, _ in rows["openssh->cat"])
    print(f"\n{mib:.0f} MiB, best of {args.rounds}; ratio = best / best openssh->cat")
    for label, values in rows.items():
        best = max(r for r, _ in values)
        peak = max(p for _, p in values) / 1024
        print(f"| {label} | {best:.0f} MiB/s | {best / base:.2f}x | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
