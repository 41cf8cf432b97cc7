"""qbackup-extract against the floor: a ~1 GiB Qubes backup (one AppVM with
a 1 GiB private.img of incompressible data, gzip, 100 MiB chunks, scrypt
N=2**14 r=8 p=1 as `scrypt enc -t 0.1` picks here) built once with the real
tools (testbed/qubes_archive.py), stored through the carrier, then extracted
  (a) `ssh host 'cat FILE' | qbackup-extract extract - DEST` (a plain account), and
  (b) `qbackup-extract extract ssh://account@host/NAME DEST` (the shell's `get`),
same cipher, in turn A B B A; wall time and qbackup-extract's peak RSS.

Usage: python -m bench.extract_speed [--gib 1] (a section of `make bench`, or alone)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.sampler import PeakRss
from testbed.qubes_archive import ArchiveSpec, ScryptCost, VmSpec, build_archive
from testbed.server import Account, BackupServer

CIPHER = "aes128-gcm@openssh.com"
GIB = 1024**3
MIB = 1024**2
PASSPHRASE = "bench passphrase"  # noqa: S105  (a benchmark's: it protects nothing)
NAME = "bench/extract"
REPO = Path(__file__).resolve().parents[1]
EXTRACT = [sys.executable, "-m", "qbackup_extract.cli"]
LOG = logging.getLogger("bench")


@dataclass
class Run:
    label: str
    seconds: float
    peak_rss_kib: int


def timed(argv: list[str], stdin: int | None) -> Run:
    """Run ARGV (qbackup-extract) with STDIN; return its wall time and peak RSS."""
    started = time.monotonic()
    child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, cwd=REPO)
    with PeakRss(child.pid) as peak:
        _, status, _ = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {argv[:4]} failed")
    return Run(argv[3], seconds, peak.peak_kib or 0)


def build(workdir: Path, gib: float) -> Path:
    image = workdir / "private.img"
    subprocess.run([sys.executable, "-m", "bench.producer", "--bytes", str(int(gib * GIB)),
                    "--output", str(image)], check=True, cwd=REPO)
    spec = ArchiveSpec(passphrase=PASSPHRASE, cost=ScryptCost(log_n=14),
                       vms=[VmSpec("work", "AppVM", 5, {"private.img": image})])
    archive = workdir / "backup.bin"
    build_archive(spec, workdir / "stage", archive)
    image.unlink()
    return archive


def measure(server: BackupServer, account: Account, plain: Account, carrier_env: dict[str, str],
            workdir: Path, gib: float) -> list[Run]:
    """Build, store and extract a backup of about GIB; return the runs (A B B A)."""
    LOG.info("extract: building a %.2f GiB Qubes backup with tar, gzip and scrypt", gib)
    archive = build(workdir, gib)
    with open(archive, "rb") as data:
        subprocess.run([sys.executable, "-m", "carrier_vm.cli", "put", "--commit", NAME],
                       stdin=data, env=carrier_env, check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    shutil.copyfile(archive, plain.home / "backup.bin")
    os.chown(plain.home / "backup.bin", plain.uid, plain.gid)
    archive.unlink()
    passphrase = workdir / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    endpoint = server.endpoint
    ssh = ("--identity", str(endpoint.identity), "--known-hosts", str(endpoint.known_hosts),
           "--ssh-option", f"Ciphers={CIPHER}", "--ssh-option", "Compression=no",
           "--ssh-option", "KexAlgorithms=curve25519-sha256")
    url = f"ssh://{account.name}@127.0.0.1:{server.port}/{NAME}"
    runs = []
    for label in ("cat", "ssh", "ssh", "cat"):
        dest = workdir / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        if label == "cat":
            cat = subprocess.Popen(
                server.ssh_command(plain, "-c", CIPHER, "-o", "Compression=no")
                + ["cat backup.bin"], stdout=subprocess.PIPE)
            run = timed([*EXTRACT, "extract", "-", str(dest), "--passphrase-file",
                         str(passphrase)], cat.stdout.fileno() if cat.stdout else None)
            cat.wait()
        else:
            run = timed([*EXTRACT, "extract", url, str(dest), "--passphrase-file",
                         str(passphrase), *ssh], None)
        run.label = label
        LOG.info("  %s: %.1f s, peak RSS %d MiB", label, run.seconds, run.peak_rss_kib // 1024)
        runs.append(run)
    shutil.rmtree(workdir / "dest", ignore_errors=True)
    return runs


def report(runs: list[Run], gib: float) -> str:
    cat = statistics.median(run.seconds for run in runs if run.label == "cat")
    ssh = statistics.median(run.seconds for run in runs if run.label == "ssh")
    peak = max(run.peak_rss_kib for run in runs)
    return (
        f"qbackup-extract, a {gib:g} GiB private.img (gzip, 100 MiB chunks, scrypt N=2**14), "
        f"medians of 2 (A B B A):\n\n"
        f"| source | seconds | MiB/s of image |\n|---|---|---|\n"
        f"| `ssh host 'cat FILE' \\| qbackup-extract extract - DEST` | {cat:.1f} "
        f"| {gib * 1024 / cat:.0f} |\n"
        f"| `qbackup-extract extract ssh://... DEST` | {ssh:.1f} | {gib * 1024 / ssh:.0f} |\n\n"
        f"- ssh:// speed / cat pipeline speed: {cat / ssh:.2f} (target >= 0.8)\n"
        f"- qbackup-extract peak RSS: {peak / 1024:.0f} MiB (target < 150 MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of private.img (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")
    from testbed.carrier import write_carrier_config

    with (
        BackupServer.create() as server,
        tempfile.TemporaryDirectory(prefix="qbackup-bench-", dir="/var/tmp") as work,
    ):
        workdir = Path(work)
        server.write_shell_config("[storage]\nreserve = 1G\n")
        account = server.add_account()
        plain = server.add_account(login_shell=Path("/bin/sh"))
        server.start()
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "QBACKUP_CARRIER_CONFIG": str(write_carrier_config(server, account, workdir))}
        runs = measure(server, account, plain, env, workdir, args.gib)
    print()
    print(report(runs, args.gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
