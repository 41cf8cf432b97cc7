"""Ad-hoc throughput check (not a test): OpenSSH client -> `put` vs -> `cat > file`.

Usage (as root, from the repo): python -m bench.shell_put [--gib 2] [--reps 3]

Pre-makes GIB of /dev/urandom data in /tmp (raw and framed, both then in the
page cache), starts the test bed's real sshd, and alternates uploads of
the same bytes: the framed stream into qbackup-shell's `put`, the raw stream
into `cat > file` of an account whose login shell is /bin/sh. Prints MB/s
per run, the medians and the ratio, per cipher.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import time
from pathlib import Path

from qbackup_protocol import wire
from testbed.server import BackupServer

CHUNK = wire.DEFAULT_DATA_FRAME


def make_inputs(directory: Path, size: int) -> tuple[Path, Path]:
    raw = directory / "raw"
    framed = directory / "framed"
    hasher = hashlib.sha256()
    with (
        open("/dev/urandom", "rb") as source,
        raw.open("wb") as raw_out,
        framed.open("wb") as framed_out,
    ):
        left = size
        while left:
            piece = source.read(min(CHUNK, left))
            hasher.update(piece)
            raw_out.write(piece)
            framed_out.write(wire.encode_data_header(len(piece)) + piece)
            left -= len(piece)
        framed_out.write(wire.encode_end_frame(size, hasher.digest()))
    for path in (raw, framed):
        path.chmod(0o644)
        path.read_bytes()  # into the page cache
    return raw, framed


def timed(argv: list[str], source: Path) -> float:
    with source.open("rb") as stdin:
        started = time.monotonic()
        result = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
        elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[-1]} failed: {result.returncode} {result.stderr!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    size = int(args.gib * 1024**3)
    with BackupServer.create() as server:
        server.start()
        shell_account = server.add_account()
        plain_account = server.add_account(login_shell=Path("/bin/sh"))
        raw, framed = make_inputs(server.base, size)
        for cipher in ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"):
            speeds: dict[str, list[float]] = {"put": [], "cat": []}
            for rep in range(args.reps):
                put_argv = [
                    *server.ssh_command(shell_account, "-c", cipher),
                    f"put bench/{cipher[:6]}-{rep}",
                ]
                cat_argv = [
                    *server.ssh_command(plain_account, "-c", cipher),
                    f"cat > bench-{rep} && sync -f bench-{rep}",
                ]
                for kind, argv, source in (("cat", cat_argv, raw), ("put", put_argv, framed)):
                    elapsed = timed(argv, source)
                    speeds[kind].append(size / elapsed / 1e6)
                    print(f"{cipher} {kind} rep {rep}: {speeds[kind][-1]:.0f} MB/s", flush=True)
                for path in (plain_account.home / f"bench-{rep}",):
                    path.unlink()
                for path in (shell_account.home / "bench").iterdir():
                    path.unlink()
            put_median = statistics.median(speeds["put"])
            cat_median = statistics.median(speeds["cat"])
            print(
                f"{cipher}: put {put_median:.0f} MB/s, cat {cat_median:.0f} MB/s, "
                f"ratio {put_median / cat_median:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
