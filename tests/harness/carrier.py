"""The carrier side of the test rig: a carrier configuration pinned to a BackupServer."""

from __future__ import annotations

from pathlib import Path

from tests.harness.server import Account, BackupServer


def write_carrier_config(
    server: BackupServer, account: Account, directory: Path, **extra: object
) -> Path:
    """Write a carrier.yaml that logs in to SERVER as ACCOUNT with the pinned host
    key; EXTRA keys are added as given. Return its path."""
    lines = [
        "host: 127.0.0.1",
        f"port: {server.port}",
        f"user: {account.name}",
        f"identity_file: {server.client_key}",
        f"known_hosts: {server.known_hosts}",
        "connect_timeout: 10",
    ]
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path = directory / "carrier.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
