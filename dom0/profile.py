"""Qubes backup profiles: written 0600 just before Execute, deleted whatever happens.

A profile may hold `passphrase_text`, the key to every backup: it is created
with O_EXCL|O_NOFOLLOW and mode 0600 from the first byte, and removed in a
`finally` (docs/QUBES.md, "Driving a backup").
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from dom0.carrier import check_name
from dom0.errors import QbackupError
from qbackup_protocol import carrier_service

logger = logging.getLogger(__name__)
CARRIER_COMMAND = "qbackup-carrier"


@dataclass(frozen=True)
class ProfileSpec:
    """What goes into one backup profile."""

    carrier: str
    name: str
    vms: list[str] | None
    exclude: list[str]
    compression: bool | str
    passphrase_text: str | None = None
    passphrase_vm: str | None = None
    destinations: tuple[str, ...] | None = None  # None: every one the carrier has
    several: bool = False  # the put goes to more than one destination


def profile_name(carrier: str) -> str:
    """Given a carrier VM name, return the profile name used for it. The carrier
    lock serialises runs per carrier, so one name per carrier never clashes;
    the hash keeps 'a.b' and 'a_b' apart."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", carrier)
    return f"qbackup-{safe}-{hashlib.sha256(carrier.encode()).hexdigest()[:8]}"


def destination_path(name: str, destinations: tuple[str, ...] | None = None,
                     several: bool = False) -> str:
    """Given a backup NAME, the carrier's DESTINATIONS to store it on (None:
    every one it has) and whether those are SEVERAL, return the
    destination_path qubes.Backup will eval. check_name allows only
    [A-Za-z0-9._/-] and a destination only [a-z0-9_-]: no quote, space, '$'
    or newline can reach the carrier's `eval`.

    To several, the put exits 0 when some staged (--partial-ok): Qubes fails
    the whole backup when the command exits non-zero (qubes/backup.py,
    _monitor_process), and dom0 reads each destination's outcome from commit."""
    words = [CARRIER_COMMAND, "put"]
    if destinations is not None:
        words += ["--to", ",".join(carrier_service.check_destinations(destinations))]
    if several:
        words.append("--partial-ok")
    return " ".join([*words, check_name(name)])


def render_profile(spec: ProfileSpec) -> str:
    """Given a ProfileSpec, return the profile's YAML text."""
    body: dict[str, object] = {
        "include": spec.vms,
        "exclude": spec.exclude,
        "compression": spec.compression,
        "destination_vm": spec.carrier,
        "destination_path": destination_path(spec.name, spec.destinations, spec.several),
    }
    if spec.passphrase_text is not None:
        body["passphrase_text"] = spec.passphrase_text
    else:
        body["passphrase_vm"] = spec.passphrase_vm
    return yaml.safe_dump(body, default_flow_style=False, sort_keys=True)


@contextmanager
def written_profile(directory: Path, spec: ProfileSpec) -> Iterator[str]:
    """Given the profile DIRECTORY and a spec, write the profile 0600 for the
    block and yield its name; always delete it afterwards."""
    name = profile_name(spec.carrier)
    path = directory / f"{name}.conf"
    # We hold this carrier's lock, so a file of this name is a leftover of a
    # killed run (its finally never ran): remove it rather than fail forever.
    try:
        path.unlink()
        logger.warning("removed a stale backup profile %s", path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise QbackupError(f"cannot remove stale profile {path}: {error.strerror}") from None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        raise QbackupError(f"cannot create backup profile {path}: {error.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # umask can only remove bits; make it exact
            os.write(fd, render_profile(spec).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        yield name
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
