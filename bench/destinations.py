"""make bench, two destinations: one carrier feeding two servers from one
pass, against the same carrier feeding one.

Two accounts on the benchmark's sshd (on this machine both servers share
the cores with the carrier). From a pre-made file, put --commit to ONE
destination and to TWO, in turn (A B B A ...): the carrier's CPU and wall
time, and their ratios (two / one). Then with two destinations: the
carrier's peak RSS at each of --dest-rss-gib from an unthrottled producer
(it must not grow with the backup: the buffer plus a constant), and from a
producer paced at --rate-mb, the time from its first byte to both backups
committed against the producer's own time for the same bytes.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.sampler import PeakRss
from testbed.carrier import destinations_config
from testbed.server import Account, BackupServer

LOG = logging.getLogger("bench")
GIB = 1024**3
MB = 1_000_000
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Run:
    """One carrier run: wall seconds, CPU seconds (user + system), peak RSS KiB."""

    seconds: float
    cpu: float
    rss_kib: int


def carrier_env(server: BackupServer, accounts: dict[str, Account], workdir: Path,
                label: str) -> dict[str, str]:
    """Given the server and the accounts as destinations (name -> account),
    return the environment of a carrier configured for them."""
    logins = {name: (server.endpoint, account.name) for name, account in accounts.items()}
    path = workdir / f"carrier-{label}.yaml"
    path.write_text(destinations_config(logins))
    return {**os.environ, "QBACKUP_CARRIER_CONFIG": str(path)}


def put(env: dict[str, str], stdin: int, name: str, accounts: list[Account],
        size: int, started: float | None = None) -> Run:
    """Run put --commit NAME from STDIN; check each account stored SIZE bytes
    (then remove them); return the run, timed from STARTED if given."""
    t0 = time.monotonic() if started is None else started
    child = subprocess.Popen([str(VENV_BIN / "qbackup-carrier"), "put", "--commit", name],
                             stdin=stdin, stdout=subprocess.DEVNULL, env=env)
    with PeakRss(child.pid) as peak:
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: two destinations: put {name} exited {status}")
    for account in accounts:
        stored = account.storage / name
        if stored.stat().st_size != size:
            raise SystemExit(f"bench: two destinations: {name} stored size differs")
        stored.unlink()
    return Run(seconds, usage.ru_utime + usage.ru_stime, peak.peak_kib)


def producer_argv(size: int, rate: float) -> list[str]:
    return [sys.executable, "-m", "bench.producer", "--bytes", str(size), "--rate", str(rate)]


def streamed(env: dict[str, str], size: int, rate: float, name: str,
             accounts: list[Account]) -> Run:
    """put --commit from a producer at RATE (0: unthrottled), timed from its first byte."""
    started = time.monotonic()
    producer = subprocess.Popen(producer_argv(size, rate), stdout=subprocess.PIPE)
    assert producer.stdout is not None  # noqa: S101
    try:
        return put(env, producer.stdout.fileno(), name, accounts, size, started)
    finally:
        producer.stdout.close()
        producer.wait()


def measure(server: BackupServer, workdir: Path, source: Path, rounds: int,
            rss_gib: list[float], rate: float) -> str:
    """Run the section (SOURCE: the pre-made file); return its Markdown report."""
    home = server.add_account()
    offsite = server.add_account()
    one = carrier_env(server, {"home": home}, workdir, "one")
    two = carrier_env(server, {"home": home, "offsite": offsite}, workdir, "two")
    size = source.stat().st_size
    runs: dict[str, list[Run]] = {"one": [], "two": []}
    for round_number in range(rounds):
        order = ["one", "two"] if round_number % 2 == 0 else ["two", "one"]
        for label in order:
            env = one if label == "one" else two
            accounts = [home] if label == "one" else [home, offsite]
            with open(source, "rb") as data:
                runs[label].append(put(env, data.fileno(), f"dest-{label}-{round_number}",
                                       accounts, size))
            LOG.info("  %s destination(s): %.1f s, %.1f CPU-s", label, runs[label][-1].seconds,
                     runs[label][-1].cpu)
    cpu = {label: statistics.median(run.cpu for run in found) for label, found in runs.items()}
    wall = {label: statistics.median(run.seconds for run in found)
            for label, found in runs.items()}
    rss = {}
    for gib in rss_gib:
        LOG.info("  two destinations, %g GiB from an unthrottled producer", gib)
        rss[gib] = streamed(two, int(gib * GIB), 0, f"dest-rss-{gib:g}", [home, offsite])
    LOG.info("  two destinations from a producer at %.0f MB/s", rate / MB)
    paced = streamed(two, size, rate, "dest-paced", [home, offsite])
    alone = size / rate  # the paced producer's own time for these bytes
    lines = [
        f"Two destinations (two accounts on this sshd) against one, put --commit from a "
        f"{size / GIB:g} GiB file, medians of {rounds} (order A B B A):",
        "",
        "| destinations | seconds | carrier CPU s | carrier peak RSS |",
        "|---|---|---|---|",
    ]
    for label, found in runs.items():
        lines.append(f"| {label} | {wall[label]:.1f} | {cpu[label]:.1f} "
                     f"| {max(run.rss_kib for run in found) / 1024:.0f} MiB |")
    lines += [
        "",
        f"- carrier CPU two / one: {cpu['two'] / cpu['one']:.2f} (wanted <= 1.6); "
        f"time two / one: {wall['two'] / wall['one']:.2f}",
        "- carrier peak RSS with two destinations: " + ", ".join(
            f"{run.rss_kib / 1024:.0f} MiB at {gib:g} GiB" for gib, run in rss.items()),
        f"- producer paced at {rate / MB:.0f} MB/s: both committed {paced.seconds:.1f} s after "
        f"its first byte, its own time {alone:.1f} s: {paced.seconds / alone:.2f}x "
        "(wanted <= 1.05)",
    ]
    return "\n".join(lines)
