"""qbackup-extract's command line: the parser, and main(), the one place
that turns errors into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qbackup_extract.backup import Backup, open_backup
from qbackup_extract.errors import ExtractError, ExtractExit, usage_error
from qbackup_extract.extract import run_extract
from qbackup_extract.list import human_size, run_list
from qbackup_extract.progress import Progress
from qbackup_extract.scrypt_file import KdfLimits
from qbackup_extract.source import SshOptions, open_source, source_size
from qbackup_extract.verify import run_verify
from qbackup_protocol import __version__
from qbackup_protocol.text import clean_text

PROG = "qbackup-extract"
EXAMPLES = """\
SOURCE is FILE, - (standard input) or ssh://[user@]host[:port]/NAME: the
storage account's own `get NAME`, run by ssh with the carrier's key.

examples:
  qbackup-extract list ssh://backup@server.example/laptop/2026-12-06T10-15 \\
      --identity carrier_key --known-hosts known_hosts --passphrase-file pass
  qbackup-extract extract backup.bin /mnt/restore work --passphrase-file pass
  sudo mount -o loop,ro /mnt/restore/work/private.img /mnt/work"""
MAX_PASSPHRASE_FILE = 4096
ACTIONS = {
    "list": "The VMs in the backup: name, class, size (reads only the start of the backup).",
    "verify": "Authenticate and decompress every part, read every file; write nothing.",
    "extract": "Write DEST/VMNAME/private.img (root.img, firewall.xml, ... where the backup "
    "holds them), sparse and byte-exact; dom0's home to DEST/dom0-home/. Each VM is written "
    "under a hidden name and renamed once its last part is authenticated.",
}


def default_kdf_memory_mib() -> int:
    """Return half of this machine's memory in MiB (what `scrypt dec` allows by default)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2 // 2**20


def exit_table() -> str:
    """Return the exit codes and their meanings, one per line (help and man page)."""
    return "\n".join(f"  {status.value:3}  {status.meaning}" for status in ExtractExit)


def build_parser() -> argparse.ArgumentParser:
    """Return qbackup-extract's argument parser (the man page renders it)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Get VM images out of a Qubes OS backup (format version 4, Qubes 4.x) on any "
        "Linux machine, without Qubes: from a file, standard input, or the backup account over "
        "ssh. Every part is authenticated; a VM appears in DEST only once all its parts are.",
        epilog=f"{EXAMPLES}\n\nexit codes:\n{exit_table()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("source", metavar="SOURCE",
                        help="FILE, - or ssh://[user@]host[:port]/NAME")
    common.add_argument("--passphrase-file", metavar="F", required=True,
                        help="file holding the backup passphrase (one trailing newline ignored)")
    common.add_argument("--identity", metavar="KEY", help="ssh: the private key (ssh -i)")
    common.add_argument("--known-hosts", metavar="FILE",
                        help="ssh: the pinned known_hosts file (strict host key checking)")
    common.add_argument("--ssh-option", metavar="OPT", action="append", default=[],
                        help="ssh: one more `-o OPT` (repeatable)")
    common.add_argument("--kdf-memory", metavar="MIB", type=int, default=None,
                        help="most memory a part's scrypt parameters may ask for "
                        "(default: half of this machine's memory)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help=ACTIONS["list"],
                                 description=ACTIONS["list"])
    listing.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    actions.add_parser("verify", parents=[common], help=ACTIONS["verify"],
                       description=ACTIONS["verify"])
    extract = actions.add_parser("extract", parents=[common], help=ACTIONS["extract"],
                                 description=ACTIONS["extract"])
    extract.add_argument("dest", metavar="DEST", help="directory to write into (made if missing)")
    extract.add_argument("vms", metavar="VM", nargs="*", help="VMs to extract (default: all)")
    return parser


def read_passphrase(path: str, source: str) -> bytes:
    """Given the passphrase file's path, return the passphrase; raise ExtractError
    (usage) if it cannot be read, is empty or too long."""
    if path == "-" and source == "-":
        raise usage_error("--passphrase-file - and SOURCE - cannot both be standard input")
    try:
        with open(sys.stdin.fileno() if path == "-" else path, "rb", closefd=path != "-") as handle:
            data = handle.read(MAX_PASSPHRASE_FILE + 1)
    except OSError as error:
        raise usage_error(f"--passphrase-file: {error.strerror}") from None
    passphrase = data[:-1] if data.endswith(b"\n") else data
    if not passphrase or len(data) > MAX_PASSPHRASE_FILE:
        raise usage_error("--passphrase-file: empty or too long")
    return passphrase


def run(args: argparse.Namespace) -> int:
    """Given parsed ARGS, run the action; return the exit status; raise ExtractError on failure."""
    passphrase = read_passphrase(args.passphrase_file, args.source)
    limits = KdfLimits(max_memory=(args.kdf_memory or default_kdf_memory_mib()) * 2**20)
    ssh = SshOptions(identity=args.identity, known_hosts=args.known_hosts,
                     options=tuple(args.ssh_option))
    with open_source(args.source, ssh) as stream:
        progress = Progress(source_size(stream))
        progress.label = clean_text(args.source)[-40:]
        try:
            backup = open_backup(stream, passphrase, limits, clean_text(args.source, 100),
                                 progress.count)
            lines = run_action(args, backup)
        finally:
            progress.done()
    print("\n".join(lines))
    return ExtractExit.OK


def run_action(args: argparse.Namespace, backup: Backup) -> list[str]:
    """Given the arguments and the opened backup, run the action; return what it reports."""
    if args.action == "list":
        return run_list(backup, args.json)
    if args.action == "verify":
        counted = run_verify(backup)
        return [f"OK: {len(backup.vms)} VMs, {counted.files} files, "
                f"{human_size(counted.data_bytes)} of data authenticated"]
    return [f"extracted {name}" for name in run_extract(backup, Path(args.dest), args.vms)]


def main(argv: list[str] | None = None) -> int:
    """Given the command line (default: sys.argv), run it; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ExtractError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing incomplete was left in DEST", file=sys.stderr)
        return ExtractExit.DATA
    except BrokenPipeError:
        return ExtractExit.OK


def console_main() -> None:
    """The installed command: exit with main()'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
