"""make bench: qbackup's streaming path against plain OpenSSH, in ONE run.

Paths measured (all into a real sshd on 127.0.0.1, same cipher):
  (1) openssh    OpenSSH `ssh host 'cat > file'` from a pre-made file: the floor.
  (2) qbackup    qbackup-carrier put -> sshd -> qbackup-shell (hash, fsync) -> disk.
  (3) staged     the original tool's way: the whole backup written to a local
                 file first (fsynced), then sent with `ssh host 'cat > file'`.
(2) and (3) run twice: from a pre-made file, and from a producer throttled to a
Qubes-like rate (--rate), timing first byte produced -> backup committed.
Then qbackup once more with --flat-gib of data to show memory stays flat.

Usage: python -m bench.run [--gib 2] [--rate-mb 150] [--flat-gib 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.sampler import ProcessSampler
from testbed.carrier import write_carrier_config
from testbed.server import Account, BackupServer

CIPHER = "aes128-gcm@openssh.com"
MB = 1_000_000
GIB = 1024**3
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOG = logging.getLogger("bench")


@dataclass
class Result:
    label: str
    size: int
    seconds: float
    sender_rss_kib: int | None = None
    sender_cpu: float | None = None
    server_rss_kib: int | None = None
    server_cpu: float | None = None
    staged_bytes: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / MB


def run_child(
    argv: list[str], stdin: int | None, env: dict[str, str] | None = None
) -> tuple[int, float, int, float]:
    """Run ARGV with STDIN; return (exit status, wall seconds, peak RSS KiB, CPU seconds)."""
    started = time.monotonic()
    child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    return child.returncode, elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def openssh_argv(server: BackupServer, account: Account, command: str) -> list[str]:
    return server.ssh_command(account, "-c", CIPHER, "-o", "Compression=no") + [command]


def bench_openssh(
    server: BackupServer, plain: Account, source: Path, size: int, label: str
) -> Result:
    sampler = ProcessSampler(plain.uid, "cat")
    with open(source, "rb") as data, sampler:
        status, seconds, rss, cpu = run_child(
            openssh_argv(server, plain, "cat > bench.out"), data.fileno()
        )
    check(status == 0, f"{label}: ssh exited {status}")
    (plain.home / "bench.out").unlink()
    return Result(label, size, seconds, rss, cpu, sampler.peak_rss_kib, sampler.cpu_seconds)


def bench_qbackup(
    server: BackupServer,
    account: Account,
    env: dict[str, str],
    stdin: int,
    size: int,
    label: str,
    name: str,
    producer: subprocess.Popen[bytes] | None = None,
    started: float | None = None,
) -> Result:
    sampler = ProcessSampler(account.uid, "qbackup-shell")
    argv = [str(VENV_BIN / "qbackup-carrier"), "put", "--commit", name]
    with sampler:
        t0 = started if started is not None else time.monotonic()
        status, _, rss, cpu = run_child(argv, stdin, env)
        seconds = time.monotonic() - t0
    if producer is not None:
        producer.wait()
    check(status == 0, f"{label}: qbackup-carrier exited {status}")
    stored = account.storage / name
    check(stored.stat().st_size == size, f"{label}: stored size differs")
    return Result(label, size, seconds, rss, cpu, sampler.peak_rss_kib, sampler.cpu_seconds)


def bench_qbackup_streamed(
    server: BackupServer,
    account: Account,
    env: dict[str, str],
    size: int,
    rate: float,
    label: str,
    name: str,
) -> Result:
    """qbackup fed by a producer at RATE (0: unthrottled), timed from the
    producer's first byte to the committed backup."""
    started = time.monotonic()
    producer = subprocess.Popen(producer_argv(size, rate), stdout=subprocess.PIPE)
    assert producer.stdout is not None
    try:
        return bench_qbackup(
            server,
            account,
            env,
            producer.stdout.fileno(),
            size,
            label,
            name,
            producer=producer,
            started=started,
        )
    finally:
        producer.stdout.close()


def bench_staged(
    server: BackupServer,
    plain: Account,
    staging: Path,
    size: int,
    label: str,
    stage_argv: list[str],
) -> Result:
    """The original tool: STAGE_ARGV fills STAGING (fsynced), then OpenSSH sends it."""
    started = time.monotonic()
    subprocess.run(stage_argv, check=True)
    staged_bytes = staging.stat().st_blocks * 512
    sampler = ProcessSampler(plain.uid, "cat")
    with open(staging, "rb") as data, sampler:
        status, _, rss, cpu = run_child(
            openssh_argv(server, plain, "cat > bench.out"), data.fileno()
        )
    seconds = time.monotonic() - started
    check(status == 0, f"{label}: ssh exited {status}")
    staging.unlink()
    (plain.home / "bench.out").unlink()
    return Result(
        label, size, seconds, rss, cpu, sampler.peak_rss_kib, sampler.cpu_seconds, staged_bytes
    )


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"bench: {message}")


def producer_argv(size: int, rate: float) -> list[str]:
    return [sys.executable, "-m", "bench.producer", "--bytes", str(size), "--rate", str(rate)]


def versions() -> str:
    import asyncssh

    openssh = subprocess.run(
        ["ssh", "-V"], capture_output=True, text=True, check=False
    ).stderr.strip()
    python = sys.version.split()[0]
    return f"asyncssh {asyncssh.__version__}, {openssh}, Python {python}, cipher {CIPHER}"


def _rss(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:.0f} MiB"


def _cpu_per_gib(seconds: float | None, size: int) -> str:
    return "-" if seconds is None else f"{seconds / (size / GIB):.2f}"


TABLE_HEADER = (
    "| path | MB/s | x OpenSSH | sender peak RSS | sender CPU s/GiB "
    "| shell/cat peak RSS | shell/cat CPU s/GiB | staged on sender |\n"
    "|---|---|---|---|---|---|---|---|"
)


def format_table(results: list[Result], baseline: Result) -> str:
    """Given the results and the OpenSSH baseline, return a Markdown table."""
    lines = [TABLE_HEADER]
    for r in results:
        lines.append(
            f"| {r.label} | {r.mb_per_s:.0f} | {r.mb_per_s / baseline.mb_per_s:.2f} "
            f"| {_rss(r.sender_rss_kib)} | {_cpu_per_gib(r.sender_cpu, r.size)} "
            f"| {_rss(r.server_rss_kib)} | {_cpu_per_gib(r.server_cpu, r.size)} "
            f"| {r.staged_bytes / GIB:.2f} GiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=2.0, help="data per measured path (default 2)")
    parser.add_argument(
        "--rate-mb", type=float, default=150.0, help="throttled producer rate, MB/s (default 150)"
    )
    parser.add_argument(
        "--flat-gib", type=float, default=8.0, help="one extra qbackup run of this size (0: skip)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")

    size = int(args.gib * GIB)
    rate = args.rate_mb * MB
    with (
        BackupServer.create() as server,
        tempfile.TemporaryDirectory(prefix="qbackup-bench-", dir="/var/tmp") as work,
    ):
        workdir = Path(work)
        server.write_shell_config("[storage]\nreserve = 1G\n")
        account = server.add_account()
        plain = server.add_account(login_shell=Path("/bin/sh"))
        server.start()
        env = {
            **os.environ,
            "QBACKUP_CARRIER_CONFIG": str(write_carrier_config(server, account, workdir)),
        }
        source = workdir / "source.bin"
        LOG.info("making %.1f GiB of incompressible data", args.gib)
        subprocess.run([*producer_argv(size, 0), "--output", str(source)], check=True)

        results: list[Result] = []
        LOG.info("(1) OpenSSH into cat")
        baseline = bench_openssh(server, plain, source, size, "(1) OpenSSH `cat > file`")
        results.append(baseline)
        LOG.info("(2) qbackup from a file")
        with open(source, "rb") as data:
            results.append(
                bench_qbackup(
                    server,
                    account,
                    env,
                    data.fileno(),
                    size,
                    "(2) qbackup, from file",
                    "bench-file",
                )
            )
        LOG.info("(3) staged from a file")
        staging = workdir / "staged.bin"
        copy_argv = ["dd", f"if={source}", f"of={staging}", "bs=1M", "conv=fsync", "status=none"]
        results.append(
            bench_staged(server, plain, staging, size, "(3) staged, from file", copy_argv)
        )
        LOG.info("(2) qbackup from a producer at %.0f MB/s", args.rate_mb)
        label = f"(2) qbackup, producer {args.rate_mb:.0f} MB/s"
        results.append(
            bench_qbackup_streamed(server, account, env, size, rate, label, "bench-rate")
        )
        LOG.info("(3) staged from a producer at %.0f MB/s", args.rate_mb)
        results.append(
            bench_staged(
                server,
                plain,
                staging,
                size,
                f"(3) staged, producer {args.rate_mb:.0f} MB/s",
                [*producer_argv(size, rate), "--output", str(staging)],
            )
        )
        source.unlink()
        if args.flat_gib > 0:
            flat = int(args.flat_gib * GIB)
            LOG.info(
                "(2) qbackup, %.0f GiB from an unthrottled producer (memory stays flat?)",
                args.flat_gib,
            )
            label = f"(2) qbackup, {args.flat_gib:g} GiB producer"
            results.append(
                bench_qbackup_streamed(server, account, env, flat, 0, label, "bench-flat")
            )

    print()
    print(f"{args.gib:g} GiB per path; {versions()}; {os.cpu_count()} cores")
    print(format_table(results, baseline))
    by_label = {r.label: r for r in results}
    q_file, s_file = by_label["(2) qbackup, from file"], by_label["(3) staged, from file"]
    print()
    print(f"qbackup / OpenSSH (from file): {q_file.mb_per_s / baseline.mb_per_s:.2f}")
    print(f"qbackup / staged  (from file): {q_file.mb_per_s / s_file.mb_per_s:.2f}")
    q_rate = results[3]
    s_rate = results[4]
    print(
        f"throttled producer: qbackup committed {s_rate.seconds - q_rate.seconds:.1f} s sooner "
        f"({q_rate.seconds:.1f} s vs {s_rate.seconds:.1f} s); staging used "
        f"{s_rate.staged_bytes / GIB:.2f} GiB on the sender, qbackup none"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
