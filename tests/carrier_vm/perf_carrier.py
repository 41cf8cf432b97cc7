"""Ad-hoc throughput and memory benchmark of qbackup-carrier (not a test).

    python -m tests.carrier_vm.perf_carrier --server /tmp/proto/server.json --data FILE [--rounds 2]

SERVER names a running harness server (port, key, known_hosts, shell_user,
cat_user) as written by a helper; DATA is a pre-made incompressible file.
Each round measures, in the same run:
  openssh->cat     ssh -c aes128-gcm HOST 'cat > file'
  openssh->shell   OpenSSH piping an already-framed stream into the real shell's put
  carrier->shell   qbackup-carrier put (venv asyncssh), peak RSS from /usr/bin/time
  carrier210->shell  the same under /usr/bin/python3 (Debian asyncssh 2.10)
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from qbackup_protocol import DEFAULT_DATA_FRAME, encode_data_header, encode_end_frame  # noqa: E402


def ssh_argv(server: dict, user: str) -> list[str]:
    return [
        "ssh",
        "-p",
        str(server["port"]),
        "-i",
        server["key"],
        "-c",
        "aes128-gcm@openssh.com",
        "-o",
        f"UserKnownHostsFile={server['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-F",
        "/dev/null",
        f"{user}@127.0.0.1",
    ]


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = json.loads(Path(args.server).read_text())
    size = args.data.stat().st_size
    mib = size / 2**20
    framed = Path(tempfile.mkstemp(dir="/tmp", prefix="perf-framed-")[1])
    framed_copy(args.data, framed)
    config = Path(tempfile.mkstemp(dir="/tmp", prefix="perf-carrier-", suffix=".yaml")[1])
    config.write_text(
        f"host: 127.0.0.1\nport: {server['port']}\nuser: {server['shell_user']}\n"
        f"identity_file: {server['key']}\nknown_hosts: {server['known_hosts']}\n"
    )
    env = {**os.environ, "QBACKUP_CARRIER_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    rows: dict[str, list[tuple[float, int]]] = {}
    stamp = int(time.time())
    try:
        for round_number in range(args.rounds):
            tag = f"perf/{stamp}-{round_number}"
            cases = {
                "openssh->cat": (
                    ssh_argv(server, server["cat_user"]) + ["cat > perf.out"],
                    args.data,
                ),
                "openssh->shell": (
                    ssh_argv(server, server["shell_user"]) + [f"put {tag}-o"],
                    framed,
                ),
                "carrier->shell": (
                    [f"{sys.prefix}/bin/qbackup-carrier", "put", f"{tag}-c"],
                    args.data,
                ),
                "carrier210->shell": (
                    ["/usr/bin/python3", "-m", "carrier_vm.cli", "put", f"{tag}-d"],
                    args.data,
                ),
            }
            for label, (argv, source) in cases.items():
                elapsed, peak, _ = timed(argv, source, env)
                rows.setdefault(label, []).append((mib / elapsed, peak))
                print(
                    f"round {round_number} {label:18} {mib / elapsed:7.1f} MiB/s  peak RSS {peak / 1024:6.1f} MiB",
                    flush=True,
                )
    finally:
        framed.unlink()
        config.unlink()
    base = max(r for r, _ in rows["openssh->cat"])
    print(f"\n{mib:.0f} MiB, best of {args.rounds}; ratio = best / best openssh->cat")
    for label, values in rows.items():
        best = max(r for r, _ in values)
        print(
            f"| {label} | {best:.0f} MiB/s | {best / base:.2f}x | {max(p for _, p in values) / 1024:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
