"""qvm-backup-restore, simulated: argument parsing, the qubes.Restore runs, conflicts.

Follows qubesadmin release4.2 (tools/qvm_backup_restore.py, backup/restore.py)
and the carrier VM's qubes.Restore (qubes-core-agent-linux, release4.2).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from testbed.qubes_sim import stream
from testbed.qubes_sim.errors import SimulationError

# What qubes.Restore does: location line, paths line, eval the command, run it
# in the background into a fifo read by tar2qfile (here: cat), and exit with
# the READER's status: the command's own status is lost.
QUBES_RESTORE_SH = r"""
read -r args || exit 1
read -r paths
if [ -f "$args" ]; then
    exec cat "$args"
fi
COMMAND=$(echo "$args" | cut -d ' ' -f 1)
if command -v "$COMMAND" >/dev/null; then
    tmpdir=$(mktemp -d)
    mkfifo "$tmpdir/backup-data"
    eval "set -- $args"
    "$@" > "$tmpdir/backup-data" < /dev/null &
    cat "$tmpdir/backup-data"
    retcode=$?
    wait $!
    rm "$tmpdir/backup-data"
    rmdir "$tmpdir"
    exit "$retcode"
else
    echo "Invalid file or command: $args" >&2
    exit 2
fi
"""
# backup/restore.py, release4.2: KNOWN_COMPRESSION_FILTERS and the header value rule;
# release4.3 (from v4.3.13) adds OPTIONAL_COMPRESSION_FILTERS when installed.
KNOWN_COMPRESSION_FILTERS = ("gzip", "bzip2", "xz")
OPTIONAL_COMPRESSION_FILTERS = ("lzma", "pbzip2", "pigz", "zstd", "zstdmt")
HEADER_VALUE = re.compile(r"^[A-Za-z0-9-]*$")
HEADER_LIMIT = 1024 * 1024


class Conflict(Exception):
    """A VM to restore exists and no conflict option was given."""


class RestoreRefused(Exception):
    """qvm-backup-restore refuses the backup (its QubesException)."""


def header_filter(header: Any, forced: str | None, release: str = "4.2",
                  installed: frozenset[str] = frozenset()) -> str:
    """Given the parsed header, -Z's value (or None), the Qubes release and
    the programs dom0 has, return the filter restore uses; raise
    RestoreRefused as BackupHeader.load does: a forced value skips the check,
    otherwise 4.2 takes only gzip, bzip2 and xz, 4.3 also the optional
    filters that are installed."""
    if forced is not None:
        return forced
    value = header.compression_filter
    if not HEADER_VALUE.match(value):
        raise RestoreRefused("Invalid backup header (value)")
    if release == "4.3" and value in OPTIONAL_COMPRESSION_FILTERS and value in installed:
        return value
    if value not in KNOWN_COMPRESSION_FILTERS:
        raise RestoreRefused(f"Unusual compression filter '{value}' found. Use "
                             f"--compression-filter={value} to use it anyway.")
    return value


def check_decompression(header: Any, filter_used: str, installed: frozenset[str]) -> None:
    """Given the header, the filter restore runs and the programs dom0 has,
    raise RestoreRefused if decompressing would fail (wrong or missing program)."""
    if not header.compressed:
        return
    if filter_used not in installed:
        raise RestoreRefused(f"failed to run the compression filter {filter_used}")
    if filter_used != header.compression_filter:
        raise RestoreRefused(f"{filter_used} cannot decompress the data (made with"
                             f" {header.compression_filter})")


def run_location(env: dict[str, str], location: str, header_only: bool) -> tuple[bytes, int, bytes]:
    """Given the carrier env and the location command, run it like qubes.Restore;
    return (stdout, status, stderr). For the header pass, stop reading (and kill
    the command) as soon as the header is complete, as restore does."""
    process = subprocess.Popen(  # noqa: S603
        ["/bin/sh", "-c", QUBES_RESTORE_SH], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    assert process.stdin is not None and process.stdout is not None
    paths = b"backup-header\n" if header_only else b"\n"
    process.stdin.write(location.encode() + b"\n" + paths)
    process.stdin.close()
    stderr_box: list[bytes] = []
    drainer = threading.Thread(target=lambda: stderr_box.append(process.stderr.read()))  # type: ignore[union-attr]
    drainer.start()
    chunks: list[bytes] = []
    try:
        while chunk := process.stdout.read(65536):
            chunks.append(chunk)
            if header_only:
                data = b"".join(chunks)
                if stream.header_length_needed(data) or len(data) > HEADER_LIMIT:
                    os.killpg(process.pid, signal.SIGKILL)
                    break
    except BaseException:
        # The restore was ended (qbackup got a signal): its qrexec connection
        # closes, and so does the service at the other end.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        drainer.join()
        raise
    status = process.wait()
    drainer.join()
    return b"".join(chunks), status, (stderr_box[0] if stderr_box else b"")


def read_passphrase(passphrase_file: str, input_data: bytes | None) -> str:
    """Like qvm-backup-restore: one line of the file (or of stdin for '-'), right-stripped."""
    if passphrase_file == "-":
        if input_data is None:
            raise SimulationError("-p - without a passphrase on stdin")
        source = input_data.decode()
    else:
        if input_data is not None:
            raise SimulationError("stdin given although -p names a file")
        source = Path(passphrase_file).read_text()
    return source.split("\n", 1)[0].rstrip()


def plan_targets(names: list[str], existing: set[str], options: dict[str, Any],
                 release: str = "4.2") -> dict[str, str]:
    """Given the VMs to restore, those that exist and the release, return
    {backup name: restored name}; raise Conflict like qvm-backup-restore
    without an option. A conflict is renamed with a number suffix: work1 on
    4.2, work-1 on 4.3 (restore.py new_name_for_conflicting_vm)."""
    separator = "-" if release == "4.3" else ""
    targets: dict[str, str] = {}
    for name in names:
        target = name
        if name in existing:
            if options["skip_conflicting"]:
                continue
            if not options["rename_conflicting"]:
                raise Conflict("Remove VMs with conflicting names from the host before"
                               " proceeding.")
            number = 1
            taken = existing | set(names) | set(targets.values())
            while f"{name[:29]}{separator}{number}" in taken:
                number += 1
            target = f"{name[:29]}{separator}{number}"
        targets[name] = target
    return targets


def summary(names: list[str], targets: dict[str, str], home: bool) -> bytes:
    """Given the backup's VMs to restore, their targets and whether dom0's
    home is restored, return get_restore_summary's table (restore.py)."""
    rows = []
    for name in names:
        if name not in targets:
            note = " <-- A VM with the same name already exists on the host!"
        elif targets[name] != name:
            note = f" <-- Will be renamed to '{targets[name]}'"
        else:
            note = ""
        rows.append(f"{name:>10} |   AppVM |{note}\n")
    if home:
        rows.append(f"{'dom0':>10} | AdminVM |\n")
    return ("The following VMs are included in the backup:\n\n"
            f"{'name':>10} |    type |\n" + "".join(rows)).encode()


def parse_restore_args(args: list[str]) -> tuple[dict, str, list[str]]:  # type: ignore[type-arg]
    """Given qvm-backup-restore's arguments, return (options, location, VMs);
    raise SimulationError for anything qbackup should not pass."""
    options: dict = {"verify_only": False, "dest_vm": None, "passphrase_file": None,  # type: ignore[type-arg]
                     "rename_conflicting": False, "skip_conflicting": False,
                     "paranoid_mode": False, "exclude": [], "compression": None,
                     "auto_close": False, "skip_dom0_home": False}
    flags = {"--verify-only": "verify_only", "--rename-conflicting": "rename_conflicting",
             "--skip-conflicting": "skip_conflicting", "--paranoid-mode": "paranoid_mode",
             "--plan-b": "paranoid_mode", "--auto-close": "auto_close",
             "--skip-dom0-home": "skip_dom0_home"}
    positional: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word in flags:
            options[flags[word]] = True
        elif word in ("-d", "--dest-vm"):
            index += 1
            options["dest_vm"] = args[index]
        elif word in ("-p", "--passphrase-file"):
            index += 1
            options["passphrase_file"] = args[index]
        elif word in ("-Z", "--compression-filter"):
            index += 1
            options["compression"] = args[index]
        elif word.startswith("--compression-filter="):
            options["compression"] = word.split("=", 1)[1]
        elif word in ("-x", "--exclude"):
            index += 1
            options["exclude"].append(args[index])
        elif word.startswith("-"):
            raise SimulationError(f"qvm-backup-restore option {word} is not simulated")
        else:
            positional.append(word)
        index += 1
    if options["dest_vm"] is None or options["passphrase_file"] is None or not positional:
        raise SimulationError("qbackup must pass -d VM, -p FILE and a location")
    return options, positional[0], positional[1:]
