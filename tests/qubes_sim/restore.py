"""qvm-backup-restore, simulated: argument parsing, the qubes.Restore runs, conflicts."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.qubes_sim import stream
from tests.qubes_sim.errors import SimulationError

# What qubes.Restore does: location line, paths line, then eval the command.
QUBES_RESTORE_SH = r"""
read -r location || exit 1
read -r paths || exit 1
if [ -f "$location" ]; then
    exec cat "$location"
fi
first=${location%% *}
if ! command -v "$first" >/dev/null 2>&1; then
    echo "Invalid command $first" >&2
    exit 2
fi
eval "set -- $location"
"$@" </dev/null
"""
HEADER_LIMIT = 1024 * 1024


class Conflict(Exception):
    """A VM to restore exists and no conflict option was given."""


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
    while chunk := process.stdout.read(65536):
        chunks.append(chunk)
        if header_only:
            data = b"".join(chunks)
            if stream.header_length_needed(data) or len(data) > HEADER_LIMIT:
                os.killpg(process.pid, signal.SIGKILL)
                break
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


def plan_targets(names: list[str], existing: set[str], options: dict[str, Any]) -> dict[str, str]:
    """Given the VMs to restore and those that exist, return {backup name:
    restored name}; raise Conflict like qvm-backup-restore without an option."""
    targets: dict[str, str] = {}
    for name in names:
        target = name
        if name in existing:
            if options["skip_conflicting"]:
                continue
            if not options["rename_conflicting"]:
                raise Conflict(f"VM {name} already exists: use --skip-conflicting or"
                               " --rename-conflicting")
            number = 1
            while f"{name}{number}" in existing:
                number += 1
            target = f"{name}{number}"
        targets[name] = target
    return targets


def parse_restore_args(args: list[str]) -> tuple[dict, str, list[str]]:  # type: ignore[type-arg]
    """Given qvm-backup-restore's arguments, return (options, location, VMs);
    raise SimulationError for anything qbackup should not pass."""
    options: dict = {"verify_only": False, "dest_vm": None, "passphrase_file": None,  # type: ignore[type-arg]
                     "rename_conflicting": False, "skip_conflicting": False,
                     "paranoid_mode": False, "exclude": []}
    flags = {"--verify-only": "verify_only", "--rename-conflicting": "rename_conflicting",
             "--skip-conflicting": "skip_conflicting", "--paranoid-mode": "paranoid_mode"}
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
