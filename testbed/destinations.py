"""Two destinations for one carrier: the accounts `home` and `offsite` on the
test sshd, `offsite` reached through a NetProxy the test can cut, stall or
close (`proxy.down()`: unreachable), and the carrier.yaml with
`destinations: {home: ..., offsite: ...}` that points at them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from testbed.carrier import destinations_config
from testbed.netproxy import NetProxy
from testbed.openssh import Endpoint
from testbed.server import Account, BackupServer

HOME = "home"
OFFSITE = "offsite"


@dataclass
class TwoDestinations:
    """The two accounts, the relay in front of `offsite`, and the carrier.yaml
    at CONFIG (write_config writes it)."""

    server: BackupServer
    config: Path
    home: Account
    offsite: Account
    proxy: NetProxy
    known_hosts: Path
    common: dict[str, object] = field(default_factory=dict)

    @classmethod
    def create(cls, server: BackupServer, config: Path) -> TwoDestinations:
        """Given the running test server and where carrier.yaml goes, make
        the two accounts and the relay; return them (close() the relay)."""
        home = server.add_account()
        offsite = server.add_account()
        proxy = NetProxy(server.port)
        key = server.known_hosts.read_text().split(None, 1)[1]
        known_hosts = config.parent / "destinations_known_hosts"
        known_hosts.write_text(server.known_hosts.read_text().rstrip("\n") + "\n"
                               + f"[127.0.0.1]:{proxy.port} {key}")
        made = cls(server, config, home, offsite, proxy, known_hosts)
        made.write_config()
        return made

    def account(self, destination: str) -> Account:
        return self.home if destination == HOME else self.offsite

    def write_config(self, own: dict[str, dict[str, object]] | None = None,
                     **common: object) -> None:
        """Write carrier.yaml: COMMON top-level keys, OWN[destination] keys."""
        direct = Endpoint(self.server.port, self.server.client_key, self.known_hosts)
        relayed = Endpoint(self.proxy.port, self.server.client_key, self.known_hosts)
        self.config.write_text(destinations_config(
            {HOME: (direct, self.home.name), OFFSITE: (relayed, self.offsite.name)},
            own, **common))

    def close(self) -> None:
        self.proxy.close()
