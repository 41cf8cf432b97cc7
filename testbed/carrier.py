"""The carrier side of the test bed: the ONE writer of carrier.yaml files that
point the real qbackup-carrier at a test server (or, with destinations, at
several accounts of test servers)."""

from __future__ import annotations

from pathlib import Path

from testbed.openssh import Endpoint
from testbed.server import Account, BackupServer


def login_values(endpoint: Endpoint, user: str) -> dict[str, object]:
    """Given where to log in and as whom, return the keys that say so, the
    host key pinned."""
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": user,
        "identity_file": endpoint.identity,
        "known_hosts": endpoint.known_hosts,
    }


def yaml_lines(values: dict[str, object], indent: str = "") -> str:
    """Given keys and values (None: null), return them as carrier.yaml lines."""
    return "".join(
        f"{indent}{key}: {'null' if value is None else value}\n" for key, value in values.items()
    )


def carrier_config(endpoint: Endpoint, user: str, /, **overrides: object) -> str:
    """Given where to log in and as whom, return carrier.yaml text with the host
    key pinned and no ssh_config read (the machine's own must not leak in);
    OVERRIDES replace or add keys (None writes null)."""
    values = {**login_values(endpoint, user), "connect_timeout": 10, "ssh_config": None}
    values.update(overrides)
    return yaml_lines(values)


def destinations_config(
    logins: dict[str, tuple[Endpoint, str]],
    own: dict[str, dict[str, object]] | None = None,
    /,
    **common: object,
) -> str:
    """Given each destination's login (name -> (endpoint, user)), in order,
    return carrier.yaml text with `destinations:`: COMMON as top-level keys
    (defaults for all), OWN[name] as a destination's own keys over its login."""
    top = {"connect_timeout": 10, "ssh_config": None, **common}
    text = yaml_lines(top) + "destinations:\n"
    for name, (endpoint, user) in logins.items():
        values = {**login_values(endpoint, user), **(own or {}).get(name, {})}
        text += f"  {name}:\n" + yaml_lines(values, "    ")
    return text


def write_carrier_config(
    server: BackupServer, account: Account, directory: Path, **overrides: object
) -> Path:
    """Write DIRECTORY/carrier.yaml that logs in to SERVER as ACCOUNT (see
    carrier_config for OVERRIDES); return its path."""
    path = directory / "carrier.yaml"
    path.write_text(carrier_config(server.endpoint, account.name, **overrides))
    return path
