"""`qbackup-extract list`: the VMs a backup holds (name, class, size), read
from its authenticated qubes.xml; the rest of the backup is not read."""

from __future__ import annotations

import json

from qbackup_extract.backup import Backup


def human_size(size: int) -> str:
    """Given bytes, return them in the largest binary unit below them, e.g. 1.5 GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def run_list(backup: Backup, as_json: bool) -> list[str]:
    """Given an opened backup, return the lines that show its VMs, a table or JSON."""
    if as_json:
        rows = [{"name": vm.name, "class": vm.klass, "size": vm.size} for vm in backup.vms]
        return [json.dumps({"backup_id": backup.header.backup_id, "vms": rows})]
    return [f"{'NAME':32} {'CLASS':16} {'SIZE':>10}"] + [
        f"{vm.name:32} {vm.klass:16} {human_size(vm.size):>10}" for vm in backup.vms]
