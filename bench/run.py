"""make bench: qbackup's streaming path against plain OpenSSH, in ONE run.

Everything into a real sshd on 127.0.0.1, same cipher, one invocation:
  (1) openssh    OpenSSH `ssh host 'cat > file'` from a pre-made file: the floor.
  (2) qbackup    qbackup-carrier put --commit -> sshd -> qbackup-shell (hash,
                 acks, fsync) -> disk.
  (3) staged     the original tool's way: the whole backup written to a local
                 file first (fsynced), then sent with `ssh host 'cat > file'`.
(2) and (3) run twice: from a pre-made file, and from a producer throttled to a
Qubes-like rate (--rate-mb), timing first byte produced -> backup committed.
Then, in the same run:
  acks       qbackup with the shell's default sync_interval (ack every 16M)
             against sync_interval = 1T (no ack during the run; the carrier's
             resume_buffer raised to its 1 GiB maximum so it never waits for
             one; 16M is measured with that buffer too), in turn forwards and
             backwards (A B C C B A), at min(--gib, 1000 MiB);
  sender CPU OpenSSH client, a bare asyncssh client and the carrier (into a
             frame-parsing sink) at the same size (bench/carrier_overhead.py);
  shell loop the shell's one-thread receive loop against the old writer
             thread (bench/shell_loop.py);
  memory     qbackup once more with --flat-gib of data: carrier and shell
             peak RSS must not grow with the backup;
  two destinations  one carrier feeding two servers against one
             (bench/destinations.py); --only-destinations runs this alone.

Usage: python -m bench.run [--gib 2] [--rate-mb 150] [--flat-gib 8]
                           [--rounds 3] [--ack-reps 2] [--loop-reps 3]
                           [--dest-rounds 2] [--dest-rss-gib 2,8] [--only-destinations]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import destinations, shell_loop
from bench.carrier_overhead import add_sink_account, bare_argv, carrier_argv, run_sender
from bench.sampler import PeakRss, ProcessSampler
from testbed.carrier import carrier_config, write_carrier_config
from testbed.server import Account, BackupServer

CIPHER = "aes128-gcm@openssh.com"
MB = 1_000_000
MIB = 1024**2
GIB = 1024**3
SHELL_CONFIG = "[storage]\nreserve = 1G\n"
# The acks comparison: at most this much data, so that with no ack at all the
# carrier's resume_buffer (at most 1 GiB) never fills and waits for one.
ACKS_MAX = 1000 * MIB
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
    with PeakRss(child.pid) as peak:
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    return child.returncode, elapsed, peak.peak_kib, usage.ru_utime + usage.ru_stime


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
    stored.unlink()  # keep the disk free for the next run
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
    # Its version from the package metadata: importing asyncssh here would
    # print cryptography's deprecation warnings (carrier_vm/ssh.py filters them).
    asyncssh = importlib.metadata.version("asyncssh")
    openssh = subprocess.run(
        ["ssh", "-V"], capture_output=True, text=True, check=False
    ).stderr.strip()
    python = sys.version.split()[0]
    return f"asyncssh {asyncssh}, {openssh}, Python {python}, cipher {CIPHER}"


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


ACK_VARIANTS = {
    # label: (shell sync_interval or None for its default, carrier overrides)
    "16M (default), carrier resume_buffer 32 MiB (default)": (None, {}),
    "16M (default), carrier resume_buffer 1 GiB": (None, {"resume_buffer": GIB}),
    "1T: no ack during the run, carrier resume_buffer 1 GiB": ("1T", {"resume_buffer": GIB}),
}


def bench_acks(
    server: BackupServer,
    account: Account,
    workdir: Path,
    data: Path,
    reps: int,
) -> dict[str, list[Result]]:
    """qbackup from DATA with each of ACK_VARIANTS, in turn forwards then
    backwards (A B C C B A ...), REPS times each; return {variant: results}."""
    size = data.stat().st_size
    envs = {}
    for number, (label, (_, overrides)) in enumerate(ACK_VARIANTS.items()):
        path = workdir / f"carrier-acks-{number}.yaml"
        path.write_text(carrier_config(server.endpoint, account.name, **overrides))
        envs[label] = {**os.environ, "QBACKUP_CARRIER_CONFIG": str(path)}
    results: dict[str, list[Result]] = {label: [] for label in ACK_VARIANTS}
    try:
        for rep in range(reps):
            order = list(ACK_VARIANTS.items())
            for number, (label, (interval, _)) in enumerate(order[:: -1 if rep % 2 else 1]):
                extra = f"sync_interval = {interval}\n" if interval else ""
                server.write_shell_config(SHELL_CONFIG + extra)
                with open(data, "rb") as stdin:
                    results[label].append(
                        bench_qbackup(server, account, envs[label], stdin.fileno(), size,
                                      label, f"bench-acks-{rep}-{number}")
                    )
                LOG.info("  %s: %.0f MB/s", label, results[label][-1].mb_per_s)
    finally:
        server.write_shell_config(SHELL_CONFIG)
    return results


@dataclass
class Sender:
    label: str
    cpu_per_gib: float
    mib_per_s: float
    peak_rss_kib: int


def bench_senders(
    server: BackupServer, cat: Account, workdir: Path, data: Path, rounds: int
) -> list[Sender]:
    """Sender CPU per GiB of OpenSSH's client, a bare asyncssh client (both
    into `cat > /dev/null`) and the carrier (into the frame-parsing sink), DATA
    fed as qrexec feeds a service (a socketpair, 64 KiB writes), ROUNDS
    interleaved rounds; medians."""
    sink = add_sink_account(server)
    config = workdir / "carrier-sink.yaml"
    config.write_text(carrier_config(server.endpoint, sink.name))
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(server.base)}
    senders = {
        "OpenSSH client": (openssh_argv(server, cat, "cat > /dev/null"), dict(os.environ)),
        "bare asyncssh client": (bare_argv(server, cat), base_env),
        "qbackup-carrier": (
            carrier_argv(),
            {**base_env, "PYTHONPATH": str(REPO), "QBACKUP_CARRIER_CONFIG": str(config)},
        ),
    }
    size = data.stat().st_size
    runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label in senders}
    for _ in range(rounds):
        for label, (argv, env) in senders.items():
            runs[label].append(run_sender(argv, data, env, REPO))
            cpu, wall, _ = runs[label][-1]
            LOG.info("  %s: %.2f CPU-s/GiB", label, cpu / size * GIB)
    return [
        Sender(
            label,
            statistics.median(c for c, _, _ in values) / size * GIB,
            statistics.median(size / w for _, w, _ in values) / MIB,
            max(r for _, _, r in values),
        )
        for label, values in runs.items()
    ]


def median_rate(results: list[Result]) -> float:
    return statistics.median(r.mb_per_s for r in results)


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
    parser.add_argument("--rounds", type=int, default=3, help="sender CPU rounds (default 3)")
    parser.add_argument("--ack-reps", type=int, default=2, help="runs per acks variant (default 2)")
    parser.add_argument("--loop-reps", type=int, default=3, help="shell loop reps (default 3)")
    parser.add_argument("--dest-rounds", type=int, default=2,
                        help="runs per destination count (default 2)")
    parser.add_argument("--dest-rss-gib", default="2,8",
                        help="sizes for the two-destination peak RSS (default 2,8)")
    parser.add_argument("--only-destinations", action="store_true",
                        help="run the two-destination section only")
    args = parser.parse_args(argv)
    if args.only_destinations:
        return only_destinations(args)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")

    size = int(args.gib * GIB)
    rate = args.rate_mb * MB
    small = min(size, ACKS_MAX)
    began = time.monotonic()
    with (
        BackupServer.create() as server,
        tempfile.TemporaryDirectory(prefix="qbackup-bench-", dir="/var/tmp") as work,
    ):
        workdir = Path(work)
        server.write_shell_config(SHELL_CONFIG)
        account = server.add_account()
        plain = server.add_account(login_shell=Path("/bin/sh"))
        server.start()
        env = {
            **os.environ,
            "QBACKUP_CARRIER_CONFIG": str(write_carrier_config(server, account, workdir)),
        }
        source = workdir / "source.bin"
        LOG.info("making %.2f GiB of incompressible data", args.gib)
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
        head = workdir / "head.bin"
        with open(source, "rb") as whole, open(head, "wb") as part:
            for _ in range(0, small, MIB):  # 1 MiB at a time: our RSS would become children's
                part.write(whole.read(min(MIB, small - part.tell())))
        fan_out = destinations_section(server, workdir, source, args)
        source.unlink()
        LOG.info("acks: every 16M vs none, %d MiB, A B C C B A", small // MIB)
        acks = bench_acks(server, account, workdir, head, args.ack_reps)
        LOG.info("sender CPU, %d MiB, %d rounds", small // MIB, args.rounds)
        senders = bench_senders(server, plain, workdir, head, args.rounds)
        head.unlink()
        flat: Result | None = None
        if args.flat_gib > 0:
            LOG.info(
                "(2) qbackup, %.0f GiB from an unthrottled producer (memory stays flat?)",
                args.flat_gib,
            )
            label = f"(2) qbackup, {args.flat_gib:g} GiB producer"
            flat = bench_qbackup_streamed(
                server, account, env, int(args.flat_gib * GIB), 0, label, "bench-flat"
            )
            results.append(flat)
    loop_mib = small // MIB
    LOG.info("shell loop, %d MiB, %d reps", loop_mib, args.loop_reps)
    loop = shell_loop.measure(loop_mib, args.loop_reps, "/var/tmp")
    minutes = (time.monotonic() - began) / 60

    print()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"`make bench` ({minutes:.1f} min), {when}; "
          f"{args.gib:g} GiB per path; {versions()}; {os.cpu_count()} cores")
    print()
    print(format_table(results, baseline))
    by_label = {r.label: r for r in results}
    q_file = by_label["(2) qbackup, from file"]
    s_file = by_label["(3) staged, from file"]
    print()
    print(f"- qbackup / OpenSSH (from file, same run): {q_file.mb_per_s / baseline.mb_per_s:.2f}")
    print(f"- qbackup / staged (from file): {q_file.mb_per_s / s_file.mb_per_s:.2f}")
    q_rate = results[3]
    s_rate = results[4]
    print(
        f"- throttled producer: qbackup committed {s_rate.seconds - q_rate.seconds:.1f} s sooner "
        f"({q_rate.seconds:.1f} s vs {s_rate.seconds:.1f} s); staging used "
        f"{s_rate.staged_bytes / GIB:.2f} GiB on the sender, qbackup none"
    )
    if flat is not None:
        print(
            f"- memory: carrier peak RSS {_rss(q_file.sender_rss_kib)} at {args.gib:g} GiB, "
            f"{_rss(flat.sender_rss_kib)} at {args.flat_gib:g} GiB; shell peak RSS "
            f"{_rss(q_file.server_rss_kib)} at {args.gib:g} GiB, "
            f"{_rss(flat.server_rss_kib)} at {args.flat_gib:g} GiB"
        )
    print()
    print(f"Resumption acks, qbackup from a file, {small / MIB:.0f} MiB, medians of "
          f"{args.ack_reps} (order A B C C B A):")
    print()
    print("| shell sync_interval, carrier | MB/s | carrier peak RSS | shell CPU s/GiB |")
    print("|---|---|---|---|")
    for name, runs in acks.items():
        peak = max(r.sender_rss_kib or 0 for r in runs)
        print(f"| {name} | {median_rate(runs):.0f} | {_rss(peak)} "
              f"| {statistics.median(r.server_cpu or 0 for r in runs) / (small / GIB):.2f} |")
    default, same_buffer, without = (median_rate(runs) for runs in acks.values())
    print()
    print(f"- with acks / without: {default / without:.3f} with the default carrier, "
          f"{same_buffer / without:.3f} with the same carrier buffer (target >= 0.95)")
    print()
    print(f"Sender CPU, {small / MIB:.0f} MiB fed as qrexec feeds it (socketpair, 64 KiB "
          f"writes), medians of {args.rounds} rounds "
          "(OpenSSH and bare into `cat > /dev/null`, the carrier into a frame-parsing sink):")
    print()
    print("| sender | CPU s/GiB | x OpenSSH | MiB/s | peak RSS |")
    print("|---|---|---|---|---|")
    by_sender = {s.label: s for s in senders}
    openssh = by_sender["OpenSSH client"]
    for sender in senders:
        print(f"| {sender.label} | {sender.cpu_per_gib:.2f} "
              f"| {sender.cpu_per_gib / openssh.cpu_per_gib:.2f} | {sender.mib_per_s:.0f} "
              f"| {_rss(sender.peak_rss_kib)} |")
    overhead = (by_sender["qbackup-carrier"].cpu_per_gib
                - by_sender["bare asyncssh client"].cpu_per_gib)
    print()
    print(f"- carrier overhead above the bare asyncssh client: {overhead:.2f} CPU-s/GiB "
          "(target <= 0.70)")
    print()
    print(f"Shell receive loop, no sshd, {loop_mib} MiB through a 1 MiB pipe into a file, "
          f"medians of {args.loop_reps}:")
    print()
    print("| variant | MB/s | CPU s/GiB |")
    print("|---|---|---|")
    for name, (loop_rate, loop_cpu) in loop.items():
        print(f"| {name} | {loop_rate:.0f} | {loop_cpu:.2f} |")
    single = loop["single thread, no acks"][0]
    threaded = loop["writer thread (before)"][0]
    print()
    print(f"- writer thread / one thread: {threaded / single:.2f} "
          "(the thread would be kept only at >= 1.10)")
    print()
    print(fan_out)
    return 0

def destinations_section(server: BackupServer, workdir: Path, source: Path,
                         args: argparse.Namespace) -> str:
    """Run the two-destination section from SOURCE; return its report."""
    LOG.info("two destinations against one, %d rounds", args.dest_rounds)
    sizes = [float(gib) for gib in args.dest_rss_gib.split(",") if gib]
    return destinations.measure(server, workdir, source, args.dest_rounds, sizes,
                                args.rate_mb * MB)


def only_destinations(args: argparse.Namespace) -> int:
    """Run the two-destination section alone (--only-destinations) and print it."""
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    began = time.monotonic()
    with (
        BackupServer.create() as server,
        tempfile.TemporaryDirectory(prefix="qbackup-bench-", dir="/var/tmp") as work,
    ):
        workdir = Path(work)
        server.write_shell_config(SHELL_CONFIG)
        server.start()
        source = workdir / "source.bin"
        subprocess.run([*producer_argv(int(args.gib * GIB), 0), "--output", str(source)],
                       check=True)
        report = destinations_section(server, workdir, source, args)
    print()
    print(f"`python -m bench.run --only-destinations` ({(time.monotonic() - began) / 60:.1f} "
          f"min), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {versions()}; "
          f"{os.cpu_count()} cores")
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
