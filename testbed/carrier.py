"""The carrier side of the test bed: the ONE writer of carrier.yaml files that
point the real qbackup-carrier at a test server."""

from __future__ import annotations

from pathlib import Path

from testbed.openssh import Endpoint
from testbed.server import Account, BackupServer


def carrier_config(endpoint: Endpoint, user: str, /, **overrides: object) -> str:
    """Given where to log in and as whom, return carrier.yaml text with the host
    key pinned and no ssh_config read (the machine's own must not leak in);
    OVERRIDES replace or add keys (None writes null)."""
    values: dict[str, object] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": user,
        "identity_file": endpoint.identity,
        "known_hosts": endpoint.known_hosts,
        "connect_timeout": 10,
        "ssh_config": None,
    }
    values.update(overrides)
    return "".join(
        f"{key}: {'null' if value is None else value}\n" for key, value in values.items()
    )


def write_carrier_config(
    server: BackupServer, account: Account, directory: Path, **overrides: object
) -> Path:
    """Write DIRECTORY/carrier.yaml that logs in to SERVER as ACCOUNT (see
    carrier_config for OVERRIDES); return its path."""
    path = directory / "carrier.yaml"
    path.write_text(carrier_config(server.endpoint, account.name, **overrides))
    return path
